"""The pass pipelines, one literal ordered list per target.

Ordering constraints are next to the entries. The drafting ops (DrafterBeamSearch, BuildTree,
Accept, KVCompaction) enter the graph as redcompile call sites at export (ops.call under
torch.onnx.export); attention enters as the exporter's standard Attention and is fused here.
"""

from __future__ import annotations

import numpy as np

from redcompile.io_contract import StepSignature
from redcompile.models.weight_quant import BaseWeights, weight_format
from redcompile.passes.attach_function_bodies import AttachFunctionBodies
from redcompile.passes.base import GraphPass
from redcompile.passes.check_graph import CheckGraph
from redcompile.passes.fold_constants import FoldConstants
from redcompile.passes.fuse_chain_attention import FuseChainAttention
from redcompile.passes.fuse_skip_rms_norm import FuseSkipRmsNorm
from redcompile.passes.fuse_tree_attention import FuseTreeAttention
from redcompile.passes.pack_qkv import PackQkv
from redcompile.passes.pad_lone_token import PadLoneToken
from redcompile.passes.quantize_drafter import QuantizeDrafter
from redcompile.passes.quantize_weights import QuantizeWeights
from redcompile.passes.share_weights import ShareWeights


def pipeline(
    target: str,
    signature: StepSignature,
    model_dtype: str,
    drafter_weights: str = "float",
    rope_tables: tuple[np.ndarray, np.ndarray] | None = None,
    base_weights: BaseWeights | None = None,
) -> list[GraphPass]:
    """The passes for `target`, in order; `drafter_weights` int8 / int4 adds quantize-drafter.

    `rope_tables` (cos, sin [positions, head_dim / 2]) are given for artifacts whose every row
    is a chain (autoregressive, single beam): ONNX Runtime then fuses their attention into
    GroupQueryAttention, every row padded to two queries or more where the weights round
    activations to int8 (passes/fuse_chain_attention.py says why), and a step of one token in
    one row then carries that pad through every product (passes/pad_lone_token.py).
    `base_weights` with a format adds quantize-weights (MatMulNBits)."""
    if target not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"no ONNX pipeline for target {target!r}")
    fmt = weight_format(drafter_weights)
    chain_attention = target == "onnxruntime" and rope_tables is not None
    pad_queries = base_weights is not None and base_weights.rounds_activations
    return [
        FuseTreeAttention(),  # first: later passes see TreeAttention, not Attention + Concat
        ShareWeights(),  # after fusion: the cache Concats are gone, weights are final
        # After share-weights (it reads the final q/k/v weights to concatenate them).
        *([FuseChainAttention(*rope_tables, pad_queries)] if chain_attention else []),
        PackQkv(),  # after fuse-chain-attention: the attention it left; the same packed matrix
        *([FuseSkipRmsNorm()] if target == "onnxruntime" else []),
        FoldConstants(),  # after rewrites that may leave constant shape arithmetic
        # After fold-constants (a tied lm_head's transposed table is then an initializer) and
        # fuse-chain-attention (the concatenated q/k/v weight is quantized as one matrix).
        *(
            [QuantizeWeights(base_weights.fmt, base_weights.accuracy_level)]
            if base_weights is not None and base_weights.fmt is not None
            else []
        ),
        # After quantize-weights (it finds the lm_head as a MatMulNBits): no product of one row.
        *([PadLoneToken()] if chain_attention and pad_queries else []),
        # Bodies last among rewrites: they are specialised to the final input types.
        # TensorRT keeps them too: its parser prefers a plugin named like the op, else the body.
        AttachFunctionBodies(),
        *([QuantizeDrafter(fmt)] if fmt else []),  # inlines the beam search's body
        CheckGraph(signature, model_dtype, need_bodies=True),
    ]
