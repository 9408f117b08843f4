"""`bench`: ReDrafter against the autoregressive baseline, in one runtime, on the same prompts.

For every batch size, the engines (the baseline and one ReDrafter engine per beam shape) run the
whole prompt set in turn, `repeats` times after a warm-up round, alternating, and the medians
are reported: tokens per second, tokens per step, step latency, speedup over the baseline.
Tokens per step come with a 95% interval from a bootstrap over the prompts: how much the figure
would move on another prompt set of the same size and kind. One extra, untimed, profiled run
per engine over the first max(4, 2 x batch) prompts gives the decoding step's split (base model,
drafting, tree, acceptance, KV update, host; steps that only prefill prompts are left out) and
the tokens verified per step after deduplication.

Sources: a model folder (runtime `torch`, or `onnxruntime` after converting each shape into a
work folder), or an artifact plus an autoregressive artifact as `baseline`.
"""

from __future__ import annotations

import bisect
import json
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from redcompile.api import Generator
from redcompile.config import BeamShape
from redcompile.errors import InputError
from redcompile.generation import GenerationConfig, GenerationResult

BASELINE = "autoregressive"
SPLIT_KEYS = ("base", "drafting", "lookup", "tree", "acceptance", "kv", "host")
# Inlined ONNX function nodes are named _inlfunc_<Op>_...: the op tells the split category.
FUNCTION_CATEGORY = {
    "TreeAttention": "base",
    "DrafterBeamSearch": "drafting",
    "PromptLookup": "lookup",
    "BuildTree": "tree",
    "AncestorMask": "tree",
    "Accept": "acceptance",
    "KVCompaction": "kv",
}
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; defaults defined once, here."""

    batch_sizes: tuple[int, ...] = (1,)
    beams: tuple[BeamShape, ...] = (BeamShape(),)
    max_new_tokens: int = 128
    repeats: int = 3
    runtime: str = "onnxruntime"  # for model folders: torch or onnxruntime
    draft_vocabs: tuple[int | None, ...] = (None,)  # per beam shape; None: the whole vocabulary

    def validate(self) -> None:
        """One clear line for unusable settings."""
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError("--batch-size values must be at least 1")
        if self.repeats < 1:
            raise InputError("--repeats must be at least 1")
        if self.max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")
        if self.runtime not in ("torch", "onnxruntime"):
            raise InputError("--runtime must be torch or onnxruntime")
        for beam in self.beams:
            beam.validate()


@dataclass
class Measurement:
    """One engine at one batch size."""

    engine: str
    batch_size: int
    beam_width: int
    beam_length: int
    tokens_per_second: float
    tokens_per_step: float
    step_ms: float
    steps: int
    generated_tokens: int
    verified_tokens_per_step: float = 1.0
    split_ms: dict[str, float] = field(default_factory=dict)
    speedup: float = 1.0
    draft_vocab: int | None = None  # tokens the drafter drafts from; None: the whole vocabulary
    # 95% bootstrap interval of tokens_per_step over the prompts, and each prompt's [decoded
    # tokens, decoding steps] in prompt order; None in records made before them
    tokens_per_step_ci95: list[float] | None = None
    prompt_counts: list[list[int]] | None = None
    lookup_beams: int = 0
    # accepted drafted tokens per decoding step by the beams that proposed them: drafter
    # beams only, lookup beams only, or both (trees with lookup beams; None otherwise)
    draft_sources: dict[str, float] | None = None


@dataclass
class BenchReport:
    """Everything `bench --json` writes."""

    source: str
    runtime: str
    prompts: int
    max_new_tokens: int
    repeats: int
    measurements: list[Measurement]
    machine: dict[str, Any]
    command: str = ""
    drafter: dict[str, Any] | None = None  # the ReDrafter engines' drafter (its config)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "source": self.source,
            "runtime": self.runtime,
            "prompts": self.prompts,
            "max_new_tokens": self.max_new_tokens,
            "repeats": self.repeats,
            "machine": self.machine,
            "command": self.command,
            "drafter": self.drafter,
            "results": [m.__dict__ for m in self.measurements],
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> BenchReport:
        """The report back from its `--json` record (to re-plot or compare runs)."""
        return cls(
            record["source"],
            record["runtime"],
            record["prompts"],
            record["max_new_tokens"],
            record["repeats"],
            [Measurement(**m) for m in record["results"]],
            record["machine"],
            record.get("command", ""),
            record.get("drafter"),
        )

    def table(self) -> str:
        """A fixed-width summary, one line per engine and batch size."""
        head = (
            f"{'engine':<16}{'batch':>6}{'tok/s':>10}{'tok/step':>10}{'(95%)':>12}"
            f"{'verified':>10}{'step ms':>10}{'speedup':>9}"
        )
        rows = [head]
        for m in self.measurements:
            low, high = m.tokens_per_step_ci95 or (m.tokens_per_step, m.tokens_per_step)
            rows.append(
                f"{m.engine:<16}{m.batch_size:>6}{m.tokens_per_second:>10.1f}"
                f"{m.tokens_per_step:>10.2f}{f'{low:.2f}-{high:.2f}':>12}"
                f"{m.verified_tokens_per_step:>10.1f}{m.step_ms:>10.2f}{m.speedup:>8.2f}x"
            )
        sourced = [m for m in self.measurements if m.draft_sources]
        if sourced:
            rows.append("accepted drafts per step by source (drafter only / lookup only / both):")
            for m in sourced:
                d = m.draft_sources
                rows.append(
                    f"  {m.engine:<16}batch {m.batch_size}: {d['drafter']:.2f} / "
                    f"{d['lookup']:.2f} / {d['both']:.2f}"
                )
        return "\n".join(rows)


def engine_name(beam: BeamShape | None, draft_vocab: int | None = None) -> str:
    """`autoregressive`, `W4-L5`, `W4-L5-V1024` with a draft vocabulary of 1024 tokens, or
    `W4-L5-K1` with one lookup beam (`W0-L5-K1`: lookup only)."""
    if beam is None:
        return BASELINE
    name = f"W{beam.width}-L{beam.length}" + (f"-V{draft_vocab}" if draft_vocab else "")
    return name + (f"-K{beam.lookup}" if beam.lookup else "")


def machine_info(runtime: str) -> dict[str, Any]:
    """Device and versions for the record."""
    import onnxruntime as ort
    import torch

    cpu = platform.processor() or platform.machine()
    return {
        "device": f"CPU {cpu}, {torch.get_num_threads()} threads",
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
    from redcompile.api import open_model_folder

    shapes = [(beam, vocab) for beam in cfg.beams for vocab in cfg.draft_vocabs]
    if cfg.runtime == "torch":
        engines = {
            BASELINE: open_model_folder(
                model_dir,
                autoregressive=True,
                threads=options.get("threads"),
                base_weights=options.get("base_weights"),
            )
        }
        for beam, vocab in shapes:
            engines[engine_name(beam, vocab)] = open_model_folder(
                model_dir, beam=beam, draft_vocab=vocab, **_for_shape(beam, options)
            )
        return engines
    from redcompile.compiler import ConvertOptions, convert
    from redcompile.runtime.loading import open_artifact

    work = work_dir or Path(tempfile.mkdtemp(prefix="redcompile-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    engines = {}
    weights = options.get("drafter_weights", "float")
    base = options.get("base_convert", {})
    base_tag = "" if base.get("weights", "float") == "float" else f"-base{base['weights']}"
    for beam, draft_vocab in [(None, None), *shapes]:
        name = engine_name(beam, draft_vocab)
        own = _for_shape(beam, options)
        quantized = beam is not None and own.get("drafter_weights", "float") != "float"
        ngrams = "-n" + "".join(map(str, beam.ngrams)) if beam is not None and beam.lookup else ""
        path = work / f"{name}{ngrams}{f'-{weights}' if quantized else ''}{base_tag}.onnx"
        if not path.exists():
            progress(f"converting {name}")
            convert(
                model_dir,
                path,
                own.get("drafter_dir"),
                ConvertOptions(
                    beam=beam or BeamShape(),
                    autoregressive=beam is None,
                    random_drafter=own.get("random_drafter", False) and beam is not None,
                    allow_pickle=options.get("allow_pickle", False),
                    draft_vocab=draft_vocab,
                    drafter_weights=own.get("drafter_weights", "float") if beam else "float",
                    **base,
                ),
            )
        engines[name] = open_artifact(path, threads=options.get("threads"))
    return engines


def _for_shape(beam: BeamShape | None, options: dict[str, Any]) -> dict[str, Any]:
    """The engine options for one shape: a lookup-only tree (width 0) takes no drafter."""
    if beam is None or not beam.lookup_only:
        return options
    drafter_keys = ("drafter_dir", "random_drafter", "drafter_weights", "allow_pickle")
    return {k: v for k, v in options.items() if k not in drafter_keys}


def _split_base_weights(source: Path | str, cfg: BenchConfig, options: dict) -> dict:
    """`weights`, `weight_block_size`, `accuracy_level` (bench --weights) as what each kind of
    source takes: convert options for ONNX Runtime, the reference's BaseWeights for PyTorch;
    an artifact has its own weights."""
    from redcompile.models.weight_quant import FLOAT, parse_base_weights

    options = dict(options)
    convert_options = {
        key: options.pop(key)
        for key in ("weights", "weight_block_size", "accuracy_level")
        if key in options
    }
    if convert_options.get("weights", FLOAT) == FLOAT:
        return options
    if not Path(source).is_dir():
        raise InputError("--weights applies to model folders; an artifact has its own weights")
    parsed = parse_base_weights(
        convert_options["weights"],
        convert_options["weight_block_size"],
        convert_options["accuracy_level"],
    )
    if cfg.runtime == "torch":
        options["base_weights"] = parsed
    else:
        options["base_convert"] = convert_options
    return options


def _run(
    engine: Generator, prompts: Sequence[Sequence[int]], batch: int, new_tokens: int
) -> GenerationResult:
    cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=batch)
    return engine.generate_ids(prompts, cfg)


def prompt_counts(result: GenerationResult) -> list[list[int]]:
    """[decoded tokens, decoding steps] of every prompt, in prompt order: what tokens per step
    is made of, kept in the record so that runs on the same prompts can be compared pairwise."""
    return [[c.decode_tokens, c.steps] for c in result.completions]


def _bootstrap_tokens_per_step(counts: Sequence[Sequence[int]], picks: np.ndarray) -> np.ndarray:
    """Tokens per step of every resample: `picks` [resamples, prompts] indexes `counts`."""
    tokens, steps = np.asarray(counts, dtype=np.float64).reshape(-1, 2).T
    return tokens[picks].sum(axis=1) / np.maximum(steps[picks].sum(axis=1), 1)


def _prompt_picks(prompts: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, prompts, (resamples, prompts))


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def tokens_per_step_interval(
    counts: Sequence[Sequence[int]], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> list[float]:
    """[low, high]: the `level` bootstrap interval of tokens per step over the prompts, from
    their `prompt_counts`.

    Tokens per step is a ratio of sums over prompts, and prompts differ: a few dozen of them
    leave several percent of sampling error. Resampling whole prompts (fixed seed, so a record
    is reproducible) keeps each prompt's steps together."""
    if not sum(steps for _, steps in counts):
        return [0.0, 0.0]
    picks = _prompt_picks(len(counts), resamples, seed)
    return _interval(_bootstrap_tokens_per_step(counts, picks), level)


