"""share-weights: duplicates merged, transposed copies of the embedding read through Gemm."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

from graphs import apply, assert_idempotent, model, ops, run, vi
from redcompile.passes.base import PassContext
from redcompile.passes.share_weights import ShareWeights

RNG = np.random.default_rng(0)
E = RNG.standard_normal((10, 4)).astype(np.float32)  # [V, H]
B = RNG.standard_normal((4, 6)).astype(np.float32)


def tied_model(copy_values=E.T, extra_consumer=False, duplicate=True):
    inits = [
        numpy_helper.from_array(E, "E"),
        numpy_helper.from_array(copy_values.copy(), "E_T"),
        numpy_helper.from_array(B, "b1"),
        numpy_helper.from_array(B.copy(), "b2"),
    ]
    nodes = [
        h.make_node("Gather", ["E", "ids"], ["emb"]),
        h.make_node("MatMul", ["emb", "E_T"], ["logits"]),
        h.make_node("MatMul", ["emb", "b1"], ["p1"]),
        h.make_node("MatMul", ["emb", "b2" if duplicate else "b1"], ["p2"]),
    ]
    outputs = [
        vi("logits", TP.FLOAT, ["B", "T", 10]),
        vi("p1", TP.FLOAT, ["B", "T", 6]),
        vi("p2", TP.FLOAT, ["B", "T", 6]),
    ]
    if extra_consumer:
        nodes.append(h.make_node("Identity", ["E_T"], ["et_out"]))
        outputs.append(vi("et_out", TP.FLOAT, [4, 10]))
    return model(nodes, [vi("ids", TP.INT64, ["B", "T"])], outputs, inits)


FEEDS = {"ids": np.array([[1, 2, 9], [0, 4, 4]], np.int64)}


def test_fires_on_transposed_copy_and_duplicates():
    shared, matches = apply(ShareWeights(), tied_model())
    assert sorted(m.bindings["kind"] for m in matches) == ["duplicate", "transposed"]
    names = {i.name for i in shared.graph.initializer}
    assert "E_T" not in names and len(names & {"b1", "b2"}) == 1
    assert "Gemm" in ops(shared) and ops(shared).count("MatMul") == 2


def test_numerics_are_unchanged():
    original = tied_model()
    shared, _ = apply(ShareWeights(), original)
    for got, want in zip(run(shared, FEEDS), run(original, FEEDS)):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_is_idempotent():
    shared, _ = apply(ShareWeights(), tied_model())
    assert_idempotent(ShareWeights(), shared)


def test_does_not_merge_different_values_or_copies_with_other_consumers():
    ctx = PassContext()
    other = E.T + 1.0
    result, matches = apply(ShareWeights(), tied_model(copy_values=other, duplicate=False), ctx)
    assert matches == [] and "E_T" in {i.name for i in result.graph.initializer}
    assert "other values" in ctx.rejections[0].reason
    result, matches = apply(ShareWeights(), tied_model(extra_consumer=True, duplicate=False))
    assert matches == []
