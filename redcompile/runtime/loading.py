"""Open an artifact file as a Generator in the runtime its format names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redcompile.api import Generator
from redcompile.artifact import read_artifact
from redcompile.config import BeamShape
from redcompile.errors import ArtifactError, InputError, TargetUnavailableError
from redcompile.models.step import StepSignature, TensorSpec
from redcompile.tokenizer import TextCodec

MODEL_FOLDER_ONLY = ("drafter_dir", "random_drafter", "allow_pickle", "dtype")


def signature_of(manifest: dict[str, Any]) -> StepSignature:
    """The step signature recorded in a manifest."""
    io = manifest["io"]

    def specs(items: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in items)

    return StepSignature(specs(io["inputs"]), specs(io["outputs"]), dict(io["feedback"]))


def _check_options(path: Path, manifest: dict[str, Any], options: dict[str, Any]) -> None:
    for name in MODEL_FOLDER_ONLY:
        if options.get(name):
            flag = "--" + name.removesuffix("_dir").replace("_", "-")
            raise InputError(f"{flag} applies to model folders; {path} is a compiled artifact")
    beam: BeamShape | None = options.get("beam")
    compiled = manifest["beam"]
    if beam is not None and (beam.width, beam.length) != (compiled["width"], compiled["length"]):
        raise InputError(
            f"{path} was compiled with --beam-width {compiled['width']} --beam-length "
            f"{compiled['length']}; re-convert to use another beam shape"
        )
    if options.get("autoregressive") and manifest["mode"] != "autoregressive":
        raise InputError(
            f"{path} is a ReDrafter artifact; convert with --autoregressive for the baseline"
        )


def open_artifact(path: Path | str, provider: str = "cpu", **options: Any) -> Generator:
    """A Generator for an artifact file (ONNX Runtime for .onnx)."""
    path = Path(path)
    artifact = read_artifact(path)
    manifest = artifact.manifest
    _check_options(path, manifest, options)
    target = manifest.get("target", "onnxruntime")
    if path.suffix.lower() != ".onnx" and target != "onnxruntime":
        raise TargetUnavailableError(f"{path}: runtime for target {target} is not available")
    try:
        import onnxruntime as ort
    except ImportError:
        raise TargetUnavailableError(
            "onnxruntime is not installed; pip install onnxruntime"
        ) from None
    from redcompile.runtime.ort_backend import OrtBackend

    providers = ["CUDAExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise ArtifactError(
            f"artifact: ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:300]}"
        ) from None
    backend = OrtBackend(session, signature_of(manifest), manifest, device=provider)
    codec = TextCodec.from_json(artifact.tokenizer_json)
    info = {
        "source": str(path),
        "runtime": "onnxruntime",
        "dtype": manifest["dtype"],
        "mode": manifest["mode"],
        "beam_width": manifest["beam"]["width"],
        "beam_length": manifest["beam"]["length"],
    }
    return Generator(backend, codec, tuple(manifest["stop_token_ids"]), info)
