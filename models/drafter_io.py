"""Drafter folders in Apple's format (config.json + model.safetensors), read and written.

Reading accepts the tensor-name variants TensorRT-LLM's converter accepts
(reference/redrafter.md §2.7):

    A (Apple)       input_proj.*   lm_head.{i}.linear.*   lm_head.{N}.weight   rnn_u.*  rnn_w.weight
    B (plural)      input_projs.*  lm_heads.{i}.linear.*  lm_heads.{N}.weight
    C (sequential)  0.{i}.linear.*  0.{N}.weight

and ignores `emb_norm.weight` (created but never used by Apple's MLX code). A `model.pt`
(a pickle, which can run code) is refused unless the caller opts in explicitly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from redcompile.errors import IncompatibleDrafterError, ModelLoadError
from redcompile.models.config import DecoderConfig, read_json
from redcompile.models.drafter import Drafter, DrafterConfig
from redcompile.models.weights import TORCH_DTYPES, check_weight_values, iter_tensors

IGNORED = ("emb_norm.weight",)
_BLOCK = re.compile(r"^lm_head\.(\d+)\.linear\.(weight|bias)$")
_FINAL = re.compile(r"^lm_head\.(\d+)\.weight$")


def canonical_name(name: str) -> str:
    """Map a variant-B or variant-C tensor name to Apple's variant A."""
    for old, new in (("input_projs.", "input_proj."), ("lm_heads.", "lm_head.")):
        if name.startswith(old):
            return new + name[len(old) :]
    if re.match(r"^0\.\d+\.", name):
        return "lm_head." + name[2:]
    return name


