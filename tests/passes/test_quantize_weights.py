"""quantize-weights: every MatMul by a float initializer becomes MatMulNBits over the packed
weight; at accuracy level 1 it computes x @ fake_quantize(W) (the reference's weights); blocks
that do not divide the input size are refused; a second run changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

from graphs import apply, assert_idempotent, model, ops, run, vi
from redcompile.errors import InputError, PassError
from redcompile.models.weight_quant import fake_quantize, parse_base_weights
from redcompile.passes.base import PassContext
from redcompile.passes.quantize_weights import QuantizeWeights, pack_columns


def matmul_model(k=64, n=48, seed=0):
    rng = np.random.default_rng(seed)
    w_kn = rng.standard_normal((k, n)).astype(np.float32)
    w_kn[:, 3] = 0.0  # an all-zero column: scale 1, zeros stay zeros
    nodes = [h.make_node("MatMul", ["x", "w"], ["y"])]
    m = model(
        nodes,
        [vi("x", TP.FLOAT, ["B", "T", k])],
        [vi("y", TP.FLOAT, ["B", "T", n])],
        [numpy_helper.from_array(w_kn, "w")],
    )
    return m, w_kn


@pytest.mark.parametrize("name", ["int8", "int4"])
@pytest.mark.parametrize("block", [16, 32])
def test_matmulnbits_computes_the_fake_quantized_product(name, block):
    m, w_kn = matmul_model()
    base = parse_base_weights(name, block, accuracy_level=1)
    quantized, matches = apply(QuantizeWeights(base.fmt, base.accuracy_level), m)
    assert len(matches) == 1
    assert ops(quantized) == ["com.microsoft::MatMulNBits"]
    x = np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32)
    (got,) = run(quantized, {"x": x})
    w_nk = fake_quantize(torch.from_numpy(w_kn.T.copy()), base.fmt).numpy()
    np.testing.assert_allclose(got, x @ w_nk.T, rtol=1e-4, atol=1e-4)
    (plain,) = run(m, {"x": x})
    assert np.abs(got - plain).max() > 0  # it did quantize
    assert_idempotent(QuantizeWeights(base.fmt, base.accuracy_level), quantized)


def test_int4_packing_puts_the_first_value_in_the_low_nibble():
    base = parse_base_weights("int4", 16)
    q_kn = np.tile(np.arange(-8, 8, dtype=np.int8)[:, None], (1, 2))  # K = 16, N = 2
    packed = pack_columns(q_kn, base.fmt)
    assert packed.shape == (2, 1, 8)
    assert packed[0, 0, 0] == (0 | (1 << 4))  # -8 + 8 = 0 low, -7 + 8 = 1 high


def test_blocks_that_do_not_divide_the_inputs_are_rejected():
    m, _ = matmul_model(k=48)
    base = parse_base_weights("int4", 32)
    ctx = PassContext()
    with pytest.raises(PassError, match="not quantized"):
        apply(QuantizeWeights(base.fmt, base.accuracy_level), m, ctx)
    assert any("whole blocks" in r.reason for r in ctx.rejections)


@pytest.mark.parametrize(
    "args, message",
    [
        (("int3",), "--weights"),
        (("int4", 24), "power of two"),
        (("int4", 8), "power of two"),
        (("int4", 32, 7), "--accuracy-level"),
    ],
)
def test_bad_options_are_refused_in_one_line(args, message):
    with pytest.raises(InputError, match=message):
        parse_base_weights(*args)


def test_a_tied_head_read_through_gemm_is_quantized_too():
    """share-weights' form of a tied lm_head: Gemm(x, E [N, K], transB=1) reading the table."""
    rng = np.random.default_rng(2)
    table = rng.standard_normal((48, 64)).astype(np.float32)  # [V, H]
    nodes = [h.make_node("Gemm", ["x", "E"], ["y"], transB=1)]
    m = model(
        nodes,
        [vi("x", TP.FLOAT, ["R", 64])],
        [vi("y", TP.FLOAT, ["R", 48])],
        [numpy_helper.from_array(table, "E")],
    )
    base = parse_base_weights("int8", 16, accuracy_level=1)
    quantized, matches = apply(QuantizeWeights(base.fmt, base.accuracy_level), m)
    assert len(matches) == 1 and ops(quantized) == ["com.microsoft::MatMulNBits"]
    x = rng.standard_normal((3, 64)).astype(np.float32)
    (got,) = run(quantized, {"x": x})
    want = x @ fake_quantize(torch.from_numpy(table), base.fmt).numpy().T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
