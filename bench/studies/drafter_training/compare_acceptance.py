"""Tokens per step of two `redcompile bench` records on the same prompts, compared pairwise.

Two drafters (or two quantizations of one) decode the same prompts; each record's own interval
(`tokens_per_step_ci95`) mostly measures how the prompts differ from one another, which both runs
share. The paired bootstrap (redcompile.benchmarking.intervals.paired_difference_interval)
resamples the prompts together and gives the interval of the difference B - A, which says
whether B really drafts better. Needs records with `prompt_counts` (redcompile bench since it
writes them).

    python bench/studies/drafter_training/compare_acceptance.py A.json B.json [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from redcompile.benchmarking.intervals import paired_difference_interval
from redcompile.benchmarking.report import BASELINE


def rows_by_engine(record: dict) -> dict[str, dict]:
    """The record's ReDrafter rows by engine name (the smallest batch size of each: greedy
    tokens per step do not depend on the batch)."""
    rows: dict[str, dict] = {}
    for row in sorted(record["results"], key=lambda r: r["batch_size"]):
        if row["engine"] != BASELINE:
            rows.setdefault(row["engine"], row)
    return rows


def compare(a: dict, b: dict) -> list[dict]:
    """Per engine both records hold: tokens per step of A and B, B - A and its paired 95%
    interval."""
    rows_a, rows_b = rows_by_engine(a), rows_by_engine(b)
    out = []
    for engine in (e for e in rows_a if e in rows_b):
        ra, rb = rows_a[engine], rows_b[engine]
        if not (ra.get("prompt_counts") and rb.get("prompt_counts")):
            raise SystemExit(f"{engine}: a record has no prompt_counts; run redcompile bench again")
        out.append(
            {
                "engine": engine,
                "tokens_per_step_a": ra["tokens_per_step"],
                "tokens_per_step_b": rb["tokens_per_step"],
                "difference": round(rb["tokens_per_step"] - ra["tokens_per_step"], 4),
                "difference_ci95": paired_difference_interval(
                    ra["prompt_counts"], rb["prompt_counts"]
                ),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="bench record A (the reference)")
    parser.add_argument("b", type=Path, help="bench record B")
    parser.add_argument("--json", type=Path, help="Also write the comparison here")
    args = parser.parse_args()
    a, b = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    if a["prompts"] != b["prompts"] or a["max_new_tokens"] != b["max_new_tokens"]:
        raise SystemExit("the records decoded different prompt sets or lengths")
    rows = compare(a, b)
    print(f"{'engine':<14}{'A':>8}{'B':>8}{'B - A':>9}{'95% (paired)':>18}")
    for r in rows:
        low, high = r["difference_ci95"]
        print(
            f"{r['engine']:<14}{r['tokens_per_step_a']:>8.3f}{r['tokens_per_step_b']:>8.3f}"
            f"{r['difference']:>+9.3f}{f'{low:+.3f} .. {high:+.3f}':>18}"
        )
    if args.json:
        record = {
            "a": str(args.a),
            "b": str(args.b),
            "command": " ".join(
                [
                    "python bench/studies/drafter_training/compare_acceptance.py",
                    str(args.a),
                    str(args.b),
                ]
            ),
            "comparison": rows,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
