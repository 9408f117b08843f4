"""Open an artifact file as a Generator in the runtime its format names.

An ONNX file (.onnx) runs in ONNX Runtime; a PT2 package (.pt2, or any zip) runs in PyTorch's
AOTInductor runtime on the device it was compiled for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redcompile.artifact import manifest_sha256, read_artifact
from redcompile.config import BeamShape, ModelFolderOptions
from redcompile.errors import ArtifactError, InputError, TargetUnavailableError
from redcompile.io_contract import StepSignature, TensorSpec
from redcompile.runtime.generator import Generator
from redcompile.tokenizer import TextCodec


def signature_of(manifest: dict[str, Any]) -> StepSignature:
    """The step signature recorded in a manifest."""
    io = manifest["io"]

    def specs(items: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in items)

    return StepSignature(specs(io["inputs"]), specs(io["outputs"]), dict(io["feedback"]))


def _version(text: str) -> tuple[int, ...]:
    """(major, minor) of a version string like 1.32.0 or 1.32.0.dev1."""
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _check_options(path: Path, manifest: dict[str, Any], options: dict[str, Any]) -> None:
    for name in ModelFolderOptions.FOLDER_ONLY:
        if options.get(name) not in (None, False, "float"):
            flag = "--" + name.removesuffix("_dir").replace("_", "-")
            raise InputError(f"{flag} applies to model folders; {path} is a compiled artifact")
    beam: BeamShape | None = options.get("beam")
    compiled = manifest["beam"]
    lookup = compiled.get("lookup_beams", 0)
    if beam is not None and (beam.width, beam.length, beam.lookup) != (
        compiled["width"],
        compiled["length"],
        lookup,
    ):
        raise InputError(
            f"{path} was compiled with --beam-width {compiled['width']} --beam-length "
            f"{compiled['length']} --lookup-beams {lookup}; re-convert to use another beam shape"
        )
    if options.get("autoregressive") and manifest["mode"] != "autoregressive":
        raise InputError(
            f"{path} is a ReDrafter artifact; convert with --autoregressive for the baseline"
        )


def _info(path: Path, manifest: dict[str, Any], runtime: str) -> dict[str, Any]:
    return {
        "source": str(path),
        "runtime": runtime,
        "dtype": manifest["dtype"],
        "mode": manifest["mode"],
        "beam_width": manifest["beam"]["width"],
        "beam_length": manifest["beam"]["length"],
        "lookup_beams": manifest["beam"].get("lookup_beams", 0),
        "lookup_ngrams": manifest["beam"].get("lookup_ngrams", []),
        "draft_vocab": (manifest["drafter"] or {}).get("draft_vocab"),
        "drafter": manifest["drafter"],
        "speculation_levels": manifest.get("speculation_levels", []),
        "manifest_sha256": manifest_sha256(manifest),
    }


def open_artifact(
    path: Path | str,
    provider: str | None = None,
    session_options: Any = None,
    threads: int | None = None,
    sampling: bool = False,
    **options: Any,
) -> Generator:
    """A Generator for an artifact file: ONNX Runtime for .onnx, AOTInductor for .pt2.

    `provider` is the device ("cpu" or "cuda"): ONNX Runtime's execution provider (default
    "cpu"); a .pt2 runs on the device it was compiled for, and naming another is an error.
    `session_options` (an onnxruntime.SessionOptions: threads, profiling, ...) applies to ONNX
    artifacts only; without it the session decodes with redcompile's settings
    (runtime/session.py) and `threads` intra-op threads. `sampling`: open an ONNX artifact
    with the step graphs of runs that sample (default: those of greedy runs; `StepSessions`).
    """
    from redcompile.pt2_artifact import is_pt2_file

    path = Path(path)
    if path.is_file() and is_pt2_file(path):
        if session_options is not None:
            raise InputError(f"{path} is a PT2 package; session options apply to ONNX artifacts")
        if threads:
            import torch

            torch.set_num_threads(threads)
        return open_pt2_artifact(path, provider, **options)
    provider = provider or "cpu"
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

    needed = manifest.get("min_onnxruntime")
    if needed and _version(ort.__version__) < _version(needed):
        raise TargetUnavailableError(
            f"{path} needs ONNX Runtime >= {needed} (it uses ONNX Runtime's contrib ops), and "
            f"this is {ort.__version__}; pip install -U onnxruntime"
        )

    providers = ["CUDAExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    if session_options is None:
        from redcompile.runtime.session import session_options as decoding_options

        session_options = decoding_options(threads)
    try:
        sessions = StepSessions(
            path, artifact.model, manifest, session_options, providers, greedy=not sampling
        )
    except Exception as exc:  # ORT raises its own exception types
        raise ArtifactError(
            f"artifact: ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:300]}"
        ) from None
    backend = OrtBackend(sessions, signature_of(manifest), manifest, device=provider)
    codec = TextCodec.from_json(artifact.tokenizer_json, _vocab_size(manifest), str(path))
    info = _info(path, manifest, "onnxruntime")
    return Generator(backend, codec, tuple(manifest["stop_token_ids"]), info)


class StepSessions:
    """The ONNX Runtime sessions an artifact's steps run in, by kind of step.

    Per kind (every row greedy, or some row sampling) the sessions are the step graphs
    passes/host_graphs.py makes: one per level ("none", "tree") for an artifact with levels,
    else one ("tree"); the whole artifact where there is nothing to resolve. The kind `greedy`
    names is made when the artifact is opened; the other when a run first asks for it, from
    the file again (the model is not kept in memory), and then kept: a process that both
    samples and decodes greedily holds both, each with its own packed weights. A level-`none`
    session passes the token history through (host_graphs `history=False`)."""

    def __init__(
        self,
        path: Path,
        model: Any,
        manifest: dict,
        options: Any,
        providers: list[str],
        greedy: bool = True,
    ) -> None:
        from redcompile.passes.host_graphs import has_sampling_if

        self.path, self.options, self.providers = path, options, providers
        self.sha = manifest_sha256(manifest)
        self.greedy_differs = has_sampling_if(model)
        greedy = greedy or not self.greedy_differs
        self._made: dict[bool, dict[str, Any]] = {greedy: self._build(model, greedy)}
        self.opened_greedy = greedy

    def get(self, greedy: bool) -> dict[str, Any]:
        """The sessions for steps whose rows are all greedy (`greedy`) or not."""
        if not self.greedy_differs:
            greedy = True
        if greedy not in self._made:
            artifact = read_artifact(self.path)
            if manifest_sha256(artifact.manifest) != self.sha:
                raise ArtifactError(
                    f"artifact: {self.path} changed on disk since it was opened; open it again"
                )
            self._made[greedy] = self._build(artifact.model, greedy)
        return self._made[greedy]

    def _build(self, model: Any, greedy: bool) -> dict[str, Any]:
        import onnxruntime as ort

        from redcompile.passes.host_graphs import step_graph

        def session(source: Any) -> Any:
            return ort.InferenceSession(source, self.options, providers=self.providers)

        made = {}
        for level in ("none", "tree"):
            # level none without the history upkeep: generation.py writes the history
            # before a drafting step follows a none step (StepBackend.history_at_none)
            serialized = step_graph(model, level, greedy, history=False)
            if serialized is None:
                break
            made[level] = session(serialized)
        else:
            return made
        serialized = step_graph(model, None, greedy)
        return {"tree": session(serialized if serialized is not None else str(self.path))}


def open_pt2_artifact(path: Path | str, device: str | None = None, **options: Any) -> Generator:
    """A Generator for a .pt2 artifact (an AOTInductor package with a redcompile manifest)."""
    import torch

    from redcompile.pt2_artifact import read_pt2_artifact
    from redcompile.runtime.pt2_backend import Pt2Backend
    from redcompile.torch_target import load_package

    path = Path(path)
    artifact = read_pt2_artifact(path)
    manifest = artifact.manifest
    _check_options(path, manifest, options)
    compiled_for = artifact.aoti.get("AOTI_DEVICE_KEY") or manifest.get("device", "cpu")
    if device is not None and device != compiled_for:
        raise InputError(
            f"{path} was compiled for {compiled_for}; re-convert it for {device} "
            f"(a .pt2 runs on the device it was compiled for)"
        )
    if compiled_for == "cuda" and not torch.cuda.is_available():
        raise TargetUnavailableError(
            f"{path} was compiled for CUDA, and torch sees no CUDA device here"
        )
    try:
        compiled = load_package(path, compiled_for)
    except Exception as exc:  # the package loader raises several types
        made_with = manifest.get("torch_version", "?")
        raise ArtifactError(
            f"artifact: PyTorch {torch.__version__} cannot load {path} (made with PyTorch "
            f"{made_with}): {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        ) from None
    backend = Pt2Backend(compiled, signature_of(manifest), manifest, device=compiled_for)
    codec = TextCodec.from_json(artifact.tokenizer_json, _vocab_size(manifest), str(path))
    info = _info(path, manifest, "torch")
    return Generator(backend, codec, tuple(manifest["stop_token_ids"]), info)


def _vocab_size(manifest: dict[str, Any]) -> int | None:
    """The base model's vocabulary recorded in the manifest (checked by read_manifest)."""
    return manifest["model"]["vocab_size"]
