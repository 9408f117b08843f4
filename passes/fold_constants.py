"""fold-constants: evaluate standard-op nodes whose inputs are all small constants.

Before:  Constant[2] ── Concat ── Constant[3]        After:  Constant[3]
         Constant[1] ──┘

Why: rewrites leave constant subgraphs behind (shape arithmetic, casts of constants) and every
node costs a kernel launch per step. The exporter already folds what torch.export produced, so
on a fresh export this pass usually finds nothing; it keeps the pipeline's output folded whatever
earlier passes or exporter versions leave. Only default-domain nodes are evaluated (custom ops
stay), and results larger than `max_elements` are left unfolded so weights are never copied.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx.reference import ReferenceEvaluator

from redcompile.ops.opdef import ONNX_IR_VERSION, ONNX_OPSET
from redcompile.passes.base import GraphPass, Match, PassContext, constant_array, replace_input

NEVER_FOLD = {
    "RandomUniform",
    "RandomNormal",
    "RandomUniformLike",
    "RandomNormalLike",
    "Multinomial",
    "Bernoulli",
}


class FoldConstants(GraphPass):
    """Replace all-constant default-domain nodes by their (small) results."""

    name = "fold-constants"
    max_elements = 1 << 16

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """Default-domain nodes with only small constant inputs."""
        outputs = {id(t) for t in graph.outputs}
        for node in graph.nodes:
            if node.domain not in (None, "", "ai.onnx") or node.op in NEVER_FOLD:
                continue
            if node.op == "Identity" and id(node.outputs[0]) in outputs:
                continue  # how a folded graph output is written: already folded
            if any(True for _ in node.subgraphs()):
                continue
            inputs = [t for t in node.inputs if t.name != ""]
            if not all(isinstance(t, gs.Constant) for t in inputs):
                continue
            if any(int(np.prod(t.shape)) > self.max_elements for t in inputs):
                ctx.reject(node, "an input is larger than the folding limit")
                continue
            yield Match(root=node)

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Evaluate the node with the ONNX reference evaluator and store its outputs."""
        node = match.root
        names = [f"in{i}" if t.name != "" else "" for i, t in enumerate(node.inputs)]
        feeds = {n: constant_array(t, ctx) for n, t in zip(names, node.inputs) if n}
        proto = onnx.helper.make_node(
            node.op, names, [f"out{i}" for i in range(len(node.outputs))], **dict(node.attrs)
        )
        results = ReferenceEvaluator(proto_model(proto, feeds, len(node.outputs))).run(None, feeds)
        if any(np.asarray(r).size > self.max_elements for r in results):
            return
        for tensor, value in zip(list(node.outputs), results):
            folded = gs.Constant(f"{tensor.name}_folded", np.asarray(value))
            for consumer in list(tensor.outputs):
                replace_input(consumer, tensor, folded)
            for i, out in enumerate(graph.outputs):
                if out is tensor:  # a graph output stays a named tensor: feed it an Identity
                    graph.layer(op="Identity", inputs=[folded], outputs=[tensor])
                    graph.outputs[i] = tensor
        node.outputs.clear()


def proto_model(
    node: onnx.NodeProto, feeds: dict[str, np.ndarray], outputs: int
) -> onnx.ModelProto:
    """A one-node model for the reference evaluator."""
    inputs = [
        onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
        )
        for name, value in feeds.items()
    ]
    outs = [onnx.helper.make_empty_tensor_value_info(f"out{i}") for i in range(outputs)]
    graph = onnx.helper.make_graph([node], "fold", inputs, outs)
    return onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION
    )
