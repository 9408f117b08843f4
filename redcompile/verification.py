"""`verify`: prove an artifact right against the model folder it was made from.

Three checks, reported per item in the manner of Polygraphy:
1. sources: the model (and drafter) files still hash to what the manifest recorded;
2. first step: every output of the prefill step, artifact vs the PyTorch reference step; integer
   outputs must be equal, float outputs within |a - b| <= atol + rtol * |b| elementwise;
3. tokens: greedy generation from the artifact equals the PyTorch reference and the
   autoregressive baseline, token for token.

A drafter compiled with `--drafter-weights int8|int4` drafts through ONNX Runtime's MatMulNBits,
which also quantizes the activations, so its drafts can differ from the reference's (which
applies the weight quantization only). For such artifacts the outputs that carry drafts
(DRAFT_OUTPUTS) are reported, not required to match: decoding is still held token for token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from redcompile.compiler import source_hashes
from redcompile.config import (
    DEFAULT_LOOKUP_NGRAMS,
    TOLERANCES,
    VERIFY_NEW_TOKENS,
    BeamShape,
    ModelFolderOptions,
)
from redcompile.errors import InputError
from redcompile.generation import GenerationConfig, first_step_outputs
from redcompile.models.weight_quant import base_weights_of, recorded_format

DEFAULT_PROMPTS = (
    "def main():\n",
    "import os\n\n",
    "class Node:\n    def __init__(self",
    "The quick brown fox",
)
DRAFT_OUTPUTS = (
    "next_input_ids",
    "next_parent_ids",
    "next_depths",
    "next_num_tokens",
    "next_beam_paths",
)
# `--weights` at accuracy level 4: the reference rounds each block of activations to int8 as
# ONNX Runtime does, but an input within float rounding of a rounding boundary can round the
# other way in one of them, moving that block's products by one int8 step. Up to this share of
# a float output's elements may then lie outside the tolerance; the tokens must still match.
ROUNDING_FLIP_SHARE = 0.01


@dataclass
class OutputCheck:
    """How one output of the first step compares (Polygraphy-style statistics)."""

    name: str
    passed: bool
    exact: bool
    elements: int
    mismatches: int
    max_abs: float = 0.0
    mean_abs: float = 0.0
    p99_abs: float = 0.0
    max_rel: float = 0.0
    worst_index: list[int] = field(default_factory=list)
    informational: bool = False  # reported, not required (drafts of a quantized drafter)

    @property
    def required_ok(self) -> bool:
        """Passed, or only informational."""
        return self.passed or self.informational

    def line(self, atol: float, rtol: float) -> str:
        """One summary line."""
        status = "PASSED" if self.passed else ("INFO" if self.informational else "FAILED")
        if self.exact:
            return f"{self.name:<28} exact      {self.mismatches}/{self.elements} differ  {status}"
        return (
            f"{self.name:<28} max abs {self.max_abs:.3g} at {tuple(self.worst_index)}, mean "
            f"{self.mean_abs:.3g}, p99 {self.p99_abs:.3g}, max rel {self.max_rel:.3g}; "
            f"{self.mismatches}/{self.elements} outside atol {atol:g} rtol {rtol:g}  {status}"
        )


def kept_cache(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`outputs` with each `present.*` cache's slots at and beyond the row's
    `next_cache_lengths` zeroed: those slots are stale, no step reads them (docs/artifact.md),
    and a step may leave scratch there (a padded attention row's key and value,
    passes/fuse_chain_attention.py), so a comparison of caches is one of their kept slots."""
    lengths = outputs.get("next_cache_lengths")
    if lengths is None:
        return outputs
    kept = dict(outputs)
    for name, cache in outputs.items():
        if name.startswith("present.") and cache.ndim == 4:  # [B, Hkv, S, D]
            slots = np.arange(cache.shape[2])[None, None, :, None]
            kept[name] = np.where(slots < lengths.reshape(-1, 1, 1, 1), cache, 0)
    return kept


