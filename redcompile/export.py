"""Export the step module to ONNX with torch.onnx.export(dynamo=True), opset 23, IR version 10.

The exported graph is what the PyTorch generator runs, with one deliberate difference: attention
is traced through `scaled_dot_product_attention` over the concatenated cache ("sdpa"), which the
exporter emits as the standard `Attention` op; the fuse-tree-attention pass then replaces it with
redcompile's TreeAttention (which never copies the cache). The other custom ops enter the graph as
`redcompile::*` call sites emitted by `ops.call` during export.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch

from redcompile.io_contract import FULL_SPECULATION, HISTORY, SPECULATION
from redcompile.models.step import SpeculativeStep
from redcompile.ops.opdef import ONNX_IR_VERSION, ONNX_OPSET

OPSET, IR_VERSION = ONNX_OPSET, ONNX_IR_VERSION

# Example sizes for tracing; every one of these dimensions is exported as dynamic.
_EXAMPLE = {"batch": 2, "tokens": 3, "cache": 16}


def example_inputs(step: SpeculativeStep) -> tuple[torch.Tensor, ...]:
    """Small valid inputs in signature order (two prefill rows of 3 tokens, empty cache)."""
    cfg = step.base.config
    dtype = step.base.embedding.dtype
    b, t, s = _EXAMPLE["batch"], _EXAMPLE["tokens"], _EXAMPLE["cache"]
    values = {
        "input_ids": torch.ones(b, t, dtype=torch.int64),
        "parent_ids": torch.arange(-1, t - 1).expand(b, t).contiguous(),
        "depths": torch.arange(t).expand(b, t).contiguous(),
        "num_tokens": torch.full((b,), t),
        "forced": torch.full((b,), t),
        "cache_lengths": torch.zeros(b, dtype=torch.int64),
        "temperature": torch.zeros(b),
        "top_k": torch.zeros(b, dtype=torch.int64),
        "top_p": torch.ones(b),
        "sample_uniforms": torch.zeros(b, step.beam_length),
    }
    if step.speculative:
        w, length = step.tree_beams, step.beam_length
        values["beam_paths"] = torch.zeros(b, w, length, dtype=torch.int64)
        values[SPECULATION] = torch.tensor(FULL_SPECULATION, dtype=torch.int64)
    if step.keep_history:
        values[HISTORY] = torch.zeros(b, s, dtype=torch.int64)
    kv_shape = (b, cfg.num_kv_heads, s, cfg.head_dim)
    # One tensor per cache input: torch.export treats a tensor passed twice as one input.
    return tuple(
        values[name] if name in values else torch.zeros(kv_shape, dtype=dtype)
        for name in step.signature.input_names()
    )


def dynamic_shapes(step: SpeculativeStep) -> tuple[dict[int, object] | None, ...]:
    """torch.export dims: batch, tokens (packed width) and cache capacity are dynamic."""
    dims = {
        "batch": torch.export.Dim("batch", min=1, max=4096),
        "tokens": torch.export.Dim("tokens", min=1, max=max(step.max_seq_len, 2)),
        "cache": torch.export.Dim("cache", min=2, max=1 << 20),
    }
    shapes = []
    for spec in step.signature.inputs:
        axes = {i: dims[d] for i, d in enumerate(spec.dims) if d in dims}
        shapes.append(axes or None)
    return tuple(shapes)


def export_step(step: SpeculativeStep, verbose: bool = False) -> onnx.ModelProto:
    """The step as an ONNX model (weights inline), before any redcompile pass."""
    model = export_program(step, verbose).model_proto
    model.ir_version = IR_VERSION
    return model


def export_program(step: SpeculativeStep, verbose: bool = False) -> torch.onnx.ONNXProgram:
    """torch.onnx.export of the step; the program references the module's weights (no copy)."""
    step = step.eval()
    previous_impl = step.base.attention_impl
    step.base.attention_impl = "sdpa"
    quiet = contextlib.nullcontext() if verbose else _quiet()
    try:
        with quiet, torch.no_grad():
            program = torch.onnx.export(
                step,
                example_inputs(step),
                dynamo=True,
                opset_version=OPSET,
                input_names=step.signature.input_names(),
                output_names=step.signature.output_names(),
                dynamic_shapes=(dynamic_shapes(step),),  # forward(*args): one varargs tuple
                optimize=True,
                verbose=False,
            )
    finally:
        step.base.attention_impl = previous_impl
    program.model.ir_version = IR_VERSION
    return program


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
