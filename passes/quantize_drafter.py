"""quantize-drafter: the drafter's matrices as blockwise int8 / int4 weights, one copy per use.

Before:  vocab_w [V', E] float ── DrafterBeamSearch (body: C unrolled steps, each with
                                   Gemm(x_t, vocab_w, transB=1), likewise rnn_w, rnn_u_w,
                                   input_proj_w and Gather(res_w, i))

After:   the DrafterBeamSearch body inlined into the graph, and every one of those Gemms
         replaced by its own
             q [E, V'] int8 ─┐
             scale [E/bs, V'] ┴ DequantizeLinear(axis=0, block_size=bs) ── MatMul(x_t, ·) (+ b)

Why: at batch 1 float drafting is memory-bound, and the drafter's matrices are what it reads: the
vocabulary projection alone is E x V floats per drafted position (131 MB at E = 1024,
V = 32000). ONNX Runtime turns DequantizeLinear -> MatMul into one MatMulNBits kernel that reads
the packed integers (4x / 8x fewer bytes), but only when the DequantizeLinear owns its
initializer: a matrix shared by the C unrolled steps stays a float dequantization per step
(slower than the float MatMul it replaces). Hence the body is inlined and each use gets its
own copy: C copies of an int8 matrix take the float matrix's bytes on disk at C = 4, int4 half.
The arithmetic is models/weight_quant.py's, which the PyTorch reference applies with
`--drafter-weights`, so `verify` holds; the base model decides every token, so decoding stays
exact. The artifact stays standard ONNX; a runtime without the fusion dequantizes and multiplies.

Inlining gives up the DrafterBeamSearch node (a TensorRT plugin or CUDA kernel named like the op
no longer applies); the option targets CPU decoding, where the node runs its body anyway.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx_graphsurgeon.ir.tensor import LazyValues

from redcompile.models.drafter import QUANTIZED_MATRICES, QUANTIZED_STACKS
from redcompile.models.weight_quant import WeightFormat, quantize_blockwise
from redcompile.ops import DOMAIN
from redcompile.ops.drafter_beam_search import DRAFTER_BEAM_SEARCH
from redcompile.passes.base import (
    GraphPass,
    Match,
    PassContext,
    constant_array,
    is_linear_gemm,
)

OP = DRAFTER_BEAM_SEARCH.onnx_name
FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float16))


def pack_int4(values: np.ndarray) -> bytes:
    """ONNX INT4 raw data: two values per byte, the first in the low nibble."""
    flat = values.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    nibbles = flat.view(np.uint8) & 0x0F
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def quantized_constant(name: str, q_kn: np.ndarray, fmt: WeightFormat) -> gs.Constant:
    """The stored integers as an initializer (INT4 is packed; numpy has no 4-bit type)."""
    if fmt.bits == 8:
        return gs.Constant(name, np.ascontiguousarray(q_kn.astype(np.int8)))
    proto = onnx.helper.make_tensor(
        name, onnx.TensorProto.INT4, list(q_kn.shape), pack_int4(q_kn), raw=True
    )
    return gs.Constant(name, LazyValues(proto))


def inline_call(graph: gs.Graph, node: gs.Node, function: gs.Function) -> list[gs.Node]:
    """Replace `node` by a copy of its function body; returns the inlined nodes. Body-local
    tensors are prefixed with the node's name; body node names (`<Op>.<name>`) are kept, so
    profiles still attribute their time to the op."""
    body = function.copy()
    prefix = node.name or node.op
    bound: dict[int, gs.Tensor] = {}
    for index, tensor in enumerate(body.inputs):
        if index < len(node.inputs) and node.inputs[index].name:
            bound[id(tensor)] = node.inputs[index]
    for tensor, outer in zip(body.outputs, node.outputs):
        bound[id(tensor)] = outer
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    renamed: set[int] = set()
    for inner in body.nodes:
        for tensors in (inner.inputs, inner.outputs):
            for index, tensor in enumerate(list(tensors)):
                if id(tensor) in bound:
                    tensors[index] = bound[id(tensor)]
                elif tensor.name and id(tensor) not in renamed:
                    tensor.name = f"{prefix}/{tensor.name}"
                    renamed.add(id(tensor))
        graph.nodes.append(inner)
    return list(body.nodes)


def _constant_index(tensor: gs.Tensor) -> int | None:
    """The value of a scalar index written by a Constant node, else None."""
    if isinstance(tensor, gs.Constant):
        return int(np.asarray(tensor.values).reshape(-1)[0])
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is not None and producer.op == "Constant":
        return int(np.asarray(producer.attrs["value"].values).reshape(-1)[0])
    return None


class QuantizeDrafter(GraphPass):
    """Inline DrafterBeamSearch and give each of its matrix products its own quantized weight."""

    name = "quantize-drafter"
    required = True  # asked for explicitly (--drafter-weights): finding nothing is an error

    def __init__(self, fmt: WeightFormat) -> None:
        self.fmt = fmt
        self._names = itertools.count()

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """Each DrafterBeamSearch node whose body is attached and whose weights are constant."""
        bodies = {f.name: f for f in graph.functions if f.domain == DOMAIN}
        for node in graph.nodes:
            if node.domain != DOMAIN or node.op != OP:
                continue
            if OP not in bodies:
                ctx.reject(node, "no function body yet (run after attach-function-bodies)")
                continue
            weights = {}
            for input_name in QUANTIZED_MATRICES + QUANTIZED_STACKS:
                index = DRAFTER_BEAM_SEARCH.input_names.index(input_name)
                if index >= len(node.inputs) or not node.inputs[index].name:
                    continue  # optional input this drafter does not have
                tensor = node.inputs[index]
                rank = 2 if input_name in QUANTIZED_MATRICES else 3
                reason = _refusal(tensor, rank, node)
                if reason:
                    ctx.reject(node, f"{input_name}: {reason}")
                    continue
                weights[input_name] = tensor
            if "vocab_w" not in weights:
                continue  # the largest matrix: without it quantizing would not pay
            yield Match(root=node, bindings={"body": bodies[OP], "weights": weights})

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Inline the body, then quantize every Gemm that reads one of the weights."""
        inlined = inline_call(graph, match.root, match.bindings["body"])
        for input_name, weight in match.bindings["weights"].items():
            values = constant_array(weight, ctx)
            if input_name in QUANTIZED_MATRICES:
                self._quantize_uses(graph, weight, values, input_name)
            for gather in [n for n in inlined if n.op == "Gather" and n.inputs[0] is weight]:
                block = _constant_index(gather.inputs[1])
                if block is None or gather.attrs.get("axis", 0) != 0:
                    continue
                block_out = gather.outputs[0]
                self._quantize_uses(graph, block_out, values[block], f"{input_name}.{block}")
                if not block_out.outputs:  # every product of the block now has its own copy
                    gather.inputs.clear()
                    gather.outputs.clear()
                    graph.nodes.remove(gather)
            _fold_shape_reads(weight)
            if weight.outputs:  # the float matrix would stay in the artifact beside its copies
                users = ", ".join(f"{n.op} {n.name}" for n in weight.outputs)
                raise self.fail(f"{weight.name} is still read by {users}")
        graph.functions = [f for f in graph.functions if not (f.domain == DOMAIN and f.name == OP)]

    def _quantize_uses(
        self, graph: gs.Graph, matrix: gs.Tensor, values: np.ndarray, label: str
    ) -> None:
        """Each Gemm(x, matrix[N, K], b, transB=1) -> MatMul(x, DQ(own q, own scale)) + b."""
        q_kn, scale = quantize_blockwise(torch.from_numpy(np.array(values)), self.fmt)
        q_kn, scale = q_kn.numpy(), scale.numpy()
        rows, cols = values.shape
        for gemm in [n for n in matrix.outputs if _is_linear(n, matrix)]:
            use = next(self._names)
            base = f"{OP}.quantized/{label}/{use}"
            weight = graph.layer(
                op="DequantizeLinear",
                name=f"{base}/dequantize",
                inputs=[
                    quantized_constant(f"{base}/q", q_kn, self.fmt),
                    gs.Constant(f"{base}/scale", scale),
                ],
                attrs={"axis": 0, "block_size": self.fmt.block_size},
                outputs=[gs.Variable(f"{base}/w_kn", dtype=values.dtype, shape=[cols, rows])],
            )[0]
            x, bias, y = gemm.inputs[0], gemm.inputs[2:], gemm.outputs[0]
            gemm.inputs.clear()
            gemm.outputs.clear()
            graph.nodes.remove(gemm)
            if not bias:
                graph.layer(op="MatMul", name=f"{base}/matmul", inputs=[x, weight], outputs=[y])
                continue
            product = graph.layer(
                op="MatMul",
                name=f"{base}/matmul",
                inputs=[x, weight],
                outputs=[gs.Variable(f"{base}/product", dtype=values.dtype)],
            )[0]
            graph.layer(op="Add", name=f"{base}/bias", inputs=[product, bias[0]], outputs=[y])

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """No quantizable DrafterBeamSearch is left, and no drafting Gemm multiplies by a float
        constant."""
        vocab_index = DRAFTER_BEAM_SEARCH.input_names.index("vocab_w")
        for node in graph.nodes:
            if node.domain == DOMAIN and node.op == OP:
                if _refusal(node.inputs[vocab_index], 2, node) is None:
                    raise self.fail(f"{node.name or OP} was not inlined")
            if node.op == "Gemm" and node.name.startswith(f"{OP}.") and len(node.inputs) > 1:
                source = node.inputs[1]
                if source.inputs and source.inputs[0].op == "Gather":
                    source = source.inputs[0].inputs[0]
                if isinstance(source, gs.Constant):
                    raise self.fail(f"{node.name} still multiplies by float {source.name}")


