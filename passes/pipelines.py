"""The pass pipelines, one literal ordered list per target.

Ordering constraints are next to the entries. The drafting ops (DrafterBeamSearch, BuildTree,
Accept, KVCompaction) enter the graph as redcompile call sites at export (ops.call under
torch.onnx.export); attention enters as the exporter's standard Attention and is fused here.
"""

from __future__ import annotations

from redcompile.models.step import StepSignature
from redcompile.models.weight_quant import weight_format
from redcompile.passes.attach_function_bodies import AttachFunctionBodies
from redcompile.passes.base import GraphPass
from redcompile.passes.check_graph import CheckGraph
from redcompile.passes.fold_constants import FoldConstants
from redcompile.passes.fuse_tree_attention import FuseTreeAttention
from redcompile.passes.quantize_drafter import QuantizeDrafter
from redcompile.passes.share_weights import ShareWeights

TARGETS = ("onnxruntime", "torch", "tensorrt")


def pipeline(
    target: str, signature: StepSignature, model_dtype: str, drafter_weights: str = "float"
) -> list[GraphPass]:
    """The passes for `target`, in order; `drafter_weights` int8 / int4 adds quantize-drafter."""
    if target not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"no ONNX pipeline for target {target!r}")
    fmt = weight_format(drafter_weights)
    return [
        FuseTreeAttention(),  # first: later passes see TreeAttention, not Attention + Concat
        ShareWeights(),  # after fusion: the cache Concats are gone, weights are final
        FoldConstants(),  # after rewrites that may leave constant shape arithmetic
        # Bodies last among rewrites: they are specialised to the final input types.
        # TensorRT keeps them too: its parser prefers a plugin named like the op, else the body.
        AttachFunctionBodies(),
        *([QuantizeDrafter(fmt)] if fmt else []),  # inlines the beam search's body
        CheckGraph(signature, model_dtype, need_bodies=True),
    ]


PASS_NAMES = (
    "fuse-tree-attention",
    "share-weights",
    "fold-constants",
    "attach-function-bodies",
    "quantize-drafter",
    "check-graph",
)
