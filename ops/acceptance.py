"""Acceptance: which packed tokens of a step are kept, and the tokens the step emits.

Shapes (B batch, T packed tokens, V vocabulary, W beams, L beam length, C = L - 1 drafts):

    logits            [B, T, V]   base model logits at every packed token
    tokens            [B, T]      the packed tokens
    num_tokens        [B]         valid packed tokens per row (0 = idle row)
    forced            [B]         leading chain tokens kept without a test (prompt chunk, root)
    temperature       [B]         below GREEDY_BELOW (0 included): greedy; else sampling
    top_k, top_p      [B]         the row's sampling warps (ops/sampling.py)
    sample_uniforms   [B, L]      U[0, 1) for the token picked at each tree depth (L = 1 without
                                  paths)
    paths             [B, W, L]   optional: packed index of each beam position, rooted at the
                                  last forced token (absent for autoregressive steps)
    ->  keep_idx      [B, T]      packed indices of the kept path, in order (padding: 0)
        keep_len      [B]         forced + accepted drafts
        last_idx      [B]         packed index of the last kept token (its hidden state drafts next)
        new_tokens    [B, L]      accepted drafts then the next token (padding: 0)
        num_new       [B]         accepted drafts + 1 (0 for idle rows)

Rule. The logits at beam position l predict position l + 1. Every tree node reached through
depth l picks one token there: the argmax (greedy rows) or a draw from the row's distribution P
at that node with the depth's uniform, sample_uniforms[b, l] (ops/sampling.py). A drafted token
passes when it equals the token its parent node picked. Each beam keeps its leading passes; the
beam with the most wins (first on ties); the step emits the tokens the winning beam's nodes
picked up to and including its first failure (or the leaf), so every emitted token is the pick
of the node before it.

Why sampling is exact. The drafts are deterministic (beam search, lookup), so a node's children
are point masses. Beams that share a prefix share its nodes (the tree is deduplicated), so they
share those nodes' picks: the walk from the root follows the child equal to the pick and stops
at the first node whose pick is no child. The first emitted token is a draw from P at the root
(the context); each following one is a draw from P given everything emitted before it (tree
attention gives the node the logits of that context) with a uniform nothing else has read. That
is autoregressive sampling token by token, whatever the drafts were: the drafts only decide how
many of these draws one step makes. With the host's uniforms indexed by the position of the
emitted token, a seeded speculative run even draws the same tokens as the seeded
autoregressive run, up to float rounding at a decision boundary (docs/architecture.md).
"""

from __future__ import annotations

import torch

from redcompile.ops.onnx_builder import FLOAT, INT64, FunctionBuilder
from redcompile.ops.opdef import BodySpec, OpDef
from redcompile.ops.sampling import OnnxSampler, node_tokens


def _leading_count(passed: torch.Tensor) -> torch.Tensor:
    """Leading true values along the last axis of bool `passed`."""
    return (torch.cumsum((~passed).to(torch.int64), dim=-1) == 0).sum(dim=-1)


