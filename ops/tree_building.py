"""Tree building: deduplicate the beams' shared prefixes into one packed tree per row.

Shapes (B batch, W beams, L beam length including the root, N = W * (L - 1) + 1):

    beams       [B, W, L] int64   every beam starts with the same root token
    ->  tokens      [B, N]  packed tokens, row-major over (beam, depth) of first occurrences
        parents     [B, N]  packed index of each token's parent, -1 for the root
        depths      [B, N]  depth in the tree (root 0)
        num_tokens  [B]     tokens in the packed row; slots beyond it are padding (0, -1, 0)
        paths       [B, W, L]  packed index of every beam position ("unpacker"):
                               tokens[b, paths[b, w, l]] == beams[b, w, l]

Two beam positions share a packed token iff the beams agree on the whole prefix up to and
including that position, so causality (and the K/V of each token) is preserved while shared
prefixes are verified once (Apple's "dynamic tree attention", docs/tree_attention.md there).
The derivation: prefix_tree[b, i, j] = the first beam k whose prefix up to j equals beam i's;
(i, j) is new iff prefix_tree[b, i, j] == i; new tokens are numbered in row-major order, and
paths[b, i, j] = slot of (prefix_tree[b, i, j], j).

`ancestor_mask` turns (parents, depths) of any packed rows, trees or prompt chains, into the
boolean mask that tree attention uses.
"""

from __future__ import annotations

import torch

from redcompile.ops.onnx_builder import BOOL, FunctionBuilder
from redcompile.ops.opdef import BodySpec, OpDef


def prefix_tree(beams: torch.Tensor) -> torch.Tensor:
    """prefix_tree[b, i, j]: smallest beam index k with beams[b, k, :j+1] == beams[b, i, :j+1]."""
    same = beams.unsqueeze(2) == beams.unsqueeze(1)  # [B, W(i), W(k), L]
    mismatches = torch.cumsum((~same).to(torch.int64), dim=-1)
    prefix_equal = (mismatches == 0).to(torch.int64)
    return torch.argmax(prefix_equal, dim=2)  # first k with an equal prefix


