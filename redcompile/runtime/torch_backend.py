"""Run the step module eagerly in PyTorch (the reference runtime for model folders)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from redcompile.generation import StepBackend
from redcompile.models.step import SpeculativeStep
from redcompile.runtime.torch_rows import step_row


class TorchBackend(StepBackend):
    """Holds the step's inputs as torch tensors and runs `SpeculativeStep` on them."""

    def __init__(self, step: SpeculativeStep, device: str = "cpu") -> None:
        self.module = step.to(device).eval()
        self.device = torch.device(device)
        self.signature = step.signature
        self.beam_width, self.beam_length = step.tree_beams, step.beam_length
        self.vocab_size = step.base.config.vocab_size
        self.max_seq_len = step.max_seq_len
        self.state: dict[str, torch.Tensor] = {}

    def reset(self, batch_size: int, capacity: int) -> None:
        """Zeroed inputs: one idle packed token per row and an empty cache."""
        cfg = self.module.base.config
        dtype = self.module.base.embedding.dtype
        self.state = {}
        for spec in self.signature.inputs:
            dims = []
            for dim in spec.dims:
                dims.append(
                    {
                        "batch": batch_size,
                        "tokens": 1,
                        "cache": capacity,
                        "vocab": cfg.vocab_size,
                        "kv_heads": cfg.num_kv_heads,
                        "head_dim": cfg.head_dim,
                    }.get(dim, dim)
                )
            torch_dtype = {"int64": torch.int64, "float32": torch.float32}.get(spec.dtype, dtype)
            value = self.signature.initial_value(spec.name)
            self.state[spec.name] = torch.full(dims, value, dtype=torch_dtype, device=self.device)

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy host arrays into the named inputs."""
        for name, array in arrays.items():
            self.state[name] = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Host copies of the named inputs."""
        return {name: self.state[name].cpu().numpy().copy() for name in names}

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One eager step; outputs replace their inputs per the feedback map."""
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = self.module(*(self.state[n] for n in self.signature.input_names()))
        self.run_seconds = time.perf_counter() - start
        named = dict(zip(self.signature.output_names(), outputs))
        self._last = named
        for out_name, in_name in self.signature.feedback.items():
            self.state[in_name] = named[out_name]
        return named["new_tokens"].cpu().numpy(), named["num_new_tokens"].cpu().numpy()

    def step_row(self, row: int, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One eager step on batch row `row` alone (its cache slice updated in place)."""
        return step_row(
            lambda args: self.module(*args), self.signature, self.state, row, inputs, self.device
        )

    def last_outputs(self) -> dict[str, np.ndarray]:
        """Host copies of every output of the last step."""
        return {
            name: t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
            for name, t in self._last.items()
        }
