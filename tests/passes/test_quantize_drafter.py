"""quantize-drafter: the beam search inlined, every drafter product reading its own quantized
weight; numerics equal to the reference with fake-quantized weights; ONNX Runtime fuses it."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from graphs import apply, assert_idempotent, ops
from redcompile.errors import PassError
from redcompile.models.drafter import Drafter, DrafterConfig
from redcompile.models.weight_quant import WEIGHT_FORMATS
from redcompile.ops.drafter_beam_search import DRAFTER_BEAM_SEARCH, drafter_beam_search_reference
from redcompile.passes.base import PassContext
from redcompile.passes.manager import PassManager
from redcompile.passes.quantize_drafter import QuantizeDrafter
from support import single_op_model

ATTRS = {"beam_width": 2, "beam_length": 4, "top_k": 0}  # C = 3 drafted positions


def drafter_model(hidden=16, vocab=40, exit_dim=24, layers=2, weights_as_inputs=()):
    """One DrafterBeamSearch node with its body; weights are initializers (as after export)
    unless named in `weights_as_inputs`. Returns (model, feeds, drafter)."""
    torch.manual_seed(3)
    drafter = Drafter(DrafterConfig(hidden, vocab, exit_dim, layers, rnn=True))
    with torch.no_grad():
        drafter.vocab_w.mul_(4.0)  # peaky logits: beams that do not tie
    embedding = torch.randn(vocab, hidden)
    weights = [p.detach() if p is not None else None for p in drafter.op_weights()]
    inputs = [torch.randn(2, hidden), torch.tensor([3, 17]), embedding, *weights]
    model = single_op_model(DRAFTER_BEAM_SEARCH, inputs, ATTRS)
    feeds = {}
    constant = set(DRAFTER_BEAM_SEARCH.input_names[2:]) - set(weights_as_inputs)
    kept = []
    for value_info in model.graph.input:
        tensor = inputs[DRAFTER_BEAM_SEARCH.input_names.index(value_info.name)]
        if value_info.name in constant:
            model.graph.initializer.append(numpy_helper.from_array(tensor.numpy(), value_info.name))
        else:
            kept.append(value_info)
            feeds[value_info.name] = tensor.numpy()
    del model.graph.input[:]
    model.graph.input.extend(kept)
    del model.graph.output[:]
    model.graph.output.extend(
        [
            onnx.helper.make_tensor_value_info("beams", onnx.TensorProto.INT64, ["B", "W", "L"]),
            onnx.helper.make_tensor_value_info(
                "logprobs", onnx.TensorProto.FLOAT, ["B", "W", "C", "V"]
            ),
        ]
    )
    return model, feeds, drafter, inputs


def run(model, feeds, optimize):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return session.run(["beams", "logprobs"], feeds)


@pytest.mark.parametrize("name", sorted(WEIGHT_FORMATS))
def test_matches_the_reference_with_fake_quantized_weights(name):
    model, feeds, drafter, inputs = drafter_model()
    quantized, matches = apply(QuantizeDrafter(WEIGHT_FORMATS[name]), model)
    assert len(matches) == 1
    assert "redcompile::DrafterBeamSearch" not in ops(quantized) and not quantized.functions
    drafter.quantize_weights(WEIGHT_FORMATS[name])
    weights = [p.detach() if p is not None else None for p in drafter.op_weights()]
    beams, logprobs = drafter_beam_search_reference(
        *inputs[:3], *weights, ATTRS["beam_width"], ATTRS["beam_length"], ATTRS["top_k"]
    )
    got_beams, got_logprobs = run(quantized, feeds, optimize=False)
    np.testing.assert_array_equal(got_beams, beams.numpy())
    np.testing.assert_allclose(got_logprobs, logprobs.numpy(), atol=2e-5)
    # ... and quantization did change the drafter (the test would notice a no-op)
    float_logprobs = run(model, feeds, optimize=False)[1]
    assert np.abs(float_logprobs - got_logprobs).max() > 1e-4


@pytest.mark.parametrize("name", sorted(WEIGHT_FORMATS))
def test_every_product_owns_its_weights_and_onnx_runtime_fuses_them(tmp_path, name):
    # Shapes whose inputs are whole blocks: hidden 128, E = 128 (input_proj reads 2H = 256).
    model, feeds, *_ = drafter_model(hidden=128, vocab=200, exit_dim=128, layers=2)
    quantized, _ = apply(QuantizeDrafter(WEIGHT_FORMATS[name]), model)
    counts = collections.Counter(ops(quantized))
    c = ATTRS["beam_length"] - 1
    products = 6 * c  # per step: rnn_w, rnn_u_w, input_proj_w, 2 residual blocks, vocab_w
    assert counts["DequantizeLinear"] == counts["MatMul"] == products
    assert counts["Gemm"] == 0
    kept = {init.name for init in quantized.graph.initializer}
    assert kept.isdisjoint(
        {"vocab_w", "res_w", "rnn_w", "rnn_u_w", "input_proj_w"}
    )  # no float copy
    readers = collections.Counter(i for n in quantized.graph.node for i in n.input)
    for init in quantized.graph.initializer:
        if init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT4):
            assert readers[init.name] == 1, f"{init.name} is shared"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(quantized.SerializeToString(), options, ["CPUExecutionProvider"])
    optimized = collections.Counter(
        n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node
    )
    # The whole point: one MatMulNBits kernel per product, no float dequantization left.
    assert optimized["MatMulNBits"] == products and optimized["DequantizeLinear"] == 0
    beams, _ = run(quantized, feeds, optimize=True)
    assert beams.shape == (2, ATTRS["beam_width"], ATTRS["beam_length"])


def test_is_idempotent():
    model, *_ = drafter_model()
    quantized, _ = apply(QuantizeDrafter(WEIGHT_FORMATS["int4"]), model)
    assert_idempotent(QuantizeDrafter(WEIGHT_FORMATS["int4"]), quantized)


def test_refuses_computed_weights_and_fails_loudly_when_nothing_is_left():
    model, *_ = drafter_model(weights_as_inputs=("vocab_w",))
    ctx = PassContext()
    result, matches = apply(QuantizeDrafter(WEIGHT_FORMATS["int8"]), model, ctx)
    assert matches == [] and "redcompile::DrafterBeamSearch" in ops(result)
    assert any("vocab_w" in r.reason and "computed" in r.reason for r in ctx.rejections)
    with pytest.raises(PassError, match="quantize-drafter: required pass matched nothing"):
        PassManager([QuantizeDrafter(WEIGHT_FORMATS["int8"])]).run(model)


def test_refuses_a_vocabulary_projection_that_other_nodes_read():
    model, *_ = drafter_model()
    model.graph.node.append(onnx.helper.make_node("Identity", ["vocab_w"], ["vocab_copy"]))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("vocab_copy", onnx.TensorProto.FLOAT, [40, 24])
    )
    ctx = PassContext()
    _, matches = apply(QuantizeDrafter(WEIGHT_FORMATS["int8"]), model, ctx)
    assert matches == []
    assert any("read by other nodes" in r.reason for r in ctx.rejections)
