"""Run an artifact's step graph in ONNX Runtime with IO binding.

Every input lives in an OrtValue on the session's device. After a step, each `next_*` output
OrtValue becomes the next step's input without a copy, and each `present.N.*` output is bound to
the very buffer its `past_key_values.N.*` input came from, so KV compaction writes the accepted
tokens into the cache in place: a step's cache work is proportional to the tokens it keeps,
never to the cache capacity. Only `new_tokens` and `num_new_tokens` come back to the host.

The step graphs run are those passes/host_graphs.py makes from the artifact for what the host
knows before a step (runtime/loading.py, `StepSessions`): for a run whose rows are all greedy,
graphs without the sampling If; for an artifact with speculation levels, one session per level
branch over the one state. A step runs in the session of the level last written, and every
input and output is bound in each, so switching level costs nothing but the choice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from redcompile.artifact import tree_beams
from redcompile.generation import StepBackend
from redcompile.io_contract import SPECULATION, SPECULATION_LEVELS, StepSignature

NUMPY_TYPES = {"int64": np.int64, "float32": np.float32, "float16": np.float16}


NONE = SPECULATION_LEVELS["none"]


class OrtBackend(StepBackend):
    """Step state as OrtValues; the sessions of `StepSessions` (runtime/loading.py) run the
    steps: per run, those for its kind of rows (all greedy or not), per step the level's."""

    def __init__(
        self,
        sessions: Any,  # runtime.loading.StepSessions
        signature: StepSignature,
        manifest: dict,
        device: str = "cpu",
    ) -> None:
        self._step_sessions = sessions
        self._sessions: dict[str, ort.InferenceSession] = sessions.get(sessions.opened_greedy)
        self._override: ort.InferenceSession | None = None  # using_session's
        self._level_none = False  # whether the speculation input is level none
        self.signature = signature
        self.manifest = manifest
        self.device = device
        self.beam_width = tree_beams(manifest)
        self.beam_length = manifest["beam"]["length"]
        self.vocab_size = manifest["model"]["vocab_size"]
        self.max_seq_len = manifest["max_seq_len"]
        self.model_dtype = NUMPY_TYPES.get(manifest["dtype"])
        self.state: dict[str, ort.OrtValue] = {}
        self.cache_outputs = {
            o: i for o, i in signature.feedback.items() if o.startswith("present.")
        }
        self.output_names = signature.output_names()
        self.fed_back = [
            (o, i) for o, i in signature.feedback.items() if o not in self.cache_outputs
        ]

    @property
    def session(self) -> ort.InferenceSession:
        """The session the next step runs in."""
        return self._active()[1]

    @property
    def split_by_level(self) -> bool:
        """Whether level none runs in a session of its own."""
        return self._override is None and "none" in self._sessions

    @property
    def history_at_none(self) -> bool:
        """A level-none session of its own passes the token history through (StepSessions)."""
        return not self.split_by_level

    def _active(self) -> tuple[str, ort.InferenceSession]:
        if self._override is not None:
            return "override", self._override
        key = "none" if self._level_none and "none" in self._sessions else "tree"
        return key, self._sessions[key]

    def prepare(self, sampling: bool) -> None:
        """The next run's rows sample (some) or are all greedy: use that kind's sessions."""
        self._sessions = self._step_sessions.get(greedy=not sampling)

    def _bound_sessions(self) -> dict[str, ort.InferenceSession]:
        return {"override": self._override} if self._override is not None else self._sessions

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def reset(self, batch_size: int, capacity: int) -> None:
        """Zeroed inputs: one idle packed token per row and an empty cache of `capacity`.

        Steps alternate between two IO bindings. Each binds the cache buffers once, as inputs
        and as the outputs that alias them, and every other output to a preallocated buffer of
        its own (the shapes are fixed by the batch size): a step never writes the buffers it
        reads, never waits for an allocation, and rebinds only the inputs that changed."""
        self.state = {}
        sessions = self._bound_sessions()
        # per turn, one binding per session, and what each has bound as inputs
        self.bindings = {key: [s.io_binding(), s.io_binding()] for key, s in sessions.items()}
        self._bound = {key: [{}, {}] for key in sessions}
        model = self.manifest["model"]
        for name, shape, dtype in self.signature.initial_inputs(model, batch_size, capacity):
            numpy_dtype = self.model_dtype if dtype == "model" else NUMPY_TYPES[dtype]
            value = self.signature.initial_value(name)
            self._set(name, self._to_device(np.full(shape, value, dtype=numpy_dtype)))
        self._outputs: list[dict[str, ort.OrtValue]] = [{}, {}]
        self._emitted: list[tuple[np.ndarray, np.ndarray] | None] = [None, None]
        for turn in (0, 1):
            arrays = self._output_arrays(batch_size, capacity)
            buffers = {name: self._to_device(array) for name, array in arrays.items()}
            for pair in self.bindings.values():
                for name, cache_input in self.cache_outputs.items():
                    pair[turn].bind_ortvalue_output(name, self.state[cache_input])
                for name, buffer in buffers.items():
                    pair[turn].bind_ortvalue_output(name, buffer)
            self._outputs[turn] = buffers
            if self.device == "cpu":  # the OrtValues share these arrays' memory
                self._emitted[turn] = (arrays["new_tokens"], arrays["num_new_tokens"])
        # Per turn, the fed-back outputs as (input name, OrtValue): what the next step reads.
        self._feedback = [
            [(in_name, buffers[out_name]) for out_name, in_name in self.fed_back]
            for buffers in self._outputs
        ]
        self._turn = 0  # the binding (and output buffers) of the next step
        self._last: dict[str, ort.OrtValue] = {}

    def _output_arrays(self, batch_size: int, capacity: int) -> dict[str, np.ndarray]:
        """A zeroed host array for every output but the cache, for `batch_size` rows."""
        sizes = {"batch": batch_size, "vocab": self.vocab_size, "cache": capacity}
        arrays = {}
        for spec in self.signature.outputs:
            if spec.name not in self.cache_outputs:
                shape = [sizes.get(d, d) for d in spec.dims]
                dtype = self.model_dtype if spec.dtype == "model" else NUMPY_TYPES[spec.dtype]
                arrays[spec.name] = np.zeros(shape, dtype=dtype)
        return arrays

    def _output_buffers(self, batch_size: int, capacity: int) -> dict[str, ort.OrtValue]:
        """A zeroed device buffer for every output but the cache, for `batch_size` rows."""
        arrays = self._output_arrays(batch_size, capacity)
        return {name: self._to_device(array) for name, array in arrays.items()}

    def _set(self, name: str, value: ort.OrtValue) -> None:
        self.state[name] = value
        if name == SPECULATION:
            self._level_none = int(value.numpy().reshape(-1)[0]) == NONE
        for key in self.bindings:
            for turn in (0, 1):
                self._bind_input(key, turn, name, value)

    def _bind_input(self, key: str, turn: int, name: str, value: ort.OrtValue) -> None:
        """Bind `value` as input `name` of session `key`'s binding `turn`, unless it is bound
        there already: in steady decoding each binding reads the other turn's fixed output
        buffers, bound once."""
        if self._bound[key][turn].get(name) is not value:
            self.bindings[key][turn].bind_ortvalue_input(name, value)
            self._bound[key][turn][name] = value

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the named inputs with host arrays (copied to the device)."""
        for name, array in arrays.items():
            self._set(name, self._to_device(array))

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Host copies of the named inputs."""
        return {name: self.state[name].numpy().copy() for name in names}

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One step; outputs become the next inputs, the cache is updated in place."""
        turn = self._turn
        key, session = self._active()
        start = time.perf_counter()
        session.run_with_iobinding(self.bindings[key][turn])
        self.run_seconds = time.perf_counter() - start
        self._turn = following = 1 - turn
        self._last = outputs = self._outputs[turn]
        state = self.state
        feedback = self._feedback[turn]
        for in_name, value in feedback:
            state[in_name] = value
        # _bind_input, inlined on this hot path: only the next turn's bindings read them
        for key, pair in self.bindings.items():
            bound = self._bound[key][following]
            for in_name, value in feedback:
                if bound.get(in_name) is not value:
                    pair[following].bind_ortvalue_input(in_name, value)
                    bound[in_name] = value
        emitted = self._emitted[turn]
        if emitted is None:  # a device buffer: one copy back each
            return outputs["new_tokens"].numpy(), outputs["num_new_tokens"].numpy()
        return emitted[0].copy(), emitted[1].copy()

    @contextlib.contextmanager
    def using_session(self, session: ort.InferenceSession) -> Iterator[None]:
        """Run the steps of the block with another session of the same graph (e.g. one with
        ONNX Runtime's profiler on); the state and bindings are rebuilt by the loop's reset."""
        plain, self._override = self._override, session
        try:
            yield
        finally:
            self._override = plain

    def step_row(self, row: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step on batch row `row` alone: the row's slice of every cache buffer is bound,
        by address, as the input and the aliased output of a batch of one, so the prefill
        writes the row's cache in place; every other input comes from `inputs`."""
        binding = self.session.io_binding()
        for name, array in inputs.items():
            binding.bind_ortvalue_input(name, self._to_device(array))
        for out_name, in_name in self.cache_outputs.items():
            cache = self.state[in_name]
            shape = cache.shape()
            dtype = self.model_dtype
            row_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
            address = cache.data_ptr() + row * row_bytes
            row_shape = [1, *shape[1:]]
            binding.bind_input(in_name, self.device, 0, dtype, row_shape, address)
            binding.bind_output(out_name, self.device, 0, dtype, row_shape, address)
        capacity = self.state[next(iter(self.cache_outputs.values()))].shape()[2]
        outputs = self._output_buffers(1, capacity)
        for name, buffer in outputs.items():
            binding.bind_ortvalue_output(name, buffer)
        self.session.run_with_iobinding(binding)
        return {name: value.numpy().copy() for name, value in outputs.items()}

    def last_outputs(self) -> dict[str, np.ndarray]:
        """Host copies of every output of the last step (the cache as it is after the step)."""
        caches = {o: self.state[i] for o, i in self.cache_outputs.items()}
        last = {**self._last, **caches}
        return {name: last[name].numpy().copy() for name in self.output_names}
