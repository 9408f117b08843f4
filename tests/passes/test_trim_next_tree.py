"""trim-next-tree: the packed next tree is sliced to its widest row, at least one column."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

from graphs import apply, assert_idempotent, model, ops, run, vi
from redcompile.errors import PassError
from redcompile.passes.trim_next_tree import TrimNextTree

N = 6  # the untrimmed width


def step_model(with_sizes=True):
    """A stand-in for a step's tail: packed tokens [B, N] and per-row sizes [B]."""
    names = ("next_input_ids", "next_parent_ids", "next_depths")
    nodes = [h.make_node("Identity", [src], [dst]) for src, dst in zip(("t", "p", "d"), names)]
    outputs = [vi(name, TP.INT64, ["batch", N]) for name in names]
    inputs = [vi(name, TP.INT64, ["batch", N]) for name in ("t", "p", "d")]
    if with_sizes:
        nodes.append(h.make_node("Identity", ["sizes"], ["next_num_tokens"]))
        outputs.append(vi("next_num_tokens", TP.INT64, ["batch"]))
        inputs.append(vi("sizes", TP.INT64, ["batch"]))
    return model(nodes, inputs, outputs)


def feeds(sizes):
    b = len(sizes)
    packed = np.arange(b * N, dtype=np.int64).reshape(b, N)
    return {"t": packed, "p": packed - 1, "d": packed + 1, "sizes": np.array(sizes, np.int64)}


@pytest.mark.parametrize("sizes,width", [([3, 5], 5), ([1, 1], 1), ([0, 0], 1), ([6], 6)])
def test_the_packed_outputs_are_as_wide_as_the_widest_row(sizes, width):
    trimmed, matches = apply(TrimNextTree(), step_model())
    assert len(matches) == 1 and ops(trimmed).count("Slice") == 3
    inputs = feeds(sizes)
    tokens, parents, depths, got_sizes = run(trimmed, inputs)
    np.testing.assert_array_equal(tokens, inputs["t"][:, :width])
    np.testing.assert_array_equal(parents, inputs["p"][:, :width])
    np.testing.assert_array_equal(depths, inputs["d"][:, :width])
    np.testing.assert_array_equal(got_sizes, inputs["sizes"])
    dims = {o.name: o.type.tensor_type.shape.dim for o in trimmed.graph.output}
    assert dims["next_input_ids"][1].dim_param == "next_tokens"


def test_applying_twice_changes_nothing():
    trimmed, _ = apply(TrimNextTree(), step_model())
    assert_idempotent(TrimNextTree(), trimmed)


def test_a_step_without_sizes_is_refused():
    with pytest.raises(PassError, match="next_num_tokens"):
        apply(TrimNextTree(), step_model(with_sizes=False))
