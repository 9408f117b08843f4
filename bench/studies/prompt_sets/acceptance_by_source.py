"""Tokens per step of a `redcompile bench` record by the kind of file each prompt came from.

pycode-lm's prompts are standard-library code of three kinds that a drafter predicts very
differently: the `encodings` codec modules (near-identical boilerplate, whose siblings the
model trained on), tests (`test/`, `*_test/`, `tests/`) and the rest of the library. A prompt
set's tokens per step is a mix of the three in its own proportions, so two prompt sets compare
only kind by kind. Reads the record's `prompt_counts` and the prompts file's `source` fields
(same order), and reports each kind's tokens per step with its 95% interval over the prompts.

    python bench/studies/prompt_sets/acceptance_by_source.py RECORD.json PROMPTS.jsonl \
        [RECORD PROMPTS ...] \
        --json OUT.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from redcompile.benchmarking.intervals import tokens_per_step_interval
from redcompile.benchmarking.report import BASELINE

KINDS = ("encodings", "tests", "library")


def kind_of(source: str) -> str:
    """`encodings`, `tests` or `library` for a stdlib-relative path."""
    parts = source.split("/")
    if parts[0] == "encodings":
        return "encodings"
    if any(p == "test" or p == "tests" or p.endswith("_test") for p in parts[:-1]):
        return "tests"
    return "library"


def by_kind(record: dict, sources: list[str]) -> list[dict]:
    """Per ReDrafter row: tokens per step of every kind of prompt, with its interval."""
    rows = []
    for row in record["results"]:
        if row["engine"] == BASELINE:
            continue
        counts = row.get("prompt_counts")
        if not counts or len(counts) != len(sources):
            raise SystemExit(f"{row['engine']}: the record has no prompt_counts for these prompts")
        kinds = {}
        for kind in KINDS:
            chosen = [c for c, s in zip(counts, sources) if kind_of(s) == kind]
            steps = sum(s for _, s in chosen)
            if chosen:
                kinds[kind] = {
                    "prompts": len(chosen),
                    "tokens_per_step": round(sum(t for t, _ in chosen) / max(steps, 1), 4),
                    "tokens_per_step_ci95": tokens_per_step_interval(chosen),
                }
        rows.append(
            {
                "engine": row["engine"],
                "batch_size": row["batch_size"],
                "tokens_per_step": row["tokens_per_step"],
                "by_kind": kinds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", type=Path, help="RECORD.json PROMPTS.jsonl ...")
    parser.add_argument("--json", type=Path, help="Also write the breakdown here")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give records and their prompts files in pairs")
    out = []
    for record_path, prompts_path in zip(args.pairs[::2], args.pairs[1::2]):
        sources = [json.loads(line)["source"] for line in prompts_path.open()]
        rows = by_kind(json.loads(record_path.read_text()), sources)
        out.append({"record": str(record_path), "prompts": str(prompts_path), "rows": rows})
        print(f"{record_path.name} ({prompts_path.name})")
        for r in rows:
            cells = "  ".join(
                f"{k} {v['tokens_per_step']:.2f} [{v['tokens_per_step_ci95'][0]:.2f}, "
                f"{v['tokens_per_step_ci95'][1]:.2f}] (n={v['prompts']})"
                for k, v in r["by_kind"].items()
            )
            print(f"  {r['engine']:<8} all {r['tokens_per_step']:.2f}  {cells}")
    if args.json:
        command = "python bench/studies/prompt_sets/acceptance_by_source.py " + " ".join(
            str(p) for p in args.pairs
        )
        args.json.write_text(json.dumps({"command": command, "breakdowns": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