def build_tree_reference(beams: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Packed tree of the beams (ground truth); see the module docstring for shapes."""
    b, w, length = beams.shape
    n = w * (length - 1) + 1
    first = prefix_tree(beams)  # [B, W, L]
    beam_index = torch.arange(w, device=beams.device).view(1, w, 1)
    is_new = (first == beam_index).reshape(b, w * length)
    slot = torch.cumsum(is_new.to(torch.int64), dim=1) - 1  # packed index of each new token
    num_tokens = is_new.sum(dim=1)
    paths = torch.gather(slot.view(b, w, length), 1, first)
    target = torch.where(is_new, slot, torch.full_like(slot, n))  # old tokens go to a dummy slot

    def pack(values: torch.Tensor, fill: int) -> torch.Tensor:
        out = torch.full((b, n + 1), fill, dtype=torch.int64, device=beams.device)
        return out.scatter(1, target, values.reshape(b, w * length))[:, :n].contiguous()

    root_parent = torch.full((b, w, 1), -1, dtype=torch.int64, device=beams.device)
    parents_full = torch.cat([root_parent, paths[:, :, :-1]], dim=2)
    depths_full = torch.arange(length, device=beams.device).view(1, 1, length).expand(b, w, length)
    return pack(beams, 0), pack(parents_full, -1), pack(depths_full, 0), num_tokens, paths


def build_tree_fake(beams):
    """tokens/parents/depths [B, N], num_tokens [B], paths [B, W, L], all int64."""
    b, w, length = beams.shape
    n = w * (length - 1) + 1
    flat = beams.new_empty((b, n))
    return flat, flat.clone(), flat.clone(), beams.new_empty((b,)), beams.new_empty(beams.shape)


def unpack_beams(tokens: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """Inverse of packing: beams[b, w, l] = tokens[b, paths[b, w, l]]."""
    b, w, length = paths.shape
    return torch.gather(tokens, 1, paths.reshape(b, w * length)).view(b, w, length)


def lifting_steps(max_depth: int) -> int:
    """Number of binary-lifting steps that reach any depth below `max_depth`."""
    return max(1, (max(max_depth, 1) - 1).bit_length())


def ancestor_mask(parents: torch.Tensor, depths: torch.Tensor, steps: int) -> torch.Tensor:
    """mask[b, i, j] = packed token j is token i or one of its ancestors.

    parents/depths [B, T] -> [B, T, T] bool. Works for any packed forest whose parents precede
    their children (trees and prompt chains alike) by binary lifting: token i's ancestor at depth
    depths[j] is found in `steps` doublings, where 2**steps exceeds every depth.
    """
    b, t = parents.shape
    index = torch.arange(t, device=parents.device).expand(b, t)
    up = torch.where(parents < 0, index, parents)  # roots point at themselves
    climb = depths.unsqueeze(2) - depths.unsqueeze(1)  # [B, T(i), T(j)] steps from i up to j
    node = index.unsqueeze(2).expand(b, t, t)
    for bit in range(steps):
        take = ((climb >> bit) & 1).bool()
        jumped = torch.gather(up, 1, node.reshape(b, t * t)).view(b, t, t)
        node = torch.where(take, jumped, node)
        up = torch.gather(up, 1, up)  # ancestor 2**(bit+1) levels up
    return (climb >= 0) & (node == index.unsqueeze(1))


def ancestor_mask_fake(parents, depths, steps):
    """[B, T, T] bool."""
    b, t = parents.shape
    return parents.new_empty((b, t, t), dtype=torch.bool)


# Decoding trees are shallow (depth < beam length) while a prompt chunk is as deep as it is
# long: a step whose tokens are all shallower than 2**SHALLOW_STEPS lifts in that many steps.
SHALLOW_STEPS = 5


def build_ancestor_mask_body(spec: BodySpec):
    """Binary lifting unrolled `steps` times (GatherElements, Div, Mod, Where); behind an If,
    a step whose tokens are all shallower than 2**SHALLOW_STEPS takes a shorter unrolling."""
    b = FunctionBuilder(ANCESTOR_MASK, spec)
    parents, depths = b.input("parents"), b.input("depths")
    t = b.dim(parents, 1)
    index = b.Add(
        b.Mul(parents, b.const(0)), b.Range(b.const(0), b.Squeeze(t, b.const([0])), b.const(1))
    )  # [B, T]
    climb = b.Sub(b.Unsqueeze(depths, b.const([2])), b.Unsqueeze(depths, b.const([1])))
    square = b.Shape(climb)
    flat = b.Concat(b.dim(parents, 0), b.const([-1]), axis=0)

    def lift(steps: int) -> list[str]:
        up = b.Where(b.Less(parents, b.const(0)), index, parents)
        node = b.Expand(b.Unsqueeze(index, b.const([2])), square)
        for bit in range(steps):
            take = b.Equal(b.Mod(b.Div(climb, b.const(2**bit)), b.const(2)), b.const(1))
            jumped = b.Reshape(b.GatherElements(up, b.Reshape(node, flat), axis=1), square)
            node = b.Where(take, jumped, node)
            if bit + 1 < steps:
                up = b.GatherElements(up, up, axis=1)
        own = b.Equal(node, b.Unsqueeze(index, b.const([1])))
        return [b.And(b.GreaterOrEqual(climb, b.const(0)), own)]

    steps = int(spec.attributes["steps"])
    if steps <= SHALLOW_STEPS:
        return b.build({"mask": lift(steps)[0]})
    shallow = b.Less(b.ReduceMax(depths, keepdims=0), b.const(2**SHALLOW_STEPS))  # 0-d
    mask = b.If(shallow, lambda: lift(SHALLOW_STEPS), lambda: lift(steps), [BOOL])
    return b.build({"mask": mask})


ANCESTOR_MASK = OpDef(
    name="ancestor_mask",
    onnx_name="AncestorMask",
    schema="(Tensor parents, Tensor depths, int steps) -> Tensor",
    reference=ancestor_mask,
    fake=ancestor_mask_fake,
    build_body=build_ancestor_mask_body,
    input_names=("parents", "depths"),
    output_names=("mask",),
    attribute_names=("steps",),
    cuda_kernel="redcompile_ancestor_mask",
    doc="mask[b, i, j] = packed token j is token i or one of its ancestors ([B, T, T] bool), "
    "from parents and depths of any packed forest whose parents precede their children.",
)


def build_build_tree_body(spec: BodySpec):
    """Prefix dedup and packing in standard ops (Equal, CumSum, ArgMax, ScatterElements); a
    single beam of static length is already its packed tree (a chain), written directly."""
    b = FunctionBuilder(BUILD_TREE, spec)
    beams = b.input("beams")
    width, length = spec.static_dims.get(("beams", 1)), spec.static_dims.get(("beams", 2))
    if width == 1 and length:
        return _single_beam_body(b, beams, length)
    shape = b.Shape(beams)
    batch, width, length = (b.dim(beams, i) for i in range(3))
    n = b.Add(b.Mul(width, b.Sub(length, b.const([1]))), b.const([1]))

    same = b.Equal(b.Unsqueeze(beams, b.const([2])), b.Unsqueeze(beams, b.const([1])))
    mismatches = b.CumSum(b.Cast(b.Not(same), to=7), b.const(-1))
    prefix_equal = b.Cast(b.Equal(mismatches, b.const(0)), to=1)
    first = b.ArgMax(prefix_equal, axis=2, keepdims=0)  # [B, W, L]

    beam_index = b.Reshape(
        b.Range(b.const(0), b.Squeeze(width, b.const([0])), b.const(1)), b.const([1, -1, 1])
    )
    flat_shape = b.Concat(batch, b.const([-1]), axis=0)
    is_new = b.Reshape(b.Equal(first, beam_index), flat_shape)  # [B, W*L]
    slot = b.Sub(b.CumSum(b.Cast(is_new, to=7), b.const(1)), b.const(1))
    num_tokens = b.ReduceSum(b.Cast(is_new, to=7), b.const([1]), keepdims=0)
    paths = b.GatherElements(b.Reshape(slot, shape), first, axis=1)
    target = b.Where(is_new, slot, n)

    buffer_shape = b.Concat(batch, b.Add(n, b.const([1])), axis=0)

    def pack(values: str, fill: int) -> str:
        out = b.Expand(b.const(fill), buffer_shape)
        scattered = b.ScatterElements(out, target, b.Reshape(values, flat_shape), axis=1)
        return b.Slice(scattered, b.const([0]), n, b.const([1]))

    root_shape = b.Concat(batch, width, b.const([1]), axis=0)
    last = b.Sub(length, b.const([1]))
    parents_full = b.Concat(
        b.Expand(b.const(-1), root_shape), b.Slice(paths, b.const([0]), last, b.const([2])), axis=2
    )
    depth_row = b.Reshape(
        b.Range(b.const(0), b.Squeeze(length, b.const([0])), b.const(1)), b.const([1, 1, -1])
    )
    depths_full = b.Expand(depth_row, shape)
    return b.build(
        {
            "tokens": pack(beams, 0),
            "parents": pack(parents_full, -1),
            "depths": pack(depths_full, 0),
            "num_tokens": num_tokens,
            "paths": paths,
        }
    )


def _single_beam_body(b: FunctionBuilder, beams: str, length: int):
    """One beam [B, 1, L]: tokens are the beam, each token's parent the one before it."""
    batch = b.dim(beams, 0)
    rows = b.Concat(batch, b.const([length]), axis=0)
    positions = list(range(length))
    return b.build(
        {
            "tokens": b.Squeeze(beams, b.const([1])),
            "parents": b.Expand(b.const([[p - 1 for p in positions]]), rows),
            "depths": b.Expand(b.const([positions]), rows),
            "num_tokens": b.Expand(b.const([length]), batch),
            "paths": b.Expand(
                b.const([[positions]]), b.Concat(batch, b.const([1, length]), axis=0)
            ),
        }
    )


BUILD_TREE = OpDef(
    name="build_tree",
    onnx_name="BuildTree",
    schema="(Tensor beams) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    reference=build_tree_reference,
    fake=build_tree_fake,
    build_body=build_build_tree_body,
    input_names=("beams",),
    output_names=("tokens", "parents", "depths", "num_tokens", "paths"),
    cuda_kernel="redcompile_build_tree",
    doc=__doc__ or "",
    static_dims=(("beams", 1), ("beams", 2)),
)