def accept_reference(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    num_tokens: torch.Tensor,
    forced: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    sample_uniforms: torch.Tensor,
    paths: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """Greedy and sampling acceptance for every row (ground truth); see module docstring."""
    b, t, _ = logits.shape
    rows = torch.arange(b, device=logits.device)
    active = num_tokens > 0
    last_forced = (forced - 1).clamp(min=0)
    if paths is None:
        has_tree = torch.zeros_like(active)
        nodes = last_forced.view(b, 1, 1)
    else:
        has_tree = num_tokens > forced
        # Rows without a tree read their last forced token at every node (only depth 0 counts).
        nodes = torch.where(
            has_tree.view(b, 1, 1), paths.clamp(0, t - 1), last_forced.view(b, 1, 1)
        )
    w, length = nodes.shape[1], nodes.shape[2]
    nodes_bn = nodes.reshape(b, w * length)
    picked = node_tokens(
        logits, nodes_bn, temperature, top_k, top_p, sample_uniforms.float().repeat(1, w)
    ).view(b, w, length)
    drafts = torch.gather(tokens, 1, nodes_bn).view(b, w, length)[:, :, 1:]
    passed = (picked[:, :, :-1] == drafts) & has_tree.view(b, 1, 1)
    per_beam = _leading_count(passed)  # [B, W]
    best = per_beam.argmax(dim=-1)  # the first beam with the longest run of passes
    n = per_beam[rows, best]
    beam_nodes = nodes[rows, best]  # [B, L]
    zero = torch.zeros_like(n)

    slots = torch.arange(length, device=logits.device).expand(b, length)
    new_tokens = torch.where(slots <= n.unsqueeze(1), picked[rows, best], 0)
    new_tokens = torch.where(active.unsqueeze(1), new_tokens, 0)
    keep_len = torch.where(active, forced + n, zero)
    positions = torch.arange(t, device=logits.device).expand(b, t)
    draft_slot = (positions - forced.unsqueeze(1) + 1).clamp(0, length - 1)
    keep_idx = torch.where(
        positions >= forced.unsqueeze(1), torch.gather(beam_nodes, 1, draft_slot), positions
    )
    keep_idx = torch.where(positions < keep_len.unsqueeze(1), keep_idx, 0)
    last_idx = torch.where(active, beam_nodes[rows, n], zero)
    num_new = torch.where(active, n + 1, zero)
    return keep_idx, keep_len, last_idx, new_tokens, num_new


def accept_fake(
    logits,
    tokens,
    num_tokens,
    forced,
    temperature,
    top_k,
    top_p,
    sample_uniforms,
    paths,
):
    """keep_idx [B, T], keep_len/last_idx/num_new [B], new_tokens [B, L] (L = 1 without paths)."""
    b = tokens.shape[0]
    width = 1 if paths is None else paths.shape[2]
    return (
        tokens.new_empty(tokens.shape),
        tokens.new_empty((b,)),
        tokens.new_empty((b,)),
        tokens.new_empty((b, width)),
        tokens.new_empty((b,)),
    )


class _Rows:
    """What every acceptance body reads per row, and the sampler over those rows."""

    def __init__(self, b: FunctionBuilder, spec: BodySpec) -> None:
        self.b, self.spec = b, spec
        self.tokens, self.num_tokens = b.input("tokens"), b.input("num_tokens")
        self.forced = b.input("forced")
        self.logits = self.as_float("logits")
        self.sampler = OnnxSampler(
            b, self.as_float("temperature"), b.input("top_k"), self.as_float("top_p")
        )
        self.active = b.Greater(self.num_tokens, b.const(0))  # [B]
        self.last_forced = b.Max(b.Sub(self.forced, b.const(1)), b.const(0))  # [B]

    def uniforms(self) -> str:
        """sample_uniforms [B, L] as float32; called where sampling reads them (inside the
        sampler's If), so a greedy step never converts them."""
        return self.as_float("sample_uniforms")

    def as_float(self, name: str) -> str:
        """Input `name` as float32 (no Cast when it already is)."""
        if self.spec.input_types.get(name) == FLOAT:
            return self.b.input(name)
        return self.b.Cast(self.b.input(name), to=FLOAT)


def _leading(b: FunctionBuilder, passed: str, rank: int) -> str:
    """Count of leading true values along the last axis of bool `passed` (rank `rank`): the
    position of the first false once a false is appended (ArgMin finds the first minimum)."""
    pads = [0] * (2 * rank)
    pads[2 * rank - 1] = 1
    padded = b.Pad(b.Cast(passed, to=INT64), b.const(pads))
    return b.ArgMin(padded, axis=-1, keepdims=0)


def _kept_indices(b: FunctionBuilder, rows: _Rows, keep_len: str, path: str | None) -> str:
    """keep_idx [B, T]: positions before `forced` as they are, then `path` [B, L] from its
    slot 1 on (the kept drafts), 0 from `keep_len` on."""
    t = b.Squeeze(b.dim(rows.tokens, 1), b.const([0]))
    positions = b.Unsqueeze(b.Range(b.const(0), t, b.const(1)), b.const([0]))  # [1, T]
    keep_idx = positions
    if path is not None:
        forced_col = b.Unsqueeze(rows.forced, b.const([1]))
        last_slot = b.Squeeze(b.Sub(b.dim(path, 1), b.const([1])), b.const([0]))
        slot = b.Clip(b.Add(b.Sub(positions, forced_col), b.const(1)), b.const(0), last_slot)
        from_path = b.GatherElements(path, slot, axis=1)
        keep_idx = b.Where(b.GreaterOrEqual(positions, forced_col), from_path, positions)
    in_kept = b.Less(positions, b.Unsqueeze(keep_len, b.const([1])))
    return b.Where(in_kept, keep_idx, b.const(0))


def _autoregressive_body(b: FunctionBuilder, rows: _Rows) -> dict[str, str]:
    """No tree: the token the last forced position picks."""
    last_col = b.Unsqueeze(rows.last_forced, b.const([1]))  # [B, 1]
    # The row's first uniform: an autoregressive step reads one, whatever L its host feeds
    # (an artifact's autoregressive branch is fed its tree step's [B, L]).
    first = b.const([0]), b.const([1]), b.const([1])
    next_col = rows.sampler.node_tokens(
        rows.logits, last_col, lambda: b.Slice(rows.uniforms(), *first)
    )  # [B, 1]
    num_new = b.Cast(rows.active, to=INT64)  # 1 per active row
    keep_len = b.Mul(rows.forced, num_new)
    outputs = {
        "keep_len": keep_len,
        "new_tokens": b.Mul(next_col, b.Unsqueeze(num_new, b.const([1]))),
        "num_new": num_new,
    }
    if rows.spec.used("last_idx"):
        outputs["last_idx"] = b.Mul(rows.last_forced, num_new)
    if rows.spec.used("keep_idx"):
        outputs["keep_idx"] = _kept_indices(b, rows, keep_len, None)
    return outputs


def _tree_body(b: FunctionBuilder, rows: _Rows) -> dict[str, str]:
    """A tree of W beams (W = 1: a chain, without the choice between beams): every node picks
    a token, each beam keeps its leading passes, the first longest beam wins."""
    spec = rows.spec
    width = spec.static_dims.get(("paths", 1))
    length = spec.static_dims.get(("paths", 2))
    t_last = b.Squeeze(b.Sub(b.dim(rows.tokens, 1), b.const([1])), b.const([0]))
    paths = b.Clip(b.input("paths"), b.const(0), t_last)  # [B, W, L]
    has_tree = b.Greater(rows.num_tokens, rows.forced)  # [B]
    # Rows without a tree read their last forced token at every node (only depth 0 counts).
    nodes = b.Where(
        b.Unsqueeze(has_tree, b.const([1, 2])),
        paths,
        b.Unsqueeze(rows.last_forced, b.const([1, 2])),
    )
    if width == 1:
        nodes_bn, uniforms_bn = b.Squeeze(nodes, b.const([1])), rows.uniforms  # [B, L]
    else:
        nodes_bn = b.Reshape(nodes, b.const([0, -1]))  # [B, W * L]

        def uniforms_bn() -> str:  # every beam's node at depth d reads the row's uniform d
            return b.Tile(rows.uniforms(), b.Concat(b.const([1]), b.dim(nodes, 1), axis=0))

    picked_bn = rows.sampler.node_tokens(rows.logits, nodes_bn, uniforms_bn)
    tokens_bn = b.GatherElements(rows.tokens, nodes_bn, axis=1)
    shape = b.Shape(nodes) if width != 1 else None
    picked = picked_bn if width == 1 else b.Reshape(picked_bn, shape)  # [B, (W,) L]
    tokens_at = tokens_bn if width == 1 else b.Reshape(tokens_bn, shape)
    axis = 1 if width == 1 else 2
    end = b.const([length if length is not None else 2**62])
    drafts = b.Slice(tokens_at, b.const([1]), end, b.const([axis]))  # [B, (W,) C]
    predicted = b.Slice(picked, b.const([0]), b.const([-1]), b.const([axis]))
    has_tree_nd = b.Unsqueeze(has_tree, b.const(list(range(1, axis + 1))))
    passed = b.And(b.Equal(predicted, drafts), has_tree_nd)
    per_beam = _leading(b, passed, axis + 1)  # [B] (a chain) or [B, W]
    if width == 1:
        n, beam_picked, beam_nodes = per_beam, picked, nodes_bn
    else:
        best = b.ArgMax(b.Cast(per_beam, to=FLOAT), axis=1, keepdims=1)  # [B, 1], first max
        n = b.Squeeze(b.GatherElements(per_beam, best, axis=1), b.const([1]))
        beam_picked = b.GatherND(picked, best, batch_dims=1)  # [B, L]
        beam_nodes = b.GatherND(nodes, best, batch_dims=1)
    if length is not None:
        slots = b.const([list(range(length))])  # [1, L]
    else:
        l_dim = b.Squeeze(b.dim(beam_nodes, 1), b.const([0]))
        slots = b.Unsqueeze(b.Range(b.const(0), l_dim, b.const(1)), b.const([0]))
    n_col = b.Unsqueeze(n, b.const([1]))
    active = b.Cast(rows.active, to=INT64)
    new_tokens = b.Where(b.LessOrEqual(slots, n_col), beam_picked, b.const(0))
    keep_len = b.Mul(b.Add(rows.forced, n), active)
    outputs = {
        "keep_len": keep_len,
        "new_tokens": b.Mul(new_tokens, b.Unsqueeze(active, b.const([1]))),
        "num_new": b.Mul(b.Add(n, b.const(1)), active),
    }
    if spec.used("last_idx"):
        last = b.Squeeze(b.GatherElements(beam_nodes, n_col, axis=1), b.const([1]))
        outputs["last_idx"] = b.Mul(last, active)
    if spec.used("keep_idx"):
        outputs["keep_idx"] = _kept_indices(b, rows, keep_len, beam_nodes)
    return outputs


def build_accept_body(spec: BodySpec):
    """The acceptance rule in standard ops, specialised to the step's tree (static sizes from
    the graph): none (an autoregressive step), one beam (a chain), or several beams. Outputs
    nothing reads (the cache write and drafting that chain artifacts fuse into
    GroupQueryAttention, an autoregressive step's last_idx) are not computed: the formal output
    is bound to an input of the same shape family, which the runtime drops with the unread
    value."""
    b = FunctionBuilder(ACCEPT, spec)
    rows = _Rows(b, spec)
    outputs = _tree_body(b, rows) if spec.has("paths") else _autoregressive_body(b, rows)
    for name, unread in (("keep_idx", rows.tokens), ("last_idx", rows.num_tokens)):
        outputs.setdefault(name, b.Identity(unread))
    return b.build(outputs)


ACCEPT = OpDef(
    name="accept",
    onnx_name="Accept",
    schema=(
        "(Tensor logits, Tensor tokens, Tensor num_tokens, Tensor forced, Tensor temperature, "
        "Tensor top_k, Tensor top_p, Tensor sample_uniforms, Tensor? paths) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    reference=accept_reference,
    fake=accept_fake,
    build_body=build_accept_body,
    input_names=(
        "logits",
        "tokens",
        "num_tokens",
        "forced",
        "temperature",
        "top_k",
        "top_p",
        "sample_uniforms",
        "paths",
    ),
    output_names=("keep_idx", "keep_len", "last_idx", "new_tokens", "num_new"),
    static_dims=(("paths", 1), ("paths", 2)),
    cuda_kernel="redcompile_accept",
    doc=__doc__ or "",
)
