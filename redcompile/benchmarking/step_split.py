"""The decoding step's split: milliseconds per step by category (base model, drafting, lookup,
tree, acceptance, KV update, host), the tokens verified per step, and the accepted drafts by the
beams that proposed them. Untimed runs with hooks on the backend (`StepObserver`): ONNX Runtime's
profiler for artifacts, the step module's profiler ranges for PyTorch; steps that only prefill
are left out, since they process whole prompts and would weigh the split toward the base model.
"""

from __future__ import annotations

import bisect
import json
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from redcompile.benchmarking.report import SPLIT_KEYS
from redcompile.generation import GenerationConfig, GenerationResult, StepBackend, StepObserver
from redcompile.passes.speculation_levels import CHOOSE_NODE
from redcompile.runtime.generator import Generator

# Inlined ONNX function nodes are named _inlfunc_<Op>_...: the op tells the split category.
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


def _decode(engine: Generator, prompts, batch: int, new_tokens: int) -> GenerationResult:
    """One greedy decode of `prompts` in `batch` rows (an untimed measurement run)."""
    return engine.generate_ids(
        prompts, GenerationConfig(max_new_tokens=new_tokens, batch_size=batch)
    )


def _decoding_rows(state: dict[str, np.ndarray]) -> np.ndarray:
    """Which rows of a step's inputs decode a tree (forced root) rather than prefill or idle."""
    return (state["forced"] == 1) & (state["num_tokens"] > 0)


class _DecodeRecorder(StepObserver):
    """Records, per batched step, whether any row decodes and the decoding rows' tree sizes;
    for a PyTorch step it also marks the step with a profiler range (`redcompile.graph`)."""

    def __init__(self, graph_ranges: bool) -> None:
        self.decodes: list[bool] = []
        self.tree_sizes: list[int] = []
        self.graph_ranges, self._range = graph_ranges, None

    def before_step(self, backend: StepBackend) -> None:
        state = backend.read(["num_tokens", "forced"])
        decoding = _decoding_rows(state)
        self.tree_sizes.extend(state["num_tokens"][decoding].tolist())
        self.decodes.append(bool(decoding.any()))
        if self.graph_ranges:
            import torch

            self._range = torch.profiler.record_function("redcompile.graph")
            self._range.__enter__()

    def after_step(self, backend: StepBackend, new_tokens, num_new) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None


def profiled_split(
    engine: Generator, prompts, batch: int, new_tokens: int
) -> tuple[dict[str, float], float]:
    """Per-decoding-step milliseconds by category, and tokens verified per decoding step."""
    from redcompile.runtime.ort_backend import OrtBackend

    backend = engine.backend
    is_ort = isinstance(backend, OrtBackend)
    with backend.observing(_DecodeRecorder(graph_ranges=not is_ort)) as recorder:
        if is_ort:
            split = _ort_split(engine, prompts, batch, new_tokens, recorder.decodes)
        else:
            split = _torch_split(engine, prompts, batch, new_tokens, recorder.decodes)
    sizes = recorder.tree_sizes
    return split, (float(np.mean(sizes)) if sizes else 1.0)


SOURCES = ("drafter", "lookup", "both")


class _DraftSourceCounter(StepObserver):
    """Counts accepted drafted tokens by the beams that proposed them: it reads each step's
    tree (inputs) and accepted tokens (outputs); beams [0, drafter_beams) are the drafter's,
    the rest lookup beams (models/step.py concatenates them in that order)."""

    def __init__(self, drafter_beams: int) -> None:
        self.drafter_beams = drafter_beams
        self.counts = dict.fromkeys(SOURCES, 0)
        self.steps = 0
        self._state: dict[str, np.ndarray] = {}

    def before_step(self, backend: StepBackend) -> None:
        self._state = backend.read(["input_ids", "beam_paths", "num_tokens", "forced"])

    def after_step(self, backend: StepBackend, new_tokens, num_new) -> None:
        state, w = self._state, self.drafter_beams
        for row in np.flatnonzero(_decoding_rows(state)):
            self.steps += 1
            beams_wl = state["input_ids"][row][state["beam_paths"][row]]
            accepted = new_tokens[row, : max(int(num_new[row]) - 1, 0)]
            for depth in range(1, len(accepted) + 1):
                hit = (beams_wl[:, 1 : depth + 1] == accepted[:depth]).all(axis=1)
                by_drafter, by_lookup = hit[:w].any(), hit[w:].any()
                source = (
                    "both" if by_drafter and by_lookup else "drafter" if by_drafter else "lookup"
                )
                self.counts[source] += 1


