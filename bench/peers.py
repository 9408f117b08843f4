"""Peer benchmark: redcompile artifacts against onnxruntime-genai (and transformers) in one run.

Every "faster than" claim of the project cites a record of this script. For one model folder it
builds onnxruntime-genai's models with genai's own model builder (`-p fp32|int4 -e cpu`), opens
them and the given redcompile artifacts, each in a process of its own (`--processes one`: all in
this one), and decodes the same prompts (the same token ids, greedy, `--max-new-tokens`) with
each, driven from here: one warm-up pass, then `--rounds` rounds,
the systems interleaved one batch of prompts at a time (`measure`), per batch size and thread
setting. It reports per system the median tokens per second, the ratio to every other system
(median of the per-round ratios), kernels per decoding step (ONNX Runtime's profiler, one step
at batch 1), and whether each system's tokens equal the reference system's (the first one
named). It also splits each system's time: its decoding steps (the median step, and how many
per round) and the rest (per request: genai's Generator set-up, the prompt's prefill, the
host's work outside the steps), so a ratio says whether it comes from the step or from what
surrounds it; the split depends on the CPU (the record names its model and vector ISA).

    python bench/peers.py ../shared/fixtures/pycode-lm --prompts-file P.jsonl \
        --ours ar=ar.onnx --ours ar-int4=ar_int4.onnx --genai fp32,int4 \
        --batch-size 1,8 --threads 1,0 --work-dir /tmp/peers --out bench/results/peers_x.json

`--threads 0` is each runtime's default (ONNX Runtime: one thread per core, spinning);
batch B decodes the prompts B at a time (genai: left-padded static batches, its way of
batching; redcompile: the same groups of B, each one call of its loop, so a row that finishes
early idles as genai's does; its in-flight batching is measured by `redcompile bench`). The
warm-up pass, which gives the tokens compared, runs every prompt in one call.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from redcompile.benchmarking.machine import cpu_description, portable_argument
from redcompile.generation import GenerationConfig
from redcompile.prompts import read_prompts_file
from redcompile.runtime.loading import open_artifact
from redcompile.runtime.session import session_options as redcompile_session_options
from redcompile.runtime.session import wait_until_idle
from redcompile.speculation import SpeculationPolicy

Batches = list[list[int]]  # token ids per prompt


@dataclass
class Decoded:
    """What one `System.run` call gives: the generated ids per prompt and the seconds of each
    decoding step it ran (the prompts' prefill left out; None where the system cannot say)."""

    outputs: Batches
    step_seconds: list[float] | None = None
    seconds: float | None = None  # the whole call, timed where it ran (None: by the caller)


@dataclass
class System:
    """One decoder under test: `run(prompt_ids, batch)` -> `Decoded`; `close()` ends it."""

    name: str
    kind: str  # "redcompile", "genai" or "transformers"
    run: Callable[[Batches, int], Decoded]
    kernels_per_step: float | None = None
    close: Callable[[], None] = lambda: None


def _serve(connection, factory: str, arguments: tuple) -> None:
    """A system's own process: build it (FACTORIES[factory](*arguments)), report its kernels
    per step, then decode each (prompts, batch) request, timed here, until None arrives."""
    system = FACTORIES[factory](*arguments)
    connection.send(system.kernels_per_step)
    while (request := connection.recv()) is not None:
        start = time.perf_counter()
        decoded = system.run(*request)
        decoded.seconds = time.perf_counter() - start
        connection.send(decoded)


def isolated_system(factory: str, *arguments) -> System:
    """The system FACTORIES[factory](name, ...) built and run in a process of its own, driven
    from here: no other system's session (its thread pool, spinning or not, its memory)
    shares the process it decodes in, and while the others decode it waits blocked on its
    pipe, its pool threads asleep (each call returns once they are). Its calls are timed
    inside its process, so neither the pipe nor that wait is in the figures."""
    context = multiprocessing.get_context("spawn")  # a fork would copy thread pools
    here, there = context.Pipe()
    process = context.Process(target=_serve, args=(there, factory, arguments), daemon=True)
    process.start()
    there.close()
    try:
        kernels = here.recv()
    except EOFError:
        process.join()
        raise SystemExit(f"{arguments[0]}: its process ended while opening it") from None

    def run(prompts: Batches, batch: int) -> Decoded:
        here.send((prompts, batch))
        decoded = here.recv()
        wait_until_idle(process.pid)  # its pool may still spin: not while the next decodes
        return decoded

    def close() -> None:
        here.send(None)
        process.join(timeout=60)

    return System(arguments[0], factory, run, kernels, close)  # the factory names its kind


def parse_threads(setting: str) -> tuple[int, bool | None]:
    """'2' -> (2, None); '2-nospin' -> (2, False)."""
    count, _, spin = setting.partition("-")
    return int(count), (False if spin == "nospin" else None)


def redcompile_system(name: str, path: Path, setting: str, max_new: int) -> System:
    """An artifact in ONNX Runtime with redcompile's host loop and session settings."""
    threads, spinning = parse_threads(setting)
    engine = open_artifact(path, session_options=redcompile_session_options(threads, spinning))

    def run(prompts: Batches, batch: int) -> Decoded:
        cfg = GenerationConfig(max_new_tokens=max_new, batch_size=batch)
        result = engine.generate_ids(prompts, cfg)
        # step 0 prefills every row; a call of at most `batch` prompts admits none later
        steps = result.step_seconds[1:] if len(prompts) <= batch else None
        return Decoded([c.token_ids for c in result.completions], steps)

    return System(name, "redcompile", run, redcompile_kernels_per_step(path, threads, max_new))


def redcompile_kernels_per_step(
    path: Path, threads: int | None, max_new: int, mode: str | None = None
) -> float:
    """Kernels ONNX Runtime runs per decoding step of the artifact (batch 1, profiled), at
    speculation `mode` (off, chain, full; None: the library's default, full)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = redcompile_session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ours")
        engine = open_artifact(path, session_options=options)
        if mode is not None:
            engine.speculation = SpeculationPolicy.fixed(mode)
        cfg = GenerationConfig(max_new_tokens=min(max_new, 16), batch_size=1)
        result = engine.generate_ids([[1, 2, 3, 4, 5, 6, 7, 8]], cfg)
        profile = engine.backend.session.end_profiling()
        return _kernels_per_run(Path(profile), skip_first=1, runs=result.steps)


def _kernels_per_run(profile: Path, skip_first: int, runs: int) -> float:
    """Kernel events per session run in an ORT profile, leaving out the first runs (prefill)."""
    events = json.loads(profile.read_text())
    run_starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    kernels = [
        e["ts"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    if len(run_starts) <= skip_first:
        return float("nan")
    later = [t for t in kernels if t >= run_starts[skip_first]]
    return len(later) / (len(run_starts) - skip_first)


def build_genai(model_dir: Path, precision: str, work_dir: Path) -> Path:
    """onnxruntime-genai's model for `model_dir`, made by genai's own builder (cached)."""
    out = work_dir / f"genai_{precision}"
    if not (out / "genai_config.json").is_file():
        command = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(model_dir),
            "-o",
            str(out),
            "-p",
            precision,
            "-e",
            "cpu",
            "-c",
            str(work_dir / "genai_cache"),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def genai_system(name: str, folder: Path, threads: int, max_new: int, pad_id: int) -> System:
    """onnxruntime-genai's own generation loop over its model folder."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    if threads:
        overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
        config.overlay(json.dumps(overlay))
    model = og.Model(config)

    def run(prompts: Batches, batch: int) -> Decoded:
        outputs: Batches = []
        steps: list[float] = []
        for start in range(0, len(prompts), batch):
            group = prompts[start : start + batch]
            width = max(len(p) for p in group)
            padded = np.full((len(group), width), pad_id, dtype=np.int32)
            for row, ids in enumerate(group):  # left padding, genai's convention
                padded[row, width - len(ids) :] = ids
            params = og.GeneratorParams(model)
            params.set_search_options(
                max_length=width + max_new, do_sample=False, batch_size=len(group)
            )
            generator = og.Generator(model, params)
            generator.append_tokens(padded)  # the prefill
            while not generator.is_done():
                begin = time.perf_counter()
                generator.generate_next_token()  # pick a token, run the model on it
                steps.append(time.perf_counter() - begin)
            for row in range(len(group)):
                sequence = list(generator.get_sequence(row))[width:]
                outputs.append(_until_stop(sequence, pad_id, max_new))
        return Decoded(outputs, steps)

    return System(name, "genai", run, genai_kernels_per_step(folder, threads))


def genai_kernels_per_step(folder: Path, threads: int) -> float:
    """Kernels ONNX Runtime runs per decoding step of genai's model (batch 1, profiled)."""
    model_path = folder / "model.onnx"
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    decoder = config["decoder"]
    with tempfile.TemporaryDirectory() as tmp:
        options = redcompile_session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "genai")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        kv = (1, decoder["num_key_value_heads"], 64, decoder["head_size"])
        feeds_dtype = np.float16 if "float16" in session.get_inputs()[2].type else np.float32
        feeds: dict[str, np.ndarray] = {}
        for tensor in session.get_inputs():
            if tensor.name.startswith("past_key_values"):
                feeds[tensor.name] = np.zeros(kv, dtype=feeds_dtype)
        steps = 8
        for past in range(steps):
            feeds["input_ids"] = np.array([[5]], dtype=np.int64)
            feeds["attention_mask"] = np.ones((1, past + 1), dtype=np.int64)
            session.run(None, feeds)
        profile = session.end_profiling()
        return _kernels_per_run(Path(profile), skip_first=1, runs=steps)


