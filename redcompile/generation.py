"""The host loop: feed step outputs back as inputs, collect tokens, schedule rows.

The loop is the same for every runtime (PyTorch module, ONNX Runtime session): a `StepBackend`
holds the step's tensors where they live and runs one step; the loop only reads the few tokens a
step emits and, when a row finishes or a prompt is admitted, rewrites that row's small state. It
does no tensor math. With more prompts than batch rows, a finished row takes the next prompt
while the other rows keep decoding (in-flight batching).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from redcompile.errors import InputError
from redcompile.io_contract import HISTORY, ROW_STATE, TREE_STATE, StepSignature

StreamCallback = Callable[[int, list[int]], None]  # (prompt index, new token ids)


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate: the knobs of `redcompile generate`."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 1
    stop_token_ids: tuple[int, ...] = ()

    def validate(self) -> None:
        """Refuse values no run can use, with the option name in the message."""
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise InputError(f"--temperature must be >= 0, got {self.temperature}")


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


class StepBackend(ABC):
    """A loaded step graph and its device-resident state."""

    signature: StepSignature
    beam_width: int
    beam_length: int
    vocab_size: int
    max_seq_len: int

    @property
    def tree_width(self) -> int:
        """Packed tokens of a decoding row: W * (L - 1) + 1."""
        return self.beam_width * (self.beam_length - 1) + 1

    @property
    def speculative(self) -> bool:
        """Whether the step drafts."""
        return self.beam_length > 1

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

    def idle(self, row: int) -> None:
        """Stop computing for `row`."""
        for name in ("num_tokens", "forced", "cache_lengths"):
            self.arrays[name][row] = 0

    def store(self) -> None:
        self.backend.write(self.arrays)


def generate_ids(
    backend: StepBackend,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    on_tokens: StreamCallback | None = None,
    temperatures: Sequence[float] | None = None,
) -> GenerationResult:
    """Generate for every prompt (token ids), `cfg.batch_size` rows at a time.

    A prompt enters a row through a step of its own (`StepBackend.step_row`, a batch of one
    over the row's cache slice), so the batched steps carry decoding rows only and their packed
    width stays the tree's: admitting a prompt costs its own tokens, not every row padded to it.
    """
    cfg.validate()
    check_lengths(prompts, cfg, backend.max_seq_len)
    batch = min(cfg.batch_size, len(prompts))
    backend.reset(batch, cache_capacity([len(p) for p in prompts], cfg.max_new_tokens, backend))
    temps = list(temperatures) if temperatures is not None else [cfg.temperature] * len(prompts)
    rngs = [np.random.default_rng([cfg.seed, i]) for i in range(len(prompts))]
    completions = [Completion(prompt_ids=list(p)) for p in prompts]
    stops = set(cfg.stop_token_ids)
    sampling = any(t > 0 for t in temps)

    start = time.perf_counter()
    step_seconds: list[float] = []
    rows = _Rows(backend)
    slot_of: list[int | None] = [None] * batch  # prompt index per row
    queue = list(range(len(prompts)))
    temperature = np.zeros(batch, dtype=np.float32)

    def fill(row: int) -> None:
        """Prefill queued prompts into `row` until one is still generating (or none is left)."""
        while queue:
            index = queue.pop(0)
            inputs = rows.prefill_inputs(prompts[index])
            inputs["temperature"] = np.array([temps[index]], dtype=np.float32)
            inputs.update(_row_uniforms(backend, rngs[index], temps[index]))
            t0 = time.perf_counter()
            outputs = backend.step_row(row, inputs)
            step_seconds.append(time.perf_counter() - t0)
            rows.take(row, outputs)
            first = outputs["new_tokens"][0, : outputs["num_new_tokens"][0]].tolist()
            done = _append(
                completions[index], first, False, cfg.max_new_tokens, stops, on_tokens, index
            )
            if not done:
                slot_of[row], temperature[row] = index, temps[index]
                return
        slot_of[row] = None
        rows.idle(row)

    rows.load()
    for row in range(batch):
        fill(row)
    rows.store()
    backend.write({"temperature": temperature, **_uniforms(backend, slot_of, rngs, temps)})

    while any(index is not None for index in slot_of):
        t0 = time.perf_counter()
        new_tokens, num_new = backend.step()
        step_seconds.append(time.perf_counter() - t0)
        finished_rows = []
        for row, index in enumerate(slot_of):
            if index is None or num_new[row] == 0:
                continue
            tokens = new_tokens[row, : num_new[row]].tolist()
            if _append(
                completions[index], tokens, True, cfg.max_new_tokens, stops, on_tokens, index
            ):
                finished_rows.append(row)
        if finished_rows:
            rows.load()
            for row in finished_rows:
                fill(row)
            rows.store()
            backend.write({"temperature": temperature})
        if sampling:
            backend.write(_uniforms(backend, slot_of, rngs, temps))
    seconds = time.perf_counter() - start
    return GenerationResult(completions, len(step_seconds), seconds, step_seconds)


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


def _row_uniforms(
    backend: StepBackend, rng: np.random.Generator | None, temperature: float
) -> dict[str, np.ndarray]:
    """U(0, 1) for one row ([1] and [1, W, C]) from its prompt's generator; zeros when greedy.
    Draws in the order `_uniforms` does for a row, so a prompt's draws do not depend on how
    its steps are batched."""
    out = {"sample_uniforms": np.zeros(1, dtype=np.float32)}
    if backend.speculative:
        shape = (1, backend.beam_width, backend.beam_length - 1)
        out["accept_uniforms"] = np.zeros(shape, dtype=np.float32)
    if rng is not None and temperature > 0:
        out["sample_uniforms"][0] = rng.random()
        if "accept_uniforms" in out:
            out["accept_uniforms"][0] = rng.random(out["accept_uniforms"].shape[1:])
    return out


def _uniforms(
    backend: StepBackend,
    slot_of: list[int | None],
    rngs: list[np.random.Generator],
    temps: Sequence[float],
) -> dict[str, np.ndarray]:
    """Fresh U(0, 1) for sampling rows (each prompt draws from its own generator), zeros else."""
    per_row = [
        _row_uniforms(backend, None, 0.0)
        if index is None
        else _row_uniforms(backend, rngs[index], temps[index])
        for index in slot_of
    ]
    return {name: np.concatenate([r[name] for r in per_row]) for name in per_row[0]}


def first_step_outputs(
    backend: StepBackend, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> dict[str, np.ndarray]:
    """Every output of the prefill step of `prompts` (one row each, greedy)."""
    capacity = cache_capacity([len(p) for p in prompts], max_new_tokens, backend)
    backend.reset(len(prompts), capacity)
    rows = _Rows(backend)
    rows.load()
    for row, prompt in enumerate(prompts):
        rows.admit(row, prompt)
    rows.store()
    idle: list[int | None] = [None] * len(prompts)
    backend.write(
        {"temperature": np.zeros(len(prompts), np.float32), **_uniforms(backend, idle, [], [])}
    )
    backend.step()
    return backend.last_outputs()
