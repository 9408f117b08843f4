"""pack-qkv: a tree layer's three q/k/v projections -> one MatMul over [Wq | Wk | Wv] and a Split.

Before (per layer, after fuse-tree-attention, where fuse-chain-attention did not apply):

    x ── MatMul(Wq) ── q ──> (Reshape, Transpose, RotaryEmbedding) ── TreeAttention
    x ── MatMul(Wk) ── k ──> (Reshape, Transpose, RotaryEmbedding) ─┘
    x ── MatMul(Wv) ── v ──> (Reshape, Transpose) ──────────────────┘

After:

    x ── MatMul([Wq | Wk | Wv]) ── Split(axis -1, [Nq, Nk, Nv]) ── q, k, v ──> (as before)

Why: one matrix product reads x once and runs one kernel where three ran, and the packed matrix
is byte for byte the one fuse-chain-attention makes for GroupQueryAttention (q, k, v in that
order, concatenated along the outputs): the autoregressive branch of a tree artifact
(passes/speculation_levels.py) then reads the very tensor the tree branch reads, so the
artifact keeps one copy of its weights. Numerics: each output column is the same dot product.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from redcompile.ops import DOMAIN, TREE_ATTENTION
from redcompile.passes.base import GraphPass, Match, PassContext, constant_array, producer

# ops between a projection and TreeAttention's q, k, v inputs (their first input is the data)
PASSED_THROUGH = ("Reshape", "Transpose", "RotaryEmbedding")


def _projection_of(tensor: gs.Tensor) -> gs.Node | None:
    """The MatMul(x, W) (W a 2-D constant) that `tensor` is made from through reshapes,
    transposes and rotations, else None."""
    node = producer(tensor)
    while node is not None and node.op in PASSED_THROUGH:
        node = producer(node.inputs[0])
    if node is None or node.op != "MatMul" or not isinstance(node.inputs[1], gs.Constant):
        return None
    if len(node.inputs[1].shape) != 2:
        return None
    return node


class PackQkv(GraphPass):
    """Each TreeAttention's q/k/v projections of one input -> one MatMul and a Split."""

    name = "pack-qkv"

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """Each TreeAttention whose q, k and v are projections of one tensor by constants of
        one dtype, each read only on its way to this attention."""
        for node in graph.nodes:
            if node.domain != DOMAIN or node.op != TREE_ATTENTION.onnx_name:
                continue
            projections = [_projection_of(t) for t in node.inputs[:3]]
            if not all(projections):
                ctx.reject(node, "q, k or v is not a MatMul by a constant matrix")
                continue
            if len({id(p.inputs[0]) for p in projections}) != 1:
                ctx.reject(node, "q, k and v project different inputs")
                continue
            if len({p.inputs[1].dtype for p in projections}) != 1:
                ctx.reject(node, "q, k and v weights differ in dtype")
                continue
            if any(len(p.outputs[0].outputs) != 1 for p in projections):
                ctx.reject(node, "a projection has other readers")
                continue
            yield Match(
                root=node, nodes=tuple(projections), bindings={"x": projections[0].inputs[0]}
            )

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """One MatMul over the concatenated weights; a Split writes the three old outputs."""
        projections = match.nodes
        weights = [constant_array(p.inputs[1], ctx) for p in projections]
        packed = gs.Constant(f"{projections[0].inputs[1].name}.qkv", np.concatenate(weights, 1))
        out = gs.Variable(f"{packed.name}/out", dtype=weights[0].dtype)
        graph.layer(
            op="MatMul",
            name=f"{packed.name}/MatMul",
            inputs=[match.bindings["x"], packed],
            outputs=[out],
        )
        sizes = gs.Constant(
            f"{packed.name}/sizes", np.array([w.shape[1] for w in weights], dtype=np.int64)
        )
        outputs = []
        for projection in projections:
            tensor = projection.outputs[0]
            projection.outputs.clear()
            outputs.append(tensor)
        graph.layer(
            op="Split",
            name=f"{packed.name}/Split",
            inputs=[out, sizes],
            outputs=outputs,
            attrs={"axis": -1},
        )

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """No TreeAttention still reads three projections of one input."""
        for node in graph.nodes:
            if node.domain == DOMAIN and node.op == TREE_ATTENTION.onnx_name:
                projections = [_projection_of(t) for t in node.inputs[:3]]
                if all(projections) and len({id(p.inputs[0]) for p in projections}) == 1:
                    raise self.fail(f"{node.name} still reads three projections")
