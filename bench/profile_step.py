"""Where an ONNX Runtime artifact's decoding step spends its time, per op type (CPU profile).

Generates twice from one prompt with ONNX Runtime's profiler on, in the sessions redcompile's
host runs (the greedy step graphs of passes/host_graphs.py, at the level the default
speculation policy picks for one row), and reports the decoding steps of the second run
only: the same tokens, so the embedding rows and every weight page are already resident (the
first run of a freshly loaded artifact also pays page faults on the memory-mapped weights);
its prefill, which processes the whole prompt, is reported on its own. The profiler costs
every kernel a few microseconds: read the figures as shares and counts, not as step times.
Per step: the split categories of `redcompile bench`, the time and calls of each op type
within every category (in the base model, the ops of the inlined tree attention bodies are
named `TreeAttention:<op>`), and the session time no node accounts for
(ONNX Runtime's own per-node and allocation overhead).

    python bench/profile_step.py ARTIFACT.onnx --max-new-tokens 8 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import onnxruntime as ort

from redcompile.benchmarking.step_split import kernel_events, node_category
from redcompile.generation import GenerationConfig
from redcompile.runtime.loading import open_artifact
from redcompile.runtime.session import session_options


def profile(artifact: Path, prompt: str, new_tokens: int) -> dict:
    """Milliseconds per decoding step by category and by op type within each category, from
    the second run (its prefill, which processes the whole prompt, is left out of them)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options()  # generate's settings, profiled
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        # the sessions redcompile's host runs (the host step graphs: greedy, at the
        # speculation level the default policy picks for one row)
        engine = open_artifact(artifact, session_options=options)
        ids = [engine.codec.encode(prompt)]
        cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=1)
        engine.generate_ids(ids, cfg)
        engine.generate_ids(ids, cfg)
        events = json.loads(Path(engine.backend.session.end_profiling()).read_text())
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    prefill, *decoding = runs[len(runs) // 2 :]
    if not decoding:
        raise SystemExit("the second run made no decoding step: raise --max-new-tokens")
    start = decoding[0]["ts"]
    by_category: dict[str, float] = defaultdict(float)
    by_op: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    calls: dict[str, Counter] = defaultdict(Counter)
    node_micros = 0.0
    for event in kernel_events(events):
        if event["ts"] < start:
            continue
        category = node_category(event["name"])
        by_category[category] += event["dur"]
        node_micros += event["dur"]
        op = event["args"].get("op_name", "?")
        if "TreeAttention." in event["name"]:
            op = f"TreeAttention:{op}"
        by_op[category][op] += event["dur"]
        calls[category][op] += 1
    steps = len(decoding)

    def per_step(micros: float) -> float:
        return round(micros / steps / 1e3, 3)

    run_micros = sum(e["dur"] for e in decoding)
    return {
        "artifact": str(artifact),
        "steps": steps,
        "prefill_ms": round(prefill["dur"] / 1e3, 3),
        "run_ms": per_step(run_micros),
        "outside_nodes_ms": per_step(run_micros - node_micros),
        "nodes_ms_by_category": {k: per_step(v) for k, v in sorted(by_category.items())},
        "ms_by_op": {
            category: {
                op: {"ms": per_step(t), "calls": round(calls[category][op] / steps, 1)}
                for op, t in sorted(ops.items(), key=lambda item: -item[1])
            }
            for category, ops in sorted(by_op.items())
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--prompt", default="def main():\n    x = 1\n")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--json", type=Path, help="Also write the record here")
    args = parser.parse_args()
    record = profile(args.artifact, args.prompt, args.max_new_tokens)
    record["device"] = f"CPU {platform.machine()}, onnxruntime {ort.__version__}"
    record["command"] = (
        f"python bench/profile_step.py {args.artifact.name} --max-new-tokens {args.max_new_tokens}"
    )
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
