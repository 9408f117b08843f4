"""`bench --plot`: speedup and tokens per step of a report as a PNG."""

from __future__ import annotations

from pathlib import Path

from redcompile.benchmarking.report import BASELINE, BenchReport


def plot(report: BenchReport, path: Path | str, speed: bool = True) -> Path:
    """Speedup and tokens per step: across batch sizes, one line per beam shape; or, for a
    single batch size, across beam widths, one line per beam length. `speed=False` draws
    tokens per step alone (for records whose timings are not comparable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if speed:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    else:
        fig, right = plt.subplots(1, 1, figsize=(6, 4.2))
        left = None
    drafted = [m for m in report.measurements if m.engine != BASELINE]
    by_width = len({m.batch_size for m in drafted}) == 1
    if by_width:  # x: beam width, a line per beam length (and draft vocabulary)
        groups = sorted({(m.beam_length, m.draft_vocab or 0) for m in drafted})
        lines = {
            f"L{length}" + (f" V{vocab}" if vocab else ""): sorted(
                (m for m in drafted if (m.beam_length, m.draft_vocab or 0) == (length, vocab)),
                key=lambda m: m.beam_width,
            )
            for length, vocab in groups
        }
        x_of, x_label = (lambda m: m.beam_width), "beam width"
    else:  # x: batch size, a line per beam shape
        lines = {
            name: sorted((m for m in drafted if m.engine == name), key=lambda m: m.batch_size)
            for name in sorted({m.engine for m in drafted})
        }
        x_of, x_label = (lambda m: m.batch_size), "batch size"
    for name, rows in lines.items():
        xs = [x_of(m) for m in rows]
        if left is not None:
            left.plot(xs, [m.speedup for m in rows], marker="o", label=name)
        tps = [m.tokens_per_step for m in rows]
        errors = None  # the prompts' sampling error, where the record has it
        if all(m.tokens_per_step_ci95 for m in rows):
            errors = [
                [t - m.tokens_per_step_ci95[0] for t, m in zip(tps, rows)],
                [m.tokens_per_step_ci95[1] - t for t, m in zip(tps, rows)],
            ]
        right.errorbar(xs, tps, yerr=errors, marker="o", capsize=3, elinewidth=1, label=name)
    if left is not None:
        left.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        left.set(
            title=f"Speedup over autoregressive ({report.runtime})",
            xlabel=x_label,
            ylabel="tokens/s ratio",
        )
    right.set(
        title="Tokens per step (greedy; bars: 95% over prompts)",
        xlabel=x_label,
        ylabel="tokens / step",
    )
    for axis in (a for a in (left, right) if a is not None):
        axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    batch = f", batch {drafted[0].batch_size}" if by_width and drafted else ""
    fig.suptitle(
        f"{Path(report.source).name}: {report.prompts} prompts, "
        f"{report.max_new_tokens} new tokens{batch}, median of {report.repeats}"
    )
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
