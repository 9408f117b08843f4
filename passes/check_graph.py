"""check-graph: the artifact's invariants, checked once the rewrites are done (rewrites nothing).

- every node is a standard ONNX op, a known `redcompile` op or, for the onnxruntime target, one
  of the contrib ops of passes/contrib.py;
- for the onnxruntime target, every `redcompile` node carries a function body (stock ONNX Runtime
  can run the artifact with no redcompile code installed);
- the graph inputs and outputs are exactly the step signature's, in order, with its dtypes;
- no standard Attention attends over a concatenated cache (fuse-tree-attention ran).

The manager's checks (ONNX checker, strict shape inference) run after this pass as after every
pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from redcompile.io_contract import StepSignature
from redcompile.ops import DOMAIN, OPS_BY_ONNX_NAME
from redcompile.passes.base import GraphPass, Match, PassContext
from redcompile.passes.contrib import CONTRIB_OPS, MS_DOMAIN

DTYPES = {"int64": np.int64, "float32": np.float32, "float16": np.float16}


class CheckGraph(GraphPass):
    """Verify-only pass: see the module docstring."""

    name = "check-graph"

    def __init__(
        self,
        signature: StepSignature | None = None,
        model_dtype: str | None = None,
        need_bodies: bool = True,
    ) -> None:
        self.signature = signature
        self.model_dtype = model_dtype
        self.need_bodies = need_bodies

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """Nothing to rewrite."""
        return iter(())

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Never called."""

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """Raise PassError on the first broken invariant."""
        bodies = {f.name for f in graph.functions if f.domain == DOMAIN}
        for node in graph.nodes:
            if node.domain in (None, "", "ai.onnx"):
                continue
            if node.domain == MS_DOMAIN and node.op in CONTRIB_OPS:
                if ctx.target != "onnxruntime":
                    raise self.fail(f"{node.name}: {MS_DOMAIN}::{node.op} is for ONNX Runtime only")
                continue
            if node.domain != DOMAIN or node.op not in OPS_BY_ONNX_NAME:
                raise self.fail(f"{node.name}: op {node.domain}::{node.op} is not allowed")
            if self.need_bodies and node.op not in bodies:
                raise self.fail(f"{node.name}: redcompile::{node.op} has no function body")
        if self.signature is not None:
            self._check_io(graph)

    def _check_io(self, graph: gs.Graph) -> None:
        for kind, tensors, specs in (
            ("input", graph.inputs, self.signature.inputs),
            ("output", graph.outputs, self.signature.outputs),
        ):
            names = [t.name for t in tensors]
            expected = [s.name for s in specs]
            if names != expected:
                raise self.fail(f"graph {kind}s {names} differ from the signature {expected}")
            for tensor, spec in zip(tensors, specs):
                dtype = self.model_dtype if spec.dtype == "model" else spec.dtype
                want = DTYPES.get(dtype)
                if (
                    want is not None
                    and tensor.dtype is not None
                    and np.dtype(tensor.dtype) != np.dtype(want)
                ):
                    raise self.fail(
                        f"{kind} {tensor.name} is {np.dtype(tensor.dtype)}, the "
                        f"contract says {dtype}"
                    )
