"""Blockwise weight quantization: the bounds it promises, the layout the pass stores."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from redcompile.errors import InputError
from redcompile.models.drafter import Drafter, DrafterConfig
from redcompile.models.weight_quant import (
    WEIGHT_FORMATS,
    dequantize_blockwise,
    fake_quantize,
    quantize_blockwise,
    recorded_format,
    weight_format,
)
from redcompile.passes.quantize_drafter import pack_int4


@pytest.mark.parametrize("name", sorted(WEIGHT_FORMATS))
@pytest.mark.parametrize("k", [256, 300])  # whole blocks and a ragged last block
def test_error_is_at_most_half_a_step_of_each_block(name, k):
    fmt = WEIGHT_FORMATS[name]
    w = torch.randn(7, k, generator=torch.Generator().manual_seed(0))
    q, scale = quantize_blockwise(w, fmt)
    assert q.shape == (k, 7) and q.dtype == torch.int8
    assert scale.shape == (-(-k // fmt.block_size), 7)
    assert int(q.min()) >= -fmt.qmax - 1 and int(q.max()) <= fmt.qmax
    step = scale.repeat_interleave(fmt.block_size, dim=0)[:k].t()  # [N, K]
    err = (fake_quantize(w, fmt) - w).abs()
    assert bool((err <= step / 2 + 1e-7).all())
    # the largest magnitude of every block is represented exactly (up to float rounding)
    assert float(err.max()) < float(step.max()) / 2 + 1e-7


def test_zero_blocks_get_unit_scale_and_zero_codes():
    fmt = WEIGHT_FORMATS["int4"]
    bs = fmt.block_size
    w = torch.zeros(3, 2 * bs)
    w[:, bs:] = torch.randn(3, bs)
    q, scale = quantize_blockwise(w, fmt)
    assert torch.equal(scale[0], torch.ones(3)) and int(q[:bs].abs().sum()) == 0
    assert torch.equal(fake_quantize(w, fmt)[:, :bs], w[:, :bs])


def test_fp16_scales_stay_fp16_and_dequantize_exactly():
    w = torch.randn(5, 128).half()
    fmt = WEIGHT_FORMATS["int8"]
    q, scale = quantize_blockwise(w, fmt)
    assert scale.dtype == torch.float16
    want = (q.float() * scale.float().repeat_interleave(128, dim=0)).half().t()
    assert torch.equal(dequantize_blockwise(q, scale, fmt), want)


def test_format_names():
    assert weight_format(None) is None and weight_format("float") is None
    assert weight_format("int4").bits == 4 and weight_format("int8").qmax == 127
    with pytest.raises(ValueError, match="int2"):
        weight_format("int2")


def test_int4_packing_reads_back_through_onnx():
    values = np.array([[-8, 7, 0], [1, -1, 5]], dtype=np.int8)
    proto = onnx.helper.make_tensor("q", onnx.TensorProto.INT4, [2, 3], pack_int4(values), True)
    assert pack_int4(np.array([1, -2], np.int8)) == bytes([0xE1])  # low nibble first
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(proto), values)


def test_drafter_quantize_weights_holds_the_artifact_values():
    torch.manual_seed(0)
    drafter = Drafter(DrafterConfig(16, 30, 24, 2, rnn=True))
    before = {name: p.detach().clone() for name, p in drafter.named_parameters()}
    fmt = WEIGHT_FORMATS["int4"]
    drafter.quantize_weights(fmt)
    assert drafter.describe(False)["quantized"] == "int4"
    for name in ("vocab_w", "rnn_w", "rnn_u.weight", "input_proj.weight"):
        got = dict(drafter.named_parameters())[name]
        assert torch.equal(got, fake_quantize(before[name], fmt)), name
    for i in range(2):
        assert torch.equal(drafter.res_w[i], fake_quantize(before["res_w"][i], fmt))
    for name in ("res_b", "rnn_u.bias", "input_proj.bias"):  # biases stay float
        assert torch.equal(dict(drafter.named_parameters())[name], before[name])
    with pytest.raises(ValueError, match="already quantized"):
        drafter.quantize_weights(fmt)


def test_an_artifact_quantized_in_other_blocks_is_refused_in_one_line():
    assert recorded_format("int4", WEIGHT_FORMATS["int4"].block_size) is WEIGHT_FORMATS["int4"]
    assert recorded_format("int8", None) is WEIGHT_FORMATS["int8"]  # no block size recorded
    with pytest.raises(InputError, match="blocks of 32 inputs.*blocks of 128: convert it again"):
        recorded_format("int4", 32)
    with pytest.raises(InputError, match="quantized as 'int3', which this version does not know"):
        recorded_format("int3", None)
