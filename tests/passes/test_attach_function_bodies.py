"""attach-function-bodies: redcompile nodes get runnable, specialised bodies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper as h

from graphs import apply, assert_idempotent, model, run, vi
from redcompile.errors import PassError
from redcompile.ops import BUILD_TREE
from redcompile.passes.attach_function_bodies import AttachFunctionBodies
from redcompile.passes.base import PassContext

OUTS = ["tokens", "parents", "depths", "num_tokens", "paths"]


def tree_model(op="BuildTree", copies=1):
    nodes = [
        h.make_node(op, ["beams"], [f"{o}{i or ''}" for o in OUTS], domain="redcompile")
        for i in range(copies)
    ]
    return model(
        nodes,
        [vi("beams", TP.INT64, ["B", 3, 4])],
        [vi(f"{o}{i or ''}", TP.INT64, None) for i in range(copies) for o in OUTS],
    )


def test_fires_once_per_op_and_the_body_runs_in_stock_onnxruntime():
    m, matches = apply(AttachFunctionBodies(), tree_model(copies=2))
    assert len(matches) == 1 and len(matches[0].nodes) == 2
    assert [(f.domain, f.name) for f in m.functions] == [("redcompile", "BuildTree")]
    beams = np.array([[[91, 92, 93, 95], [91, 92, 94, 96], [91, 92, 93, 97]]])
    expected = BUILD_TREE.reference(torch.from_numpy(beams))
    for got, want in zip(run(m, {"beams": beams})[:5], expected):
        np.testing.assert_array_equal(got, want.numpy())


def test_is_idempotent():
    m, _ = apply(AttachFunctionBodies(), tree_model())
    assert_idempotent(AttachFunctionBodies(), m)


def test_unknown_redcompile_op_is_rejected_and_verify_fails():
    ctx = PassContext()
    with pytest.raises(PassError, match="has no function body"):
        apply(AttachFunctionBodies(), tree_model(op="NotAnOp"), ctx)
    assert "unknown redcompile op" in ctx.rejections[0].reason
