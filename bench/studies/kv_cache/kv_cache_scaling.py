"""Does a step's KV-cache work grow with the cache capacity? Measured in ONNX Runtime (CPU).

For one decoding step (batch 4, the fixture's ReDrafter artifact) at cache capacities from 256
to 16384 slots, with the same 64 cached tokens per row, this records
- the time ONNX Runtime's profiler attributes to the ScatterND nodes (the KV compaction writes),
- the whole step's time,
both with the runtime's IO binding (present.N.* bound to the past buffers: in place) and with a
plain `session.run` that allocates new outputs (ScatterND then copies the whole buffer first).
Each capacity keeps its buffers bound for the whole run, as the runtime keeps its cache (the
first run on a freshly allocated buffer pays page faults and is a warm-up). Medians over repeated
runs, capacities alternating. Usage:

    python bench/studies/kv_cache/kv_cache_scaling.py ARTIFACT.onnx \
        [--out bench/studies/kv_cache/kv_cache_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from redcompile.artifact import read_artifact

CAPACITIES = (256, 1024, 4096, 16384)
BATCH, CACHED, REPEATS, WARMUP = 4, 64, 15, 3


def feeds_for(session: ort.InferenceSession, manifest: dict, capacity: int) -> dict:
    """Inputs of a decoding step: a 4-token chain per row after CACHED cached tokens."""
    model = manifest["model"]
    t = 4
    feeds = {}
    for spec in session.get_inputs():
        dims = [
            {"batch": BATCH, "tokens": t, "cache": capacity, "vocab": model["vocab_size"]}.get(d, d)
            for d in spec.shape
        ]
        dtype = np.int64 if spec.type == "tensor(int64)" else np.float32
        feeds[spec.name] = np.zeros(dims, dtype)
    feeds["input_ids"][:] = 7
    feeds["parent_ids"][:] = np.arange(-1, t - 1)
    feeds["depths"][:] = np.arange(t)
    feeds["num_tokens"][:] = t
    feeds["forced"][:] = 1
    feeds["cache_lengths"][:] = CACHED
    if "beam_paths" in feeds:
        feeds["beam_paths"][:] = np.minimum(np.arange(feeds["beam_paths"].shape[-1]), t - 1)
    return feeds


def scatter_seconds(profile_path: str) -> list[float]:
    """Per-run total ScatterND time from an ONNX Runtime profile."""
    events = json.loads(Path(profile_path).read_text())
    runs, current = [], 0.0
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            runs.append(current)
            current = 0.0
        elif (
            event.get("cat") == "Node"
            and event.get("args", {}).get("op_name") == "ScatterND"
            and event["name"].endswith("_kernel_time")
        ):
            current += event["dur"] / 1e6
    return runs


def bind(session: ort.InferenceSession, manifest: dict, capacity: int, in_place: bool):
    """An IO binding holding one capacity's buffers for the whole run (as the runtime does)."""
    values = {
        k: ort.OrtValue.ortvalue_from_numpy(v)
        for k, v in feeds_for(session, manifest, capacity).items()
    }
    binding = session.io_binding()
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    for spec in session.get_outputs():
        past = spec.name.replace("present.", "past_key_values.")
        if in_place and spec.name.startswith("present."):
            binding.bind_ortvalue_output(spec.name, values[past])
        else:
            binding.bind_output(spec.name, "cpu")
    return binding, values


def measure(path: Path, in_place: bool) -> dict[int, dict[str, float]]:
    """Median step time and ScatterND time per capacity, capacities alternating."""
    manifest = read_artifact(path).manifest
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        bindings = {c: bind(session, manifest, c, in_place) for c in CAPACITIES}
        step_times: dict[int, list[float]] = {c: [] for c in CAPACITIES}
        order = []
        for repeat in range(REPEATS + WARMUP):
            for capacity in CAPACITIES:
                binding, _ = bindings[capacity]
                start = time.perf_counter()
                session.run_with_iobinding(binding)
                elapsed = time.perf_counter() - start
                order.append((repeat, capacity))
                if repeat >= WARMUP:
                    step_times[capacity].append(elapsed)
        scatter = scatter_seconds(session.end_profiling())
    writes: dict[int, list[float]] = {c: [] for c in CAPACITIES}
    for (repeat, capacity), seconds in zip(order, scatter):
        if repeat >= WARMUP:
            writes[capacity].append(seconds)
    return {
        capacity: {
            "step_ms": round(statistics.median(step_times[capacity]) * 1e3, 3),
            "kv_write_ms": round(statistics.median(writes[capacity]) * 1e3, 4),
        }
        for capacity in CAPACITIES
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument(
        "--out", type=Path, default=Path("bench/studies/kv_cache/kv_cache_scaling.json")
    )
    args = parser.parse_args()
    manifest = read_artifact(args.artifact).manifest
    record = {
        "what": "KV compaction (ScatterND) time and step time per decoding step vs cache "
        "capacity, same 64 cached tokens and 4 step tokens per row, batch 4",
        "device": f"CPU: {platform.processor() or platform.machine()}, {ort.get_device()}",
        "versions": {"onnxruntime": ort.__version__, "python": platform.python_version()},
        "command": f"python bench/studies/kv_cache/kv_cache_scaling.py {args.artifact.name}",
        "artifact": {
            "model": "pycode-lm",
            "mode": manifest["mode"],
            "beam": manifest["beam"],
            "dtype": manifest["dtype"],
        },
        "repeats": REPEATS,
        "in_place_io_binding": measure(args.artifact, in_place=True),
        "new_output_buffers": measure(args.artifact, in_place=False),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
