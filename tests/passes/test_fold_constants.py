"""fold-constants: all-constant standard nodes are evaluated; nothing else is."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

from graphs import apply, assert_idempotent, model, ops, run, vi
from redcompile.passes.fold_constants import FoldConstants


def shape_model(big=False):
    inits = [
        numpy_helper.from_array(np.array([2], np.int64), "a"),
        numpy_helper.from_array(np.array([-1], np.int64), "b"),
        numpy_helper.from_array(np.ones((300, 300) if big else (3,), np.float32), "w"),
    ]
    nodes = [
        h.make_node("Concat", ["a", "b"], ["shape"], axis=0),
        h.make_node("Reshape", ["x", "shape"], ["y"]),
        h.make_node("Neg", ["w"], ["nw"]),
        h.make_node("Add", ["x", "x"], ["z"]),
    ]
    outputs = [vi("y", TP.FLOAT, [2, "n"]), vi("nw", TP.FLOAT, None), vi("z", TP.FLOAT, [6])]
    return model(nodes, [vi("x", TP.FLOAT, [6])], outputs, inits)


FEEDS = {"x": np.arange(6, dtype=np.float32)}


def test_fires_on_constant_subgraphs_and_keeps_numerics():
    original = shape_model()
    folded, matches = apply(FoldConstants(), original)
    assert {m.root.op for m in matches} == {"Concat", "Neg"}
    assert "Concat" not in ops(folded) and "Reshape" in ops(folded)
    for got, want in zip(run(folded, FEEDS), run(original, FEEDS)):
        np.testing.assert_array_equal(got, want)


def test_does_not_fire_on_variable_inputs_or_large_constants():
    folded, matches = apply(FoldConstants(), shape_model(big=True))
    assert [m.root.op for m in matches] == ["Concat"]
    assert "Neg" in ops(folded) and "Add" in ops(folded)


def test_custom_domain_nodes_are_never_evaluated():
    inits = [numpy_helper.from_array(np.zeros((1, 2, 3), np.int64), "beams")]
    m = model(
        [h.make_node("BuildTree", ["beams"], ["t", "p", "d", "n", "u"], domain="redcompile")],
        [],
        [vi("t", TP.INT64, None)],
        inits,
    )
    _, matches = apply(FoldConstants(), m)
    assert matches == []


def test_is_idempotent():
    folded, _ = apply(FoldConstants(), shape_model())
    assert_idempotent(FoldConstants(), folded)
