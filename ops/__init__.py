"""redcompile's custom ops, each defined once (`opdef.py`; docs/architecture.md, "Ops").

`OPS` is the explicit, ordered registry; importing this package registers every op with
torch.library (CPU reference + fake), and the CUDA implementations when the compiled library
from cuda/ is loaded.
"""

from __future__ import annotations

from redcompile.ops.acceptance import ACCEPT
from redcompile.ops.drafter_beam_search import DRAFTER_BEAM_SEARCH
from redcompile.ops.kv_compaction import KV_COMPACTION
from redcompile.ops.opdef import DOMAIN, DOMAIN_VERSION, OpDef, call, register_torch_op
from redcompile.ops.prompt_lookup import PROMPT_LOOKUP
from redcompile.ops.tree_attention import TREE_ATTENTION
from redcompile.ops.tree_building import ANCESTOR_MASK, BUILD_TREE

OPS: tuple[OpDef, ...] = (
    TREE_ATTENTION,
    DRAFTER_BEAM_SEARCH,
    BUILD_TREE,
    ANCESTOR_MASK,
    ACCEPT,
    KV_COMPACTION,
    PROMPT_LOOKUP,
)
OPS_BY_ONNX_NAME: dict[str, OpDef] = {op.onnx_name: op for op in OPS}

for _op in OPS:
    register_torch_op(_op)

__all__ = [
    "ACCEPT",
    "ANCESTOR_MASK",
    "BUILD_TREE",
    "DOMAIN",
    "DOMAIN_VERSION",
    "DRAFTER_BEAM_SEARCH",
    "KV_COMPACTION",
    "OPS",
    "OPS_BY_ONNX_NAME",
    "TREE_ATTENTION",
    "OpDef",
    "PROMPT_LOOKUP",
    "call",
]
