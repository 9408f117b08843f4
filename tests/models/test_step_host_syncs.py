"""The step reads no device value on the host, so that a CUDA graph can capture it whole.

A CUDA graph (bench/torch_steps.py; any runtime launching the step as one graph) cannot hold an
op whose result the host must see before going on: `.item()`, `bool(tensor)`, `nonzero`,
boolean-mask indexing, `unique`, a copy to the host. The only such read in the step is
kv_compaction's capacity check, which the op skips while a capture is under way. This test walks
every aten op the step dispatches on the CPU, inside the redcompile ops' references too, and fails
on any other host read, which would break the capture on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from redcompile.example import EXAMPLE
from redcompile.models.drafter_io import random_drafter
from redcompile.models.llama import Decoder
from redcompile.models.step import SpeculativeStep
from redcompile.ops import OPS

HOST_READS = {
    "aten::item",  # .item(), int(t), float(t) (seen composite in inference mode)
    "aten::_local_scalar_dense",  # the same, decomposed
    "aten::is_nonzero",  # bool(t)
    "aten::nonzero",
    "aten::argwhere",
    "aten::masked_select",
    "aten::unique",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::_unique2",
    "aten::repeat_interleave",
}
MASK_INDEXED = {"aten::index", "aten::index_put", "aten::index_put_"}  # with a boolean index
ALLOWED = {("aten::is_nonzero", "redcompile::kv_compaction")}  # the capacity check
REFERENCES = {op.qualname: op.reference for op in OPS}


class HostReads(TorchDispatchMode):
    """Records (aten op, enclosing redcompile op) for every op that reads a device value on the
    host, running each redcompile op as its reference so that its aten ops are seen too."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()
        self.inside = "step"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in REFERENCES:
            outer, self.inside = self.inside, name
            try:
                with self:
                    return REFERENCES[name](*args, **(kwargs or {}))
            finally:
                self.inside = outer
        if name in HOST_READS or (name in MASK_INDEXED and boolean_index(args)):
            self.seen.add((name, self.inside))
        if name == "aten::_to_copy" and (kwargs or {}).get("device") == torch.device("cpu"):
            self.seen.add((name, self.inside))
        return func(*args, **(kwargs or {}))


def boolean_index(args: tuple) -> bool:
    """Whether an index op's indices include a boolean mask (which it turns into positions
    on the host)."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def tiny_base() -> Decoder:
    """`redcompile example`'s model (random weights)."""
    torch.manual_seed(0)
    return Decoder(EXAMPLE).eval()


def decoding_step_inputs(step: SpeculativeStep) -> list[torch.Tensor]:
    """Inputs of a decoding step a few steps into greedy generation (the tree is real)."""
    from redcompile.api import Generator
    from redcompile.example import char_tokenizer_json
    from redcompile.generation import GenerationConfig
    from redcompile.runtime.torch_backend import TorchBackend
    from redcompile.tokenizer import TextCodec

    backend = TorchBackend(step)
    generator = Generator(backend, TextCodec.from_json(char_tokenizer_json()), (0,), {})
    prompt = [list(np.random.default_rng(0).integers(1, 90, 40))]
    generator.generate_ids(prompt, GenerationConfig(max_new_tokens=6, stop_token_ids=(-1,)))
    return [backend.state[name] for name in step.signature.input_names()]


@pytest.mark.parametrize("beam", [(1, 1), (1, 4), (4, 5)], ids=["autoregressive", "w1l4", "w4l5"])
def test_the_step_reads_nothing_on_the_host_but_the_cache_capacity_check(beam):
    width, length = beam
    base = tiny_base()
    drafter = random_drafter(base.config, 2) if length > 1 else None
    step = SpeculativeStep(base, drafter, width, length, 512)
    inputs = decoding_step_inputs(step)
    reads = HostReads()
    with torch.inference_mode(), reads:
        step(*inputs)
    assert reads.seen == ALLOWED
