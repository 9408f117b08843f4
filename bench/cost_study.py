"""Step cost against tree size at production shapes, and the speedup it implies (a projection).

Random weights at "350M" Llama shapes (hidden 1024, 24 layers, 16 query / 4 key-value heads,
intermediate 2816, vocab 32000; 334M parameters, fp32) or "1B" shapes (hidden 2048, 16 layers,
32 / 8 heads, intermediate 8192, vocab 32000; 1.24B parameters, fp32) plus a random 2-block
drafter, compiled by redcompile and timed in ONNX Runtime on this CPU, batch 1, 256 cached
tokens:

- t_base(T): the autoregressive artifact verifying a T-token chain (T = 1 ... 8, 16, 32, 64;
  every length up to 8, where narrow beams' verified trees lie, so that none is interpolated);
- t_step(W, L): a whole ReDrafter decoding step per beam shape (drafting, tree, acceptance
  included; its inputs replayed from step 12 of a greedy generation), whose random drafter
  verifies about W(L-1)+1 tokens per step (few shared prefixes).

All in one process whose ONNX Runtime sessions share one thread pool, timed side by side: the
t_base curve in rounds over every T, and each t_step in rounds with t_base(1) and t_base(its
tree), after a warm-up round, in an order reversed every round. Ratios are medians of per-round
ratios, so that the drifts of this shared machine (its memory bandwidth swings by a third over
minutes) fall on both sides of a ratio alike. The host loop is left out on both sides (replayed
steps equal generation steps within noise at these sizes).

Projection, for each shape: speedup = tau(W, L) / r'(W, L), where tau and the verified tokens
per step v(W, L) are MEASURED on the pycode-lm fixture with the trained drafter
(bench/results/pycode_shapes_d8192.json), and r' = t_step / t_base(1) (per round) - c(T_random) +
c(v), with c(T) = t_base(T) / t_base(1) (per round, interpolated): the measured step with its
verification moved to the fixture's deduplicated tree size (no move for W = 1, whose tree is a
chain of L either way). What is projected is that acceptance measured on the fixture carries
over to a model of these shapes. Where the shapes record gives tau's 95% interval over the
fixture's prompts (`tokens_per_step_ci95`), the projection carries it as
`projected_speedup_ci95`: the part of the uncertainty that comes from the prompt sample (the
step times' spread is in `step_over_base_1_quartiles`; repeat runs show the rest). Records made
before 2026-11-22 timed steps and t_base minutes apart and re-project with their medians.

With `--draft-vocab N,...` each beam shape is also compiled drafting from N of the 32000 tokens
(`convert --draft-vocab`; the random drafter takes the N lowest ids, which costs the same as the
N most frequent). Its projection uses the fixture's tokens per step measured with the same
FRACTION of the fixture's vocabulary (N / 32000 of 4096 tokens), read from the shapes record:
the projected part is that acceptance at a vocabulary fraction carries over.

With `--exit-dim E,...` each beam shape is also compiled with a drafter of width E
(`train-drafter --exit-dim`; the default is Apple's 2 x hidden), and `--layers N` sets the
drafters' residual blocks. A projection uses the fixture's tokens per step measured with a
drafter of the same SHAPE relative to its base model (E / hidden, and N), read from a shapes
record whose `drafter` says so: the projected part is that acceptance at a relative drafter
shape carries over.

With `--drafter-weights int8|int4` the drafters are compiled with `convert --drafter-weights`
(models/weight_quant.py), and a projection uses the fixture's tokens per step measured with a
drafter quantized the same way (the shapes record's `drafter.quantized`).

With `--runtime torch` (for the GPU machine, whose ONNX Runtime has no CUDA provider) nothing is
converted: the same `SpeculativeStep` is built in memory with random weights on `--device` in
`--dtype` (bench/torch_steps.py; "7b" is Llama-2-7B's shapes) and timed in PyTorch, by the same
rounds and ratios. On CUDA each step is replayed from a CUDA graph captured on its inputs
(`--no-cuda-graphs`: eagerly), so that it is timed as a compiled runtime launches it rather
than with Python between its kernels; the redcompile ops run their torch references unless
`--kernels cuda` loads the kernels of cuda/. `bench/gpu_suite.sh install cost` runs the 7B study.

    python bench/cost_study.py --scratch SCRATCH --size 350m --draft-vocab 4000 \
        --shapes-record bench/results/pycode_shapes_d8192.json
    python bench/cost_study.py --runtime torch --device cuda --dtype float16 --size 7b \
        --beams 1x4,16x5 --shapes-record bench/results/pycode_shapes_d8192.json --out OUT.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_file

from redcompile.config import BeamShape
from redcompile.models.weight_quant import (
    BASE_WEIGHT_FORMAT_NAMES,
    FLOAT,
    WEIGHT_FORMAT_NAMES,
    parse_base_weights,
)
from redcompile.training.trainer import TrainConfig

# random_llama.py is a fixture builder, in bench/fixtures/
sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from random_llama import LLAMA_1B, LLAMA_7B, LLAMA_350M, LLAMA_TINY, write_config_and_tokenizer

SIZES = {"tiny": LLAMA_TINY, "350m": LLAMA_350M, "1b": LLAMA_1B, "7b": LLAMA_7B}
BEAMS = ((1, 3), (1, 5), (2, 5), (4, 5))  # narrow beams; each is a 1.3 GB (350M) convert
CACHED, REPEATS, SNAPSHOT_STEP = 256, 15, 12
CHAIN_LENGTHS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64)
METHOD_BY_RUNTIME = {
    "onnxruntime": ", one ONNX Runtime thread pool shared by the sessions",
    "torch": ", PyTorch steps built in memory sharing one base model",
}
PROJECTED_FIELDS = (
    "fixture_tokens_per_step",
    "fixture_verified_tokens",
    "projected_step_ms",
    "projected_speedup",
    "projected_speedup_ci95",
    "projected_vs_peer",
)


def write_model(folder: Path, shapes: dict, seed: int = 0) -> None:
    """A random fp32 Llama folder (skipped if present)."""
    if not (folder / "config.json").exists():
        _write_random_model(folder, shapes, seed)


def drafter_suffix(exit_dim: int | None, layers: int) -> str:
    """Name suffix of a drafter of width `exit_dim` (None: 2 x hidden) and `layers` blocks."""
    return (f"-E{exit_dim}" if exit_dim else "") + (f"-N{layers}" if layers != 2 else "")


def drafter_folder(folder: Path, exit_dim: int | None, layers: int, seed: int = 0) -> Path:
    """A random drafter of width `exit_dim` (None: 2 x hidden) with `layers` residual blocks
    for the model in `folder`, written once, whose token frequencies are all equal, so that a
    draft vocabulary of N takes the N lowest ids."""
    from redcompile.models.config import load_decoder_config
    from redcompile.models.draft_vocab import TOKEN_FREQUENCIES, write_token_frequencies
    from redcompile.models.drafter_io import random_drafter, save_drafter

    path = folder / ("drafter" + drafter_suffix(exit_dim, layers))
    if not (path / TOKEN_FREQUENCIES).exists():
        base = load_decoder_config(folder)
        save_drafter(random_drafter(base, layers, exit_dim=exit_dim, seed=seed), path)
        counts = torch.ones(base.vocab_size, dtype=torch.long)
        write_token_frequencies(path, counts, "uniform (random drafter)")
    return path


def _write_random_model(folder: Path, shapes: dict, seed: int) -> None:
    """config.json, tokenizer and random N(0, 0.02) weights."""
    from torch_steps import decoder_config

    from redcompile.models.llama import Decoder

    cfg = decoder_config(shapes)
    torch.manual_seed(seed)
    model = Decoder(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    folder.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    write_config_and_tokenizer(folder, shapes, rope_theta=10000.0)


def shared_pool_options() -> ort.SessionOptions:
    """Session options on the process's one intra-op thread pool (main() creates it before any
    session). With a pool per session, the session measured just before keeps its idle threads
    spinning on the two cores and slows the next one's step by tens of milliseconds; sharing
    one pool lets steps of different artifacts alternate at no cost."""
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    return options


def chain_inputs(tokens: int) -> dict[str, np.ndarray]:
    """Step inputs that verify a `tokens`-long chain after CACHED cached tokens."""
    return {
        "input_ids": np.full((1, tokens), 7, np.int64),
        "parent_ids": np.arange(-1, tokens - 1, dtype=np.int64)[None],
        "depths": np.arange(tokens, dtype=np.int64)[None],
        "num_tokens": np.array([tokens]),
        "forced": np.array([tokens]),
        "cache_lengths": np.array([CACHED]),
    }


def decoding_inputs(generator, at: int = SNAPSHOT_STEP) -> dict[str, np.ndarray]:
    """The step inputs (cache aside) just before step `at` of greedy decoding after a
    CACHED-token prompt: replayed, they time a steady-state decoding step, tree included."""
    from redcompile.generation import GenerationConfig

    backend, original, inputs, count = generator.backend, generator.backend.step, {}, [0]
    feedback = backend.signature.feedback
    cache_inputs = {feedback[o] for o in feedback if o.startswith("present.")}

    def observed():
        count[0] += 1
        if count[0] == at:
            inputs.update(backend.read([n for n in backend.state if n not in cache_inputs]))
        return original()

    backend.step = observed
    prompt = [list(np.random.default_rng(0).integers(1, 90, CACHED))]
    try:
        generator.generate_ids(
            prompt, GenerationConfig(max_new_tokens=at + 4, stop_token_ids=(-1,))
        )
    finally:
        backend.step = original
    return inputs


def paired_rounds(steps: dict[str, tuple], rounds: int = REPEATS) -> dict[str, list[float]]:
    """Milliseconds of each named (backend, inputs) step, once per round in an order that
    reverses every round, after a warm-up round: steps timed side by side, so that the
    machine's drifts (this shared CPU's memory bandwidth swings by a third over minutes)
    touch every step of a round alike and cancel in per-round ratios."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(rounds + 1):
        for name in names if round_index % 2 else names[::-1]:
            backend, inputs = steps[name]
            backend.write(inputs)
            start = time.perf_counter()
            backend.step()
            if round_index:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of one step's time over another's in the same round."""
    return float(statistics.median(n / d for n, d in zip(numerators, denominators)))


def drafter_shape(drafter: dict | None) -> tuple[float, int, str]:
    """(exit_dim over the base model's hidden size, residual blocks, weight format) of a
    drafter; records without a `drafter` came from Apple's default shape, (2, 2, float)."""
    if not drafter:
        return 2.0, 2, "float"
    return (
        round(drafter["exit_dim"] / drafter["hidden_size"], 4),
        drafter["num_draft_layers"],
        drafter.get("quantized") or "float",
    )


def fixture_measurements(records: list[dict]) -> dict[tuple, dict]:
    """Fixture results by (width, length, lookup beams, fraction of the vocabulary drafted
    from, drafter shape); records made before lookup beams existed had none."""
    vocab = 4096  # pycode-lm's vocabulary
    return {
        (
            r["beam_width"],
            r["beam_length"],
            r.get("lookup_beams") or 0,
            round((r.get("draft_vocab") or vocab) / vocab, 4),
            drafter_shape(record.get("drafter")),
        ): r
        for record in records
        for r in record["results"]
        if r["engine"] != "autoregressive"
    }


def step_in_base_steps(row: dict, record: dict, verified: float) -> tuple[float, float]:
    """(projected ReDrafter step over t_base(1), t_base(1) in ms) for a measured row whose
    tree is moved to `verified` tokens on the t_base curve. Records measured side by side
    (`step_over_base_1`) use per-round ratios; older ones (steps and t_base timed at different
    times) their medians."""
    paired = "step_over_base_1" in row
    curve = record["t_base_relative"] if paired else record["t_base_ms"]
    sizes = np.array([int(t) for t in curve])
    costs = np.array(list(curve.values()), dtype=float)
    base_1 = row["paired_base_1_ms"] if paired else record["t_base_ms"]["1"]
    step = row["step_over_base_1"] if paired else row["step_ms"] / base_1
    scale = 1.0 if paired else base_1  # the old curve is in ms
    moved = (
        np.interp(verified, sizes, costs)
        - np.interp(row["verified_tokens_random_drafter"], sizes, costs)
    ) / scale
    return float(step + moved), float(base_1)


def project(record: dict, shapes_records: list[dict]) -> dict:
    """Add the projection (module docstring) to every measured row of a cost-study record."""
    fixture = fixture_measurements(shapes_records)
    vocab, hidden = record["shapes"]["vocab_size"], record["shapes"]["hidden_size"]
    for row in record["shapes_tried"]:
        fraction = round((row.get("draft_vocab") or vocab) / vocab, 4)
        drafter = drafter_shape(
            {
                "exit_dim": row.get("exit_dim") or 2 * hidden,
                "hidden_size": hidden,
                "num_draft_layers": row.get("num_draft_layers", 2),
                "quantized": row.get("drafter_weights"),
            }
        )
        lookup = row.get("lookup_beams") or 0  # records before lookup beams had none
        key = (row["beam_width"], row["beam_length"], lookup, fraction, drafter)
        measured = fixture.get(key)
        for key in PROJECTED_FIELDS:  # a re-projection replaces the old figures
            row.pop(key, None)
        if not measured:
            continue
        tau, verified = measured["tokens_per_step"], measured["verified_tokens_per_step"]
        relative, base_1 = step_in_base_steps(row, record, verified)
        row.update(
            {
                "fixture_tokens_per_step": tau,
                "fixture_verified_tokens": verified,
                "projected_step_ms": round(relative * base_1, 3),
                "projected_speedup": round(tau / relative, 3),
            }
        )
        if measured.get("tokens_per_step_ci95"):  # the fixture prompts' sampling error
            row["projected_speedup_ci95"] = [
                round(t / relative, 3) for t in measured["tokens_per_step_ci95"]
            ]
    return record


def peer_ratio(peers: dict, pair: str, threads: int) -> dict:
    """Tokens per second of OURS over PEER (`pair` "OURS/PEER") at batch 1 and `threads` in
    a bench/peers.py record (the median of its per-round ratios), with where it came from."""
    ours, peer = pair.split("/")
    for config in peers["configs"]:
        if config["batch_size"] == 1 and str(config["threads"]) == str(threads):
            paired = config.get("tokens_per_second_ratio", {}).get(f"{ours}/{peer}")
            systems = config["systems"]  # records without per-round ratios: the medians'
            ratio = paired or (
                systems[ours]["tokens_per_second"] / systems[peer]["tokens_per_second"]
            )
            return {"ours": ours, "peer": peer, "threads": threads, "ratio": round(ratio, 3)}
    raise SystemExit(f"the peers record has no batch-1 configuration at {threads} threads")


def project_against_peer(record: dict, peers_path: Path, pair: str) -> dict:
    """Carry every projection over to the peer: projected_vs_peer = projected_speedup (over
    our autoregressive artifact) x our autoregressive artifact's tokens/s over the peer's,
    MEASURED end to end by bench/peers.py on the same shapes, batch 1, same threads."""
    ratio = peer_ratio(json.loads(peers_path.read_text()), pair, record.get("threads", 0))
    record["peer"] = {"record": str(peers_path), **ratio}
    for row in record["shapes_tried"]:
        if "projected_speedup" in row:
            row["projected_vs_peer"] = round(row["projected_speedup"] * ratio["ratio"], 3)
    return record


def shapes_to_try(args: argparse.Namespace) -> list[tuple[tuple[int, int], int | None, int | None]]:
    """Every ((W, L), draft vocab, exit dim) the arguments ask for (None: whole vocabulary,
    Apple's width)."""
    beams = [tuple(int(x) for x in b.split("x")) for b in args.beams.split(",")]
    vocabularies = [None] + [int(n) for n in args.draft_vocab.split(",") if n]
    exit_dims = [int(n) if n != "default" else None for n in args.exit_dim.split(",")]
    return [(b, v, e) for e in exit_dims for b in beams for v in vocabularies]


def base_weights(args: argparse.Namespace):
    """The base weights of every artifact of the study: --base-weights at one accuracy level
    for all (as `redcompile bench` picks it), int8 activations only if every beam is a chain,
    so that the autoregressive curve and the steps compute alike."""
    chains_only = all(
        BeamShape(width, length, lookup=args.lookup_beams).is_chain
        for (width, length), _, _ in shapes_to_try(args)
    )
    return parse_base_weights(args.base_weights).resolved(chains_only)


def convert_all(args: argparse.Namespace) -> tuple[Path, dict]:
    """Convert what --scratch lacks: (autoregressive artifact,
    {((W, L), draft vocab, exit dim): path})."""
    from redcompile.compiler import ConvertOptions, convert

    folder = args.scratch / f"llama-{args.size}"
    write_model(folder, SIZES[args.size])
    base = base_weights(args)
    base_suffix = "" if args.base_weights == FLOAT else f"-base-{args.base_weights}"
    ar = args.scratch / f"llama-{args.size}-ar{base_suffix}.onnx"
    if not ar.exists():
        convert(folder, ar, options=ConvertOptions.of(autoregressive=True, base_weights=base))
    paths = {}
    for (width, length), draft_vocab, exit_dim in shapes_to_try(args):
        suffix = (f"-V{draft_vocab}" if draft_vocab else "") + drafter_suffix(exit_dim, args.layers)
        if args.drafter_weights != "float":
            suffix += f"-{args.drafter_weights}"
        suffix += (f"-K{args.lookup_beams}" if args.lookup_beams else "") + base_suffix
        path = args.scratch / f"llama-{args.size}-W{width}-L{length}{suffix}.onnx"
        if not path.exists():
            options = ConvertOptions.of(
                drafter_dir=drafter_folder(folder, exit_dim, args.layers),
                beam=BeamShape(width, length, lookup=args.lookup_beams),
                draft_vocab=draft_vocab,
                drafter_weights=args.drafter_weights,
                base_weights=base,
            )
            convert(folder, path, options=options)
        paths[(width, length), draft_vocab, exit_dim] = path
    return ar, paths


def runtime_words(args: argparse.Namespace) -> str:
    """The runtime a record's steps ran in, as its `what` says it."""
    if args.runtime == "onnxruntime":
        return "ONNX Runtime CPU"
    how = "CUDA graphs" if args.cuda_graphs else "eager"
    kernels = f", ops: {args.kernels_used}" if args.device == "cuda" else ""
    return f"PyTorch {args.device}, {how}{kernels}"


def device_words(device: str) -> str:
    """The machine a record was measured on."""
    if device == "cuda":
        return f"GPU {torch.cuda.get_device_name()}"
    from redcompile.benchmarking.machine import cpu_description

    return f"CPU {cpu_description()}, {os.cpu_count()} cores"


def versions(runtime: str) -> dict[str, str]:
    """Versions of what ran the steps."""
    if runtime == "onnxruntime":
        return {"onnxruntime": ort.__version__, "torch": torch.__version__}
    return {"torch": torch.__version__, "cuda": torch.version.cuda or "none"}


def timing_wrapper(args: argparse.Namespace) -> Callable:
    """How a backend is timed: replayed from CUDA graphs (--cuda-graphs on a GPU) or as is."""
    if args.runtime == "torch" and args.device == "cuda" and args.cuda_graphs:
        from torch_steps import CudaGraphBackend

        return CudaGraphBackend
    return lambda backend: backend


def base_curve(ar_backend) -> tuple[dict[int, float], dict[int, float]]:
    """t_base(T) over CHAIN_LENGTHS, side by side: (median ms, median of t_base(T) / t_base(1)
    within a round)."""
    times = paired_rounds({t: (ar_backend, chain_inputs(t)) for t in CHAIN_LENGTHS})
    absolute = {t: round(statistics.median(v), 3) for t, v in times.items()}
    relative = {t: round(median_ratio(v, times[1]), 4) for t, v in times.items()}
    return absolute, relative


def onnx_steps(args: argparse.Namespace) -> tuple[object, dict[tuple, Callable]]:
    """(the autoregressive artifact's backend, {shape: opens the ReDrafter artifact}), in ONNX
    Runtime on one shared thread pool, converting what --scratch lacks."""
    from redcompile.runtime.loading import open_artifact

    ar, paths = convert_all(args)
    ar_backend = open_artifact(ar, session_options=shared_pool_options()).backend
    return ar_backend, {
        key: functools.partial(open_artifact, path, session_options=shared_pool_options())
        for key, path in paths.items()
    }


def torch_steps(args: argparse.Namespace) -> tuple[object, dict[tuple, Callable]]:
    """(the autoregressive step's backend, {shape: makes the ReDrafter step}), eager PyTorch
    steps built in memory on --device in --dtype (bench/torch_steps.py)."""
    from torch_steps import random_decoder, random_drafter_for, step_generator

    base = random_decoder(SIZES[args.size], args.dtype, args.device)
    ar_backend = step_generator(base, None, BeamShape()).backend

    def opener(width: int, length: int, draft_vocab: int | None, exit_dim: int | None):
        def make():
            drafter = random_drafter_for(base, args.layers, exit_dim, draft_vocab)
            return step_generator(base, drafter, BeamShape(width, length, lookup=args.lookup_beams))

        return make

    return ar_backend, {key: opener(*key[0], key[1], key[2]) for key in shapes_to_try(args)}


def step_against_base(ar_backend, generator, timed=lambda backend: backend) -> dict:
    """A ReDrafter decoding step of `generator` timed side by side with the autoregressive
    step verifying one token and the chain as long as its tree; `timed` wraps a backend for
    timing (e.g. in a CUDA graph) once the step's inputs are taken from a generation."""
    inputs = decoding_inputs(generator)
    tree = int(inputs["num_tokens"][0])
    times = paired_rounds(
        {
            "step": (timed(generator.backend), inputs),
            "base_1": (ar_backend, chain_inputs(1)),
            "base_tree": (ar_backend, chain_inputs(tree)),
        }
    )
    over_base = [s / b for s, b in zip(times["step"], times["base_1"])]
    return {
        "step_ms": round(statistics.median(times["step"]), 3),
        "verified_tokens_random_drafter": tree,
        "paired_base_1_ms": round(statistics.median(times["base_1"]), 3),
        "paired_base_tree_ms": round(statistics.median(times["base_tree"]), 3),
        "step_over_base_1": round(float(statistics.median(over_base)), 4),
        "step_over_base_1_quartiles": [
            round(float(q), 4) for q in np.percentile(over_base, [25, 75])
        ],
        "base_tree_over_base_1": round(median_ratio(times["base_tree"], times["base_1"]), 4),
    }


def measure(args: argparse.Namespace) -> dict:
    """Time the steps (converting what is missing): the record without projections."""
    shapes = SIZES[args.size]
    ar_backend, steps = (torch_steps if args.runtime == "torch" else onnx_steps)(args)
    timed = timing_wrapper(args)
    ar_backend.reset(1, CACHED + max(CHAIN_LENGTHS) + 8)
    ar_timed = timed(ar_backend)
    base, base_relative = base_curve(ar_timed)
    print("t_base(T) ms:", base, "\nt_base(T) / t_base(1):", base_relative, flush=True)
    rows = []
    for ((width, length), draft_vocab, exit_dim), make in steps.items():
        rows.append(
            {
                "beam_width": width,
                "beam_length": length,
                "lookup_beams": args.lookup_beams,
                "draft_vocab": draft_vocab,
                "exit_dim": exit_dim or 2 * shapes["hidden_size"],
                "num_draft_layers": args.layers,
                "drafter_weights": args.drafter_weights,
                **step_against_base(ar_timed, make(), timed),
            }
        )
        print(rows[-1], flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the last shape's graphs and drafter
    return {
        "what": f"step cost vs tree size at {args.size} Llama shapes (random weights, "
        f"{args.dtype}, {runtime_words(args)}, batch 1, 256 cached tokens) and the speedup "
        "projected with "
        "acceptance measured on pycode-lm (at the same fraction of the vocabulary when "
        "drafting from a draft vocabulary, with a drafter of the same width relative to its "
        "base model)",
        "method": f"one process{METHOD_BY_RUNTIME[args.runtime]}; steps timed side by side "
        f"in {REPEATS} rounds after a warm-up round, in an order reversed every round; ratios "
        "are medians of per-round ratios. A step is one run of the compiled step (ONNX "
        "Runtime's session run, a CUDA graph's replay) or of the eager step module, waited "
        "for; the host loop is excluded for both engines",
        "runtime": args.runtime,
        "dtype": args.dtype,
        "base_weights": base_weights(args).to_manifest(),
        "threads": args.threads,
        "cuda_graphs": bool(args.cuda_graphs and args.device == "cuda"),
        "kernels": args.kernels_used,
        "measured": [
            "t_base(T): autoregressive artifact verifying a T-token chain",
            "step_ms: ReDrafter decoding step (random drafter), side by side with t_base(1) "
            "and t_base(its tree size)",
        ],
        "projected": "projected_speedup = fixture tokens/step / (step_over_base_1 with "
        "verification moved to the fixture's verified tree size on the t_base(T)/t_base(1) "
        "curve)",
        "shapes": shapes,
        "device": device_words(args.device),
        "versions": versions(args.runtime),
        "command": command_line(args),
        "t_base_ms": base,
        "t_base_relative": base_relative,
        "shapes_tried": rows,
    }


def command_line(args: argparse.Namespace) -> str:
    """The command that measures a record like this one (SCRATCH: any folder)."""
    if args.runtime == "torch":
        where = f"--runtime torch --device {args.device} --dtype {args.dtype} "
        if args.device == "cuda":
            where += (
                "" if args.cuda_graphs else "--no-cuda-graphs "
            ) + f"--kernels {args.kernels} "
    else:
        where = "--scratch SCRATCH "
    return (
        f"python bench/cost_study.py {where}--size {args.size} --beams {args.beams} "
        f"--draft-vocab {args.draft_vocab} --exit-dim {args.exit_dim} --layers {args.layers} "
        f"--drafter-weights {args.drafter_weights} --lookup-beams {args.lookup_beams} "
        f"--base-weights {args.base_weights} "
        f"--threads {args.threads} "
        f"--shapes-record {' '.join(str(p) for p in args.shapes_record)}"
        + (
            f" --peers-record {args.peers_record} --peers-pair {args.peers_pair}"
            if args.peers_record
            else ""
        )
        + f" --out {args.out}"
    )


def check_runtime_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations that would time something else than they say."""
    if args.runtime == "onnxruntime":
        if args.device != "cpu" or args.dtype != "float32":
            parser.error("--device and --dtype apply to --runtime torch (artifacts are fp32, CPU)")
    else:
        if args.drafter_weights != "float" or args.base_weights != FLOAT:
            parser.error(
                "--drafter-weights and --base-weights apply to --runtime onnxruntime: the torch "
                "step keeps float matrices (it would time float weights as quantized ones)"
            )
        if args.convert_only:
            parser.error("--convert-only applies to --runtime onnxruntime")
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda, but torch sees no CUDA device")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, help="Where models and artifacts are kept")
    parser.add_argument("--size", choices=sorted(SIZES), default="350m")
    parser.add_argument(
        "--beams", default=",".join(f"{w}x{n}" for w, n in BEAMS), help="WxL,... e.g. 1x3,1x5"
    )
    parser.add_argument(
        "--draft-vocab", default="", help="Comma-separated draft vocabulary sizes to add"
    )
    parser.add_argument(
        "--exit-dim",
        default="default",
        help="Comma-separated drafter widths ('default': 2 x hidden), e.g. default,2048",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=TrainConfig().layers,
        help="Residual blocks of the drafters (default: train-drafter's)",
    )
    parser.add_argument(
        "--drafter-weights",
        choices=WEIGHT_FORMAT_NAMES,
        default="float",
        help="How the drafters' matrices are stored (convert --drafter-weights)",
    )
    parser.add_argument(
        "--lookup-beams",
        type=int,
        default=0,
        help="Lookup beams in every tree besides the drafter's (convert --lookup-beams; "
        "default 0, as in the single-chain acceptance records)",
    )
    parser.add_argument(
        "--base-weights",
        choices=BASE_WEIGHT_FORMAT_NAMES,
        default=FLOAT,
        help="How the base model's matrices are stored in every artifact (convert --weights, "
        "at convert's default accuracy level)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="Intra-op threads of the shared ONNX Runtime pool (0: ONNX Runtime's default)",
    )
    parser.add_argument(
        "--peers-record",
        type=Path,
        help="A bench/peers.py record of the same model shapes: each projection is also "
        "carried over to the peer (--peers-pair) at batch 1 and the same --threads",
    )
    parser.add_argument(
        "--peers-pair",
        default="ar-int4-l4/genai-int4",
        help="OURS/PEER: the peers record's system with this study's autoregressive artifact "
        "and the peer to project against",
    )
    parser.add_argument(
        "--shapes-record",
        type=Path,
        nargs="+",
        default=[Path("bench/results/pycode_shapes_d8192.json")],
        help="Fixture bench records (tokens per step by beam shape and draft vocabulary)",
    )
    parser.add_argument(
        "--reproject",
        action="store_true",
        help="Measure nothing: recompute the projections of --out from --shapes-record",
    )
    parser.add_argument(
        "--convert-only",
        action="store_true",
        help="Only convert the artifacts into --scratch (e.g. while the machine is busy)",
    )
    parser.add_argument(
        "--runtime",
        choices=("onnxruntime", "torch"),
        default="onnxruntime",
        help="Time compiled ONNX artifacts in ONNX Runtime (CPU), or the step module built in "
        "memory in PyTorch (--device, --dtype; for the GPU machine, whose ONNX Runtime has no "
        "CUDA provider)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="On CUDA, replay each step from a CUDA graph (as a compiled runtime launches "
        "it) rather than eagerly",
    )
    parser.add_argument(
        "--kernels",
        choices=("reference", "cuda"),
        default="reference",
        help="On CUDA, run the redcompile ops with their torch references or the kernels "
        "of cuda/ (built with nvcc)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/cost_study_cpu.json"))
    args = parser.parse_args()
    check_runtime_arguments(parser, args)
    args.kernels_used = "reference"
    if args.runtime == "torch" and not args.reproject:
        from torch_steps import register_kernels

        args.kernels_used = register_kernels(args.device, args.kernels)
    if args.convert_only:
        convert_all(args)
        return
    ort.capi._pybind_state.set_global_thread_pool_sizes(args.threads, 0)  # before any session
    if args.reproject:
        record = json.loads(args.out.read_text())
    elif args.scratch is None and args.runtime == "onnxruntime":
        parser.error("--scratch is required unless --reproject or --runtime torch")
    else:
        record = measure(args)
    record = project(record, [json.loads(p.read_text()) for p in args.shapes_record])
    record["shapes_records"] = [str(p) for p in args.shapes_record]
    if args.peers_record:
        record = project_against_peer(record, args.peers_record, args.peers_pair)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
