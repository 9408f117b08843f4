"""attach-function-bodies: redcompile nodes get runnable, specialised bodies."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper as h

from graphs import apply, assert_idempotent, model, run, vi
from redcompile.errors import PassError
from redcompile.ops import BUILD_TREE, KV_COMPACTION
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


def kv_layers_model(layers, heads):
    """`layers` KVCompaction nodes (one per cache) sharing the step's keep indices."""
    shared = ["cache_lengths", "keep_idx", "keep_len"]
    nodes = [
        h.make_node(
            "KVCompaction", [f"past{i}", f"new{i}", *shared], [f"present{i}"], domain="redcompile"
        )
        for i in range(layers)
    ]
    inputs = [
        vi("cache_lengths", TP.INT64, ["B"]),
        vi("keep_idx", TP.INT64, ["B", "T"]),
        vi("keep_len", TP.INT64, ["B"]),
    ]
    for i in range(layers):
        inputs += [
            vi(f"past{i}", TP.FLOAT, ["B", heads, "S", 4]),
            vi(f"new{i}", TP.FLOAT, ["B", heads, "T", 4]),
        ]
    return model(nodes, inputs, [vi(f"present{i}", TP.FLOAT, None) for i in range(layers)])


def optimized_node_count(m, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return len(onnx.load(options.optimized_model_filepath).graph.node)


def test_kv_index_math_is_computed_once_for_all_layers(tmp_path):
    """With the cache's head count known statically, a layer's KV update is its own two
    gathers, select and scatter; the index math, the same for every layer, runs once."""
    one, _ = apply(AttachFunctionBodies(), kv_layers_model(1, heads=2))
    three, _ = apply(AttachFunctionBodies(), kv_layers_model(3, heads=2))
    assert (optimized_node_count(three, tmp_path) - optimized_node_count(one, tmp_path)) == 2 * 4

    g = torch.Generator().manual_seed(0)
    step = [torch.tensor([2, 0]), torch.tensor([[0, 2, 0], [1, 0, 0]]), torch.tensor([2, 1])]
    feeds = dict(zip(["cache_lengths", "keep_idx", "keep_len"], (t.numpy() for t in step)))
    layers = [
        (torch.randn(2, 2, 8, 4, generator=g), torch.randn(2, 2, 3, 4, generator=g))
        for _ in range(3)
    ]
    for i, (past, new) in enumerate(layers):
        feeds |= {f"past{i}": past.numpy(), f"new{i}": new.numpy()}
    for got, (past, new) in zip(run(three, feeds), layers):
        np.testing.assert_array_equal(got, KV_COMPACTION.reference(past, new, *step).numpy())
