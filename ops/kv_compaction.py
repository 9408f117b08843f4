"""KV compaction: write the kept tokens' keys or values into the cache, in path order.

Shapes (B batch, H key/value heads, S cache capacity, T packed tokens, D head dim):

    past          [B, H, S, D]   one layer's key (or value) cache buffer
    new           [B, H, T, D]   keys (values) computed for the step's packed tokens
    cache_lengths [B]            valid cache entries per row before the step
    keep_idx      [B, T]         packed indices of the kept path (from Accept)
    keep_len      [B]            how many of them are kept
    ->  present   [B, H, S, D]   past with present[b, :, cache_lengths[b] + j] =
                                 new[b, :, keep_idx[b, j]] for j < keep_len[b]

Rejected branches are simply never written: the accepted path lands contiguously after the row's
cached tokens. The function body writes T slots per row (the kept ones, and the cache's own values
back into the rest), so its work is proportional to the tokens of the step, never to S; with the
output bound to the input's buffer (ONNX Runtime IO binding), the update happens in place.
Contract: cache_lengths[b] + T <= S for every row (the runtime sizes the buffer so).
"""

from __future__ import annotations

import torch

from redcompile.ops.onnx_builder import FunctionBuilder
from redcompile.ops.opdef import BodySpec, OpDef


def kv_compaction_reference(
    past: torch.Tensor,
    new: torch.Tensor,
    cache_lengths: torch.Tensor,
    keep_idx: torch.Tensor,
    keep_len: torch.Tensor,
) -> torch.Tensor:
    """Cache after keeping the accepted path (ground truth); see the module docstring."""
    b, h, s, d = past.shape
    t = new.shape[2]
    # The contract check reads a device value on the host, which a CUDA graph capture forbids;
    # graphs are captured on inputs the eager step has already checked.
    capturing = past.is_cuda and torch.cuda.is_current_stream_capturing()
    if not capturing and bool((cache_lengths + t > s).any()):
        raise ValueError(
            f"kv_compaction: cache capacity {s} is too small for "
            f"{int(cache_lengths.max())} cached + {t} step tokens"
        )
    slots = torch.arange(t, device=past.device).expand(b, t)
    positions = cache_lengths.unsqueeze(1) + slots  # [B, T]
    kept = torch.gather(new, 2, keep_idx.view(b, 1, t, 1).expand(b, h, t, d))
    current = torch.gather(past, 2, positions.view(b, 1, t, 1).expand(b, h, t, d))
    values = torch.where((slots < keep_len.unsqueeze(1)).view(b, 1, t, 1), kept, current)
    return past.scatter(2, positions.view(b, 1, t, 1).expand(b, h, t, d), values)


def kv_compaction_fake(past, new, cache_lengths, keep_idx, keep_len):
    """present has the cache's shape and dtype."""
    return past.new_empty(past.shape)


def build_kv_compaction_body(spec: BodySpec):
    """GatherND of the kept keys and of the cache slots, ScatterND of T slots per row.

    Every index is computed from inputs all layers share (cache_lengths, keep_idx, keep_len)
    and, when the graph knows it, the static head count: after ONNX Runtime inlines the body
    at each layer, common-subexpression elimination keeps one copy of that index math, and a
    layer runs only its two gathers, the select and the scatter.
    """
    b = FunctionBuilder(KV_COMPACTION, spec)
    past, new = b.input("past"), b.input("new")
    cache_lengths, keep_idx, keep_len = (
        b.input("cache_lengths"),
        b.input("keep_idx"),
        b.input("keep_len"),
    )
    static_heads = spec.static_dims.get(("past", 1))
    heads = b.const([static_heads]) if static_heads else b.dim(past, 1)
    batch, t = b.dim(keep_idx, 0), b.dim(keep_idx, 1)
    t_scalar = b.Squeeze(t, b.const([0]))
    slots = b.Unsqueeze(b.Range(b.const(0), t_scalar, b.const(1)), b.const([0]))  # [1, T]
    positions = b.Add(b.Unsqueeze(cache_lengths, b.const([1])), slots)  # [B, T]
    bht = b.Concat(batch, heads, t, b.const([1]), axis=0)

    def per_head(index_bt: str) -> str:  # [B, T] -> [B, H, T, 1]
        return b.Expand(b.Unsqueeze(index_bt, b.const([1, 3])), bht)

    kept = b.GatherND(new, per_head(keep_idx), batch_dims=2)  # [B, H, T, D]
    current = b.GatherND(past, per_head(positions), batch_dims=2)
    keep = b.Unsqueeze(b.Less(slots, b.Unsqueeze(keep_len, b.const([1]))), b.const([1, 3]))
    values = b.Where(keep, kept, current)

    # ScatterND addresses (b, h, s) triples: [B, H, T, 3].
    b_index = b.Expand(
        b.Reshape(
            b.Range(b.const(0), b.Squeeze(batch, b.const([0])), b.const(1)), b.const([-1, 1, 1, 1])
        ),
        bht,
    )
    h_index = b.Expand(
        b.Reshape(
            b.Range(b.const(0), b.Squeeze(heads, b.const([0])), b.const(1)), b.const([1, -1, 1, 1])
        ),
        bht,
    )
    indices = b.Concat(b_index, h_index, per_head(positions), axis=3)
    return b.build({"present": b.ScatterND(past, indices, values)})


KV_COMPACTION = OpDef(
    name="kv_compaction",
    onnx_name="KVCompaction",
    schema=(
        "(Tensor past, Tensor new, Tensor cache_lengths, Tensor keep_idx, Tensor keep_len) "
        "-> Tensor"
    ),
    reference=kv_compaction_reference,
    fake=kv_compaction_fake,
    build_body=build_kv_compaction_body,
    input_names=("past", "new", "cache_lengths", "keep_idx", "keep_len"),
    output_names=("present",),
    cuda_kernel="redcompile_kv_compaction",
    doc=__doc__ or "",
    static_dims=(("past", 1),),
)
