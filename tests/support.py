"""Shared test helpers: single-op ONNX models, tiny Hugging Face model folders."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from redcompile.ops.onnx_builder import spec_from_node
from redcompile.ops.opdef import BODY_OPSET, DOMAIN, DOMAIN_VERSION, OpDef

ONNX_TYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16,
              torch.int64: onnx.TensorProto.INT64, torch.bool: onnx.TensorProto.BOOL}


def single_op_model(op: OpDef, inputs: list, attrs: dict) -> onnx.ModelProto:
    """A model holding one `redcompile` node of `op` with its function body attached."""
    names = [name if t is not None else "" for name, t in zip(op.input_names, inputs)]
    graph_inputs = [
        helper.make_tensor_value_info(name, ONNX_TYPES[t.dtype], [f"{name}_{i}" for i in range(t.dim())])
        for name, t in zip(op.input_names, inputs) if t is not None
    ]
    outputs = [helper.make_empty_tensor_value_info(name) for name in op.output_names]
    node = helper.make_node(op.onnx_name, names, list(op.output_names), domain=DOMAIN, **attrs)
    types = {name: (ONNX_TYPES[t.dtype] if t is not None else None)
             for name, t in zip(op.input_names, inputs)}
    shapes = {name: tuple(t.shape) for name, t in zip(op.input_names, inputs) if t is not None}
    body = op.build_body(spec_from_node(op, attrs, types, shapes))
    graph = helper.make_graph([node], op.onnx_name, graph_inputs, outputs)
    model = helper.make_model(
        graph, functions=[body], ir_version=10,
        opset_imports=[helper.make_opsetid("", BODY_OPSET), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
    )
    return model


def run_op_body(op: OpDef, inputs: list, attrs: dict) -> list[np.ndarray]:
    """Run `op`'s ONNX function body in stock ONNX Runtime (CPU) on torch inputs."""
    model = single_op_model(op, inputs, attrs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(op.input_names, inputs) if t is not None}
    return session.run(list(op.output_names), feeds)
