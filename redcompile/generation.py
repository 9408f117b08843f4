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
from redcompile.io_contract import ROW_STATE, TREE_STATE, StepSignature

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


class _Rows:
    """Host copy of the fed-back row state, edited only when rows change."""

    def __init__(self, backend: StepBackend) -> None:
        self.backend = backend
        self.names = ROW_STATE + (TREE_STATE if backend.speculative else ())
        self.arrays: dict[str, np.ndarray] = {}

    def load(self) -> None:
        self.arrays = self.backend.read(self.names)

    def widen(self, width: int) -> None:
        """Pad the packed-token arrays to `width` columns (padding: token 0, root, depth 0)."""
        current = self.arrays["input_ids"].shape[1]
        if width <= current:
            return
        for name, fill in (("input_ids", 0), ("parent_ids", -1), ("depths", 0)):
            old = self.arrays[name]
            new = np.full((old.shape[0], width), fill, dtype=old.dtype)
            new[:, :current] = old
            self.arrays[name] = new

    def admit(self, row: int, prompt: Sequence[int]) -> None:
        """Make `row` a prefill row for `prompt` with an empty cache."""
        p = len(prompt)
        self.widen(p)
        a = self.arrays
        a["input_ids"][row] = 0
        a["input_ids"][row, :p] = prompt
        a["parent_ids"][row] = -1
        a["parent_ids"][row, 1:p] = np.arange(p - 1)
        a["depths"][row] = 0
        a["depths"][row, :p] = np.arange(p)
        a["num_tokens"][row] = p
        a["forced"][row] = p
        a["cache_lengths"][row] = 0

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
    """Generate for every prompt (token ids), `cfg.batch_size` rows at a time."""
    cfg.validate()
    check_lengths(prompts, cfg, backend.max_seq_len)
    batch = min(cfg.batch_size, len(prompts))
    backend.reset(batch, cache_capacity([len(p) for p in prompts], cfg.max_new_tokens, backend))
    temps = list(temperatures) if temperatures is not None else [cfg.temperature] * len(prompts)
    rngs = [np.random.default_rng([cfg.seed, i]) for i in range(len(prompts))]
    completions = [Completion(prompt_ids=list(p)) for p in prompts]
    stops = set(cfg.stop_token_ids)

    rows = _Rows(backend)
    rows.load()
    slot_of: list[int | None] = [None] * batch  # prompt index per row
    queue = list(range(len(prompts)))
    temperature = np.zeros(batch, dtype=np.float32)
    for row in range(batch):
        slot_of[row] = queue.pop(0)
        rows.admit(row, prompts[slot_of[row]])
        temperature[row] = temps[slot_of[row]]
    rows.store()
    backend.write({"temperature": temperature, **_uniforms(backend, slot_of, rngs, temps)})
    prefilled = [False] * len(prompts)
    sampling = any(t > 0 for t in temps)

    start = time.perf_counter()
    step_seconds: list[float] = []
    steps = 0
    while any(index is not None for index in slot_of):
        t0 = time.perf_counter()
        new_tokens, num_new = backend.step()
        step_seconds.append(time.perf_counter() - t0)
        steps += 1
        finished_rows = []
        for row, index in enumerate(slot_of):
            if index is None or num_new[row] == 0:
                continue
            done = _append(
                completions[index],
                new_tokens[row, : num_new[row]].tolist(),
                prefilled[index],
                cfg.max_new_tokens,
                stops,
                on_tokens,
                index,
            )
            prefilled[index] = True
            if done:
                finished_rows.append(row)
        if finished_rows:
            rows.load()
            for row in finished_rows:
                slot_of[row] = queue.pop(0) if queue else None
                if slot_of[row] is None:
                    rows.idle(row)
                else:
                    rows.admit(row, prompts[slot_of[row]])
                    temperature[row] = temps[slot_of[row]]
            rows.store()
            backend.write({"temperature": temperature})
        if sampling:
            backend.write(_uniforms(backend, slot_of, rngs, temps))
    return GenerationResult(completions, steps, time.perf_counter() - start, step_seconds)


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


def _uniforms(
    backend: StepBackend,
    slot_of: list[int | None],
    rngs: list[np.random.Generator],
    temps: Sequence[float],
) -> dict[str, np.ndarray]:
    """Fresh U(0, 1) for sampling rows (each prompt draws from its own generator), zeros else."""
    batch = len(slot_of)
    sample = np.zeros(batch, dtype=np.float32)
    out = {"sample_uniforms": sample}
    accept = None
    if backend.speculative:
        c = backend.beam_length - 1
        accept = np.zeros((batch, backend.beam_width, c), dtype=np.float32)
        out["accept_uniforms"] = accept
    for row, index in enumerate(slot_of):
        if index is None or temps[index] <= 0:
            continue
        sample[row] = rngs[index].random()
        if accept is not None:
            accept[row] = rngs[index].random(accept.shape[1:])
    return out


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
