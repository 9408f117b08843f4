"""`redcompile tune`: time an artifact's speculation levels on this machine, write the policy.

For each batch size, every level decodes the same prompts greedily (all of them, cycled to
fill the batch; token-identical by construction, and checked), alternating level by level over
`repeats` rounds. A batch size decodes at `none` unless a drafting level is faster in every
timed round than `none` is in any (`choose_level`); of the levels that are, the one with the
highest median tokens per second. Drafting that wins by less than the rounds scatter is noise
on a shared machine, and `none` is the level that costs least when it is mistaken.
The record (a tuning file, ARTIFACT.tuning.json beside the artifact) holds the levels the
policy follows, every median it chose from, and how it was measured; it is bound to the
artifact by the sha256 of its manifest (redcompile/speculation.py reads it back).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from redcompile.errors import InputError
from redcompile.generation import GenerationConfig
from redcompile.runtime.generator import Generator
from redcompile.runtime.session import wait_until_idle
from redcompile.speculation import (
    TUNING_FORMAT,
    TUNING_VERSION,
    SpeculationPolicy,
    policy_from_levels,
)

# Prompts `tune` decodes when it is given none: short code and prose openings, so the
# measured acceptance is a generic one (tune with your own prompts for yours).
DEFAULT_TUNING_PROMPTS = (
    "def main():\n",
    "import os\nimport sys\n\n",
    "class Config:\n    def __init__(self",
    "for i in range(10):\n",
    "The ",
    "if __name__ == '__main__':\n",
    "# Read the file and count the lines\n",
    "return [x for x in",
)
DEFAULT_TUNING_BATCH_SIZES = (1, 2, 4, 8, 16)
LEVEL_MODES = {"none": "off", "chain": "chain", "full": "full"}


def _batch_prompts(prompts: Sequence[list[int]], batch: int) -> list[list[int]]:
    """Every prompt, cycled to at least `batch`: each row decodes from the first step, and a
    row that finishes takes the next prompt (the in-flight batching generate does)."""
    return [list(prompts[i % len(prompts)]) for i in range(max(batch, len(prompts)))]


def choose_level(rates: dict[str, list[float]]) -> str:
    """The level a batch size decodes at, from each level's tokens per second per timed round:
    `none` unless some drafting level's slowest round beats `none`'s fastest; then the fastest
    such level by median (see the module docstring)."""
    if "none" not in rates:
        return max(rates, key=lambda level: statistics.median(rates[level]))
    beats_none = [
        level for level, r in rates.items() if level != "none" and min(r) > max(rates["none"])
    ]
    if not beats_none:
        return "none"
    return max(beats_none, key=lambda level: statistics.median(rates[level]))


def tune(
    generator: Generator,
    prompts: Sequence[str],
    batch_sizes: Sequence[int] = DEFAULT_TUNING_BATCH_SIZES,
    max_new_tokens: int = 64,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The tuning record of the artifact `generator` runs: see the module docstring."""
    levels = list(generator.info.get("speculation_levels", []))
    if not levels:
        raise InputError(
            f"{generator.info.get('source')}: this artifact has no speculation levels to tune "
            "(an autoregressive artifact, or one converted before format 4); re-convert it"
        )
    if repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {repeats}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise InputError(f"--batch-size values must be at least 1, got {list(batch_sizes)}")
    say = progress or (lambda _msg: None)
    ids = [generator.codec.encode(p) for p in prompts]
    if not ids or any(not p for p in ids):
        raise InputError("tune: every prompt must hold at least one token")
    measured: dict[str, dict[str, float]] = {}
    tokens_per_step: dict[str, dict[str, float]] = {}
    chosen: dict[str, str] = {}
    policies = {level: SpeculationPolicy.fixed(LEVEL_MODES[level]) for level in levels}
    for batch in sorted(set(batch_sizes)):
        rows = _batch_prompts(ids, batch)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch)
        rates: dict[str, list[float]] = {level: [] for level in levels}
        steps: dict[str, float] = {}
        reference = None
        for _ in range(repeats + 1):  # the first round warms up and is not counted
            for level in levels:
                generator.speculation = policies[level]
                result = generator.generate_ids(rows, cfg)
                wait_until_idle()  # the level's session pool must not spin into the next's
                tokens = [c.token_ids for c in result.completions]
                if reference is None:
                    reference = tokens
                elif tokens != reference:
                    raise RuntimeError(f"level {level} decoded other tokens at batch {batch}")
                rates[level].append(result.tokens_per_second)
                steps[level] = round(result.tokens_per_step, 3)
        medians = {level: round(statistics.median(v[1:]), 2) for level, v in rates.items()}
        measured[str(batch)] = medians
        tokens_per_step[str(batch)] = steps
        chosen[str(batch)] = choose_level({level: v[1:] for level, v in rates.items()})
        say(f"batch {batch}: {chosen[str(batch)]} ({medians})")
    if "1" not in chosen:  # the policy starts at one row: below the smallest tuned batch
        chosen = {"1": chosen[str(min(batch_sizes))], **chosen}
    policy_from_levels(chosen, "tune")  # the record must read back
    import onnxruntime as ort

    return {
        "format": TUNING_FORMAT,
        "version": TUNING_VERSION,
        "artifact": Path(str(generator.info.get("source"))).name,
        "manifest_sha256": generator.info["manifest_sha256"],
        "levels": chosen,
        "tokens_per_second": measured,
        "tokens_per_step": tokens_per_step,
        "settings": {
            "batch_sizes": sorted(set(batch_sizes)),
            "max_new_tokens": max_new_tokens,
            "repeats": repeats,
            "prompts": len(ids),
            "threads": generator.info.get("threads"),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "runtime": generator.info.get("runtime"),
            "onnxruntime": ort.__version__,
        },
    }


def write_tuning(record: dict[str, Any], out: Path) -> None:
    """Write the tuning record to `out` atomically (a partial file never has its name)."""
    partial = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        partial.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
