"""fuse-tree-attention: the exporter's Attention over a concatenated cache -> TreeAttention.

Before (what torch.onnx.export emits for attention over `concat(cache, new)`):

    past_k ─┐                 past_v ─┐              past_mask ─┐
    k ──────┴ Concat(axis 2)  v ──────┴ Concat(axis 2)  tree_mask ┴ Concat(axis -1)
                  │                        │                          │
    q ─────────── Attention(is_causal=0, softcap=0) ──────────────────┘ ── y

After:

    q, k, v, past_k, past_v, past_mask, tree_mask ── redcompile::TreeAttention(scale) ── y

Why: each Concat copies the whole cache every step and every layer, so a step costs memory
traffic proportional to the cache size. TreeAttention reads the cache in place and attends to the
packed tokens separately, with one softmax over both (numerically the same attention).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from redcompile.ops import DOMAIN, TREE_ATTENTION
from redcompile.passes.base import GraphPass, Match, PassContext, attr, producer


def _concat_parts(tensor: gs.Tensor, axes: tuple[int, ...]) -> tuple[gs.Tensor, gs.Tensor] | None:
    node = producer(tensor)
    if node is None or node.op != "Concat" or len(node.inputs) != 2:
        return None
    if attr(node, "axis") not in axes:
        return None
    return node.inputs[0], node.inputs[1]


class FuseTreeAttention(GraphPass):
    """Replace standard Attention over concatenated cache + tree with TreeAttention."""

    name = "fuse-tree-attention"
    required = True

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """Attention nodes whose K, V and mask are two-part Concats (cache first)."""
        graph_outputs = {id(t) for t in graph.outputs}
        for node in graph.nodes:
            if node.op != "Attention" or node.domain not in (None, "", "ai.onnx"):
                continue
            if len(node.inputs) != 4:
                ctx.reject(node, f"has {len(node.inputs)} inputs (past_key/value inside the op)")
                continue
            if attr(node, "is_causal", 0) != 0 or attr(node, "softcap", 0.0) != 0.0:
                ctx.reject(node, "uses is_causal or softcap, which TreeAttention does not take")
                continue
            if any(out.outputs or id(out) in graph_outputs for out in node.outputs[1:]):
                ctx.reject(node, "its present or qk outputs are consumed")
                continue
            q, k, v, mask = node.inputs
            k_parts, v_parts = _concat_parts(k, (2, -2)), _concat_parts(v, (2, -2))
            mask_parts = _concat_parts(mask, (3, -1))
            if k_parts is None or v_parts is None:
                ctx.reject(node, "K or V is not a Concat of cache and new tokens on axis 2")
                continue
            if mask_parts is None:
                ctx.reject(node, "the mask is not a Concat of cache mask and tree mask")
                continue
            if mask.dtype not in (None, np.bool_) and np.dtype(mask.dtype) != np.bool_:
                ctx.reject(node, f"the mask is {np.dtype(mask.dtype)}, not bool")
                continue
            scale = attr(node, "scale")
            if scale is None:
                ctx.reject(node, "has no explicit scale")
                continue
            yield Match(
                root=node,
                bindings={
                    "q": q,
                    "k": k_parts[1],
                    "v": v_parts[1],
                    "past_k": k_parts[0],
                    "past_v": v_parts[0],
                    "past_mask": mask_parts[0],
                    "tree_mask": mask_parts[1],
                    "scale": float(scale),
                },
            )

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Detach the Attention node and write its output from a TreeAttention node."""
        node, b = match.root, match.bindings
        y = node.outputs[0]
        node.outputs.clear()
        graph.layer(
            op=TREE_ATTENTION.onnx_name,
            domain=DOMAIN,
            name=f"{node.name}/tree_attention" if node.name else None,
            inputs=[b[name] for name in TREE_ATTENTION.input_names],
            outputs=[y],
            attrs={"scale": b["scale"]},
        )

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """Every fusable Attention was fused, and every TreeAttention has seven inputs."""
        left = list(self.match(graph, PassContext()))
        if left:
            raise self.fail(f"{left[0].root.name} still attends over a concatenated cache")
        for node in graph.nodes:
            if node.op == TREE_ATTENTION.onnx_name and len(node.inputs) != 7:
                raise self.fail(f"{node.name} has {len(node.inputs)} inputs, not 7")
