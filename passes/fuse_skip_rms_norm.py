"""fuse-skip-rms-norm: residual Add + RMSNormalization -> SkipSimplifiedLayerNormalization.

Before:                                   After:

    a ─┐                                      a ─┐
    b ─┴ Add ── s ── RMSNormalization ── y    b ─┴ com.microsoft::SkipSimplifiedLayerNormalization
               └──── (the residual stream)                 ── y, s (output 3: a + b)

Why: every decoder layer adds its attention and MLP outputs to the residual stream and
normalises the sum; at batch 1 both are a few microseconds of work, so two kernels (and two
passes over the hidden state) cost more than the arithmetic. ONNX Runtime's contrib kernel does
both in one pass and hands the sum on. The arithmetic is the same: float32 statistics
(`stash_type` 1), the same epsilon, the same scale. ONNX Runtime only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from redcompile.passes.base import GraphPass, Match, PassContext, attr, producer
from redcompile.passes.contrib import MS_DOMAIN, SKIP_SIMPLIFIED_LAYER_NORM


def _same_shape(a: gs.Tensor, b: gs.Tensor) -> bool:
    """Both operands are known to have the same rank-3 shape (no broadcasting in the Add)."""
    if a.shape is None or b.shape is None or len(a.shape) != 3 or len(b.shape) != 3:
        return False
    return all(x == y for x, y in zip(a.shape, b.shape))


class FuseSkipRmsNorm(GraphPass):
    """Residual Add feeding an RMSNormalization -> one SkipSimplifiedLayerNormalization."""

    name = "fuse-skip-rms-norm"

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """RMSNormalization(Add(a, b), gamma) over the last axis with float32 statistics, gamma
        a 1-D initializer, a and b of one [B, T, H] shape."""
        for node in graph.nodes:
            if node.op != "RMSNormalization" or node.domain not in ("", "ai.onnx", None):
                continue
            add = producer(node.inputs[0])
            if add is None or add.op != "Add":
                continue  # a norm with no residual sum before it (the first layer's)
            gamma = node.inputs[1] if len(node.inputs) > 1 else None
            if not isinstance(gamma, gs.Constant) or len(gamma.shape) != 1:
                ctx.reject(node, "its scale is not a 1-D initializer")
                continue
            axis = attr(node, "axis", -1)
            if axis not in (-1, 2) or attr(node, "stash_type", 1) != 1:
                ctx.reject(node, f"normalises axis {axis} or keeps statistics in low precision")
                continue
            if any(out.outputs for out in node.outputs[1:]):
                ctx.reject(node, "its statistics outputs are read")
                continue
            a, b = add.inputs
            if not _same_shape(a, b):
                ctx.reject(node, "the Add may broadcast (operand shapes differ or are unknown)")
                continue
            yield Match(root=node, nodes=(add,), bindings={"a": a, "b": b, "gamma": gamma})

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Write the norm's output and the Add's sum from one fused node."""
        norm, (add,) = match.root, match.nodes
        y, total = norm.outputs[0], add.outputs[0]
        epsilon = float(np.float32(attr(norm, "epsilon", 1e-5)))
        norm.outputs.clear()
        add.outputs.clear()
        empty = gs.Variable.empty
        graph.layer(
            op=SKIP_SIMPLIFIED_LAYER_NORM,
            domain=MS_DOMAIN,
            name=f"{norm.name}/skip" if norm.name else None,
            inputs=[match.bindings["a"], match.bindings["b"], match.bindings["gamma"]],
            outputs=[y, empty(), empty(), total],
            attrs={"epsilon": epsilon},
        )

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """Nothing fusable is left."""
        left = list(self.match(graph, PassContext()))
        if left:
            raise self.fail(f"{left[0].root.name} still normalises a separate Add")