def _fold_shape_reads(weight: gs.Constant) -> None:
    """Shape(weight) (the body reads the vocabulary size that way) -> a constant, so that
    nothing keeps the float matrix."""
    for node in [n for n in weight.outputs if n.op == "Shape"]:
        dims = np.array(weight.shape, dtype=np.int64)
        start, end = node.attrs.get("start", 0), node.attrs.get("end", len(dims))
        out = node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        node.op = "Constant"
        node.attrs = {"value": gs.Constant(f"{out.name}/value", dims[start:end])}
        node.outputs.append(out)


def _refusal(tensor: gs.Tensor, rank: int, node: gs.Node) -> str | None:
    """Why `node`'s weight `tensor` cannot be quantized, or None."""
    if not isinstance(tensor, gs.Constant):
        return f"{tensor.name} is computed, not an initializer"
    if len(tensor.shape) != rank:
        return f"{tensor.name} has shape {tuple(tensor.shape)}, expected rank {rank}"
    if np.dtype(tensor.dtype) not in FLOAT_TYPES:
        return f"{tensor.name} is {np.dtype(tensor.dtype)}; only float32 and float16 quantize"
    if any(user is not node for user in tensor.outputs):
        return f"{tensor.name} is read by other nodes too"
    return None


def _is_linear(node: gs.Node, matrix: gs.Tensor) -> bool:
    """A Linear layer (Gemm, transB=1) multiplying by `matrix`."""
    return is_linear_gemm(node) and node.inputs[1] is matrix
