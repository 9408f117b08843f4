"""Run an artifact's step graph in ONNX Runtime with IO binding.

Every input lives in an OrtValue on the session's device. After a step, each `next_*` output
OrtValue becomes the next step's input without a copy, and each `present.N.*` output is bound to
the very buffer its `past_key_values.N.*` input came from, so KV compaction writes the accepted
tokens into the cache in place: a step's cache work is proportional to the tokens it keeps,
never to the cache capacity. Only `new_tokens` and `num_new_tokens` come back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from redcompile.generation import StepBackend
from redcompile.models.step import StepSignature

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
        self.beam_width = manifest["beam"]["width"]
        self.beam_length = manifest["beam"]["length"]
        self.vocab_size = manifest["model"]["vocab_size"]
        self.max_seq_len = manifest["max_seq_len"]
        self.model_dtype = NUMPY_TYPES.get(manifest["dtype"])
        self.state: dict[str, ort.OrtValue] = {}
        self.cache_outputs = {
            o: i for o, i in signature.feedback.items() if o.startswith("present.")
        }
        self.output_names = signature.output_names()

    def _to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def reset(self, batch_size: int, capacity: int) -> None:
        """Zeroed inputs: one idle packed token per row and an empty cache of `capacity`."""
        self.state = {}
        for name, shape, dtype in self.signature.initial_inputs(
            self.manifest["model"], batch_size, capacity
        ):
            numpy_dtype = self.model_dtype if dtype == "model" else NUMPY_TYPES[dtype]
            self.state[name] = self._to_device(np.zeros(shape, dtype=numpy_dtype))

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the named inputs with host arrays (copied to the device)."""
        for name, array in arrays.items():
            self.state[name] = self._to_device(array)

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Host copies of the named inputs."""
        return {name: self.state[name].numpy().copy() for name in names}

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One step; outputs become the next inputs, the cache is updated in place."""
        binding = self.session.io_binding()
        for name, value in self.state.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            if name in self.cache_outputs:
                binding.bind_ortvalue_output(name, self.state[self.cache_outputs[name]])
            else:
                binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outputs = dict(zip(self.output_names, binding.get_outputs()))
        self._last = outputs
        for out_name, in_name in self.signature.feedback.items():
            if out_name not in self.cache_outputs:
                self.state[in_name] = outputs[out_name]
        return outputs["new_tokens"].numpy(), outputs["num_new_tokens"].numpy()

    def last_outputs(self) -> dict[str, np.ndarray]:
        """Host copies of every output of the last step (the cache as it is after the step)."""
        return {name: value.numpy().copy() for name, value in self._last.items()}
