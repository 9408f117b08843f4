"""The host loop: feed step outputs back as inputs, collect tokens, schedule rows.

The loop is the same for every runtime (PyTorch module, ONNX Runtime session): a `StepBackend`
holds the step's tensors where they live and runs one step; the loop only reads the few tokens a
step emits and, when a row finishes or a prompt is admitted, rewrites that row's small state. It
does no tensor math. With more prompts than batch rows, a finished row takes the next prompt
while the other rows keep decoding (in-flight batching).
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from redcompile.errors import InputError
from redcompile.io_contract import (
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    GREEDY_BELOW,
    HISTORY,
    MAX_SEED,
    ROW_STATE,
    SPECULATION,
    SPECULATION_LEVELS,
    TREE_STATE,
    StepSignature,
)
from redcompile.speculation import SpeculationPolicy

StreamCallback = Callable[[int, list[int]], None]  # (prompt index, new token ids)


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate: the knobs of `redcompile generate`."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # below GREEDY_BELOW (0 included): greedy
    top_k: int = DEFAULT_TOP_K  # sample among the k most likely tokens; 0: all
    top_p: float = DEFAULT_TOP_P  # sample from the smallest set holding this mass; 1: all
    seed: int = 0
    batch_size: int = 1
    stop_token_ids: tuple[int, ...] = ()

    def validate(self) -> None:
        """Refuse values no run can use, with the option name in the message."""
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_temperature(self.temperature, "--temperature")
        if self.top_k < 0:
            raise InputError(f"--top-k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0 < self.top_p <= 1:  # False for NaN too
            raise InputError(f"--top-p must be in (0, 1] (1 keeps every token), got {self.top_p}")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"--seed must be in 0 ... 2**63 - 1, got {self.seed}")


def check_temperature(value: float, name: str) -> None:
    """A temperature is finite and >= 0; one too small to divide by decodes greedily."""
    if not np.isfinite(value) or value < 0:
        raise InputError(f"{name} must be a finite number >= 0 (0 is greedy), got {value}")


def is_sampling(temperature: float) -> bool:
    """Whether a row at `temperature` samples (the step's rule, io_contract.GREEDY_BELOW)."""
    return temperature >= GREEDY_BELOW


@dataclass
class Completion:
    """One prompt's result."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    steps: int = 0  # decoding steps (after the prefill step) that emitted tokens for it
    decode_tokens: int = 0  # tokens those steps emitted

    @property
    def tokens_per_step(self) -> float:
        """Tokens per decoding step (Apple's accepted + 1); 1.0 for autoregressive decoding."""
        return self.decode_tokens / self.steps if self.steps else 0.0


@dataclass
class GenerationResult:
    """All completions plus run-level counters."""

    completions: list[Completion]
    steps: int  # step calls
    seconds: float
    step_seconds: list[float] = field(default_factory=list)
    level_steps: dict[str, int] = field(default_factory=dict)  # batched steps per level

    @property
    def generated_tokens(self) -> int:
        """Tokens generated over all prompts."""
        return sum(len(c.token_ids) for c in self.completions)

    @property
    def tokens_per_step(self) -> float:
        """Decoding tokens per decoding step, over all prompts."""
        steps = sum(c.steps for c in self.completions)
        return sum(c.decode_tokens for c in self.completions) / steps if steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of wall time."""
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


class StepObserver:
    """Hooks around each batched step of the host loop, for measurement (`bench`'s step split
    and draft accounting): they may read the backend's inputs before the step and see the
    tokens it emitted. The loop runs no hook unless one is attached (`StepBackend.observing`)."""

    def before_step(self, backend: StepBackend) -> None:
        """Called with the next step's inputs in place."""

    def after_step(self, backend: StepBackend, new_tokens: np.ndarray, num_new: np.ndarray) -> None:
        """Called with the step's emitted tokens ([B, L]) and counts ([B])."""


class StepBackend(ABC):
    """A loaded step graph and its device-resident state."""

    signature: StepSignature
    beam_width: int
    beam_length: int
    vocab_size: int
    max_seq_len: int

    # Seconds the last step spent inside the runtime's run call (the rest of a step's wall time
    # is host work: binding, feedback, copying the emitted tokens back).
    run_seconds: float = 0.0
    observers: tuple[StepObserver, ...] = ()
    # Whether a step at level none appends its tokens to the token history, as the artifact's
    # graph does; a backend that runs level none without that work says False, and the loop
    # then writes each row's history (its prompt and emitted tokens) before the next drafting
    # step (runtime/ort_backend.py, passes/host_graphs.py).
    history_at_none: bool = True

    @contextlib.contextmanager
    def observing(self, observer: StepObserver) -> Iterator[StepObserver]:
        """Call `observer` around every batched step of the loop while the block runs."""
        self.observers = (*self.observers, observer)
        try:
            yield observer
        finally:
            self.observers = tuple(o for o in self.observers if o is not observer)

    def observed_step(self) -> tuple[np.ndarray, np.ndarray]:
        """`step()` with every observer's before/after hooks around it (the loop's call)."""
        for observer in self.observers:
            observer.before_step(self)
        new_tokens, num_new = self.step()
        for observer in self.observers:
            observer.after_step(self, new_tokens, num_new)
        return new_tokens, num_new

    @property
    def tree_width(self) -> int:
        """Packed tokens of a decoding row: W * (L - 1) + 1."""
        return self.beam_width * (self.beam_length - 1) + 1

    @property
    def speculative(self) -> bool:
        """Whether the step drafts."""
        return self.beam_length > 1

    def prepare(self, sampling: bool) -> None:
        """Before `reset`: whether some row of the next run samples (a backend may then run a
        step graph without the sampling work when none does); by default nothing changes."""
        return None

    @abstractmethod
    def reset(self, batch_size: int, capacity: int) -> None:
        """Allocate zeroed state for `batch_size` rows and a cache of `capacity` tokens."""

    @abstractmethod
    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the named inputs of the next step."""

    @abstractmethod
    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named inputs of the next step, on the host."""

    @abstractmethod
    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """Run one step, feed outputs back; return (new_tokens [B, L], num_new_tokens [B])."""

    @abstractmethod
    def step_row(self, row: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one step on batch row `row` alone, as a batch of one: `inputs` holds every
        input but the cache ([1, ...] each), the row's slice of the cache is read and written
        in place; returns host copies of every output but the cache. Rows are independent, so
        this is the same computation the row would get inside the batch; the loop prefills
        admitted prompts this way, so a batched step never widens every row to a prompt."""

    @abstractmethod
    def last_outputs(self) -> dict[str, np.ndarray]:
        """Every output of the last step, on the host (for verification; copies everything)."""


def cache_capacity(prompt_lengths: Sequence[int], max_new_tokens: int, backend: StepBackend) -> int:
    """Cache slots a batch needs: longest prompt + new tokens + one step's overshoot and writes."""
    longest = max(prompt_lengths)
    return longest + max_new_tokens + backend.beam_length + max(backend.tree_width, longest)


def check_lengths(
    prompts: Sequence[Sequence[int]], cfg: GenerationConfig, max_seq_len: int
) -> None:
    """One clear line for a prompt that cannot fit the model's or artifact's maximum length."""
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise InputError(f"prompt {index}: is empty after tokenization")
        total = len(prompt) + cfg.max_new_tokens
        if total > max_seq_len:
            raise InputError(
                f"prompt {index}: {len(prompt)} tokens + --max-new-tokens {cfg.max_new_tokens} "
                f"= {total} exceeds the maximum sequence length {max_seq_len}; shorten the prompt "
                f"or lower --max-new-tokens"
            )


# Packed-token state and the value that pads it past a row's tokens (token 0, the root, depth 0).
PACKED_FILL = {"input_ids": 0, "parent_ids": -1, "depths": 0}


def _prompt_state(prompt: Sequence[int]) -> dict[str, np.ndarray]:
    """Row state [1, ...] of a prefill row for `prompt` with an empty cache: a chain of the
    prompt's tokens, every one forced."""
    p = len(prompt)
    return {
        "input_ids": np.asarray([prompt], dtype=np.int64),
        "parent_ids": np.arange(-1, p - 1, dtype=np.int64)[None],
        "depths": np.arange(p, dtype=np.int64)[None],
        "num_tokens": np.array([p], dtype=np.int64),
        "forced": np.array([p], dtype=np.int64),
        "cache_lengths": np.zeros(1, dtype=np.int64),
    }


class _Rows:
    """Host copy of the fed-back row state, edited only when rows change."""

    def __init__(self, backend: StepBackend) -> None:
        self.backend = backend
        self.names = ROW_STATE + (TREE_STATE if backend.speculative else ())
        if HISTORY in backend.signature.input_names():
            self.names += (HISTORY,)
        self.arrays: dict[str, np.ndarray] = {}

    def load(self) -> None:
        self.arrays = self.backend.read(self.names)

    def widen(self, width: int) -> None:
        """Pad the packed-token arrays to `width` columns with `PACKED_FILL`."""
        current = self.arrays["input_ids"].shape[1]
        if width <= current:
            return
        for name, fill in PACKED_FILL.items():
            old = self.arrays[name]
            new = np.full((old.shape[0], width), fill, dtype=old.dtype)
            new[:, :current] = old
            self.arrays[name] = new

    def _put(self, row: int, values: dict[str, np.ndarray]) -> None:
        """Row `row` of each named array becomes values[name][0], packed ones padded."""
        self.widen(max(values[name].shape[1] for name in PACKED_FILL if name in values))
        for name, value in values.items():
            if name in PACKED_FILL:
                self.arrays[name][row] = PACKED_FILL[name]
                self.arrays[name][row, : value.shape[1]] = value[0]
            else:
                self.arrays[name][row] = value[0]

    def admit(self, row: int, prompt: Sequence[int]) -> None:
        """Make `row` a prefill row for `prompt` with an empty cache (in the batched step)."""
        self._put(row, _prompt_state(prompt))

    def prefill_inputs(self, prompt: Sequence[int]) -> dict[str, np.ndarray]:
        """The state inputs of a batch of one that prefills `prompt` from an empty cache (tree
        state and history zeros: a prefill row reads neither)."""
        inputs = _prompt_state(prompt)
        for name in self.names:
            if name not in inputs:
                held = self.arrays[name]
                inputs[name] = np.zeros((1, *held.shape[1:]), dtype=held.dtype)
        return inputs

    def take(self, row: int, outputs: dict[str, np.ndarray]) -> None:
        """Row `row`'s state becomes the next state a batch of one produced for it."""
        self._put(row, {name: outputs[f"next_{name}"] for name in self.names})

    def write_history(self, row: int, tokens: Sequence[int]) -> None:
        """Row `row`'s token history becomes `tokens` (its prompt and emitted tokens: what the
        step's own upkeep would hold, ops/prompt_lookup.py); later slots are never read."""
        history = self.arrays[HISTORY]
        history[row, : len(tokens)] = tokens

    def idle(self, row: int) -> None:
        """Stop computing for `row`."""
        for name in ("num_tokens", "forced", "cache_lengths"):
            self.arrays[name][row] = 0

    def store(self) -> None:
        self.backend.write(self.arrays)


class _Levels:
    """The speculation level the policy picks for each step, written to the backend only when
    it changes; a step without the input (autoregressive, older artifacts) ignores it."""

    def __init__(self, backend: StepBackend, policy: SpeculationPolicy | None) -> None:
        self.backend = backend
        self.policy = policy or SpeculationPolicy.fixed("full")
        self.active = SPECULATION in backend.signature.input_names()
        self.current: str | None = None  # the level the backend holds
        self.steps: dict[str, int] = {}

    def _input(self) -> dict[str, np.ndarray]:
        return {SPECULATION: np.array(SPECULATION_LEVELS[self.current], dtype=np.int64)}

    def set_for(self, rows: int) -> bool:
        """Make the next step's level the policy's for `rows` decoding rows; whether it rises
        from none to a drafting level."""
        if not self.active:
            return False
        level = self.policy.level(rows)
        rises = self.current == "none" and level != "none"
        if level != self.current:
            self.current = level
            self.backend.write(self._input())
        self.steps[level] = self.steps.get(level, 0) + 1
        return rises

    def row_inputs(self) -> dict[str, np.ndarray]:
        """The level input of a batch of one (`StepBackend.step_row`): the batch's."""
        if not self.active or self.current is None:
            return {}
        return self._input()


def generate_ids(
    backend: StepBackend,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    on_tokens: StreamCallback | None = None,
    temperatures: Sequence[float] | None = None,
    speculation: SpeculationPolicy | None = None,
) -> GenerationResult:
    """Generate for every prompt (token ids), `cfg.batch_size` rows at a time.

    The first `batch_size` prompts prefill together in the first step. A prompt admitted
    later enters its row through a step of its own (`StepBackend.step_row`, a batch of one over
    the row's cache slice), so the batched steps carry decoding rows only and their packed
    width stays the tree's: admitting a prompt costs its own tokens, not every row padded to it.
    A speculative step drafts at the level `speculation` picks for the rows it decodes
    (redcompile/speculation.py; None: full speculation, the compiled tree, every step).
    """
    cfg.validate()
    temps = list(temperatures) if temperatures is not None else [cfg.temperature] * len(prompts)
    for index, value in enumerate(temps):
        check_temperature(value, f"prompt {index}: temperature")
    check_lengths(prompts, cfg, backend.max_seq_len)
    batch = min(cfg.batch_size, len(prompts))
    sampling = _Sampling(cfg, temps, backend.beam_length)
    backend.prepare(sampling.any)
    backend.reset(batch, cache_capacity([len(p) for p in prompts], cfg.max_new_tokens, backend))
    completions = [Completion(prompt_ids=list(p)) for p in prompts]
    stops = set(cfg.stop_token_ids)

    start = time.perf_counter()
    step_seconds: list[float] = []
    rows = _Rows(backend)
    slot_of: list[int | None] = [None] * batch  # prompt index per row
    queue = list(range(len(prompts)))
    levels = _Levels(backend, speculation)

    def fill(row: int) -> None:
        """Prefill queued prompts into `row` until one is still generating (or none is left)."""
        while queue:
            index = queue.pop(0)
            inputs = rows.prefill_inputs(prompts[index])
            inputs.update(sampling.controls([index]))
            inputs["sample_uniforms"] = sampling.uniforms([index], completions)
            inputs.update(levels.row_inputs())
            t0 = time.perf_counter()
            outputs = backend.step_row(row, inputs)
            step_seconds.append(time.perf_counter() - t0)
            rows.take(row, outputs)
            first = outputs["new_tokens"][0, : outputs["num_new_tokens"][0]].tolist()
            done = _append(
                completions[index], first, False, cfg.max_new_tokens, stops, on_tokens, index
            )
            if not done:
                slot_of[row] = index
                return
        slot_of[row] = None
        rows.idle(row)

    # The first prompts prefill together in the first batched step: no row decodes yet, so
    # widening the batch to the longest of them costs nothing another row would pay.
    rows.load()
    for row in range(batch):
        slot_of[row] = queue.pop(0)
        rows.admit(row, prompts[slot_of[row]])
    rows.store()
    backend.write(
        {**sampling.controls(slot_of), "sample_uniforms": sampling.uniforms(slot_of, completions)}
    )
    prefilling = True

    decoding = batch  # rows holding a prompt
    rebuild_history = HISTORY in rows.names and not backend.history_at_none
    while decoding:
        if levels.set_for(decoding) and rebuild_history:
            # the none steps left the history as it was: write what they would have appended
            rows.load()
            for row, index in enumerate(slot_of):
                if index is not None:
                    rows.write_history(row, [*prompts[index], *completions[index].token_ids])
            rows.store()
        t0 = time.perf_counter()
        new_tokens, num_new = backend.observed_step()
        step_seconds.append(time.perf_counter() - t0)
        finished_rows = []
        counts = num_new.tolist()
        for row, index in enumerate(slot_of):
            if index is None or counts[row] == 0:
                continue
            tokens = new_tokens[row, : counts[row]].tolist()
            if _append(
                completions[index],
                tokens,
                not prefilling,
                cfg.max_new_tokens,
                stops,
                on_tokens,
                index,
            ):
                finished_rows.append(row)
        prefilling = False
        if finished_rows:
            rows.load()
            for row in finished_rows:
                fill(row)
            rows.store()
            backend.write(sampling.controls(slot_of))
            decoding = sum(index is not None for index in slot_of)
        if sampling.any:
            backend.write({"sample_uniforms": sampling.uniforms(slot_of, completions)})
    seconds = time.perf_counter() - start
    return GenerationResult(
        completions, len(step_seconds), seconds, step_seconds, dict(levels.steps)
    )


class UniformStream:
    """One prompt's U[0, 1) float32 values, value i for the i-th token it generates.

    Indexed by the emitted token's position rather than by step, so a prompt draws the same
    value for its i-th token in every mode: a seeded speculative run picks the tokens the
    seeded autoregressive run picks (ops/acceptance.py), and neither depends on the batch.
    """

    CHUNK = 256

    def __init__(self, seed: int, index: int) -> None:
        self._rng = np.random.default_rng([seed, index])
        self._values = np.empty(0, dtype=np.float32)

    def window(self, start: int, length: int) -> np.ndarray:
        """Values start ... start + length - 1."""
        while self._values.size < start + length:
            more = self._rng.random(self.CHUNK, dtype=np.float32)
            self._values = np.concatenate([self._values, more])
        return self._values[start : start + length]


class _Sampling:
    """Every prompt's sampling controls and uniforms, as the step's per-row inputs."""

    def __init__(self, cfg: GenerationConfig, temperatures: Sequence[float], length: int) -> None:
        self.cfg, self.temps, self.length = cfg, temperatures, length
        self.sampled = [is_sampling(t) for t in temperatures]
        self.any = any(self.sampled)
        self.streams = [  # a greedy prompt draws nothing (and a generator costs ~30 us)
            UniformStream(cfg.seed, i) if sampled else None
            for i, sampled in enumerate(self.sampled)
        ]

    def controls(self, slot_of: Sequence[int | None]) -> dict[str, np.ndarray]:
        """temperature, top_k, top_p [B] of the prompts in `slot_of` (idle rows: greedy)."""
        return {
            "temperature": np.array(
                [0.0 if i is None else self.temps[i] for i in slot_of], dtype=np.float32
            ),
            "top_k": np.full(len(slot_of), self.cfg.top_k, dtype=np.int64),
            "top_p": np.full(len(slot_of), self.cfg.top_p, dtype=np.float32),
        }

    def uniforms(
        self, slot_of: Sequence[int | None], completions: Sequence[Completion]
    ) -> np.ndarray:
        """sample_uniforms [B, L]: each sampling row's values for its next L tokens; zeros
        for greedy and idle rows."""
        out = np.zeros((len(slot_of), self.length), dtype=np.float32)
        for row, index in enumerate(slot_of):
            if index is not None and self.sampled[index]:
                position = len(completions[index].token_ids)
                out[row] = self.streams[index].window(position, self.length)
        return out


def _append(
    completion: Completion,
    tokens: list[int],
    counted: bool,
    max_new: int,
    stops: set[int],
    on_tokens: StreamCallback | None,
    index: int,
) -> bool:
    """Add a step's tokens to a completion; True when it is finished."""
    emitted = []
    finished = False
    for token in tokens:
        if token in stops:
            completion.finish_reason, finished = "stop", True
            break
        emitted.append(token)
        if len(completion.token_ids) + len(emitted) >= max_new:
            completion.finish_reason, finished = "length", True
            break
    completion.token_ids.extend(emitted)
    if counted:  # the prefill step's single token is not a decoding step
        completion.steps += 1
        completion.decode_tokens += len(emitted) + (completion.finish_reason == "stop")
    if on_tokens is not None and emitted:
        on_tokens(index, emitted)
    return finished


def first_step_outputs(
    backend: StepBackend, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> dict[str, np.ndarray]:
    """Every output of the prefill step of `prompts` (one row each, greedy)."""
    capacity = cache_capacity([len(p) for p in prompts], max_new_tokens, backend)
    backend.prepare(sampling=False)
    backend.reset(len(prompts), capacity)
    rows = _Rows(backend)
    rows.load()
    for row, prompt in enumerate(prompts):
        rows.admit(row, prompt)
    rows.store()
    idle: list[int | None] = [None] * len(prompts)
    sampling = _Sampling(GenerationConfig(), [], backend.beam_length)
    backend.write({**sampling.controls(idle), "sample_uniforms": sampling.uniforms(idle, [])})
    backend.step()
    return backend.last_outputs()
