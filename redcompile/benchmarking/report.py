"""What `bench` measures and records: its settings, one measurement per engine and batch size,
the report and its text table. Torch-free, so the CLI reads the defaults from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redcompile.config import BeamShape
from redcompile.errors import InputError

BASELINE = "autoregressive"
# Runtimes a model folder is benchmarked in (an artifact runs in its own).
BENCH_RUNTIMES = ("onnxruntime", "torch")
# The categories of a decoding step's split (`step_split`), in the order the table shows them.
SPLIT_KEYS = ("base", "drafting", "lookup", "tree", "acceptance", "kv", "host")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; defaults defined once, here."""

    batch_sizes: tuple[int, ...] = (1,)
    beams: tuple[BeamShape, ...] = (BeamShape(),)
    max_new_tokens: int = 128
    repeats: int = 3
    runtime: str = "onnxruntime"  # for model folders: torch or onnxruntime
    draft_vocabs: tuple[int | None, ...] = (None,)  # per beam shape; None: the whole vocabulary

    def validate(self) -> None:
        """One clear line for unusable settings."""
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError("--batch-size values must be at least 1")
        if self.repeats < 1:
            raise InputError("--repeats must be at least 1")
        if self.max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")
        if self.runtime not in BENCH_RUNTIMES:
            raise InputError(f"--runtime must be one of {', '.join(BENCH_RUNTIMES)}")
        for beam in self.beams:
            beam.validate()


@dataclass
class Measurement:
    """One engine at one batch size."""

    engine: str
    batch_size: int
    beam_width: int
    beam_length: int
    tokens_per_second: float
    tokens_per_step: float
    step_ms: float
    steps: int
    generated_tokens: int
    verified_tokens_per_step: float = 1.0
    split_ms: dict[str, float] = field(default_factory=dict)
    speedup: float = 1.0
    draft_vocab: int | None = None  # tokens the drafter drafts from; None: the whole vocabulary
    # 95% bootstrap interval of tokens_per_step over the prompts, and each prompt's [decoded
    # tokens, decoding steps] in prompt order; None in records made before them
    tokens_per_step_ci95: list[float] | None = None
    prompt_counts: list[list[int]] | None = None
    lookup_beams: int = 0
    # accepted drafted tokens per decoding step by the beams that proposed them: drafter
    # beams only, lookup beams only, or both (trees with lookup beams; None otherwise)
    draft_sources: dict[str, float] | None = None
    # batched decoding steps per speculation level (adaptive engines: the levels their policy
    # chose; None for engines without levels and in records made before them)
    level_steps: dict[str, int] | None = None
    # seconds of each timed round (every prompt, slices interleaved with the other engines;
    # None in records made before them): speedup is the median of the per-round ratios
    rounds_s: list[float] | None = None


@dataclass
class BenchReport:
    """Everything `bench --json` writes."""

    source: str
    runtime: str
    prompts: int
    max_new_tokens: int
    repeats: int
    measurements: list[Measurement]
    machine: dict[str, Any]
    command: str = ""
    drafter: dict[str, Any] | None = None  # the ReDrafter engines' drafter (its config)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "source": self.source,
            "runtime": self.runtime,
            "prompts": self.prompts,
            "max_new_tokens": self.max_new_tokens,
            "repeats": self.repeats,
            "machine": self.machine,
            "command": self.command,
            "drafter": self.drafter,
            "results": [m.__dict__ for m in self.measurements],
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> BenchReport:
        """The report back from its `--json` record (to re-plot or compare runs)."""
        return cls(
            record["source"],
            record["runtime"],
            record["prompts"],
            record["max_new_tokens"],
            record["repeats"],
            [Measurement(**m) for m in record["results"]],
            record["machine"],
            record.get("command", ""),
            record.get("drafter"),
        )

    def table(self) -> str:
        """A fixed-width summary, one line per engine and batch size."""
        head = (
            f"{'engine':<22}{'batch':>6}{'tok/s':>10}{'tok/step':>10}{'(95%)':>12}"
            f"{'verified':>10}{'step ms':>10}{'speedup':>9}"
        )
        rows = [head]
        for m in self.measurements:
            low, high = m.tokens_per_step_ci95 or (m.tokens_per_step, m.tokens_per_step)
            rows.append(
                f"{m.engine:<22}{m.batch_size:>6}{m.tokens_per_second:>10.1f}"
                f"{m.tokens_per_step:>10.2f}{f'{low:.2f}-{high:.2f}':>12}"
                f"{m.verified_tokens_per_step:>10.1f}{m.step_ms:>10.2f}{m.speedup:>8.2f}x"
            )
        leveled = [
            m
            for m in self.measurements
            if m.level_steps and (len(m.level_steps) > 1 or m.engine.endswith(ADAPTIVE_SUFFIX))
        ]
        if leveled:
            rows.append("steps per speculation level (adaptive engines):")
            for m in leveled:
                levels = ", ".join(f"{k} {v}" for k, v in sorted(m.level_steps.items()))
                rows.append(f"  {m.engine:<22}batch {m.batch_size}: {levels}")
        sourced = [m for m in self.measurements if m.draft_sources]
        if sourced:
            rows.append("accepted drafts per step by source (drafter only / lookup only / both):")
            for m in sourced:
                d = m.draft_sources
                rows.append(
                    f"  {m.engine:<22}batch {m.batch_size}: {d['drafter']:.2f} / "
                    f"{d['lookup']:.2f} / {d['both']:.2f}"
                )
        return "\n".join(rows)


ADAPTIVE_SUFFIX = " adaptive"  # an engine that follows its artifact's speculation policy


def engine_name(beam: BeamShape | None, draft_vocab: int | None = None) -> str:
    """`autoregressive`, `W4-L5`, `W4-L5-V1024` with a draft vocabulary of 1024 tokens, or
    `W4-L5-K1` with one lookup beam (`W0-L5-K1`: lookup only)."""
    if beam is None:
        return BASELINE
    name = f"W{beam.width}-L{beam.length}" + (f"-V{draft_vocab}" if draft_vocab else "")
    return name + (f"-K{beam.lookup}" if beam.lookup else "")
