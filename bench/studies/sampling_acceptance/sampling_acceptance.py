"""Tokens per step when sampling, next to greedy's, on the same prompts and tree shapes.

Exact sampling (ops/acceptance.py) accepts a draft with the probability the model gives it, so
sampling accepts fewer drafts than greedy decoding does; this measures by how much. Tokens per
step depend on the tree and the model, not the runtime, so the PyTorch reference runs it.

    python bench/studies/sampling_acceptance/sampling_acceptance.py MODEL --prompts-file P.jsonl
        [--drafter D]
        [--shape W,L,LOOKUP ...] [--temperature 0,0.7,1.0] [--max-new-tokens 128]
        [--limit N] [--seeds 3] [--json OUT]

A shape W,L,LOOKUP is W drafter beams of length L plus LOOKUP lookup beams (W = 0: a
lookup-only tree, no drafter needed). Each sampling temperature runs `--seeds` seeds and
reports their mean and range.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from redcompile.api import open_model_folder
from redcompile.config import BeamShape
from redcompile.generation import GenerationConfig
from redcompile.prompts import read_prompts_file


def tokens_per_step(generator, prompts: list[str], temperature: float, seed: int, new: int):
    """Decode tokens per decoding step over all prompts (batch 8, seeded)."""
    cfg = GenerationConfig(max_new_tokens=new, temperature=temperature, seed=seed, batch_size=8)
    return generator.generate(prompts, cfg).result.tokens_per_step


def main(argv: list[str] | None = None) -> int:
    """Measure and print (or write) tokens per step for every shape and temperature."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompts-file", required=True)
    parser.add_argument("--drafter", default=None)
    parser.add_argument("--shape", action="append", default=None, help="W,L,LOOKUP")
    parser.add_argument("--temperature", default="0,0.7,1.0")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    prompts = read_prompts_file(args.prompts_file)[: args.limit]
    temperatures = [float(t) for t in args.temperature.split(",")]
    rows = []
    for spec in args.shape or ["0,5,1"]:
        width, length, lookup = (int(x) for x in spec.split(","))
        shape = BeamShape(width, length, lookup=lookup)
        generator = open_model_folder(
            args.model, drafter_dir=args.drafter if width else None, beam=shape
        )
        for temperature in temperatures:
            seeds = range(args.seeds) if temperature > 0 else range(1)
            values = [
                tokens_per_step(generator, prompts, temperature, s, args.max_new_tokens)
                for s in seeds
            ]
            row = {
                "shape": spec,
                "temperature": temperature,
                "tokens_per_step": round(sum(values) / len(values), 4),
                "tokens_per_step_range": [round(min(values), 4), round(max(values), 4)],
                "seeds": len(values),
            }
            rows.append(row)
            print(
                f"W,L,lookup {spec:<8} T {temperature:<4} tokens/step {row['tokens_per_step']:.3f}"
                f"  (seeds {row['tokens_per_step_range'][0]:.3f}-"
                f"{row['tokens_per_step_range'][1]:.3f})",
                flush=True,
            )
    if args.json:
        import torch

        record = {
            "question": "tokens per step when sampling exactly, next to greedy",
            "command": "python bench/studies/sampling_acceptance/sampling_acceptance.py "
            + " ".join(argv or sys.argv[1:]),
            "prompts": len(prompts),
            "max_new_tokens": args.max_new_tokens,
            "batch_size": 8,
            "runtime": "pytorch (CPU)",
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "results": rows,
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