def transformers_system(name: str, model_dir: Path, threads: int, max_new: int) -> System:
    """Hugging Face transformers' `generate` (PyTorch, greedy, with its KV cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id

    def run(prompts: Batches, batch: int) -> Decoded:
        outputs: Batches = []
        with torch.inference_mode():
            for ids in prompts:  # one at a time: padding would change transformers' numerics
                out = model.generate(
                    torch.tensor([ids]),
                    max_new_tokens=max_new,
                    do_sample=False,
                    pad_token_id=eos,
                    eos_token_id=eos,
                )
                outputs.append(_until_stop(out[0, len(ids) :].tolist(), eos, max_new))
        return Decoded(outputs)

    return System(name, "transformers", run)


def _until_stop(tokens: Sequence[int], stop: int | Sequence[int] | None, limit: int) -> list[int]:
    """The tokens before the first stop token, at most `limit` (redcompile's output rule)."""
    stops = {stop} if isinstance(stop, int) else set(stop or ())
    out = []
    for token in tokens[:limit]:
        if token in stops:
            break
        out.append(int(token))
    return out


def measure(
    systems: list[System], prompts: Batches, batch: int, rounds: int, progress: Callable
) -> dict:
    """Warm-up (which also gives each system's tokens), then `rounds` timed rounds; medians,
    pairwise ratios (median of per-round ratios), token identity.

    A round decodes the prompts one batch of `batch` at a time, every system in turn on the
    same batch, the order reversed from batch to batch, and adds up each system's seconds.
    This machine's speed changes by up to 2-3x within seconds; interleaving at the grain of one
    batch lets every system see the same machine for the same work, where whole-round
    alternation let one system's round land in a slow spell (per-round ratios then scattered
    by 0.2-0.3)."""
    outputs = {s.name: s.run(prompts, batch).outputs for s in systems}  # warm-up and tokens
    seconds: dict[str, list[float]] = {s.name: [] for s in systems}
    # per system, every timed decoding step, and per round the seconds outside them
    steps: dict[str, list[float] | None] = {s.name: [] for s in systems}
    rest: dict[str, list[float]] = {s.name: [] for s in systems}
    groups = [prompts[start : start + batch] for start in range(0, len(prompts), batch)]
    for index in range(rounds):
        spent = {s.name: 0.0 for s in systems}
        stepped = {s.name: 0.0 for s in systems}
        for number, group in enumerate(groups):
            order = systems if (index + number) % 2 == 0 else systems[::-1]
            for system in order:
                start = time.perf_counter()
                decoded = system.run(group, batch)
                elapsed = time.perf_counter() - start
                spent[system.name] += elapsed if decoded.seconds is None else decoded.seconds
                if decoded.step_seconds is None or steps[system.name] is None:
                    steps[system.name] = None
                else:
                    steps[system.name].extend(decoded.step_seconds)
                    stepped[system.name] += sum(decoded.step_seconds)
        for name, value in spent.items():
            seconds[name].append(value)
            rest[name].append(value - stepped[name])
        progress(
            f"batch {batch} round {index + 1}/{rounds}: "
            + ", ".join(f"{s.name} {seconds[s.name][-1]:.2f}s" for s in systems)
        )
    reference = outputs[systems[0].name]
    rows = {}
    for system in systems:
        tokens = sum(len(t) for t in outputs[system.name])
        same = sum(a == b for a, b in zip(outputs[system.name], reference))
        rows[system.name] = {
            "kind": system.kind,
            "tokens": tokens,
            "median_s": round(statistics.median(seconds[system.name]), 4),
            "rounds_s": [round(s, 4) for s in seconds[system.name]],
            "tokens_per_second": round(tokens / statistics.median(seconds[system.name]), 1),
            "kernels_per_step": None
            if system.kernels_per_step is None
            else round(system.kernels_per_step, 1),
            "prompts_identical_to_reference": f"{same}/{len(prompts)}",
            **_step_split(steps[system.name], rest[system.name], rounds),
        }
    ratios = {}
    for a in systems:
        for b in systems:
            if a is b:
                continue
            per_round = [
                (len_a / sa) / (len_b / sb)
                for sa, sb, len_a, len_b in zip(
                    seconds[a.name],
                    seconds[b.name],
                    [rows[a.name]["tokens"]] * rounds,
                    [rows[b.name]["tokens"]] * rounds,
                )
            ]
            ratios[f"{a.name}/{b.name}"] = round(statistics.median(per_round), 3)
    identical_pairs = {
        f"{a.name}={b.name}": f"{sum(x == y for x, y in zip(outputs[a.name], outputs[b.name]))}"
        f"/{len(prompts)}"
        for i, a in enumerate(systems)
        for b in systems[i + 1 :]
    }
    return {
        "batch_size": batch,
        "systems": rows,
        "tokens_per_second_ratio": ratios,
        "identical_prompts": identical_pairs,
    }


def _step_split(steps: list[float] | None, rest: list[float], rounds: int) -> dict:
    """A system's time split: decoding steps per round, the median step and the mean one
    (steps add up by their mean: a mean well above the median is a tail of slow steps, as
    when pool threads compete with the host for the cores), and the median round's seconds
    outside the steps (set-up, prefill, host work between calls)."""
    if not steps:
        return {
            "decode_steps": None,
            "decode_step_us": None,
            "decode_step_mean_us": None,
            "outside_steps_s": None,
        }
    return {
        "decode_steps": round(len(steps) / rounds),
        "decode_step_us": round(1e6 * statistics.median(steps), 1),
        "decode_step_mean_us": round(1e6 * statistics.fmean(steps), 1),
        "outside_steps_s": round(statistics.median(rest), 4),
    }


FACTORIES = {  # by the kind of system each builds
    "redcompile": redcompile_system,
    "genai": genai_system,
    "transformers": transformers_system,
}


def markdown_table(configs: list[dict]) -> str:
    """One row per (threads, batch, system): tokens/s, ratio to each genai model, kernels per
    step, the time split (median decoding step, steps per round, seconds outside the steps),
    prompts identical to the reference system."""
    genai = sorted({n for c in configs for n, v in c["systems"].items() if v["kind"] == "genai"})
    head = [
        "threads",
        "batch",
        "system",
        "tokens/s",
        *[f"/ {g}" for g in genai],
        "kernels/step",
        "step us",
        "mean step us",
        "steps",
        "outside steps s",
        "= reference",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        for name, row in c["systems"].items():
            ratios = [
                "" if name == g else f"{c['tokens_per_second_ratio'][f'{name}/{g}']:.2f}x"
                for g in genai
            ]
            cells = [
                str(c["threads"]),
                str(c["batch_size"]),
                name,
                f"{row['tokens_per_second']:.0f}",
                *ratios,
                str(row["kernels_per_step"]),
                str(row["decode_step_us"]),
                str(row["decode_step_mean_us"]),
                str(row["decode_steps"]),
                str(row["outside_steps_s"]),
                row["prompts_identical_to_reference"],
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _in_process(factory: str, *arguments) -> System:
    """The system FACTORIES[factory](name, ...) built in this process (--processes one)."""
    return FACTORIES[factory](*arguments)


def main() -> None:
    """Parse options, build and open every system, measure, print and write the record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--prompts-file", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=None, help="Use the first N prompts")
    parser.add_argument(
        "--ours",
        action="append",
        default=[],
        metavar="NAME=ARTIFACT",
        help="A redcompile artifact; the first system named is the reference",
    )
    parser.add_argument("--genai", default="fp32,int4", help="genai precisions ('' for none)")
    parser.add_argument("--transformers", action="store_true", help="Also time HF generate")
    parser.add_argument("--batch-size", default="1")
    parser.add_argument(
        "--threads",
        default="1",
        help="Comma-separated intra-op thread settings: N, 0 (the runtime's default) or N-nospin "
        "(N threads that do not spin between kernels; redcompile only, genai spins)",
    )
    parser.add_argument(
        "--processes",
        choices=("one-per-system", "one"),
        default="one-per-system",
        help="Run each system in a process of its own (default), or all in this one (their "
        "sessions' thread pools then share it: two sessions of one artifact at default "
        "threads decoded at 0.87-0.90x each other)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    args.work_dir.mkdir(parents=True, exist_ok=True)
    genai_folders = {
        p: build_genai(args.model_dir, p, args.work_dir)
        for p in filter(None, args.genai.split(","))
    }
    texts = read_prompts_file(args.prompts_file, limit=args.prompts)
    ours = [item.split("=", 1) for item in args.ours]
    codec = open_artifact(Path(ours[0][1])).codec if ours else None
    if codec is None:
        raise SystemExit("name at least one --ours artifact (its tokenizer encodes the prompts)")
    prompts = [codec.encode(t) for t in texts]
    pad_id = json.loads((args.model_dir / "config.json").read_text()).get("eos_token_id", 0)
    pad_id = pad_id[0] if isinstance(pad_id, list) else pad_id

    build = isolated_system if args.processes == "one-per-system" else _in_process
    configs = []
    for setting in args.threads.split(","):
        threads = parse_threads(setting)[0]
        max_new = args.max_new_tokens
        systems = [build("redcompile", n, Path(p), setting, max_new) for n, p in ours]
        systems += [
            build("genai", f"genai-{p}", f, threads, max_new, pad_id)
            for p, f in genai_folders.items()
        ]
        if args.transformers:
            systems.append(build("transformers", "transformers", args.model_dir, threads, max_new))
        for batch in [int(b) for b in args.batch_size.split(",")]:
            progress(f"threads {threads}, batch {batch}: {len(systems)} systems")
            result = measure(systems, prompts, batch, args.rounds, progress)
            configs.append({"threads": setting, **result})
            progress(json.dumps(configs[-1]["tokens_per_second_ratio"]))
        for system in systems:
            system.close()

    import onnxruntime_genai as og

    record = {
        "command": " ".join([os.path.basename(sys.argv[0]), *map(portable_argument, sys.argv[1:])]),
        "machine": {
            "cpu": cpu_description(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
            "onnxruntime_genai": og.__version__,
            "python": platform.python_version(),
        },
        "model": str(args.model_dir),
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "processes": args.processes,
        "artifacts": {n: {"file": Path(p).name, "bytes": Path(p).stat().st_size} for n, p in ours},
        "configs": configs,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(markdown_table(configs))


if __name__ == "__main__":
    main()
