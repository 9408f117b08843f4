"""Reading weights from Hugging Face folders: one `model.safetensors` or a sharded index.

Every failure becomes a one-line `ModelLoadError` naming the file and what to do. Pickled
checkpoints (`pytorch_model.bin`, `model.pt`) are never opened implicitly: unpickling runs code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from redcompile.errors import ModelLoadError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "model.pt", "pytorch_model.bin.index.json")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a folder, validated to exist (shards listed by the index)."""
    model_dir = Path(model_dir)
    single, index = model_dir / SINGLE_FILE, model_dir / INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        return _shards_of(index)
    pickles = [name for name in PICKLE_FILES if (model_dir / name).exists()]
    if pickles:
        raise ModelLoadError(
            f"weights: {model_dir} has only {pickles[0]} (a pickle, which can run code); "
            f"convert it to {SINGLE_FILE} with save_pretrained(safe_serialization=True)"
        )
    raise ModelLoadError(f"weights: {model_dir} has no {SINGLE_FILE} or {INDEX_FILE}")


def _shards_of(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"weights: {index} is not a valid shard index ({exc})") from None
    shards = []
    for name in names:
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise ModelLoadError(f"weights: {index} names an invalid shard {name!r}")
        shard = index.parent / name
        if not shard.is_file():
            raise ModelLoadError(f"weights: shard {name} listed in {index} is missing")
        shards.append(shard)
    return shards


def iter_tensors(
    files: list[Path], dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from safetensors files, one tensor in memory at a time."""
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # safe_open is not a mapping
                    tensor = handle.get_tensor(name)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    yield name, tensor
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(
                f"weights: {path} is not a readable safetensors file ({message}); "
                f"re-download or re-save it"
            ) from None


def tensor_names(files: list[Path]) -> set[str]:
    """Names of all tensors across the files, reading headers only."""
    names: set[str] = set()
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                names.update(handle.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelLoadError(
                f"weights: {path} is not a readable safetensors file ({message})"
            ) from None
    return names


def load_into(
    module: torch.nn.Module,
    tensors: Iterator[tuple[str, torch.Tensor]],
    where: Path,
    ignore: tuple[str, ...] = (),
) -> None:
    """Assign named tensors to a module's parameters, checking names and shapes.

    The module may live on the meta device: tensors are assigned, not copied, so loading needs
    about one copy of the weights in memory.
    """
    expected = dict(module.named_parameters(remove_duplicate=False))
    seen: set[str] = set()
    for name, tensor in tensors:
        if name not in expected:
            if any(part in name for part in ignore):
                continue
            raise ModelLoadError(
                f"weights: unexpected tensor {name!r} in {where}; the folder does not match "
                f"its config.json (architecture or layer count)"
            )
        target = expected[name]
        check_weight_values(name, tensor, where)
        if tuple(target.shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"weights: {name!r} in {where} has shape {tuple(tensor.shape)}, config.json "
                f"implies {tuple(target.shape)}"
            )
        _assign(module, name, tensor)
        seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise ModelLoadError(f"weights: {where} lacks {len(missing)} tensors ({shown})")


def check_weight_values(name: str, tensor: torch.Tensor, where: Path) -> None:
    """A weight must be floating point and finite: integer tensors would fail only after
    export, and a NaN or infinity would decode nonsense without an error."""
    if not tensor.is_floating_point():
        raise ModelLoadError(
            f"weights: {name!r} in {where} holds {str(tensor.dtype).removeprefix('torch.')}; "
            f"model weights must be floating point (float32, float16, bfloat16)"
        )
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), 1 << 24):  # bounded temporary memory
        if not bool(flat[start : start + (1 << 24)].isfinite().all()):
            raise ModelLoadError(
                f"weights: {name!r} in {where} holds NaN or infinite values; the checkpoint "
                f"is corrupt, re-download or re-save it"
            )


def _assign(module: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    setattr(owner, attr, torch.nn.Parameter(tensor, requires_grad=False))