def paired_difference_interval(
    counts_a: Sequence[Sequence[int]],
    counts_b: Sequence[Sequence[int]],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> list[float]:
    """[low, high]: the `level` bootstrap interval of tokens per step of B minus A, two runs
    over the same prompts (e.g. two drafters), resampling the prompts together. Much narrower
    than either run's own interval: what the prompts share cancels."""
    if len(counts_a) != len(counts_b):
        raise ValueError(f"paired runs need the same prompts: {len(counts_a)} != {len(counts_b)}")
    picks = _prompt_picks(len(counts_a), resamples, seed)
    delta = _bootstrap_tokens_per_step(counts_b, picks) - _bootstrap_tokens_per_step(
        counts_a, picks
    )
    return _interval(delta, level)


def _profiled_split(
    engine: Generator, prompts, batch: int, new_tokens: int
) -> tuple[dict[str, float], float]:
    """Per-decoding-step milliseconds by category, and tokens verified per decoding step."""
    from redcompile.runtime.ort_backend import OrtBackend

    backend = engine.backend
    tree_sizes: list[int] = []
    decodes: list[bool] = []  # per step call: whether any row decodes (else it only prefills)
    original_step = backend.step

    def observed_step():  # record which steps decode, and their tree sizes
        state = backend.read(["num_tokens", "forced"])
        decoding = (state["forced"] == 1) & (state["num_tokens"] > 0)
        tree_sizes.extend(state["num_tokens"][decoding].tolist())
        decodes.append(bool(decoding.any()))
        with _graph_range():
            return original_step()

    backend.step = observed_step
    try:
        if isinstance(backend, OrtBackend):
            split = _ort_split(engine, prompts, batch, new_tokens, decodes)
        else:
            split = _torch_split(engine, prompts, batch, new_tokens, decodes)
    finally:
        backend.step = original_step
    return split, (float(np.mean(tree_sizes)) if tree_sizes else 1.0)


SOURCES = ("drafter", "lookup", "both")


def draft_sources(
    engine: Generator, prompts, batch: int, new_tokens: int, drafter_beams: int
) -> dict[str, float]:
    """Accepted drafted tokens per decoding step, by which beams proposed them: drafter beams
    only, lookup beams only, or both (the tree shares their prefix). An untimed run that reads
    each step's tree (inputs) and accepted tokens (outputs); beams [0, drafter_beams) are the
    drafter's, the rest lookup beams (models/step.py concatenates them in that order)."""
    backend = engine.backend
    counts = dict.fromkeys(SOURCES, 0)
    steps = 0
    original_step = backend.step

    def observed_step():
        nonlocal steps
        state = backend.read(["input_ids", "beam_paths", "num_tokens", "forced"])
        new, num_new = original_step()
        decoding = (state["forced"] == 1) & (state["num_tokens"] > 0)
        for row in np.flatnonzero(decoding):
            steps += 1
            beams_wl = state["input_ids"][row][state["beam_paths"][row]]
            accepted = new[row, : max(int(num_new[row]) - 1, 0)]
            for depth in range(1, len(accepted) + 1):
                hit = (beams_wl[:, 1 : depth + 1] == accepted[:depth]).all(axis=1)
                by_drafter, by_lookup = hit[:drafter_beams].any(), hit[drafter_beams:].any()
                counts[
                    "both" if by_drafter and by_lookup else "drafter" if by_drafter else "lookup"
                ] += 1
        return new, num_new

    backend.step = observed_step
    try:
        _run(engine, prompts, batch, new_tokens)
    finally:
        backend.step = original_step
    return {k: round(v / max(steps, 1), 4) for k, v in counts.items()}


def decoding_intervals(
    intervals: Sequence[tuple[float, float]], decodes: Sequence[bool]
) -> list[tuple[float, float]]:
    """The (start, end) of the step runs that decode, from every run's interval in time order
    and whether its step decoded. A step that only prefills processes whole prompts and would
    weigh the split toward the base model; when no step decodes (one new token), every run
    stands."""
    chosen = [span for span, decoded in zip(intervals, decodes) if decoded]
    return chosen or list(intervals)


def _inside(spans: Sequence[tuple[float, float]]) -> Callable[[float], bool]:
    """A test of whether a time falls in one of the sorted, disjoint `spans`."""
    starts = [start for start, _ in spans]

    def test(at: float) -> bool:
        i = bisect.bisect_right(starts, at) - 1
        return i >= 0 and at < spans[i][1]

    return test


class _TimedSession:
    """An ONNX Runtime session that records the time of each `run_with_iobinding`."""

    def __init__(self, session: Any) -> None:
        self.session, self.seconds = session, []

    def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
        """The session's run, timed."""
        start = time.perf_counter()
        try:
            return self.session.run_with_iobinding(*args, **kwargs)
        finally:
            self.seconds.append(time.perf_counter() - start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def _unprofiled_ort_host_ms(engine: Generator, prompts, batch: int, new_tokens: int) -> float:
    """Host milliseconds of the median step, from a run without the profiler: step time minus
    the time inside ONNX Runtime's run. (The profiler slows the host side as well, and a small
    model's step is mostly host, so the profiled run cannot tell.)"""
    backend = engine.backend
    plain = backend.session
    timed = _TimedSession(plain)
    backend.session = timed
    try:
        result = _run(engine, prompts, batch, new_tokens)
    finally:
        backend.session = plain
    host = [wall - run for wall, run in zip(result.step_seconds, timed.seconds)]
    return max(0.0, statistics.median(host)) * 1e3 if host else 0.0


def _ort_split(
    engine: Generator, prompts, batch: int, new_tokens: int, decodes: list[bool]
) -> dict[str, float]:
    import onnxruntime as ort

    backend = engine.backend
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        plain = backend.session
        profiled = ort.InferenceSession(
            engine.info["source"], options, providers=plain.get_providers()
        )
        backend.session = profiled
        try:
            _run(engine, prompts, batch, new_tokens)
        finally:
            backend.session = plain
        events = json.loads(Path(profiled.end_profiling()).read_text())
    totals, steps = decoding_step_totals(events, decodes)
    split = _per_step(totals, steps)
    split["host"] = round(_unprofiled_ort_host_ms(engine, prompts, batch, new_tokens), 3)
    return split


def _graph_range():
    import torch

    return torch.profiler.record_function("redcompile.graph")


def decoding_step_totals(events: list[dict], decodes: Sequence[bool]) -> tuple[dict, int]:
    """Seconds by split category over the decoding steps of an ONNX Runtime profile, and how
    many such steps it recorded. `decodes[i]` says whether the i-th run decoded. ORT stops
    recording at a fixed number of events: only the runs it recorded whole count."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    spans = decoding_intervals(
        [(e["ts"], e["ts"] + e["dur"]) for e in runs], list(decodes[: len(runs)])
    )
    inside = _inside(spans)
    totals: dict[str, float] = defaultdict(float)
    for event in kernel_events(events):
        if inside(event["ts"]):
            totals[_category(event["name"])] += event["dur"] / 1e6
    return totals, len(spans)


CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})


def kernel_events(events: list[dict]) -> list[dict]:
    """ONNX Runtime profile events of node kernels, each microsecond counted once.

    A control-flow node's event (the If of Accept or AncestorMask) spans the branch it ran,
    whose nodes are recorded as well; those nested events are dropped and the If's own event,
    which belongs to the same op, stands for them (branch time plus the If's overhead).
    """
    kernels = sorted(
        (e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    kept, inside_until = [], -1
    for event in kernels:
        if event["ts"] < inside_until:
            continue
        kept.append(event)
        if event["args"].get("op_name") in CONTROL_FLOW_OPS:
            inside_until = event["ts"] + event["dur"]
    return kept


def _category(node_name: str) -> str:
    """The split category of a profiled ONNX Runtime node: function-body nodes are named
    `<Op>.<value>` (see ops/onnx_builder.py) and keep it when inlined, and mostly inside the
    names of nodes that graph optimisations fuse; anything else is the base model."""
    for op, category in FUNCTION_CATEGORY.items():
        if f"{op}." in node_name:
            return category
    return "base"


def _torch_split(
    engine: Generator, prompts, batch: int, new_tokens: int, decodes: list[bool]
) -> dict[str, float | None]:
    """From the step module's profiler ranges, over the decoding steps. A compiled (.pt2) step
    has none inside: its categories are unknown (None) and only the host share is measured."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = _run(engine, prompts, batch, new_tokens)
    ranges = sorted(
        (e for e in prof.events() if e.name.startswith("redcompile.")),
        key=lambda e: e.time_range.start,
    )
    graph = "redcompile.graph"
    graphs = [(e.time_range.start, e.time_range.end) for e in ranges if e.name == graph]
    chosen = decodes[: len(graphs)]
    spans = decoding_intervals(graphs, chosen)
    inside = _inside(spans)
    totals: dict[str, float] = defaultdict(float)
    for event in ranges:
        if event.name[11:] in SPLIT_KEYS and inside(event.time_range.start):
            totals[event.name[11:]] += event.cpu_time_total / 1e6
    split: dict[str, float | None] = dict(_per_step(totals, len(spans)))
    # host: the chosen steps' time outside the graph's profiler range
    walls = [t for t, d in zip(result.step_seconds, chosen) if d] or result.step_seconds
    graph_seconds = sum(end - start for start, end in spans) / 1e6
    split["host"] = round(max(0.0, sum(walls) - graph_seconds) / max(1, len(spans)) * 1e3, 3)
    if not totals:
        split.update({key: None for key in SPLIT_KEYS if key != "host"})
    return split


def _scaled_to(split: dict[str, float | None], step_ms: float) -> dict[str, float | None]:
    """The profiled split rescaled to an unprofiled step of `step_ms`: profiling slows every
    node down, so its absolute times overstate the graph; its proportions are kept, and the
    host time (measured without the profiler) is kept as measured."""
    host = min(split["host"] or 0.0, step_ms)
    graph = {k: v for k, v in split.items() if k != "host" and v is not None}
    profiled_graph = sum(graph.values())
    scaled: dict[str, float | None] = dict(split)
    for key, value in graph.items():
        share = value / profiled_graph if profiled_graph > 0 else 0.0
        scaled[key] = round(share * (step_ms - host), 3)
    scaled["host"] = round(host, 3)
    return scaled


def _per_step(totals: dict[str, float], steps: int) -> dict[str, float]:
    """Milliseconds per step of each graph category over `steps` steps."""
    steps = max(1, steps)
    return {key: round(totals.get(key, 0.0) / steps * 1e3, 3) for key in SPLIT_KEYS}


def bench(
    source: Path | str,
    prompts: Sequence[str],
    cfg: BenchConfig | None = None,
    baseline: Path | str | None = None,
    work_dir: Path | str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> BenchReport:
    """Measure; see the module docstring."""
    from redcompile.runtime.loading import open_artifact

    cfg = cfg or BenchConfig()
    cfg.validate()
    say = progress or (lambda _m: None)
    options = _split_base_weights(source, cfg, options)
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
    ids = [engines[BASELINE].codec.encode(p) for p in prompts]
    measurements = []
    for batch in cfg.batch_sizes:
        say(f"batch size {batch}")
        seconds: dict[str, list[float]] = defaultdict(list)
        last: dict[str, GenerationResult] = {}
        names = list(engines)
        for repeat in range(cfg.repeats + 1):
            order = names if repeat % 2 == 0 else names[::-1]  # alternate, so drift cancels
            for name in order:
                result = _run(engines[name], ids, batch, cfg.max_new_tokens)
                if repeat > 0:  # round 0 is the warm-up
                    seconds[name].append(result.seconds)
                    last[name] = result
        for name, engine in engines.items():
            result = last[name]
            profiled = ids[: max(4, 2 * batch)]  # enough for full rows, few enough to record
            split, verified = _profiled_split(engine, profiled, batch, cfg.max_new_tokens)
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
                    split_ms=_scaled_to(split, step_ms),
                    draft_vocab=engine.info.get("draft_vocab"),
                    tokens_per_step_ci95=tokens_per_step_interval(counts),
                    prompt_counts=counts,
                    lookup_beams=lookup,
                    draft_sources=sources,
                )
            )
        reference = next(m for m in measurements if m.engine == BASELINE and m.batch_size == batch)
        for m in measurements:
            if m.batch_size == batch:
                m.speedup = round(m.tokens_per_second / reference.tokens_per_second, 3)
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


def plot(report: BenchReport, path: Path | str, speed: bool = True) -> Path:
    """Speedup and tokens per step: across batch sizes, one line per beam shape; or, for a
    single batch size, across beam widths, one line per beam length. `speed=False` draws
    tokens per step alone (for records whose timings are not comparable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if speed:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    else:
        fig, right = plt.subplots(1, 1, figsize=(6, 4.2))
        left = None
    drafted = [m for m in report.measurements if m.engine != BASELINE]
    by_width = len({m.batch_size for m in drafted}) == 1
    if by_width:  # x: beam width, a line per beam length (and draft vocabulary)
        groups = sorted({(m.beam_length, m.draft_vocab or 0) for m in drafted})
        lines = {
            f"L{length}" + (f" V{vocab}" if vocab else ""): sorted(
                (m for m in drafted if (m.beam_length, m.draft_vocab or 0) == (length, vocab)),
                key=lambda m: m.beam_width,
            )
            for length, vocab in groups
        }
        x_of, x_label = (lambda m: m.beam_width), "beam width"
    else:  # x: batch size, a line per beam shape
        lines = {
            name: sorted((m for m in drafted if m.engine == name), key=lambda m: m.batch_size)
            for name in sorted({m.engine for m in drafted})
        }
        x_of, x_label = (lambda m: m.batch_size), "batch size"
    for name, rows in lines.items():
        xs = [x_of(m) for m in rows]
        if left is not None:
            left.plot(xs, [m.speedup for m in rows], marker="o", label=name)
        tps = [m.tokens_per_step for m in rows]
        errors = None  # the prompts' sampling error, where the record has it
        if all(m.tokens_per_step_ci95 for m in rows):
            errors = [
                [t - m.tokens_per_step_ci95[0] for t, m in zip(tps, rows)],
                [m.tokens_per_step_ci95[1] - t for t, m in zip(tps, rows)],
            ]
        right.errorbar(xs, tps, yerr=errors, marker="o", capsize=3, elinewidth=1, label=name)
    if left is not None:
        left.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        left.set(
            title=f"Speedup over autoregressive ({report.runtime})",
            xlabel=x_label,
            ylabel="tokens/s ratio",
        )
    right.set(
        title="Tokens per step (greedy; bars: 95% over prompts)",
        xlabel=x_label,
        ylabel="tokens / step",
    )
    for axis in (a for a in (left, right) if a is not None):
        axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    batch = f", batch {drafted[0].batch_size}" if by_width and drafted else ""
    fig.suptitle(
        f"{Path(report.source).name}: {report.prompts} prompts, "
        f"{report.max_new_tokens} new tokens{batch}, median of {report.repeats}"
    )
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
