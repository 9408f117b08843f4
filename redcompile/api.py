"""The library API for decoding: a model folder or an artifact as a `Generator`.

gen = redcompile.api.open_generator("model_dir", beam=BeamShape(4, 5))
report = gen.generate(["def fib(n):"], GenerationConfig(max_new_tokens=64))

The other commands have one library entry point each, which the CLI calls:
`compiler.convert`, `verification.verify`, `inspection.describe_artifact`,
`benchmarking.run.bench`, `training.trainer.train_drafter` and `example.write_example`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redcompile.config import ModelFolderOptions
from redcompile.errors import InputError
from redcompile.runtime.generator import GenerationReport, Generator, TextCallback
from redcompile.step_builder import reference_generator

__all__ = ["GenerationReport", "Generator", "TextCallback", "open_generator", "open_model_folder"]


def open_model_folder(
    model_dir: Path | str, threads: int | None = None, **options: Any
) -> Generator:
    """A Generator running the PyTorch reference step on a Hugging Face folder (+ drafter).

    `options` are the fields of `ModelFolderOptions` (drafter_dir, beam, autoregressive,
    random_drafter, allow_pickle, dtype, max_seq_len, draft_vocab, drafter_weights,
    base_weights); `threads` sets PyTorch's intra-op threads (None or 0: unchanged).
    """
    return reference_generator(model_dir, ModelFolderOptions.of(**options), threads)


def open_generator(
    source: Path | str,
    speculation: str = "auto",
    tuning: Path | str | None = None,
    sampling: bool = False,
    **options: Any,
) -> Generator:
    """Open a model folder or an artifact file (by suffix) as a Generator that drafts at the
    levels `speculation` (--speculation: auto, off, chain, full) and `tuning` (a tuning file;
    None: the artifact's sidecar when there is one) choose (redcompile/speculation.py).
    `sampling`: the runs will sample, so an ONNX artifact opens with its sampling step graphs
    rather than its greedy ones (either kind is made when a run first needs it)."""
    from redcompile.speculation import check_mode

    check_mode(speculation)
    path = Path(source)
    if not path.exists():
        raise InputError(f"source: {path} does not exist (give a model folder or an artifact)")
    if path.is_dir():
        generator = open_model_folder(path, **options)
    else:
        from redcompile.runtime.loading import open_artifact

        generator = open_artifact(path, sampling=sampling, **options)
    generator.speculation = _policy(generator, path, speculation, tuning)
    generator.info["speculation"] = generator.speculation.to_json()
    return generator


def _policy(generator: Generator, path: Path, mode: str, tuning: Path | str | None):
    """The speculation policy `--speculation MODE [--tuning FILE]` gives `generator`'s steps,
    reporting what they do: an autoregressive step never drafts, and an artifact converted
    before speculation levels (format 4) drafts its whole tree every step. A mode or tuning
    the source cannot follow is refused rather than reported and ignored."""
    from redcompile.speculation import SpeculationPolicy, choose_policy

    fixed = None
    if generator.info.get("mode") == "autoregressive":
        fixed, allowed, why = "none", ("auto", "off"), "an autoregressive source never drafts"
        fix = "drop the option"
    elif not path.is_dir() and not generator.info.get("speculation_levels"):
        fixed, allowed = "full", ("auto", "full")
        why = "an artifact converted before speculation levels (format 4) drafts every step"
        fix = "re-convert it, or drop the option"
    if fixed is None:
        tuning_path = None if tuning is None else Path(tuning)
        return choose_policy(
            mode,
            None if path.is_dir() else path,
            generator.info.get("manifest_sha256"),
            tuning_path,
        )
    if mode not in allowed or tuning is not None:
        asked = f"--speculation {mode}" if tuning is None else "--tuning"
        raise InputError(f"{asked}: {path.name} cannot follow it: {why}; {fix}")
    return SpeculationPolicy(((1, fixed),), why)