def read_drafter_tensors(drafter_dir: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All drafter tensors under canonical (Apple) names, float32 on CPU."""
    safetensors_path = drafter_dir / "model.safetensors"
    pickle_path = drafter_dir / "model.pt"
    if safetensors_path.is_file():
        raw = dict(iter_tensors([safetensors_path]))
        for name, tensor in raw.items():
            check_weight_values(name, tensor, safetensors_path)
        raw = {k: v.float() for k, v in raw.items()}
    elif pickle_path.is_file():
        if not allow_pickle:
            raise ModelLoadError(
                f"drafter: {pickle_path} is a pickle, and loading a pickle can run code; pass "
                f"--allow-pickle if you trust it, or save the drafter as model.safetensors"
            )
        try:
            raw = torch.load(pickle_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling failure is bad input
            raise ModelLoadError(
                f"drafter: {pickle_path} is not a torch state dict ({exc})"
            ) from None
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise ModelLoadError(f"drafter: {pickle_path} does not hold a dict of tensors")
        for name, tensor in raw.items():
            check_weight_values(str(name), tensor, pickle_path)
        raw = {k: v.float() for k, v in raw.items()}
    else:
        raise ModelLoadError(f"drafter: {drafter_dir} has no model.safetensors")
    return {canonical_name(k): v for k, v in raw.items() if canonical_name(k) not in IGNORED}


def _config_from(cfg: dict, tensors: dict[str, torch.Tensor], path: Path) -> DrafterConfig:
    """DrafterConfig from config.json, filling what it leaves out from the tensors' shapes."""
    finals = [int(m.group(1)) for name in tensors if (m := _FINAL.match(name))]
    if len(finals) != 1:
        raise ModelLoadError(
            f"drafter: {path} must hold exactly one vocabulary projection lm_head.N.weight, "
            f"found {len(finals)}"
        )
    n_layers = finals[0]
    vocab, exit_dim = tensors[f"lm_head.{n_layers}.weight"].shape
    hidden = cfg.get("hidden_size", -1)
    if not isinstance(hidden, int) or hidden <= 0:
        hidden = tensors["rnn_w.weight"].shape[0] if "rnn_w.weight" in tensors else exit_dim // 2
    rnn = bool(cfg.get("rnn", "rnn_u.weight" in tensors))
    declared = {"num_draft_layers": n_layers, "exit_dim": exit_dim, "vocab_size": vocab}
    for key, actual in declared.items():
        value = cfg.get(key, -1)
        if isinstance(value, int) and value > 0 and value != actual:
            raise ModelLoadError(
                f"drafter: {path}/config.json says {key}={value} but the weights give {actual}"
            )
    return DrafterConfig(
        hidden_size=hidden, vocab_size=vocab, exit_dim=exit_dim, num_draft_layers=n_layers, rnn=rnn
    )


def _state_dict_for(
    cfg: DrafterConfig, tensors: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    n = cfg.num_draft_layers
    out: dict[str, torch.Tensor] = {}
    try:
        blocks = [
            (tensors.pop(f"lm_head.{i}.linear.weight"), tensors.pop(f"lm_head.{i}.linear.bias"))
            for i in range(n)
        ]
        out["vocab_w"] = tensors.pop(f"lm_head.{n}.weight")
        if cfg.rnn:
            out["rnn_w"] = tensors.pop("rnn_w.weight")
            out["rnn_u.weight"] = tensors.pop("rnn_u.weight")
            out["rnn_u.bias"] = tensors.pop("rnn_u.bias")
        if cfg.has_input_proj:
            out["input_proj.weight"] = tensors.pop("input_proj.weight")
            out["input_proj.bias"] = tensors.pop("input_proj.bias")
    except KeyError as exc:
        raise ModelLoadError(f"drafter: {path} lacks tensor {exc.args[0]}") from None
    if tensors:
        raise ModelLoadError(
            f"drafter: unexpected tensors in {path}: {', '.join(sorted(tensors)[:3])}"
        )
    e = cfg.exit_dim
    out["res_w"] = torch.stack([w for w, _ in blocks]) if blocks else torch.empty(0, e, e)
    out["res_b"] = torch.stack([b for _, b in blocks]) if blocks else torch.empty(0, e)
    return out


def load_drafter(
    drafter_dir: Path | str, base: DecoderConfig, allow_pickle: bool = False
) -> Drafter:
    """Load an Apple-format drafter folder and check that it fits `base` (hidden size, vocab)."""
    path = Path(drafter_dir)
    if path.exists() and not path.is_dir():
        raise ModelLoadError(
            f"drafter: {path} is a file; --drafter names a folder (config.json + weights)"
        )
    if not path.is_dir():
        raise ModelLoadError(f"drafter: folder {path} does not exist")
    cfg_json = read_json(path / "config.json", "drafter config")
    tensors = read_drafter_tensors(path, allow_pickle)
    cfg = _config_from(cfg_json, tensors, path)
    if cfg.hidden_size != base.hidden_size:
        raise IncompatibleDrafterError(
            f"drafter: {path} has hidden size {cfg.hidden_size}, the base model {base.hidden_size}"
            f"; train a drafter for this base model"
        )
    if cfg.vocab_size != base.vocab_size:
        raise IncompatibleDrafterError(
            f"drafter: {path} has a vocabulary of {cfg.vocab_size}, the base model "
            f"{base.vocab_size}; train a drafter for this base model"
        )
    cfg = DrafterConfig(**{**cfg.to_dict(), "dtype": base.dtype})
    state = _state_dict_for(cfg, tensors, path)
    drafter = Drafter(cfg)
    expected = {k: tuple(v.shape) for k, v in drafter.state_dict().items()}
    for key, tensor in state.items():
        if tuple(tensor.shape) != expected[key]:
            raise ModelLoadError(
                f"drafter: tensor for {key} in {path} has shape {tuple(tensor.shape)}, "
                f"expected {expected[key]} from its config"
            )
    drafter.load_state_dict(state)
    return drafter.to(TORCH_DTYPES[base.dtype]).eval()


def apple_state_dict(drafter: Drafter) -> dict[str, torch.Tensor]:
    """The drafter's tensors under Apple's names (variant A)."""
    cfg = drafter.config
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_draft_layers):
        out[f"lm_head.{i}.linear.weight"] = drafter.res_w[i]
        out[f"lm_head.{i}.linear.bias"] = drafter.res_b[i]
    out[f"lm_head.{cfg.num_draft_layers}.weight"] = drafter.vocab_w
    if cfg.rnn:
        out["rnn_w.weight"] = drafter.rnn_w
        out["rnn_u.weight"] = drafter.rnn_u.weight
        out["rnn_u.bias"] = drafter.rnn_u.bias
    if cfg.has_input_proj:
        out["input_proj.weight"] = drafter.input_proj.weight
        out["input_proj.bias"] = drafter.input_proj.bias
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def save_drafter(drafter: Drafter, out_dir: Path | str, dtype: str = "float32") -> Path:
    """Write `out_dir/config.json` and `model.safetensors` as Apple's save_pretrained does."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = drafter.config
    config = {
        "architectures": ["Drafter"],
        "model_type": "recurrent_drafting_drafter",
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "exit_dim": cfg.exit_dim,
        "num_draft_layers": cfg.num_draft_layers,
        "num_lookback_tokens": -1,
        "rnn": cfg.rnn,
        "torch_dtype": dtype,
    }
    tensors = {k: v.to(TORCH_DTYPES[dtype]) for k, v in apple_state_dict(drafter).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def random_drafter(
    base: DecoderConfig,
    num_layers: int = 2,
    rnn: bool = True,
    exit_dim: int | None = None,
    seed: int = 0,
) -> Drafter:
    """A randomly initialised drafter that fits `base` (for tests and until one is trained)."""
    torch.manual_seed(seed)
    cfg = DrafterConfig(
        hidden_size=base.hidden_size,
        vocab_size=base.vocab_size,
        exit_dim=exit_dim or 2 * base.hidden_size,
        num_draft_layers=num_layers,
        rnn=rnn,
        dtype=base.dtype,
    )
    return Drafter(cfg).to(TORCH_DTYPES[base.dtype]).eval()
