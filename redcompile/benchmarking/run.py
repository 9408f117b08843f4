"""`bench`'s run: build the engines (the baseline and one per beam shape) from a model folder
or artifacts, let them decode the same prompts after a warm-up run, interleaved slice by slice
(`timed_rounds`), and report the medians with the prompts' intervals and the profiled step
split."""

from __future__ import annotations

import platform
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from redcompile.benchmarking.intervals import prompt_counts, tokens_per_step_interval
from redcompile.benchmarking.machine import cpu_description
from redcompile.benchmarking.report import (
    ADAPTIVE_SUFFIX,
    BASELINE,
    BenchConfig,
    BenchReport,
    Measurement,
    engine_name,
)
from redcompile.benchmarking.step_split import draft_sources, profiled_split, scaled_to
from redcompile.config import BeamShape, ModelFolderOptions
from redcompile.errors import InputError
from redcompile.generation import GenerationConfig, GenerationResult
from redcompile.runtime.generator import Generator
from redcompile.runtime.session import wait_until_idle

Progress = Callable[[str], None]


def machine_info(runtime: str) -> dict[str, Any]:
    """Device and versions for the record."""
    import onnxruntime as ort
    import torch

    return {
        "device": f"CPU {cpu_description()}, {torch.get_num_threads()} threads",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "runtime": runtime,
    }


