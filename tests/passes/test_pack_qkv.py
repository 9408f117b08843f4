"""pack-qkv: a tree layer's q/k/v projections become one MatMul and a Split, same numerics."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper

from graphs import apply, assert_idempotent, model, ops, run, vi
from redcompile.ops import DOMAIN, TREE_ATTENTION
from redcompile.passes.pack_qkv import PackQkv

RNG = np.random.default_rng(0)
WEIGHTS = {
    name: RNG.standard_normal((8, n)).astype(np.float32)
    for name, n in (("Wq", 8), ("Wk", 4), ("Wv", 4))
}


def layer(shared_input=True, extra_reader=False):
    """x -> three projections (reshaped, transposed) -> a TreeAttention stand-in node.

    The attention node is a redcompile op without a body, so the test reads its inputs
    through graph outputs instead of running it."""
    nodes, outputs = [], []
    for name, source in (("q", "x"), ("k", "x"), ("v", "x" if shared_input else "x2")):
        nodes.append(h.make_node("MatMul", [source, f"W{name}"], [f"{name}_proj"]))
        nodes.append(h.make_node("Reshape", [f"{name}_proj", "shape"], [f"{name}_bthd"]))
        nodes.append(
            h.make_node("Transpose", [f"{name}_bthd"], [f"{name}_bhtd"], perm=[0, 2, 1, 3])
        )
        nodes.append(h.make_node("Identity", [f"{name}_bhtd"], [f"{name}_out"]))
        outputs.append(vi(f"{name}_out", TP.FLOAT, None))
    nodes.append(
        h.make_node(TREE_ATTENTION.onnx_name, ["q_bhtd", "k_bhtd", "v_bhtd"], ["y"], domain=DOMAIN)
    )
    if extra_reader:
        nodes.append(h.make_node("Identity", ["k_proj"], ["k_again"]))
        outputs.append(vi("k_again", TP.FLOAT, None))
    inits = [numpy_helper.from_array(w, name) for name, w in WEIGHTS.items()]
    inits.append(numpy_helper.from_array(np.array([0, 0, -1, 4], np.int64), "shape"))
    inputs = [vi("x", TP.FLOAT, ["B", "T", 8]), vi("x2", TP.FLOAT, ["B", "T", 8])]
    return model(nodes, inputs, outputs, inits)


FEEDS = {
    "x": RNG.standard_normal((2, 3, 8)).astype(np.float32),
    "x2": RNG.standard_normal((2, 3, 8)).astype(np.float32),
}


def _runnable(m):
    """The graph without the bodiless attention node (its inputs are graph outputs)."""
    m = type(m).FromString(m.SerializeToString())
    keep = [n for n in m.graph.node if n.domain != DOMAIN]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def test_three_projections_become_one_matmul_and_a_split():
    packed, matches = apply(PackQkv(), layer())
    assert len(matches) == 1
    assert ops(packed).count("MatMul") == 1 and ops(packed).count("Split") == 1
    (weight,) = [t for t in packed.graph.initializer if t.name.endswith(".qkv")]
    np.testing.assert_array_equal(
        numpy_helper.to_array(weight), np.concatenate(list(WEIGHTS.values()), 1)
    )
    for got, want in zip(run(_runnable(packed), FEEDS), run(_runnable(layer()), FEEDS)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert_idempotent(PackQkv(), packed)


def test_projections_of_different_inputs_or_read_elsewhere_stay():
    for original in (layer(shared_input=False), layer(extra_reader=True)):
        kept, matches = apply(PackQkv(), original)
        assert matches == [] and ops(kept).count("MatMul") == 3
