"""trim-next-tree: the next packed tree is only as wide as its widest row.

Before:

    BuildTree ── tokens [B, N] ──────────────────────────── next_input_ids
              ── parents, depths [B, N] ─────────────────── next_parent_ids, next_depths
    ... ── next_num_tokens [B]

After:

    width = Max(ReduceMax(next_num_tokens), 1)
    BuildTree ── tokens [B, N] ── Slice(0, width, axis 1) ── next_input_ids [B, next_tokens]
              (likewise parents and depths)

Why: the next step verifies every packed column, so padding no row uses is work that buys
nothing. A step drafting a chain (speculation level `chain`) or nothing (`none`) leaves at most L
or 1 of the N = W * (L - 1) + 1 columns in use, and a full tree whose beams share prefixes leaves
fewer than N; trimmed, the next step's cost follows the tree it really verifies. Exactness is
untouched: columns past a row's `num_tokens` are never read (docs/artifact.md, "Inputs").
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from redcompile.io_contract import NEXT_TOKENS
from redcompile.passes.base import GraphPass, Match, PassContext

PACKED_OUTPUTS = ("next_input_ids", "next_parent_ids", "next_depths")
SIZES = "next_num_tokens"


class TrimNextTree(GraphPass):
    """Slice the three packed outputs of a speculative step to the widest row's tree."""

    name = "trim-next-tree"
    required = True

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """One match for the whole graph when it has the packed outputs, untrimmed."""
        outputs = {t.name: t for t in graph.outputs}
        missing = [name for name in (*PACKED_OUTPUTS, SIZES) if name not in outputs]
        if missing:
            raise self.fail(f"the step has no output {missing[0]}")
        packed = [outputs[name] for name in PACKED_OUTPUTS]
        if any(t.inputs and t.inputs[0].op == "Slice" for t in packed):
            return
        yield Match(root=packed[0].inputs[0], bindings={"packed": packed, "sizes": outputs[SIZES]})

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Rename each packed output's producer tensor and slice it into the output name."""
        sizes = match.bindings["sizes"]
        widest = gs.Variable("trim_next_tree/widest", dtype=np.int64, shape=[1])
        graph.nodes.append(
            gs.Node("ReduceMax", inputs=[sizes], outputs=[widest], attrs={"keepdims": 1})
        )
        width = gs.Variable("trim_next_tree/width", dtype=np.int64, shape=[1])
        one = gs.Constant("trim_next_tree/one", np.ones(1, dtype=np.int64))
        graph.nodes.append(gs.Node("Max", inputs=[widest, one], outputs=[width]))
        zero = gs.Constant("trim_next_tree/zero", np.zeros(1, dtype=np.int64))
        axis = gs.Constant("trim_next_tree/axis", np.ones(1, dtype=np.int64))
        for output in match.bindings["packed"]:
            full = gs.Variable(f"{output.name}/untrimmed", dtype=output.dtype, shape=output.shape)
            producer = output.inputs[0]
            producer.outputs[producer.outputs.index(output)] = full
            output.shape = [output.shape[0] if output.shape else "batch", NEXT_TOKENS]
            graph.nodes.append(gs.Node("Slice", inputs=[full, zero, width, axis], outputs=[output]))

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """Every packed output comes out of a Slice."""
        outputs = {t.name: t for t in graph.outputs}
        for name in PACKED_OUTPUTS:
            producer = outputs[name].inputs[0] if outputs[name].inputs else None
            if producer is None or producer.op != "Slice":
                raise self.fail(f"{name} is not trimmed")
