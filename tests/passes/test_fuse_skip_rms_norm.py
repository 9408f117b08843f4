"""fuse-skip-rms-norm: fires on a residual Add feeding RMSNormalization, not on near-misses;
the fused graph computes the same outputs in stock ONNX Runtime; a second run changes nothing."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

from graphs import apply, assert_idempotent, model, ops, run, vi
from redcompile.passes.base import PassContext
from redcompile.passes.fuse_skip_rms_norm import FuseSkipRmsNorm


def residual_model(b_dims=("B", "T", 8), axis=-1, stash_type=1, gamma_as_input=False):
    """s = a + b; y = RMSNorm(s) * gamma; z = s * 2 (the residual stream read again)."""
    nodes = [
        h.make_node("Add", ["a", "b"], ["s"]),
        h.make_node(
            "RMSNormalization",
            ["s", "gamma"],
            ["y"],
            axis=axis,
            epsilon=1e-6,
            stash_type=stash_type,
        ),
        h.make_node("Mul", ["s", "two"], ["z"]),
    ]
    inputs = [vi("a", TP.FLOAT, ["B", "T", 8]), vi("b", TP.FLOAT, list(b_dims))]
    gamma = np.linspace(0.5, 1.5, 8, dtype=np.float32)
    initializers = [numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    if gamma_as_input:
        inputs.append(vi("gamma", TP.FLOAT, [8]))
    else:
        initializers.append(numpy_helper.from_array(gamma, "gamma"))
    outputs = [vi("y", TP.FLOAT, None), vi("z", TP.FLOAT, None)]
    return model(nodes, inputs, outputs, initializers)


def feeds(b_shape=(2, 3, 8)):
    rng = np.random.default_rng(0)
    return {
        "a": rng.standard_normal((2, 3, 8)).astype(np.float32),
        "b": rng.standard_normal(b_shape).astype(np.float32),
    }


def test_fuses_add_and_norm_and_keeps_the_sum():
    m = residual_model()
    fused, matches = apply(FuseSkipRmsNorm(), m)
    assert len(matches) == 1
    assert "com.microsoft::SkipSimplifiedLayerNormalization" in ops(fused)
    assert "Add" not in ops(fused) and "RMSNormalization" not in ops(fused)
    for want, got in zip(run(m, feeds()), run(fused, feeds())):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert_idempotent(FuseSkipRmsNorm(), fused)


def test_broadcasting_add_is_left_alone():
    ctx = PassContext()
    _, matches = apply(FuseSkipRmsNorm(), residual_model(b_dims=(1, 1, 8)), ctx)
    assert matches == []
    assert any("broadcast" in r.reason for r in ctx.rejections)


def test_other_axis_low_precision_or_computed_scale_are_left_alone():
    for kwargs, reason in (
        ({"axis": 1}, "axis"),
        ({"stash_type": 10}, "precision"),
        ({"gamma_as_input": True}, "initializer"),
    ):
        ctx = PassContext()
        _, matches = apply(FuseSkipRmsNorm(), residual_model(**kwargs), ctx)
        assert matches == [], kwargs
        assert any(reason in r.reason for r in ctx.rejections), kwargs
