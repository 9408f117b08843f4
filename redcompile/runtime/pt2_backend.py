"""Run a .pt2 artifact's compiled step (AOTInductor) with torch tensors on its device.

The step's inputs live as torch tensors on the package's device. After a step, every `next_*`
output tensor and every `present.N.*` cache tensor becomes the next step's input of the same role
as it is: nothing is copied on the host side, and only `new_tokens` and `num_new_tokens` come
back to the host. Inside the compiled step the KV update (`redcompile::kv_compaction`) is a
functional op, so `present.N.*` is a new buffer holding the updated cache, and the old buffer is
freed when its tensor is dropped (one cache-sized write per layer and step; the ONNX Runtime
backend binds the output to the input buffer instead).

The compiled code calls the redcompile ops through the torch dispatcher: this module imports
`redcompile.ops`, which registers them (see redcompile/torch_target.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from redcompile.artifact import tree_beams
from redcompile.generation import StepBackend
from redcompile.io_contract import StepSignature
from redcompile.runtime.torch_rows import step_row

TORCH_DTYPES = {
    "int64": torch.int64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class Pt2Backend(StepBackend):
    """Step state as torch tensors, one AOTInductor-compiled step."""

    def __init__(
        self, compiled: Any, signature: StepSignature, manifest: dict, device: str = "cpu"
    ) -> None:
        self.compiled = compiled  # torch._inductor AOTICompiledModel
        self._run = compiled.loader.boxed_run  # flat tensors in, flat tensors out
        self.signature = signature
        self.manifest = manifest
        self.device = torch.device(device)
        self.beam_width = tree_beams(manifest)
        self.beam_length = manifest["beam"]["length"]
        self.vocab_size = manifest["model"]["vocab_size"]
        self.max_seq_len = manifest["max_seq_len"]
        self.model_dtype = TORCH_DTYPES[manifest["dtype"]]
        self.input_names = signature.input_names()
        self.output_names = signature.output_names()
        self.state: dict[str, torch.Tensor] = {}
        self._last: dict[str, torch.Tensor] = {}

    def reset(self, batch_size: int, capacity: int) -> None:
        """Zeroed inputs: one idle packed token per row and an empty cache of `capacity`."""
        self.state = {}
        for name, shape, dtype in self.signature.initial_inputs(
            self.manifest["model"], batch_size, capacity
        ):
            torch_dtype = self.model_dtype if dtype == "model" else TORCH_DTYPES[dtype]
            value = self.signature.initial_value(name)
            self.state[name] = torch.full(shape, value, dtype=torch_dtype, device=self.device)

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Replace the named inputs with host arrays (copied to the device)."""
        for name, array in arrays.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array))
            current = self.state.get(name)
            dtype = tensor.dtype if current is None else current.dtype
            self.state[name] = tensor.to(self.device, dtype)

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Host copies of the named inputs."""
        return {name: self.state[name].cpu().numpy().copy() for name in names}

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One compiled step; its outputs become the next step's inputs (no copies)."""
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = self._run([self.state[name] for name in self.input_names])
        self.run_seconds = time.perf_counter() - start
        named = dict(zip(self.output_names, outputs))
        self._last = named
        for out_name, in_name in self.signature.feedback.items():
            self.state[in_name] = named[out_name]
        return named["new_tokens"].cpu().numpy(), named["num_new_tokens"].cpu().numpy()

    def step_row(self, row: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One compiled step on batch row `row` alone (its cache slice updated in place)."""
        return step_row(self._run, self.signature, self.state, row, inputs, self.device)

    def last_outputs(self) -> dict[str, np.ndarray]:
        """Host copies of every output of the last step."""
        return {
            name: (t.float() if t.is_floating_point() else t).cpu().numpy().copy()
            for name, t in self._last.items()
        }
