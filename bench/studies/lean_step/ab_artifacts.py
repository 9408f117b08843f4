"""A/B timing of artifacts in ONNX Runtime (CPU): the same model compiled by two versions.

Generates greedily for the same prompts with every artifact given, alternating artifacts within
each round after one warm-up round, and reports the median wall time of a round per artifact
and whether every artifact emitted the same tokens (greedy decoding is exact, so they must).
Use it to measure what a change to the compiler buys: convert with the old and the new
version, then compare.

    python bench/studies/lean_step/ab_artifacts.py OLD_AR.onnx NEW_AR.onnx OLD.onnx NEW.onnx \
        --prompts-file pycode-lm/dev_prompts.jsonl --prompts 8 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import onnxruntime as ort
import torch

from redcompile.generation import GenerationConfig
from redcompile.prompts import read_prompts_file
from redcompile.runtime.loading import open_artifact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--prompts-file", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=8, help="The first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    engines = {path: open_artifact(path) for path in args.artifacts}
    prompts = read_prompts_file(args.prompts_file, limit=args.prompts)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=1)
    ids = {path: [e.codec.encode(p) for p in prompts] for path, e in engines.items()}

    def round_seconds(path: Path) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        tokens = [engines[path].generate_ids([i], cfg).completions[0].token_ids for i in ids[path]]
        return time.perf_counter() - start, tokens

    outputs = {path: round_seconds(path)[1] for path in args.artifacts}  # warm-up
    seconds: dict[Path, list[float]] = {path: [] for path in args.artifacts}
    for _ in range(args.rounds):
        for path in args.artifacts:
            seconds[path].append(round_seconds(path)[0])
    rows = [
        {
            "artifact": path.name,
            "median_round_s": round(statistics.median(seconds[path]), 3),
            "rounds_s": [round(s, 3) for s in seconds[path]],
            "tokens": sum(len(t) for t in outputs[path]),
        }
        for path in args.artifacts
    ]
    # Greedy decoding is exact: every artifact of one model, ReDrafter or not, emits the same.
    same_tokens = all(outputs[path] == outputs[args.artifacts[0]] for path in args.artifacts)
    for row in rows:
        print(f"{row['artifact']:40s} {row['median_round_s']:8.3f} s  {row['tokens']} tokens")
    print("identical tokens:", same_tokens)
    record = {
        "what": "median wall time of one round (every prompt, batch 1, greedy) per artifact, "
        "artifacts alternating within a round, after one warm-up round",
        "device": f"CPU {platform.machine()}, onnxruntime {ort.__version__}",
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
        "command": "python bench/studies/lean_step/ab_artifacts.py "
        + " ".join(p.name for p in args.artifacts)
        + f" --prompts-file {args.prompts_file.name} --prompts {args.prompts}"
        + f" --max-new-tokens {args.max_new_tokens} --rounds {args.rounds}",
        "results": rows,
        "identical_tokens": same_tokens,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
