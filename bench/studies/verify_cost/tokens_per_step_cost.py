"""What verifying T tokens in one step costs against one token, per base-weight format: the
break-even tokens per step a chain of T tokens must reach to beat autoregressive decoding.

Each artifact (`--artifact NAME=PATH`, autoregressive: `convert MODEL OUT --autoregressive`
with the `--weights` / `--accuracy-level` under study) runs the step graph redcompile's host
runs (passes/host_graphs.py: greedy, no sampling If) in ONNX Runtime at batch 1, one thread,
with T = 1 ... --max-tokens packed tokens of one row after 100 cached ones (a prompt chunk:
the same base-model work as verifying a chain of T); `--repeats` rounds, the artifacts and T
taking turns within a round, each measurement `--runs` back-to-back runs with IO binding;
the record keeps per artifact and T the median microseconds over the rounds and its ratio to
T = 1, which is the tokens per step a T-token chain needs before speculation can pay at all
(before drafting's own cost).

    python bench/studies/verify_cost/tokens_per_step_cost.py --artifact fp32=ar.onnx \
        --artifact int4-l4=ar-int4-l4.onnx --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from redcompile.artifact import read_artifact
from redcompile.benchmarking.machine import cpu_description, portable_argument
from redcompile.passes.host_graphs import step_graph
from redcompile.runtime.session import session_options

CACHED = 100  # tokens already in the row's cache
CAPACITY = 256


def _session(path: Path) -> ort.InferenceSession:
    graph = step_graph(onnx.load(str(path)), None, greedy=True)
    return ort.InferenceSession(graph, session_options(1))


def _binding(session: ort.InferenceSession, tokens: int) -> ort.IOBinding:
    """Inputs of one row holding `tokens` packed tokens (a chain) after CACHED cached ones."""
    sizes = {"batch": 1, "tokens": tokens, "cache": CAPACITY}
    binding = session.io_binding()
    for spec in session.get_inputs():
        shape = [sizes.get(d, d) if isinstance(d, str) else d for d in spec.shape]
        shape = [d if isinstance(d, int) else 1 for d in shape]
        value = np.zeros(shape, np.float32 if "float" in spec.type else np.int64)
        if spec.name == "input_ids":
            value[:] = 7
        elif spec.name in ("num_tokens", "forced"):
            value[:] = tokens
        elif spec.name == "cache_lengths":
            value[:] = CACHED
        elif spec.name == "parent_ids":
            value[0] = np.arange(-1, tokens - 1)
        elif spec.name == "depths":
            value[0] = np.arange(tokens)
        binding.bind_cpu_input(spec.name, value)
    for spec in session.get_outputs():
        binding.bind_output(spec.name)
    return binding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--max-tokens", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = dict(item.split("=", 1) for item in args.artifact)
    sessions = {name: _session(Path(path)) for name, path in paths.items()}
    counts = range(1, args.max_tokens + 1)
    bindings = {(n, t): _binding(s, t) for n, s in sessions.items() for t in counts}
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in bindings}
    for index in range(args.repeats):
        keys = list(bindings) if index % 2 == 0 else list(bindings)[::-1]
        for name, tokens in keys:
            session, binding = sessions[name], bindings[name, tokens]
            for _ in range(args.runs // 10):  # warm-up
                session.run_with_iobinding(binding)
            start = time.perf_counter()
            for _ in range(args.runs):
                session.run_with_iobinding(binding)
            seconds[name, tokens].append((time.perf_counter() - start) / args.runs)
        print(f"round {index + 1}/{args.repeats}", file=sys.stderr, flush=True)
    results = {}
    for name in sessions:
        one = statistics.median(seconds[name, 1])
        results[name] = {
            "file": Path(paths[name]).name,
            "base_weights": read_artifact(Path(paths[name])).manifest["base_weights"],
            "step_us": {t: round(1e6 * statistics.median(seconds[name, t]), 1) for t in counts},
            "over_one_token": {
                t: round(statistics.median(seconds[name, t]) / one, 3) for t in counts
            },
        }
        print(name, results[name]["step_us"], results[name]["over_one_token"])
    record = {
        "command": " ".join(["tokens_per_step_cost.py", *map(portable_argument, sys.argv[1:])]),
        "machine": {
            "cpu": cpu_description(),
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
        },
        "threads": 1,
        "cached_tokens": CACHED,
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