def model_folder_engines(
    model_dir: Path,
    cfg: BenchConfig,
    work_dir: Path | None,
    options: dict[str, Any],
    progress: Progress,
) -> dict[str, Generator]:
    """The baseline and one engine per beam shape, in the requested runtime."""
    from redcompile.step_builder import reference_generator

    shapes = [(beam, vocab) for beam in cfg.beams for vocab in cfg.draft_vocabs]
    if options.get("base_weights") is not None:
        # one accuracy level for every engine, so each is exact against the same baseline:
        # int8 activations only when every shape is a chain (models/weight_quant.py)
        chains = all(beam.is_chain for beam in cfg.beams)
        options = {**options, "base_weights": options["base_weights"].resolved(chains)}
    if cfg.runtime == "torch":
        engines = {
            BASELINE: reference_generator(
                model_dir,
                ModelFolderOptions(autoregressive=True, base_weights=options.get("base_weights")),
                options.get("threads"),
            )
        }
        for beam, vocab in shapes:
            own = dict(_for_shape(beam, options))
            threads = own.pop("threads", None)
            engines[engine_name(beam, vocab)] = reference_generator(
                model_dir, ModelFolderOptions(beam=beam, draft_vocab=vocab, **own), threads
            )
        return engines
    from redcompile.compiler import ConvertOptions, convert
    from redcompile.runtime.loading import open_artifact

    work = work_dir or Path(tempfile.mkdtemp(prefix="redcompile-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    engines = {}
    weights = options.get("drafter_weights", "float")
    base = options.get("base_weights")
    base_tag = "" if base is None or base.fmt is None else f"-base{base.name}"
    for beam, draft_vocab in [(None, None), *shapes]:
        name = engine_name(beam, draft_vocab)
        own = _for_shape(beam, options)
        quantized = beam is not None and own.get("drafter_weights", "float") != "float"
        ngrams = "-n" + "".join(map(str, beam.ngrams)) if beam is not None and beam.lookup else ""
        path = work / f"{name}{ngrams}{f'-{weights}' if quantized else ''}{base_tag}.onnx"
        if not path.exists():
            progress(f"converting {name}")
            folder = ModelFolderOptions(
                drafter_dir=own.get("drafter_dir"),
                beam=beam or BeamShape(),
                autoregressive=beam is None,
                random_drafter=own.get("random_drafter", False) and beam is not None,
                allow_pickle=options.get("allow_pickle", False),
                draft_vocab=draft_vocab,
                drafter_weights=own.get("drafter_weights", "float") if beam else "float",
                base_weights=base,
            )
            convert(model_dir, path, ConvertOptions(folder))
        engines[name] = open_artifact(path, threads=options.get("threads"))
    return engines


def _for_shape(beam: BeamShape | None, options: dict[str, Any]) -> dict[str, Any]:
    """The engine options for one shape: a lookup-only tree (width 0) takes no drafter."""
    if beam is None or not beam.lookup_only:
        return options
    drafter_keys = ("drafter_dir", "random_drafter", "drafter_weights", "allow_pickle")
    return {k: v for k, v in options.items() if k not in drafter_keys}


def _split_base_weights(source: Path | str, options: dict) -> dict:
    """`weights`, `weight_block_size`, `accuracy_level` (bench --weights) as one BaseWeights
    under `base_weights`, which the PyTorch reference and every converted artifact decode
    with; an artifact source has its own weights."""
    from redcompile.models.weight_quant import (
        DEFAULT_ACCURACY_LEVEL,
        DEFAULT_BASE_BLOCK_SIZE,
        FLOAT,
        parse_base_weights,
    )

    options = dict(options)
    given = {
        key: options.pop(key)
        for key in ("weights", "weight_block_size", "accuracy_level")
        if key in options
    }
    if given.get("weights", FLOAT) == FLOAT:
        return options
    if not Path(source).is_dir():
        raise InputError("--weights applies to model folders; an artifact has its own weights")
    options["base_weights"] = parse_base_weights(
        given["weights"],
        given.get("weight_block_size", DEFAULT_BASE_BLOCK_SIZE),
        given.get("accuracy_level", DEFAULT_ACCURACY_LEVEL),
    )
    return options


def with_adaptive_engines(
    engines: dict[str, Generator], speculation: str, tuning: Path | None
) -> dict[str, Generator]:
    """Every engine with speculation levels twice: at fixed full speculation under its own
    name, and following the policy of `--speculation` / `--tuning` (redcompile/speculation.py)
    as NAME adaptive, on the same loaded step."""
    from dataclasses import replace

    from redcompile.speculation import SpeculationPolicy, choose_policy

    out: dict[str, Generator] = {}
    for name, engine in engines.items():
        if name == BASELINE or not engine.info.get("speculation_levels"):
            out[name] = engine
            continue
        full = SpeculationPolicy.fixed("full")
        out[name] = replace(engine, speculation=full, info={**engine.info})
        source = Path(str(engine.info.get("source")))
        policy = choose_policy(
            speculation,
            source if source.is_file() else None,
            engine.info.get("manifest_sha256"),
            tuning,
        )
        info = {**engine.info, "speculation": policy.to_json()}
        out[name + ADAPTIVE_SUFFIX] = replace(engine, speculation=policy, info=info)
    return out


def run_engine(
    engine: Generator, prompts: Sequence[Sequence[int]], batch: int, new_tokens: int
) -> GenerationResult:
    """One decode of `prompts` by `engine`: greedy, `batch` rows, `new_tokens` each."""
    return engine.generate_ids(
        prompts, GenerationConfig(max_new_tokens=new_tokens, batch_size=batch)
    )


def timed_rounds(
    engines: dict[str, Generator],
    ids: Sequence[Sequence[int]],
    batch: int,
    new_tokens: int,
    rounds: int,
) -> dict[str, list[float]]:
    """Seconds per round of every engine decoding all of `ids`, `rounds` rounds.

    A round decodes the prompts in slices of 2 x `batch` (rows that finish take the slice's
    next prompt: in-flight batching), every engine in turn on a slice before the next, the
    order reversed from slice to slice, and adds each engine's seconds up. This shared
    machine's speed changes by up to 2-3x within seconds; interleaving slices gives every
    engine the same machine for the same work, where alternating whole rounds let one
    engine's round land in a slow spell (per-round ratios scattered by 0.2-0.3). Between two
    slices the process waits until no pool thread of the last engine's session still spins
    (runtime/session.py), untimed."""
    width = 2 * batch
    slices = [ids[start : start + width] for start in range(0, len(ids), width)]
    names = list(engines)
    seconds: dict[str, list[float]] = defaultdict(list)
    for index in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        for number, part in enumerate(slices):
            order = names if (index + number) % 2 == 0 else names[::-1]
            for name in order:
                spent[name] += run_engine(engines[name], part, batch, new_tokens).seconds
                wait_until_idle()  # its pool's spin must not slow the next engine's slice
        for name in names:
            seconds[name].append(spent[name])
    return seconds


def bench(
    source: Path | str,
    prompts: Sequence[str],
    cfg: BenchConfig | None = None,
    baseline: Path | str | None = None,
    work_dir: Path | str | None = None,
    progress: Progress | None = None,
    speculation: str = "auto",
    tuning: Path | str | None = None,
    **options: Any,
) -> BenchReport:
    """Measure; see the module docstring. Engines with speculation levels run at full
    speculation and, as NAME adaptive, at the levels `speculation` / `tuning` choose."""
    from redcompile.runtime.loading import open_artifact

    cfg = cfg or BenchConfig()
    cfg.validate()
    say = progress or (lambda _m: None)
    options = _split_base_weights(source, options)
    source = Path(source)
    if not source.exists():
        raise InputError(f"bench: {source} does not exist")
    if source.is_dir():
        engines = model_folder_engines(
            source, cfg, Path(work_dir) if work_dir else None, options, say
        )
        runtime = cfg.runtime
    else:
        if cfg.draft_vocabs != (None,):
            raise InputError("--draft-vocab applies to model folders; an artifact has its own")
        if baseline is None:
            raise InputError(
                f"bench: {source} is an artifact; give --baseline AR.onnx (or AR.pt2), an "
                f"artifact converted with --autoregressive, to compare against"
            )
        spec = open_artifact(source, **options)  # refuses options for model folders only
        base = open_artifact(baseline, threads=options.get("threads"))
        if base.info["mode"] != BASELINE:
            raise InputError(f"bench: --baseline {baseline} is not an autoregressive artifact")
        shape = BeamShape(
            spec.info["beam_width"], spec.info["beam_length"], spec.info.get("lookup_beams", 0)
        )
        engines = {BASELINE: base, engine_name(shape, spec.info.get("draft_vocab")): spec}
        if base.info["runtime"] != spec.info["runtime"]:
            raise InputError(
                f"bench: --baseline {baseline} runs in {base.info['runtime']}, {source} in "
                f"{spec.info['runtime']}; compare within one runtime"
            )
        runtime = spec.info["runtime"]
    engines = with_adaptive_engines(engines, speculation, Path(tuning) if tuning else None)
    ids = [engines[BASELINE].codec.encode(p) for p in prompts]
    measurements = []
    for batch in cfg.batch_sizes:
        say(f"batch size {batch}")
        last = {  # the warm-up: every prompt in one run, the run the statistics describe
            name: run_engine(engine, ids, batch, cfg.max_new_tokens)
            for name, engine in engines.items()
        }
        seconds = timed_rounds(engines, ids, batch, cfg.max_new_tokens, cfg.repeats)
        for name, engine in engines.items():
            result = last[name]
            profiled = ids[: max(4, 2 * batch)]  # enough for full rows, few enough to record
            split, verified = profiled_split(engine, profiled, batch, cfg.max_new_tokens)
            step_ms = statistics.median(result.step_seconds) * 1e3
            median = statistics.median(seconds[name])
            counts = prompt_counts(result)
            lookup = engine.info.get("lookup_beams", 0)
            sources = (
                draft_sources(engine, ids, batch, cfg.max_new_tokens, engine.info["beam_width"])
                if lookup
                else None
            )
            measurements.append(
                Measurement(
                    engine=name,
                    batch_size=batch,
                    beam_width=engine.info["beam_width"],
                    beam_length=engine.info["beam_length"],
                    tokens_per_second=round(result.generated_tokens / median, 2),
                    tokens_per_step=round(result.tokens_per_step, 4),
                    step_ms=round(step_ms, 3),
                    steps=result.steps,
                    generated_tokens=result.generated_tokens,
                    verified_tokens_per_step=round(verified, 2),
                    split_ms=scaled_to(split, step_ms),
                    draft_vocab=engine.info.get("draft_vocab"),
                    tokens_per_step_ci95=tokens_per_step_interval(counts),
                    prompt_counts=counts,
                    lookup_beams=lookup,
                    draft_sources=sources,
                    level_steps=result.level_steps or None,
                    rounds_s=[round(value, 4) for value in seconds[name]],
                )
            )
        for m in measurements:
            if m.batch_size == batch:  # median of the rounds' ratios: each round is paired
                m.speedup = round(
                    statistics.median(
                        base / own for base, own in zip(seconds[BASELINE], seconds[m.engine])
                    ),
                    3,
                )
    return BenchReport(
        str(source),
        runtime,
        len(prompts),
        cfg.max_new_tokens,
        cfg.repeats,
        measurements,
        machine_info(runtime),
        drafter=next((e.info["drafter"] for e in engines.values() if e.info.get("drafter")), None),
    )
