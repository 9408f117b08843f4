"""Small graphs for pass tests, and helpers to run passes and compare numerics."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper as h

from redcompile.ops.opdef import DOMAIN, DOMAIN_VERSION, ONNX_IR_VERSION, ONNX_OPSET
from redcompile.passes.base import PassContext
from redcompile.passes.manager import render, to_model

OPSETS = [h.make_opsetid("", ONNX_OPSET), h.make_opsetid(DOMAIN, DOMAIN_VERSION)]


def model(nodes, inputs, outputs, initializers=()):
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return h.make_model(graph, opset_imports=OPSETS, ir_version=ONNX_IR_VERSION)


def vi(name, elem, dims):
    return h.make_tensor_value_info(name, elem, dims)


def apply(graph_pass, m: onnx.ModelProto, ctx: PassContext | None = None):
    """Run one pass's match + rewrite directly; returns (new model, matches)."""
    ctx = ctx or PassContext()
    ctx.current_pass = graph_pass.name
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(m))
    matches = list(graph_pass.match(graph, ctx))
    for match in matches:
        graph_pass.rewrite(graph, match, ctx)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    graph_pass.verify(graph, ctx)
    return to_model(graph, m), matches


def run(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def ops(m: onnx.ModelProto) -> list[str]:
    return [f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in m.graph.node]


def assert_idempotent(graph_pass, m: onnx.ModelProto):
    """A second application finds nothing and leaves the graph as it was."""
    again, matches = apply(graph_pass, m)
    assert matches == []
    assert render(again) == render(m)


def attention_model(
    is_causal=0, k_concat=True, mask_axis=-1, consume_present=False, mask_type=TP.BOOL
):
    """Attention over concat(cache, new) as the exporter writes it (B=2, Hq=4, Hkv=2, D=8)."""
    nodes = [
        h.make_node("Concat", ["pk", "k"], ["k_all"], axis=2),
        h.make_node("Concat", ["pv", "v"], ["v_all"], axis=2),
        h.make_node("Concat", ["pm", "tm"], ["mask"], axis=mask_axis),
    ]
    key = "k_all" if k_concat else "k_full"
    outs = ["y", "present_k"] if consume_present else ["y"]
    nodes.append(
        h.make_node(
            "Attention",
            ["q", key, "v_all", "mask"],
            outs,
            is_causal=is_causal,
            scale=0.3,
            softcap=0.0,
        )
    )
    inputs = [
        vi("q", TP.FLOAT, ["B", 4, "T", 8]),
        vi("k", TP.FLOAT, ["B", 2, "T", 8]),
        vi("v", TP.FLOAT, ["B", 2, "T", 8]),
        vi("pk", TP.FLOAT, ["B", 2, "S", 8]),
        vi("pv", TP.FLOAT, ["B", 2, "S", 8]),
        vi("pm", mask_type, ["B", 1, "T", "S"]),
        vi("tm", mask_type, ["B", 1, "T", "T"]),
    ]
    if not k_concat:
        inputs.append(vi("k_full", TP.FLOAT, ["B", 2, "U", 8]))
    outputs = [vi("y", TP.FLOAT, ["B", 4, "T", 8])]
    if consume_present:
        outputs.append(vi("present_k", TP.FLOAT, None))
    return model(nodes, inputs, outputs)


def attention_feeds(seed=0):
    rng = np.random.default_rng(seed)
    b, t, s = 2, 3, 5
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    tree = np.tril(np.ones((t, t), bool))
    tree[2, 1] = False  # token 2 is a sibling of token 1
    return {
        "q": f(b, 4, t, 8),
        "k": f(b, 2, t, 8),
        "v": f(b, 2, t, 8),
        "pk": f(b, 2, s, 8),
        "pv": f(b, 2, s, 8),
        "pm": np.broadcast_to(
            np.arange(s) < np.array([[2], [5]])[:, None, None], (b, 1, t, s)
        ).copy(),
        "tm": np.broadcast_to(tree, (b, 1, t, t)).copy(),
    }
