"""Random-weight steps built in memory and run by PyTorch, for the cost study on a GPU.

The cost study times the ONNX artifacts in ONNX Runtime on the CPU. On the GPU machine (torch
with CUDA, ONNX Runtime without it) it times the same `SpeculativeStep` in PyTorch instead:
built here straight on the device in the model's dtype (a Llama-7B folder would be 13.5 GB to
write and read back), run eagerly, or replayed from a CUDA graph so that the step is timed as a
compiled runtime launches it: one graph launch, no Python between kernels (at batch 1 a 7B
step's hundreds of small kernels would otherwise be timed as host overhead, and the drafting
step, made of many small ops, would look dearer than it is).

    base = random_decoder(LLAMA_7B, "float16", "cuda")
    generator = step_generator(base, random_drafter_for(base, 4, None, None), BeamShape(16, 5))
    backend = CudaGraphBackend(generator.backend)   # write() captures, step() replays
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from redcompile.api import Generator
from redcompile.config import BeamShape
from redcompile.example import char_tokenizer_json
from redcompile.models.config import DecoderConfig, parse_decoder_config
from redcompile.models.drafter import Drafter
from redcompile.models.drafter_io import random_drafter
from redcompile.models.llama import Decoder
from redcompile.models.rope import inverse_frequencies
from redcompile.models.step import SpeculativeStep
from redcompile.models.weights import TORCH_DTYPES
from redcompile.ops import OPS, register_torch_op
from redcompile.runtime.torch_backend import TorchBackend
from redcompile.tokenizer import TextCodec

# random_llama.py is a fixture builder, in bench/fixtures/
sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from random_llama import transformers_config

MAX_SEQ_LEN = 4096  # random_llama's max_position_embeddings


def decoder_config(shapes: dict, dtype: str = "float32") -> DecoderConfig:
    """The DecoderConfig of a random Llama of `shapes`: the one its folder's config.json
    (random_llama) is read as, so in-memory and converted models are the same model."""
    config = transformers_config(shapes, rope_theta=10000.0, dtype=dtype)
    return parse_decoder_config(config, Path("random Llama config"))


def random_decoder(shapes: dict, dtype: str, device: str, seed: int = 0) -> Decoder:
    """A Llama of `shapes` with N(0, 0.02) matrices, made directly on `device` in `dtype`
    (never a float32 copy of the whole model: 7B would need 27 GB for it)."""
    cfg = decoder_config(shapes, dtype)
    with torch.device("meta"):
        model = Decoder(cfg).to(TORCH_DTYPES[dtype])
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.02, generator=generator)
            else:
                parameter.fill_(1.0)  # RMSNorm gains
    inv_freq, model.rope_scale = inverse_frequencies(cfg.rope, cfg.head_dim)
    model.inv_freq = inv_freq.to(device)  # float32, as the loader computes it
    return model.requires_grad_(False).eval()


def random_drafter_for(
    base: Decoder, layers: int, exit_dim: int | None, draft_vocab: int | None, seed: int = 0
) -> Drafter:
    """A random drafter of width `exit_dim` (None: 2 x hidden) and `layers` blocks for `base`,
    on its device and in its dtype, drafting from the `draft_vocab` lowest ids (None: all)."""
    device = base.embedding.device
    with torch.device(device):
        drafter = random_drafter(base.config, layers, exit_dim=exit_dim, seed=seed)
    if draft_vocab is not None:
        drafter.restrict_vocabulary(torch.arange(draft_vocab, device=device))
    return drafter


def step_generator(base: Decoder, drafter: Drafter | None, beam: BeamShape) -> Generator:
    """A Generator running the eager step of `base` (+ `drafter`; None: autoregressive) on
    the base model's device, with a character tokenizer (the cost study feeds token ids)."""
    length = beam.length if drafter is not None else 1
    width = beam.width if drafter is not None else 1
    step = SpeculativeStep(base, drafter, width, length, MAX_SEQ_LEN)
    backend = TorchBackend(step, device=str(base.embedding.device))
    codec = TextCodec.from_json(char_tokenizer_json())
    return Generator(backend, codec, (0,), {"runtime": "torch"})


def register_kernels(device: str, kernels: str) -> str:
    """Give every redcompile op an implementation on `device`: the CUDA library of cuda/
    ("cuda", built with nvcc on first use) or the torch references ("reference"). Returns
    what the ops run."""
    if device != "cuda":
        return "reference"
    if kernels == "cuda":
        from redcompile.cuda import load_library

        load_library()
    for op in OPS:  # ops without a CUDA kernel run their reference
        register_torch_op(op, cuda_impl=op.reference)
    return kernels


class CudaGraphBackend:
    """A TorchBackend whose step replays a CUDA graph captured for the current input shapes.

    `write` copies host arrays into the graph's input buffers (capturing a graph the first time
    a set of shapes is seen: inputs as written, cache as it stands); `step` launches the graph
    and waits for it. The step is functional (every output a new buffer), so a replay reads the
    same inputs each time and nothing is fed back: for timing replayed steps, not for decoding.
    """

    def __init__(self, backend: TorchBackend) -> None:
        self.backend = backend
        self.signature = backend.signature
        self.names = self.signature.input_names()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict, dict]] = {}
        self.current: tuple | None = None

    def write(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the named inputs (and the graph that runs on their shapes)."""
        key = tuple(sorted((name, array.shape) for name, array in arrays.items()))
        if key not in self.graphs:
            self.backend.write(arrays)
            self.graphs[key] = self._capture()
        else:
            _, inputs, _ = self.graphs[key]
            for name, array in arrays.items():
                inputs[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
        self.current = key

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        """One replay of the current graph, waited for."""
        graph, _, outputs = self.graphs[self.current]
        graph.replay()
        return outputs["new_tokens"].cpu().numpy(), outputs["num_new_tokens"].cpu().numpy()

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Host copies of the current graph's named inputs."""
        _, inputs, _ = self.graphs[self.current]
        return {name: inputs[name].cpu().numpy().copy() for name in names}

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, dict, dict]:
        inputs = {name: self.backend.state[name].clone() for name in self.names}
        args = [inputs[name] for name in self.names]
        module = self.backend.module
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # allocator pools, cuBLAS workspaces, lazy initialisation
                module(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            outputs = module(*args)
        return graph, inputs, dict(zip(self.signature.output_names(), outputs))
