"""What level `none` costs per step: a speculative artifact's autoregressive branch against the
autoregressive artifact of the same model, step for step in real generation.

Both artifacts decode the same prompts greedily (the speculative one with `--speculation off`,
so every step after the prompt takes its autoregressive branch), after a warm-up round,
interleaved one batch of prompts at a time (`_alternate`). Each decoding step is timed around
the session run (`StepBackend.step`); per round, the median step of the speculative artifact
is divided by the autoregressive artifact's median step in the same round, and the median of
those per-round ratios is reported with its range. Also reported: the kernels one step runs
(`bench/peers.py`'s profiled count, at level none), and whether the two emitted the same
tokens (they must).

    python bench/studies/speculation_levels/none_level_step.py AR.onnx SPECULATIVE.onnx \
        --prompts-file DEV --prompts 4 --batch-size 1 --rounds 6 --json OUT.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

from redcompile import api
from redcompile.generation import GenerationConfig, StepObserver
from redcompile.prompts import read_prompts_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/, for peers.py
from peers import redcompile_kernels_per_step  # after the path it lives on


class StepTimes(StepObserver):
    """Seconds of each batched step of the loop (around `StepBackend.step`), in `seconds`."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def before_step(self, backend) -> None:
        self._start = time.perf_counter()

    def after_step(self, backend, new_tokens, num_new) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def _alternate(generators, steps, prompts, cfg, rounds):
    """Each generator's tokens (from the warm-up round) and its median step per timed round.
    A round decodes the prompts one batch at a time, both generators in turn on each batch,
    the order reversed from batch to batch, so both see this shared machine in the same
    state (its speed changes by 2-3x within seconds)."""
    tokens = {
        name: [c.token_ids for c in g.generate(prompts, cfg).result.completions]
        for name, g in generators.items()
    }
    medians = {name: [] for name in generators}
    order = list(generators)
    batch = cfg.batch_size
    groups = [prompts[start : start + batch] for start in range(0, len(prompts), batch)]
    for round_ in range(rounds):
        for name in order:
            steps[name].seconds.clear()
        for number, group in enumerate(groups):
            for name in order if (round_ + number) % 2 == 0 else order[::-1]:
                generators[name].generate(group, cfg)
        for name in order:
            medians[name].append(statistics.median(steps[name].seconds))
    return tokens, medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("autoregressive", type=Path)
    parser.add_argument("speculative", type=Path)
    parser.add_argument("--prompts-file", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=4, help="The first N prompts")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    prompts = read_prompts_file(args.prompts_file)[: args.prompts]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    paths = {"autoregressive": args.autoregressive, "none": args.speculative}
    generators = {name: api.open_generator(path, speculation="off") for name, path in paths.items()}
    steps = {name: StepTimes() for name in generators}
    with contextlib.ExitStack() as stack:
        for name, generator in generators.items():
            stack.enter_context(generator.backend.observing(steps[name]))
        tokens, medians = _alternate(generators, steps, prompts, cfg, args.rounds)
    ratios = sorted(n / a for n, a in zip(medians["none"], medians["autoregressive"]))
    record = {
        "question": "what level none costs per step against the autoregressive artifact",
        "command": "python bench/studies/speculation_levels/none_level_step.py "
        + " ".join(sys.argv[1:]),
        "artifacts": {name: str(path) for name, path in paths.items()},
        "batch_size": args.batch_size,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "step_ms": {n: round(statistics.median(m) * 1e3, 3) for n, m in medians.items()},
        "none_over_autoregressive_step": round(statistics.median(ratios), 3),
        "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
        "kernels_per_step": {
            n: redcompile_kernels_per_step(p, None, args.max_new_tokens, mode="off")
            for n, p in paths.items()
        },
        "same_tokens": tokens["none"] == tokens["autoregressive"],
        "machine": f"{platform.machine()}, onnxruntime {ort.__version__}",
    }
    print(json.dumps(record, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
