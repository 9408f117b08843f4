"""Prompt lookup: draft beams copied from each row's own token history ("lookup beams").

Shapes (B batch, S history capacity, K lookup beams, L beam length including the root):

    history   [B, S] int64   each row's tokens so far: prompt, accepted tokens, and last the
                             root the next step verifies; slots at and beyond `lengths` are
                             stale and never read
    lengths   [B]    int64   tokens in each row's history (0: idle row); clamped to [0, S]
    ngrams    attribute      the n-gram sizes that count as a match
    num_beams attribute      K
    beam_length attribute    L
    ->  beams [B, K, L] int64   beams[..., 0] == history[b, lengths[b] - 1] (the root)

Rule, for one row with sequence x = history[b, :M]. A candidate is an earlier position q
(q <= M - 2) where some size k of `ngrams` matches: x[q - k + 1 : q + 1] == x[M - k : M], the
row's last k tokens end at q too. Its level is how many of the sizes match there (matches are
nested, so a higher level is a longer match). Candidates rank by level, then latest first;
beam j copies the continuation of the j-th ranked candidate (the first when there are fewer
than j + 1): draft i is x[s + (i mod d)] with s = q + 1 and d = M - s, the text after the
occurrence and, where that runs into the end of x, its periodic extension (a repeat of period d
continues as the repeat). Beam 0 is thus the latest occurrence of the longest matching n-gram,
and further beams fall back to older and then shorter matches. With no candidate every beam
repeats the root. Idle rows (M = 0) get zeros.

A lookup beam is a deterministic draft: it carries no draft distribution (the step gives it a
one-hot draft log-probability), so acceptance tests it against the base model alone.
"""

from __future__ import annotations

import torch

from redcompile.ops.onnx_builder import FunctionBuilder
from redcompile.ops.opdef import BodySpec, OpDef


def lookup_continuation_starts(
    history: torch.Tensor, lengths: torch.Tensor, ngrams: list[int], num_beams: int
) -> torch.Tensor:
    """s [B, K]: the history index of each lookup beam's first drafted token (see the module
    docstring); lengths - 1 (the root) for a row with no candidate."""
    b, s = history.shape
    sizes = sorted(set(ngrams))
    m = lengths.clamp(0, s).unsqueeze(1)  # [B, 1]
    positions = torch.arange(s, device=history.device).unsqueeze(0)  # [1, S]
    level = torch.zeros(b, s, dtype=torch.int64, device=history.device)
    match = positions <= m - 2  # end positions whose continuation starts before the end
    for d in range(sizes[-1]):
        # x[q - d] == x[M - 1 - d]: the d-th token back from q equals the d-th from the end
        back = torch.cat([history.new_full((b, min(d, s)), -1), history[:, : max(s - d, 0)]], 1)
        last = torch.gather(history, 1, (m - 1 - d).clamp(0, s - 1))
        match = match & (back == last) & (m - 1 - d >= 0)
        if d + 1 in sizes:
            level = level + match.to(torch.int64)
    score = torch.where(level > 0, level * s + positions, torch.full_like(level, -1))
    padded = torch.cat([score, history.new_full((b, num_beams), -1)], dim=1)
    ranked = torch.topk(padded, num_beams, dim=1).values  # [B, K], best first
    ranked = torch.where(ranked >= 0, ranked, ranked[:, :1])
    return torch.where(ranked >= 0, ranked % s + 1, m - 1)


def prompt_lookup_reference(
    history: torch.Tensor,
    lengths: torch.Tensor,
    ngrams: list[int],
    num_beams: int,
    beam_length: int,
) -> torch.Tensor:
    """Lookup beams [B, K, L] (ground truth); see the module docstring."""
    b, s = history.shape
    m = lengths.clamp(0, s).view(b, 1, 1)
    start = lookup_continuation_starts(history, lengths, ngrams, num_beams).unsqueeze(2)
    period = (m - start).clamp(min=1)  # [B, K, 1]
    offsets = torch.arange(beam_length - 1, device=history.device).view(1, 1, -1)
    index = (start + offsets % period).clamp(0, s - 1).reshape(b, -1)
    drafts = torch.gather(history, 1, index).view(b, num_beams, beam_length - 1)
    root = torch.gather(history, 1, (m.view(b, 1) - 1).clamp(0, s - 1))  # [B, 1]
    beams = torch.cat([root.unsqueeze(1).expand(b, num_beams, 1), drafts], dim=2)
    return torch.where(m > 0, beams, torch.zeros_like(beams))


def prompt_lookup_fake(history, lengths, ngrams, num_beams, beam_length):
    """beams [B, K, L] int64."""
    return history.new_empty((history.shape[0], num_beams, beam_length))


