"""share-weights: one copy of every weight, however many places read it.

Two cases, both met in practice by the embedding table:

1. Identical initializers (same dtype, shape and bytes) are merged into one.
2. An initializer that is the transpose of another one and only feeds MatMul is dropped; each
   such MatMul reads the original through Gemm(transB=1):

       Before:  E[V,H] ── Gather (embedding)         E_T[H,V] (a folded copy of E^T)
                E[V,H] ── DrafterBeamSearch          x[B,T,H] ── MatMul(x, E_T) ── y[B,T,V]

       After:   E[V,H] ── Gather, DrafterBeamSearch, and
                x ── Reshape[-1,H] ── Gemm(·, E, transB=1) ── Reshape[B,T,V] ── y

Why: with tied embeddings the exporter folds the transposed table for the LM head into a second
initializer, so the table (the largest tensor of a small model) would be stored twice; the base
model and the drafter must read the same embedding table, not two copies.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from redcompile.passes.base import (
    GraphPass,
    Match,
    PassContext,
    constant_array,
    constant_digest,
    replace_input,
)


def _constants(graph: gs.Graph) -> list[gs.Constant]:
    return [t for t in graph.tensors().values() if isinstance(t, gs.Constant) and t.shape]


def _consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


class ShareWeights(GraphPass):
    """Merge duplicate initializers; read transposed copies through Gemm(transB=1)."""

    name = "share-weights"
    min_elements = 16  # small constants (shapes, scalars) are not worth comparing

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """Duplicates and transposed copies of initializers."""
        constants = [c for c in _constants(graph) if int(np.prod(c.shape)) >= self.min_elements]
        by_digest: dict[str, gs.Constant] = {}
        for c in constants:
            key = constant_digest(c, ctx)
            if key in by_digest:
                yield Match(
                    root=c.outputs[0],
                    bindings={"kind": "duplicate", "copy": c, "original": by_digest[key]},
                )
            else:
                by_digest[key] = c
        # Lookup tables (read by Gather: the embedding) against transposed copies feeding only
        # MatMul; only shape-compatible pairs are compared, so few tensors are ever loaded.
        matrices = [c for c in by_digest.values() if len(c.shape) == 2]
        tables = [c for c in matrices if any(n.op == "Gather" for n in c.outputs)]
        for copy in matrices:
            users = _consumers(copy)
            if not users or not all(n.op == "MatMul" and n.inputs[1] is copy for n in users):
                continue
            for original in tables:
                if tuple(original.shape) != tuple(copy.shape)[::-1] or original.dtype != copy.dtype:
                    continue
                if not np.array_equal(constant_array(copy, ctx), constant_array(original, ctx).T):
                    ctx.reject(
                        users[0],
                        f"{copy.name} has {original.name}'s transposed shape but other values",
                    )
                    continue
                yield Match(
                    root=users[0],
                    nodes=tuple(users),
                    bindings={"kind": "transposed", "copy": copy, "original": original},
                )
                break

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Point consumers at the original (through Gemm for transposed copies)."""
        copy, original = match.bindings["copy"], match.bindings["original"]
        if match.bindings["kind"] == "duplicate":
            for node in list(copy.outputs):
                replace_input(node, copy, original)
            return
        hidden, vocab = copy.shape
        for matmul in match.nodes:
            x, y = matmul.inputs[0], matmul.outputs[0]
            matmul.outputs.clear()
            base = f"{matmul.name or 'matmul'}/shared"
            flat = graph.layer(
                op="Reshape",
                name=f"{base}/flatten",
                inputs=[x, gs.Constant(f"{base}/rows", np.array([-1, hidden]))],
                outputs=[gs.Variable(f"{base}/x2d", dtype=x.dtype)],
            )[0]
            product = graph.layer(
                op="Gemm",
                name=f"{base}/gemm",
                inputs=[flat, original],
                attrs={"transB": 1},
                outputs=[gs.Variable(f"{base}/y2d", dtype=y.dtype)],
            )[0]
            lead = graph.layer(
                op="Shape",
                name=f"{base}/lead",
                inputs=[x],
                attrs={"end": -1},
                outputs=[gs.Variable(f"{base}/lead_dims", dtype=np.int64)],
            )[0]
            shape = graph.layer(
                op="Concat",
                name=f"{base}/shape",
                attrs={"axis": 0},
                inputs=[lead, gs.Constant(f"{base}/cols", np.array([vocab]))],
                outputs=[gs.Variable(f"{base}/out_shape", dtype=np.int64)],
            )[0]
            graph.layer(
                op="Reshape", name=f"{base}/unflatten", inputs=[product, shape], outputs=[y]
            )

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """No two remaining large initializers hold the same bytes."""
        seen: set[str] = set()
        for c in _constants(graph):
            if int(np.prod(c.shape)) < self.min_elements:
                continue
            digest = constant_digest(c, ctx)
            if digest in seen:
                raise self.fail(f"{c.name} duplicates another initializer")
            seen.add(digest)
