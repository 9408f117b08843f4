"""Which speculation level a step runs at: the host policy (docs/artifact.md, "Speculation levels").

A speculative artifact's step reads `speculation` (io_contract.SPECULATION_LEVELS): what it
drafts for the next step. Drafting pays when few rows share a step and stops paying as the batch
fills (verification becomes compute-bound), so the host picks the level per step from the number
of rows decoding, following thresholds that `redcompile tune` measured on this machine and wrote
next to the artifact (ARTIFACT.tuning.json), or the defaults below when it never ran.

Torch-free: the CLI, the host loop and other hosts' authors read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redcompile.errors import InputError
from redcompile.io_contract import SPECULATION_LEVELS

MODES = ("auto", "off", "chain", "full")  # --speculation: auto follows the policy
MODE_LEVELS = {"off": "none", "chain": "chain", "full": "full"}
# Never tuned: full speculation while at most this many rows decode, none above. A guess, not a
# measurement of your machine: speculation pays at small batches where a step is costly (the
# 350M cost study projects 1.68x at batch 1) and stops paying as the batch fills; on the
# fixture's 2-core CPU, against today's lean autoregressive step, it paid at no batch size
# (docs/benchmarks.md, "Speculation levels"). `redcompile tune` replaces the guess.
DEFAULT_FULL_ROWS = 2
TUNING_FORMAT = "redcompile-tuning"
TUNING_VERSION = 1
TUNING_SUFFIX = ".tuning.json"
MAX_TUNING_BYTES = 1 << 20


@dataclass(frozen=True)
class SpeculationPolicy:
    """The level of a step by the number of rows it decodes.

    `levels[(rows)]` for each tuned row count; a step with a row count between two tuned ones
    takes the level of the largest tuned count below it (above the largest: that one's)."""

    levels: tuple[tuple[int, str], ...]  # (rows, level), rows ascending, the first is 1
    source: str  # "default", "tuned: PATH" or "--speculation MODE"

    def __post_init__(self) -> None:
        rows = [r for r, _ in self.levels]
        if not rows or rows[0] != 1 or rows != sorted(set(rows)):
            raise ValueError(f"policy rows must start at 1 and ascend, got {rows}")
        for _, level in self.levels:
            if level not in SPECULATION_LEVELS:
                raise ValueError(f"unknown speculation level {level!r}")

    @classmethod
    def fixed(cls, mode: str) -> SpeculationPolicy:
        """Every step at the level of `--speculation MODE` (off, chain, full)."""
        return cls(((1, MODE_LEVELS[mode]),), f"--speculation {mode}")

    @classmethod
    def default(cls) -> SpeculationPolicy:
        """The policy of an artifact never tuned: full up to DEFAULT_FULL_ROWS rows, then none."""
        return cls(((1, "full"), (DEFAULT_FULL_ROWS + 1, "none")), "default")

    def level(self, rows: int) -> str:
        """The level of a step that decodes `rows` rows."""
        chosen = self.levels[0][1]
        for threshold, level in self.levels:
            if rows >= threshold:
                chosen = level
        return chosen

    def to_json(self) -> dict[str, Any]:
        """{"source": ..., "levels": {"rows": level}} (the tuning file's `levels` form)."""
        return {"source": self.source, "levels": {str(r): level for r, level in self.levels}}


def check_mode(mode: str) -> str:
    """`--speculation` must be one of MODES."""
    if mode not in MODES:
        raise InputError(f"--speculation must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def tuning_path(artifact: Path) -> Path:
    """Where `redcompile tune` writes an artifact's thresholds: ARTIFACT.tuning.json."""
    return artifact.with_name(artifact.name + TUNING_SUFFIX)


def policy_from_levels(levels: Mapping[str, str], source: str) -> SpeculationPolicy:
    """A policy from a tuning file's {"rows": level} map (rows as decimal strings)."""
    try:
        pairs = sorted((int(rows), level) for rows, level in levels.items())
        return SpeculationPolicy(tuple(pairs), source)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: its levels are not a tuning's ({exc})") from None


def read_tuning(path: Path, manifest_sha256: str) -> SpeculationPolicy:
    """The policy in tuning file `path`, which must have been measured on the artifact whose
    manifest has sha256 `manifest_sha256`; anything else is one clear error."""
    if not path.is_file():
        raise InputError(f"--tuning {path} is not a file")
    if path.stat().st_size > MAX_TUNING_BYTES:
        raise InputError(f"--tuning {path} is larger than a tuning file can be")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InputError(f"--tuning {path} is not a JSON tuning file") from None
    if not isinstance(data, dict) or data.get("format") != TUNING_FORMAT:
        raise InputError(f"--tuning {path} is not a redcompile tuning file")
    if data.get("version") != TUNING_VERSION:
        raise InputError(
            f"--tuning {path} is tuning format {data.get('version')!r}, this redcompile reads "
            f"{TUNING_VERSION}; run redcompile tune again"
        )
    if data.get("manifest_sha256") != manifest_sha256:
        raise InputError(
            f"--tuning {path} was measured on another artifact (its manifest differs); run "
            f"redcompile tune on this one"
        )
    levels = data.get("levels")
    if not isinstance(levels, dict):
        raise InputError(f"--tuning {path} has no levels")
    return policy_from_levels(levels, f"tuned: {path}")


def choose_policy(
    mode: str,
    artifact: Path | None,
    manifest_sha256: str | None,
    tuning: Path | None,
) -> SpeculationPolicy:
    """The policy of `--speculation MODE` [--tuning FILE] for `artifact` (None: a model folder,
    never tuned): a fixed level, the given tuning, the sidecar tuning when there is one, else
    the default."""
    check_mode(mode)
    if mode != "auto":
        if tuning is not None:
            raise InputError(f"--tuning applies to --speculation auto, not {mode}")
        return SpeculationPolicy.fixed(mode)
    if tuning is None and artifact is not None and tuning_path(artifact).is_file():
        tuning = tuning_path(artifact)
    if tuning is None:
        return SpeculationPolicy.default()
    if manifest_sha256 is None:
        raise InputError("--tuning applies to artifacts, not to model folders")
    return read_tuning(tuning, manifest_sha256)
