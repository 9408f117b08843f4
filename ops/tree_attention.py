"""Tree attention: the packed tokens of a step attend to their row's cache and their ancestors.

Shapes (B batch, Hq query heads, Hkv key/value heads, T packed tokens, S cache capacity,
D head dim):

    q            [B, Hq, T, D]     queries of the packed tokens (RoPE applied)
    k, v         [B, Hkv, T, D]    keys/values of the packed tokens
    past_k/v     [B, Hkv, S, D]    the cache buffer (only columns the past mask allows are read)
    past_mask    [B, 1, T|1, S]    bool: which cache columns each token may see
    tree_mask    [B, 1, T, T]      bool: tree_mask[b, 0, i, j] = token j is i's ancestor or i itself
    ->  y        [B, Hq, T, D]

Grouped-query heads are native: query head h reads key/value head h // (Hq / Hkv).
The softmax runs over the cache columns and the tree columns together, in float32, exactly as one
attention over `concat(past, new)` would; the cache is never concatenated or copied, which is the
point of the op (see docs/architecture.md, "KV cache").
"""

from __future__ import annotations

import onnx
import torch

from redcompile.ops.onnx_builder import FunctionBuilder
from redcompile.ops.opdef import BodySpec, OpDef


def tree_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    past_mask: torch.Tensor,
    tree_mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of packed tree tokens over cache + ancestors (ground truth, any device)."""
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    q5 = q.reshape(b, hkv, hq // hkv, t, d).float()  # [B, Hkv, G, T, D]
    scores_past = torch.einsum("bkgtd,bksd->bkgts", q5, past_k.float()) * scale
    scores_new = torch.einsum("bkgtd,bksd->bkgts", q5, k.float()) * scale
    neg_inf = torch.tensor(float("-inf"))
    scores_past = torch.where(past_mask.unsqueeze(1), scores_past, neg_inf)
    scores_new = torch.where(tree_mask.unsqueeze(1), scores_new, neg_inf)
    probs = torch.softmax(torch.cat([scores_past, scores_new], dim=-1), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a fully masked row attends to nothing: zeros
    s = past_k.shape[2]
    y = torch.einsum("bkgts,bksd->bkgtd", probs[..., :s], past_v.float())
    y = y + torch.einsum("bkgts,bksd->bkgtd", probs[..., s:], v.float())
    return y.reshape(b, hq, t, d).to(q.dtype)


def tree_attention_fake(q, k, v, past_k, past_v, past_mask, tree_mask, scale):
    """Output has the queries' shape and dtype, contiguous like the reference's (not q's
    strides: q is often a transposed view, and compilers lay the output out as the fake says)."""
    return q.new_empty(q.shape)


def build_tree_attention_body(spec: BodySpec):
    """Two-part softmax in standard ops: scores against the cache and against the tree, joined.

    Matrix products run in the input dtype, the softmax in float32. K is used through a
    Transpose feeding MatMul, which ONNX Runtime fuses (FusedMatMul, transB) so the cache is
    read in place rather than copied.
    """
    b = FunctionBuilder(TREE_ATTENTION, spec)
    q, k, v = b.input("q"), b.input("k"), b.input("v")
    past_k, past_v = b.input("past_k"), b.input("past_v")
    past_mask, tree_mask = b.input("past_mask"), b.input("tree_mask")

    # [B, Hq, T, D] -> [B, Hkv, G, T, D] so that each key/value head serves its G query heads.
    # Shapes come from the graph's static sizes or from the masks, which every layer shares, so
    # that no node in a layer's inlined body only computes a shape.
    hq, d, hkv = (spec.static_dims.get(key) for key in (("q", 1), ("q", 3), ("k", 1)))
    static = None not in (hq, d, hkv)
    if static:
        shape_5d = b.const([0, hkv, hq // hkv, -1, d])
        shape_y = b.const([0, hq, -1, d])
    else:
        shape_5d = b.Concat(
            b.const([0]), b.dim(k, 1), b.const([-1]), b.dim(q, 2), b.dim(q, 3), axis=0
        )
        shape_y = b.Shape(q)
    q5 = b.Reshape(b.Mul(q, b.const_like(float(spec.attributes["scale"]), q)), shape_5d)
    neg_inf = b.const(float("-inf"), "float32")

    def scores(keys: str, mask: str) -> str:
        # Transpose directly feeding MatMul: ORT fuses the pair (FusedMatMul, transB).
        keys_t = b.Transpose(b.Unsqueeze(keys, b.const([2])), perm=[0, 1, 2, 4, 3])
        raw = b.Cast(b.MatMul(q5, keys_t), to=1)  # [B, Hkv, G, T, S|T] float32
        return b.Where(b.Unsqueeze(mask, b.const([1])), raw, neg_inf)

    joined = b.Concat(scores(past_k, past_mask), scores(k, tree_mask), axis=-1)
    probs = b.Softmax(joined, axis=-1)
    probs = b.Where(b.IsNaN(probs), b.const(0.0, "float32"), probs)
    if spec.input_types.get("q") != onnx.TensorProto.FLOAT:
        probs = b.CastLike(probs, q)
    sizes = b.Concat(b.dim(past_mask, -1), b.dim(tree_mask, -1), axis=0)  # [S, T]
    probs_past, probs_new = b.Split(probs, sizes, axis=-1, outputs=2)

    def weighted(p: str, values: str) -> str:
        return b.MatMul(p, b.Unsqueeze(values, b.const([2])))

    y5 = b.Add(weighted(probs_past, past_v), weighted(probs_new, v))
    return b.build({"y": b.Reshape(y5, shape_y)})


TREE_ATTENTION = OpDef(
    name="tree_attention",
    onnx_name="TreeAttention",
    schema=(
        "(Tensor q, Tensor k, Tensor v, Tensor past_k, Tensor past_v, Tensor past_mask, "
        "Tensor tree_mask, float scale) -> Tensor"
    ),
    reference=tree_attention_reference,
    fake=tree_attention_fake,
    build_body=build_tree_attention_body,
    input_names=("q", "k", "v", "past_k", "past_v", "past_mask", "tree_mask"),
    output_names=("y",),
    attribute_names=("scale",),
    cuda_kernel="redcompile_tree_attention",
    doc=__doc__ or "",
    static_dims=(("q", 1), ("q", 3), ("k", 1)),
)