def draft_sources(
    engine: Generator, prompts, batch: int, new_tokens: int, drafter_beams: int
) -> dict[str, float]:
    """Accepted drafted tokens per decoding step, by which beams proposed them: drafter beams
    only, lookup beams only, or both (the tree shares their prefix); an untimed run."""
    with engine.backend.observing(_DraftSourceCounter(drafter_beams)) as counter:
        _decode(engine, prompts, batch, new_tokens)
    return {k: round(v / max(counter.steps, 1), 4) for k, v in counter.counts.items()}


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


def _unprofiled_ort_host_ms(engine: Generator, prompts, batch: int, new_tokens: int) -> float:
    """Host milliseconds of the median step, from a run without the profiler: step time minus
    the time inside ONNX Runtime's run (the backend's `run_seconds`). The profiler slows the
    host side as well, and a small model's step is mostly host, so the profiled run cannot
    tell."""
    with engine.backend.observing(_RunSeconds()) as timer:
        result = _decode(engine, prompts, batch, new_tokens)
    host = [wall - run for wall, run in zip(result.step_seconds, timer.seconds)]
    return max(0.0, statistics.median(host)) * 1e3 if host else 0.0


class _RunSeconds(StepObserver):
    """Collects each step's seconds inside the runtime's run call."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def after_step(self, backend: StepBackend, new_tokens, num_new) -> None:
        self.seconds.append(backend.run_seconds)


def _ort_split(
    engine: Generator, prompts, batch: int, new_tokens: int, decodes: list[bool]
) -> dict[str, float]:
    import onnxruntime as ort

    backend = engine.backend
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        profiled = ort.InferenceSession(
            engine.info["source"], options, providers=backend.session.get_providers()
        )
        with backend.using_session(profiled):
            _decode(engine, prompts, batch, new_tokens)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    totals, steps = decoding_step_totals(events, decodes)
    split = _per_step(totals, steps)
    split["host"] = round(_unprofiled_ort_host_ms(engine, prompts, batch, new_tokens), 3)
    return split


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
            totals[node_category(event["name"])] += event["dur"] / 1e6
    return totals, len(spans)


CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
# The If that chooses a step's branch (passes/speculation_levels.py): its nested nodes are the
# step's own, split like any step's; the If's overhead is left to the scaling to the step time.
LEVELS_IF = CHOOSE_NODE


def kernel_events(events: list[dict]) -> list[dict]:
    """ONNX Runtime profile events of node kernels, each microsecond counted once.

    A control-flow node's event (the If of Accept or AncestorMask) spans the branch it ran,
    whose nodes are recorded as well; those nested events are dropped and the If's own event,
    which belongs to the same op, stands for them (branch time plus the If's overhead). The
    speculation levels' If is the exception: its branch is the whole step.
    """
    kernels = sorted(
        (e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    kept, inside_until = [], -1
    for event in kernels:
        if event["ts"] < inside_until:
            continue
        if event["name"].startswith(LEVELS_IF):  # the whole step: its nodes are what counts
            continue
        kept.append(event)
        if event["args"].get("op_name") in CONTROL_FLOW_OPS:
            inside_until = event["ts"] + event["dur"]
    return kept


def node_category(node_name: str) -> str:
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
        result = _decode(engine, prompts, batch, new_tokens)
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


def scaled_to(split: dict[str, float | None], step_ms: float) -> dict[str, float | None]:
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