def build_prompt_lookup_body(spec: BodySpec):
    """The rule in standard ops: one shifted Equal per token of the longest n-gram, their
    running And as the nested matches, a level * S + q score, one TopK for the ranking, the
    periodic copy by GatherElements."""
    b = FunctionBuilder(PROMPT_LOOKUP, spec)
    sizes = sorted({int(k) for k in spec.attributes["ngrams"]})
    num_beams, length = int(spec.attributes["num_beams"]), int(spec.attributes["beam_length"])
    history = b.input("history")
    batch, s = b.dim(history, 0), b.dim(history, 1)
    s_scalar = b.Squeeze(s, b.const([0]))
    last_slot = b.Sub(s_scalar, b.const(1))
    m = b.Unsqueeze(b.Clip(b.input("lengths"), b.const(0), s_scalar), b.const([1]))  # [B, 1]
    positions = b.Unsqueeze(b.Range(b.const(0), s_scalar, b.const(1)), b.const([0]))  # [1, S]

    # the row's last tokens, x[M - 1 - d] for every d at once ([B, D]); rows too short for d
    # read x[0] but can never match: position q - d would be negative, where `back` holds -1
    depth = sizes[-1]
    tail_idx = b.Clip(
        b.Sub(b.Sub(m, b.const(1)), b.const([list(range(depth))])), b.const(0), last_slot
    )
    tail = b.GatherElements(history, tail_idx, axis=1)
    fill = b.Expand(b.const(-1), b.Concat(batch, b.Min(b.const([depth]), s), axis=0))  # [B, D]
    match = b.LessOrEqual(positions, b.Sub(m, b.const(2)))
    level = None
    for d in range(depth):
        back = history
        if d:
            end = b.Max(b.Sub(s, b.const([d])), b.const([0]))
            shifted = b.Slice(history, b.const([0]), end, b.const([1]))
            back = b.Concat(
                b.Slice(fill, b.const([0]), b.const([d]), b.const([1])), shifted, axis=1
            )
        column = b.Slice(tail, b.const([d]), b.const([d + 1]), b.const([1]))
        match = b.And(match, b.Equal(back, column))
        if d + 1 in sizes:
            step = b.Cast(match, to=7)
            level = step if level is None else b.Add(level, step)
    score = b.Where(b.Greater(level, b.const(0)), b.Add(b.Mul(level, s), positions), b.const(-1))
    padded = b.Concat(
        score, b.Expand(b.const(-1), b.Concat(batch, b.const([num_beams]), axis=0)), axis=1
    )
    ranked, _ = b.TopK(padded, b.const([num_beams]), axis=1, outputs=2)  # [B, K], best first
    first = b.Slice(ranked, b.const([0]), b.const([1]), b.const([1]))
    ranked = b.Where(b.GreaterOrEqual(ranked, b.const(0)), ranked, first)
    start = b.Where(
        b.GreaterOrEqual(ranked, b.const(0)),
        b.Add(b.Mod(ranked, s), b.const(1)),
        b.Sub(m, b.const(1)),
    )

    start = b.Unsqueeze(start, b.const([2]))  # [B, K, 1]
    m_3d = b.Unsqueeze(m, b.const([2]))
    period = b.Max(b.Sub(m_3d, start), b.const(1))
    offsets = b.const([[list(range(length - 1))]])  # [1, 1, L - 1]
    index = b.Clip(b.Add(start, b.Mod(offsets, period)), b.const(0), last_slot)
    flat = b.Concat(batch, b.const([-1]), axis=0)
    drafts = b.Reshape(
        b.GatherElements(history, b.Reshape(index, flat), axis=1),
        b.Concat(batch, b.const([num_beams, length - 1]), axis=0),
    )
    root = b.Slice(tail, b.const([0]), b.const([1]), b.const([1]))  # x[M - 1], [B, 1]
    roots = b.Expand(
        b.Unsqueeze(root, b.const([2])), b.Concat(batch, b.const([num_beams, 1]), axis=0)
    )
    beams = b.Concat(roots, drafts, axis=2)
    return b.build({"beams": b.Where(b.Greater(m_3d, b.const(0)), beams, b.const(0))})


PROMPT_LOOKUP = OpDef(
    name="prompt_lookup",
    onnx_name="PromptLookup",
    schema=(
        "(Tensor history, Tensor lengths, int[] ngrams, int num_beams, int beam_length) -> Tensor"
    ),
    reference=prompt_lookup_reference,
    fake=prompt_lookup_fake,
    build_body=build_prompt_lookup_body,
    input_names=("history", "lengths"),
    output_names=("beams",),
    attribute_names=("ngrams", "num_beams", "beam_length"),
    cuda_kernel="redcompile_prompt_lookup",
    doc=__doc__ or "",
)
