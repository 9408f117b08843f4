"""attach-function-bodies: give every redcompile node an ONNX function body in standard ops.

Before:  ... ── redcompile::DrafterBeamSearch(beam_width=4, beam_length=5, top_k=50) ── ...
         (no FunctionProto: no runtime knows the op)

After:   the same node, plus a model-local FunctionProto `redcompile::DrafterBeamSearch` built by
         the op's `build_body` for this node's attributes, input element types, the static
         shapes of its weight inputs (e.g. the beam search unrolls one step per drafted token)
         and the static sizes the op names in `OpDef.static_dims` (e.g. the KV cache's heads).

Why: stock ONNX Runtime inlines a model-local function where it has no kernel, so the artifact
runs anywhere; a registered kernel (ORT custom-op library, TensorRT plugin named like the op in
namespace `redcompile`) takes precedence over the body where one exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

from redcompile.ops import DOMAIN, OPS_BY_ONNX_NAME
from redcompile.ops.onnx_builder import spec_from_node
from redcompile.ops.opdef import BODY_OPSET, BodySpec, OpDef
from redcompile.passes.base import GraphPass, Match, PassContext


def element_type(tensor: gs.Tensor) -> int | None:
    """ONNX element type of a graphsurgeon tensor, None for an absent optional input."""
    if tensor.name == "":
        return None
    dtype = tensor.dtype
    if dtype is None:
        return onnx.TensorProto.UNDEFINED
    if isinstance(dtype, int):
        return dtype
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def node_spec(op: OpDef, node: gs.Node, graph_outputs: frozenset[str] = frozenset()) -> BodySpec:
    """The BodySpec one node needs: its attributes, input types, constant input shapes, the
    static sizes its op asks for and which of its outputs nothing reads."""
    inputs = list(node.inputs) + [gs.Variable.empty()] * (len(op.input_names) - len(node.inputs))
    types = {name: element_type(t) for name, t in zip(op.input_names, inputs)}
    shapes = {
        name: tuple(t.shape)
        for name, t in zip(op.input_names, inputs)
        if isinstance(t, gs.Constant)
    }
    by_name = dict(zip(op.input_names, inputs))
    static = {}
    for name, axis in op.static_dims:
        shape = by_name[name].shape
        if shape is not None and len(shape) > axis and isinstance(shape[axis], (int, np.integer)):
            static[(name, axis)] = int(shape[axis])
    unused = frozenset(
        name
        for name, out in zip(op.output_names, node.outputs)
        if not out.outputs and out.name not in graph_outputs
    )
    return spec_from_node(op, dict(node.attrs), types, shapes, static, unused)


class AttachFunctionBodies(GraphPass):
    """Attach one specialised FunctionProto per redcompile op used in the graph."""

    name = "attach-function-bodies"
    required = True

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """One match per redcompile op type that has no body yet (all its nodes together)."""
        have = {f.name for f in graph.functions if f.domain == DOMAIN}
        by_op: dict[str, list[gs.Node]] = {}
        for node in graph.nodes:
            if node.domain != DOMAIN:
                continue
            if node.op not in OPS_BY_ONNX_NAME:
                ctx.reject(node, f"unknown redcompile op {node.op}")
                continue
            if node.op not in have:
                by_op.setdefault(node.op, []).append(node)
        outputs = frozenset(t.name for t in graph.outputs)
        for op_name, nodes in by_op.items():
            op = OPS_BY_ONNX_NAME[op_name]
            specs = {node_spec(op, n, outputs).key(): node_spec(op, n, outputs) for n in nodes}
            if len(specs) != 1:
                raise self.fail(
                    f"{op_name} nodes need {len(specs)} different bodies; one model "
                    f"holds one specialisation per op"
                )
            yield Match(
                root=nodes[0],
                nodes=tuple(nodes),
                bindings={"op": op, "spec": next(iter(specs.values()))},
            )

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Build the body and add it to the model's functions. An output nothing reads loses
        its recorded type and shape: the body may return a constant of another type there (see
        `BodySpec.unused_outputs`), and a stale record would contradict it at load."""
        op, spec = match.bindings["op"], match.bindings["spec"]
        body = op.build_body(spec)
        graph.functions.append(OnnxImporter.import_function(body, model_opset=BODY_OPSET))
        for node in match.nodes:
            for name, out in zip(op.output_names, node.outputs):
                if not spec.used(name):
                    out.dtype, out.shape = None, None

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """Every redcompile node has a body with matching input and output counts."""
        bodies = {f.name: f for f in graph.functions if f.domain == DOMAIN}
        for node in graph.nodes:
            if node.domain != DOMAIN:
                continue
            if node.op not in bodies:
                raise self.fail(f"{node.name or node.op} has no function body")
            body = bodies[node.op]
            if len(node.inputs) > len(body.inputs) or len(node.outputs) != len(body.outputs):
                raise self.fail(f"{node.name or node.op} does not fit its body's signature")
