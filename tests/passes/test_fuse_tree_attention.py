"""fuse-tree-attention: fires on Attention over a concatenated cache, not on near-misses."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP

from graphs import apply, assert_idempotent, attention_feeds, attention_model, ops, run
from redcompile.errors import PassError
from redcompile.passes.attach_function_bodies import AttachFunctionBodies
from redcompile.passes.base import PassContext
from redcompile.passes.fuse_tree_attention import FuseTreeAttention
from redcompile.passes.manager import PassManager


def test_fires_and_removes_the_cache_concats():
    fused, matches = apply(FuseTreeAttention(), attention_model())
    assert len(matches) == 1
    assert ops(fused) == ["redcompile::TreeAttention"]
    node = fused.graph.node[0]
    assert list(node.input) == ["q", "k", "v", "pk", "pv", "pm", "tm"]
    assert abs(node.attribute[0].f - 0.3) < 1e-7


def test_numerics_are_unchanged():
    original = attention_model()
    fused, _ = apply(FuseTreeAttention(), original)
    with_body, _ = apply(AttachFunctionBodies(), fused)
    feeds = attention_feeds()
    np.testing.assert_allclose(run(with_body, feeds)[0], run(original, feeds)[0], atol=1e-5)


def test_is_idempotent():
    fused, _ = apply(FuseTreeAttention(), attention_model())
    assert_idempotent(FuseTreeAttention(), fused)


@pytest.mark.parametrize(
    "variant,reason",
    [
        (dict(is_causal=1), "is_causal"),
        (dict(k_concat=False), "not a Concat"),
        (dict(mask_axis=2), "mask is not a Concat"),
        (dict(consume_present=True), "consumed"),
        (dict(mask_type=TP.FLOAT), "not bool"),
    ],
)
def test_does_not_fire_on_near_misses(variant, reason):
    ctx = PassContext()
    result, matches = apply(FuseTreeAttention(), attention_model(**variant), ctx)
    assert matches == [] and "Attention" in ops(result)
    assert reason in ctx.rejections[0].reason


def test_a_required_pass_without_match_fails_loudly_with_the_closest_candidate():
    with pytest.raises(PassError, match="matched nothing.*is_causal"):
        PassManager([FuseTreeAttention()]).run(attention_model(is_causal=1))
