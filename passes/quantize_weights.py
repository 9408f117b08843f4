"""quantize-weights: the base model's matrix products as blockwise int8 / int4 MatMulNBits.

Before:  x ── MatMul(x, W [K, N] float initializer) ── y        (q/k/v, o, gate, up, down, lm_head)

After:   x ── com.microsoft::MatMulNBits(x, B [N, K / bs, bs * bits / 8] uint8,
                                          scales [N, K / bs] float;
                                          K, N, bits, block_size, accuracy_level) ── y

Why: at batch 1 decoding reads every weight once per step, so it is bound by bytes: int8 reads
4x, int4 8x fewer than float32. ONNX Runtime's MatMulNBits reads the packed integers directly
(with `accuracy_level` 4 it also quantizes the activations to int8 per block and multiplies in
integers, its fastest CPU path). The arithmetic of the weights is models/weight_quant.py's
(symmetric, one scale per block of `bs` inputs and output; stored unsigned with the implicit
zero point 2^(bits-1) MatMulNBits assumes), which the PyTorch reference applies with the same
`--weights`, so `verify` compares the artifact against the weights it carries. The embedding
table stays float (it is gathered, not multiplied; onnxruntime-genai does the same); the
language-model head is a matrix product like the others and is quantized with them. The
drafter's matrices are quantize-drafter's (`--drafter-weights`), not this pass's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx_graphsurgeon as gs
import torch

from redcompile.models.weight_quant import WeightFormat, quantize_blockwise
from redcompile.passes.base import GraphPass, Match, PassContext, constant_array, is_linear_gemm
from redcompile.passes.contrib import MATMUL_NBITS, MS_DOMAIN

FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float16))


def pack_columns(q_kn: np.ndarray, fmt: WeightFormat) -> np.ndarray:
    """q [K, N] signed -> MatMulNBits' B [N, K / bs, bs * bits / 8] uint8: per output column,
    blocks of `bs` inputs, offset by the zero point 2^(bits-1), two 4-bit values per byte with
    the first in the low nibble."""
    k, n = q_kn.shape
    blocks = k // fmt.block_size
    unsigned = (q_kn.astype(np.int16) + (1 << (fmt.bits - 1))).astype(np.uint8)
    per_column = unsigned.T.reshape(n, blocks, fmt.block_size)
    if fmt.bits == 8:
        return np.ascontiguousarray(per_column)
    return np.ascontiguousarray(per_column[..., 0::2] | (per_column[..., 1::2] << 4))


class QuantizeWeights(GraphPass):
    """Every MatMul by a float initializer -> MatMulNBits with its own packed weight."""

    name = "quantize-weights"
    required = True  # asked for explicitly (--weights): finding nothing is an error

    def __init__(self, fmt: WeightFormat, accuracy_level: int) -> None:
        self.fmt = fmt
        self.accuracy_level = accuracy_level

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """MatMul(x, W [K, N]) or Gemm(x, W [N, K], transB=1) (a tied lm_head reading the
        embedding table, share-weights' form) with W a 2-D float initializer whose input
        dimension splits into whole blocks."""
        for node in graph.nodes:
            if node.domain not in ("", "ai.onnx", None) or not _is_product(node):
                continue
            weight = node.inputs[1]
            if not isinstance(weight, gs.Constant):
                continue  # activations times activations (none in the base model today)
            if len(weight.shape) != 2 or np.dtype(weight.dtype) not in FLOAT_TYPES:
                ctx.reject(node, f"{weight.name} is {np.dtype(weight.dtype)} {weight.shape}")
                continue
            k = weight.shape[1] if node.op == "Gemm" else weight.shape[0]
            if k % self.fmt.block_size:
                ctx.reject(
                    node, f"{weight.name}: {k} inputs are not whole blocks of {self.fmt.block_size}"
                )
                continue
            yield Match(root=node, bindings={"weight": weight})

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Replace the MatMul by MatMulNBits over the packed weight and its scales."""
        node, weight = match.root, match.bindings["weight"]
        w = constant_array(weight, ctx)
        w_nk = w if node.op == "Gemm" else w.T
        n, k = w_nk.shape
        q_kn, scale = quantize_blockwise(torch.from_numpy(np.array(w_nk, copy=True)), self.fmt)
        scale_nb = np.ascontiguousarray(scale.numpy().T)  # [N, K / bs]
        base = f"{weight.name}.{self.fmt.name}" + ("T" if node.op == "Gemm" else "")
        x, y = node.inputs[0], node.outputs[0]
        bias = list(node.inputs[2:3])
        node.inputs.clear()
        node.outputs.clear()
        graph.layer(
            op=MATMUL_NBITS,
            domain=MS_DOMAIN,
            name=f"{node.name or weight.name}/{MATMUL_NBITS}",
            inputs=[
                x,
                gs.Constant(f"{base}/B", pack_columns(q_kn.numpy(), self.fmt)),
                gs.Constant(f"{base}/scales", scale_nb.astype(w.dtype)),
                *([gs.Variable.empty(), gs.Variable.empty(), bias[0]] if bias else []),
            ],
            outputs=[y],
            attrs={
                "K": k,
                "N": n,
                "bits": self.fmt.bits,
                "block_size": self.fmt.block_size,
                "accuracy_level": self.accuracy_level,
            },
        )

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """No MatMul or Gemm multiplies by a float initializer any more."""
        left = list(self.match(graph, PassContext()))
        if left:
            raise self.fail(f"{left[0].root.name} still multiplies by a float weight")
        for node in graph.nodes:
            if _is_product(node) and isinstance(node.inputs[1], gs.Constant):
                if np.dtype(node.inputs[1].dtype) in FLOAT_TYPES:
                    raise self.fail(f"{node.name}: {node.inputs[1].name} was not quantized")


def _is_product(node: gs.Node) -> bool:
    """MatMul(x, W), or a Linear layer's Gemm(x, W, [bias], transB=1)."""
    return (node.op == "MatMul" and len(node.inputs) == 2) or is_linear_gemm(node)