def compare_output(
    name: str,
    got: np.ndarray,
    want: np.ndarray,
    atol: float,
    rtol: float,
    allowed_share: float = 0.0,
) -> OutputCheck:
    """Elementwise comparison with error statistics; a float output passes when at most
    `allowed_share` of its elements lie outside the tolerance (0: none)."""
    if got.shape != want.shape:
        return OutputCheck(name, False, True, int(want.size), int(want.size))
    if np.issubdtype(want.dtype, np.integer) or want.dtype == np.bool_:
        bad = int((got != want).sum())
        return OutputCheck(name, bad == 0, True, int(want.size), bad)
    a, b = got.astype(np.float64), want.astype(np.float64)
    diff = np.abs(a - b)
    finite = np.isfinite(a) == np.isfinite(b)
    diff = np.where(np.isfinite(diff), diff, np.where(a == b, 0.0, np.inf))
    outside = (diff > atol + rtol * np.abs(b)) | ~finite
    rel = diff / np.maximum(np.abs(b), 1e-12)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
    return OutputCheck(
        name,
        bool(finite.all()) and int(outside.sum()) <= allowed_share * diff.size,
        False,
        int(diff.size),
        int(outside.sum()),
        max_abs=float(diff.max(initial=0.0)),
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        p99_abs=float(np.quantile(diff, 0.99)) if diff.size else 0.0,
        max_rel=float(rel.max(initial=0.0)),
        worst_index=[int(i) for i in worst],
    )


@dataclass
class VerifyReport:
    """All checks and the verdict."""

    artifact: str
    model_dir: str
    atol: float
    rtol: float
    sources: dict[str, Any]
    first_step: list[OutputCheck]
    tokens: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # checks left out, and why

    @property
    def passed(self) -> bool:
        """Every check passed."""
        return (
            self.sources["match"]
            and all(c.required_ok for c in self.first_step)
            and all(t["identical"] == t["prompts"] for t in self.tokens.values())
        )

    def to_json(self) -> dict[str, Any]:
        """The CLI's --json output."""
        return {
            "passed": self.passed,
            "artifact": self.artifact,
            "model_dir": self.model_dir,
            "atol": self.atol,
            "rtol": self.rtol,
            "sources": self.sources,
            "first_step": [asdict(c) for c in self.first_step],
            "tokens": self.tokens,
            "skipped": self.skipped,
        }

    def lines(self) -> list[str]:
        """The human-readable report."""
        sources = (
            "match the manifest"
            if self.sources["match"]
            else ("DIFFER: " + ", ".join(self.sources["differences"]))
        )
        out = [f"[I] sources: {sources}"]
        out.append("[I] first step, artifact vs PyTorch reference:")
        out += [f"[I]   {c.line(self.atol, self.rtol)}" for c in self.first_step]
        if any(c.informational for c in self.first_step) and not self.skipped:
            out.append(
                "[I]   (INFO: drafts of a quantized drafter; ONNX Runtime also quantizes its "
                "activations, so they may differ; the tokens below must not)"
            )
        for name, t in self.tokens.items():
            status = "PASSED" if t["identical"] == t["prompts"] else "FAILED"
            first = (
                ""
                if not t["first_difference"]
                else (
                    f", first difference: prompt {t['first_difference'][0]} token "
                    f"{t['first_difference'][1]}"
                )
            )
            out.append(
                f"[I] tokens, {name}: {t['identical']}/{t['prompts']} prompts identical"
                f"{first}  {status}"
            )
        out += [f"[I] skipped: {reason}" for reason in self.skipped]
        verdict = "PASSED | All checks matched" if self.passed else "FAILED | Mismatches found"
        out.append(f"[I] {verdict}")
        return out


def _token_check(got: list[list[int]], want: list[list[int]]) -> dict[str, Any]:
    identical = sum(g == w for g, w in zip(got, want))
    first = []
    for prompt, (g, w) in enumerate(zip(got, want)):
        if g != w:
            index = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
            first = [prompt, index]
            break
    return {"prompts": len(want), "identical": identical, "first_difference": first}


def _sources_check(
    manifest: dict[str, Any], model_dir: Path, drafter_dir: Path | None
) -> dict[str, Any]:
    recorded = manifest.get("sources", {})
    differences = []
    folders = {"model": model_dir}
    if "drafter" in recorded and drafter_dir is not None:
        folders["drafter"] = drafter_dir
    for key, folder in folders.items():
        now = source_hashes(folder)
        for name, digest in recorded.get(key, {}).items():
            if now.get(name) != digest:
                differences.append(f"{key}/{name}")
    return {"match": not differences, "differences": differences}


