"""What level `none` costs per step: a speculative artifact's autoregressive branch against the
autoregressive artifact of the same model, step for step in real generation.

Both artifacts decode the same prompts greedily (the speculative one with `--speculation off`,
so every step after the prompt takes its autoregressive branch), alternating every round in
reversed order after a warm-up round. Each decoding step is timed around the session run
(`StepBackend.step`); per round, the median step of the speculative artifact is divided by the
autoregressive artifact's median step in the same round, and the median of those per-round
ratios is reported with its range (pairing adjacent rounds cancels this shared machine's drift).
Also reported: the kernels one step runs (ONNX Runtime's profiler, a separate session), and
whether the two emitted the same tokens (they must).

    python bench/studies/speculation_levels/none_level_step.py AR.onnx SPECULATIVE.onnx \
        --prompts-file DEV --prompts 4 --batch-size 1 --rounds 6 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from redcompile import api
from redcompile.generation import GenerationConfig
from redcompile.prompts import read_prompts_file
from redcompile.runtime.session import session_options


def timed(generator) -> list[float]:
    """Wrap the generator's backend step: the returned list collects each step's seconds."""
    seconds, step = [], generator.backend.step

    def run():
        start = time.perf_counter()
        result = step()
        seconds.append(time.perf_counter() - start)
        return result

    generator.backend.step = run
    return seconds


def kernels_per_step(path: Path, prompts: list[str], cfg: GenerationConfig) -> float:
    """Median kernels per decoding step, from a profiled session (prefill runs excluded: a
    decoding step runs fewer than 400 here)."""
    generator = api.open_generator(path, speculation="off")
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options()  # redcompile's decoding defaults, as open_generator
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        providers = generator.backend.session.get_providers()
        generator.backend.session = ort.InferenceSession(str(path), options, providers=providers)
        generator.generate(prompts[:1], cfg)
        events = json.loads(Path(generator.backend.session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    kernels = sorted(
        e["ts"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    )
    counts = [sum(1 for k in kernels if start <= k <= end) for start, end in runs]
    return statistics.median(c for c in counts if c < 400)


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
    steps = {name: timed(g) for name, g in generators.items()}
    tokens = {
        name: [c.token_ids for c in g.generate(prompts, cfg).result.completions]
        for name, g in generators.items()
    }
    medians = {name: [] for name in generators}
    order = list(generators)
    for round_ in range(args.rounds):
        for name in order if round_ % 2 == 0 else order[::-1]:
            steps[name].clear()
            generators[name].generate(prompts, cfg)
            medians[name].append(statistics.median(steps[name]))
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
        "kernels_per_step": {n: kernels_per_step(p, prompts, cfg) for n, p in paths.items()},
        "same_tokens": tokens["none"] == tokens["autoregressive"],
        "machine": f"{platform.machine()}, onnxruntime {ort.__version__}",
    }
    print(json.dumps(record, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
