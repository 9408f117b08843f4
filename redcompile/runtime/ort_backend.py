"""Run an artifact's step graph in ONNX Runtime with IO binding.

Every input lives in an OrtValue on the session's device. After a step, each `next_*` output
OrtValue becomes the next step's input without a copy, and each `present.N.*` output is bound to
the very buffer its `past_key_values.N.*` input came from, so KV compaction writes the accepted
tokens into the cache in place: a step's cache work is proportional to the tokens it keeps,
never to the cache capacity. Only `new_tokens` and `num_new_tokens` come back to the host.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from redcompile.artifact import tree_beams
from redcompile.generation import StepBackend
from redcompile.io_contract import StepSignature

NUMPY_TYPES = {"int64": np.int64, "float32": np.float32, "float16": np.float16}


class OrtBackend(StepBackend):
    """Step state as OrtValues, one InferenceSession."""

    def __init__(
        self,
        session: ort.InferenceSession,
        signature: StepSignature,
        manifest: dict,
        device: str = "cpu",
    ) -> None:
        self.session = session
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

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def reset(self, batch_size: int, capacity: int) -> None:
        """Zeroed inputs: one idle packed token per row and an empty cache of `capacity`.

        Steps alternate between two IO bindings. Each binds the cache buffers once, as inputs
        and as the outputs that alias them, and every other output to a preallocated buffer of
        its own (the shapes are fixed by the batch size): a step never writes the buffers it
        reads, never waits for an allocation, and rebinds only the inputs that changed."""
        self.state = {}
        self.bindings = [self.session.io_binding(), self.session.io_binding()]
        self._bound: list[dict[str, ort.OrtValue]] = [{}, {}]
        model = self.manifest["model"]
        for name, shape, dtype in self.signature.initial_inputs(model, batch_size, capacity):
            numpy_dtype = self.model_dtype if dtype == "model" else NUMPY_TYPES[dtype]
            value = self.signature.initial_value(name)
            self._set(name, self._to_device(np.full(shape, value, dtype=numpy_dtype)))
        self._outputs: list[dict[str, ort.OrtValue]] = [{}, {}]
        for binding, buffers in zip(self.bindings, self._outputs):
            for name, cache_input in self.cache_outputs.items():
                binding.bind_ortvalue_output(name, self.state[cache_input])
            buffers.update(self._output_buffers(batch_size, capacity))
            for name, buffer in buffers.items():
                binding.bind_ortvalue_output(name, buffer)
        self._turn = 0  # the binding (and output buffers) of the next step
        self._last: dict[str, ort.OrtValue] = {}

    def _output_buffers(self, batch_size: int, capacity: int) -> dict[str, ort.OrtValue]:
        """A zeroed buffer for every output but the cache, for `batch_size` rows."""
        sizes = {"batch": batch_size, "vocab": self.vocab_size, "cache": capacity}
        buffers = {}
        for spec in self.signature.outputs:
            if spec.name not in self.cache_outputs:
                shape = [sizes.get(d, d) for d in spec.dims]
                dtype = self.model_dtype if spec.dtype == "model" else NUMPY_TYPES[spec.dtype]
                buffers[spec.name] = self._to_device(np.zeros(shape, dtype=dtype))
        return buffers

    def _set(self, name: str, value: ort.OrtValue) -> None:
        self.state[name] = value
        for turn in (0, 1):
            self._bind_input(turn, name, value)

    def _bind_input(self, turn: int, name: str, value: ort.OrtValue) -> None:
        """Bind `value` as input `name` of binding `turn`, unless it is bound there already: in
        steady decoding each binding reads the other's fixed output buffers, bound once."""
        if self._bound[turn].get(name) is not value:
            self.bindings[turn].bind_ortvalue_input(name, value)
            self._bound[turn][name] = value

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the named inputs with host arrays (copied to the device)."""
        for name, array in arrays.items():
            self._set(name, self._to_device(array))

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Host copies of the named inputs."""
        return {name: self.state[name].numpy().copy() for name in names}

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One step; outputs become the next inputs, the cache is updated in place."""
        outputs = self._outputs[self._turn]
        start = time.perf_counter()
        self.session.run_with_iobinding(self.bindings[self._turn])
        self.run_seconds = time.perf_counter() - start
        self._turn = 1 - self._turn
        self._last = outputs
        for out_name, in_name in self.fed_back:  # only the next step's binding reads them now
            self.state[in_name] = outputs[out_name]
            self._bind_input(self._turn, in_name, outputs[out_name])
        return outputs["new_tokens"].numpy().copy(), outputs["num_new_tokens"].numpy().copy()

    @contextlib.contextmanager
    def using_session(self, session: ort.InferenceSession) -> Iterator[None]:
        """Run the steps of the block with another session of the same graph (e.g. one with
        ONNX Runtime's profiler on); the state and bindings are rebuilt by the loop's reset."""
        plain, self.session = self.session, session
        try:
            yield
        finally:
            self.session = plain

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
