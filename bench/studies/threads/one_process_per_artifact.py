"""Do ONNX Runtime's default threads lose to one thread when a process decodes one artifact?

Each measurement is a whole `redcompile generate ARTIFACT --prompts-file P --batch-size B
--max-new-tokens N --json` in a process of its own, one with `--threads 1` and one with
`--threads 0` (ONNX Runtime's default: one intra-op thread per core, spinning), in turns: a
warm-up pair, then `--rounds` pairs, the order reversed every pair. Its figure is the decoding
rate the command reports (`tokens_per_second`: generated tokens over the generation's
seconds, start-up left out). The record keeps per artifact and batch size every rate, the
medians and the median of the per-pair ratios (default threads over one thread).

Measured so because several sessions in one process, each with its own spinning thread pool,
slow one another (docs/cli.md, "Threads"): bench/peers.py and `redcompile bench` rows at
default threads held many sessions in one process, and there two threads lost to one.

    python bench/studies/threads/one_process_per_artifact.py --artifact fp32=ar.onnx \
        --artifact int4=ar-int4.onnx --prompts-file DEV --batch-size 1,8 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort

from redcompile.benchmarking.machine import cpu_description, portable_argument

SETTINGS = ("1", "0")  # --threads: one thread, then ONNX Runtime's default


def decoding_rate(artifact: Path, threads: str, args: argparse.Namespace) -> float:
    """Tokens per second of one `redcompile generate` process at `--threads threads`."""
    command = [
        shutil.which("redcompile") or "redcompile",
        "generate",
        str(artifact),
        "--prompts-file",
        str(args.prompts_file),
        "--batch-size",
        str(args.batch),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--threads",
        threads,
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout)["tokens_per_second"])


def measure(artifact: Path, args: argparse.Namespace) -> dict:
    """Rates of both settings in alternating processes, a warm-up pair first."""
    rates: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for pair in range(args.rounds + 1):
        for threads in SETTINGS if pair % 2 else SETTINGS[::-1]:
            rate = decoding_rate(artifact, threads, args)
            if pair:
                rates[threads].append(round(rate, 1))
    ratios = [d / one for one, d in zip(rates["1"], rates["0"])]
    return {
        "tokens_per_second": rates,
        "median_tokens_per_second": {s: round(statistics.median(r), 1) for s, r in rates.items()},
        "default_over_one_thread": round(statistics.median(ratios), 3),
        "default_over_one_thread_range": [round(min(ratios), 3), round(max(ratios), 3)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--prompts-file", type=Path, required=True)
    parser.add_argument("--batch-size", default="1,8", help="Comma-separated batch sizes")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    for item in args.artifact:
        name, path = item.split("=", 1)
        for batch in [int(b) for b in args.batch_size.split(",")]:
            args.batch = batch
            row = measure(Path(path), args)
            results[f"{name}, batch {batch}"] = {"file": Path(path).name, "batch": batch, **row}
            print(name, batch, row["median_tokens_per_second"], row["default_over_one_thread"])
    record = {
        "question": "Do ONNX Runtime's default threads lose to one thread when a process "
        "decodes one artifact?",
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "machine": {
            "cpu": cpu_description(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
        },
        "command": " ".join(
            ["python", "bench/studies/threads/one_process_per_artifact.py"]
            + [portable_argument(a) for a in sys.argv[1:]]
        ),
        "prompts": args.prompts_file.name,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