def _absent_drafter(manifest: dict[str, Any], default: Path | None) -> str | None:
    """Why the default drafter folder cannot stand in for the artifact's drafter, or None."""
    if default is None:
        return None
    if not default.is_dir():
        return f"no drafter folder at {default}"
    recorded = manifest.get("sources", {}).get("drafter")
    if recorded and source_hashes(default) != recorded:
        return f"{default} is not the drafter the artifact was made with"
    return None


def verify(
    artifact_path: Path | str,
    model_dir: Path | str,
    prompts: list[str] | None = None,
    max_new_tokens: int = VERIFY_NEW_TOKENS,
    atol: float | None = None,
    rtol: float | None = None,
    drafter_dir: Path | str | None = None,
    allow_pickle: bool = False,
) -> VerifyReport:
    """Run the three checks of the module docstring."""
    from redcompile.runtime.loading import open_artifact
    from redcompile.step_builder import reference_generator

    if drafter_dir is not None and not Path(drafter_dir).is_dir():
        what = "is a file" if Path(drafter_dir).exists() else "does not exist"
        raise InputError(f"verify: --drafter {drafter_dir} {what}; name the drafter's folder")
    artifact = open_artifact(artifact_path)
    manifest = artifact.backend.manifest
    model_dir = Path(model_dir)
    default_atol, default_rtol = TOLERANCES.get(manifest["dtype"], TOLERANCES["float32"])
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    random_drafter = bool(manifest["drafter"] and manifest["drafter"].get("random"))
    drafter_path = (
        Path(drafter_dir)
        if drafter_dir
        else (None if random_drafter or manifest["drafter"] is None else model_dir / "drafter")
    )
    quantized = (manifest["drafter"] or {}).get("quantized")
    if quantized:
        recorded_format(quantized, manifest["drafter"].get("quantized_block_size"))
    draft_vocab = (manifest["drafter"] or {}).get("draft_vocab")
    skipped = []
    absent = _absent_drafter(manifest, drafter_path) if drafter_dir is None else None
    if absent:
        # The artifact holds its drafter; without the folder the reference drafts with a
        # random one: every output but the drafts, and every token, must still match.
        skipped = [
            f"drafter sources: {absent} (pass --drafter DIR)",
            f"drafts ({', '.join(DRAFT_OUTPUTS)}): reported only, the reference drafts with "
            f"a random drafter",
        ]
        drafter_path, random_drafter, draft_vocab, quantized = None, True, None, None
    base_weights = base_weights_of(manifest)
    common = dict(
        dtype=manifest["dtype"], max_seq_len=manifest["max_seq_len"], base_weights=base_weights
    )
    reference = reference_generator(
        model_dir,
        ModelFolderOptions(
            drafter_dir=drafter_path,
            allow_pickle=allow_pickle,
            beam=BeamShape(
                manifest["beam"]["width"],
                max(manifest["beam"]["length"], 2),
                manifest["beam"].get("lookup_beams", 0),
                tuple(manifest["beam"].get("lookup_ngrams") or DEFAULT_LOOKUP_NGRAMS),
            ),
            autoregressive=manifest["mode"] == "autoregressive",
            random_drafter=random_drafter,
            draft_vocab=draft_vocab,
            drafter_weights=quantized or "float",
            **common,
        ),
    )
    baseline = reference_generator(model_dir, ModelFolderOptions(autoregressive=True, **common))

    ids = [artifact.codec.encode(p) for p in (prompts or list(DEFAULT_PROMPTS))]
    got = kept_cache(first_step_outputs(artifact.backend, ids, max_new_tokens))
    want = kept_cache(first_step_outputs(reference.backend, ids, max_new_tokens))
    flips = ROUNDING_FLIP_SHARE if base_weights.rounds_activations else 0.0
    first = [compare_output(name, got[name], want[name], atol, rtol, flips) for name in want]
    if quantized or skipped:
        for check in first:
            check.informational = check.name in DRAFT_OUTPUTS

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=len(ids))
    produced = [c.token_ids for c in artifact.generate_ids(ids, cfg).completions]
    expected = [c.token_ids for c in reference.generate_ids(ids, cfg).completions]
    plain = [c.token_ids for c in baseline.generate_ids(ids, cfg).completions]
    tokens = {
        "artifact vs PyTorch reference": _token_check(produced, expected),
        "artifact vs autoregressive": _token_check(produced, plain),
    }
    return VerifyReport(
        str(artifact_path),
        str(model_dir),
        atol,
        rtol,
        _sources_check(manifest, model_dir, drafter_path),
        first,
        tokens,
        skipped,
    )
