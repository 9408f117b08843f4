"""check-graph: verify-only; fails on foreign ops, missing bodies and I/O contract breaks."""

from __future__ import annotations

import pytest
from onnx import TensorProto as TP
from onnx import helper as h

from graphs import apply, model, vi
from redcompile.errors import PassError
from redcompile.io_contract import StepSignature, TensorSpec
from redcompile.passes.attach_function_bodies import AttachFunctionBodies
from redcompile.passes.check_graph import CheckGraph
from test_attach_function_bodies import tree_model

SIGNATURE = StepSignature(
    (TensorSpec("beams", "int64", ("batch", 3, 4)),),
    tuple(
        TensorSpec(o, "int64", ()) for o in ["tokens", "parents", "depths", "num_tokens", "paths"]
    ),
    {},
)


def test_passes_a_good_graph_and_rewrites_nothing():
    with_bodies, _ = apply(AttachFunctionBodies(), tree_model())
    checked, matches = apply(CheckGraph(SIGNATURE, "float32"), with_bodies)
    assert matches == [] and len(checked.graph.node) == 1


def test_fails_without_function_bodies():
    with pytest.raises(PassError, match="no function body"):
        apply(CheckGraph(), tree_model())


def test_fails_on_foreign_domains():
    m = model(
        [h.make_node("Foo", ["x"], ["y"], domain="com.example")],
        [vi("x", TP.FLOAT, [1])],
        [vi("y", TP.FLOAT, [1])],
    )
    m.opset_import.append(h.make_opsetid("com.example", 1))
    with pytest.raises(PassError, match="com.example::Foo"):
        apply(CheckGraph(), m)


def test_fails_when_io_differs_from_the_signature():
    with_bodies, _ = apply(AttachFunctionBodies(), tree_model())
    wrong = StepSignature((TensorSpec("input_ids", "int64", ()),), SIGNATURE.outputs, {})
    with pytest.raises(PassError, match="differ from the signature"):
        apply(CheckGraph(wrong), with_bodies)
