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

import numpy as np
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
    """The rule in standard ops, lean (every op is a kernel ONNX Runtime launches each step):
    the history shifted right by d for d < D as Slices of one padded copy, one Equal per
    token of the longest n-gram against the row's last tokens, their running And as the
    nested matches, a level * (S + 1) + (q + 1) score whose maximum (TopK for several beams)
    ranks the candidates and whose remainder is the continuation's start, and one
    GatherElements copying root and drafts (indices may be -1 only for idle rows, which are
    zeroed)."""
    b = FunctionBuilder(PROMPT_LOOKUP, spec)
    sizes = sorted({int(k) for k in spec.attributes["ngrams"]})
    num_beams, length = int(spec.attributes["num_beams"]), int(spec.attributes["beam_length"])
    depth = sizes[-1]
    history = b.input("history")  # [B, S]
    s = b.dim(history, 1)  # [1]
    s1 = b.Add(s, b.const([1]))  # [1]: S + 1, the score's unit for one level
    s1_scalar = b.Squeeze(s1, b.const([0]))
    m = b.Min(b.Max(b.Unsqueeze(b.input("lengths"), b.const([1])), b.const(0)), s)  # [B, 1]
    after = b.Range(b.const(1), s1_scalar, b.const(1))  # [S]: q + 1, where a continuation starts
    root_idx = b.Sub(m, b.const(1))  # [B, 1]: x[M - 1]
    match = b.Less(after, m)  # q <= M - 2: the continuation starts before the end
    # x[M - 1 - d] for every d at once ([B, D]), from a copy padded with -2 in front, so a row
    # shorter than d + 1 reads -2, which no token and no -1 fill below equals
    lead = depth - 1
    tail_from = b.const([[lead - 1 - d for d in range(depth)]])
    tail = b.GatherElements(
        b.Pad(history, b.const([0, lead, 0, 0]), b.const(-2)), b.Add(m, tail_from), axis=1
    )
    shifted = b.Pad(history, b.const([0, lead, 0, 0]), b.const(-1)) if lead else history
    level = None
    for d in range(depth):
        # x[q - d] at every q, -1 where q - d < 0
        back = (
            history
            if d == 0
            else b.Slice(shifted, b.const([lead - d]), b.const([-d]), b.const([1]))
        )
        column = b.Slice(tail, b.const([d]), b.const([d + 1]), b.const([1]))
        match = b.And(match, b.Equal(back, column))
        if d + 1 in sizes:
            count = b.Cast(match, to=7)
            level = count if level is None else b.Add(level, count)
    # level 0 scores q + 1 <= S; a candidate (level >= 1) scores above S, the latest highest
    score = b.Add(b.Mul(level, s1), after)  # [B, S]
    if num_beams == 1:
        ranked = b.ReduceMax(score, b.const([1]), keepdims=1)  # [B, 1]
    else:
        # a row may have fewer than K positions: pad with non-candidates for TopK
        padded = b.Pad(score, b.const([0, 0, 0, num_beams]), b.const(-1))
        ranked, _ = b.TopK(padded, b.const([num_beams]), axis=1, outputs=2)  # best first
        first = b.Slice(ranked, b.const([0]), b.const([1]), b.const([1]))
        ranked = b.Where(b.Greater(ranked, s), ranked, first)  # missing: the best candidate's
    start = b.Where(
        b.Greater(ranked, s), b.Mod(ranked, s1), root_idx
    )  # [B, K]; the root itself when there is no candidate (then every draft repeats it)

    start = b.Unsqueeze(start, b.const([2]))  # [B, K, 1]
    m_3d = b.Unsqueeze(m, b.const([2]))
    period = b.Max(b.Sub(m_3d, start), b.const(1))
    # slot 0 the root, slot i >= 1 the (i - 1)-th token of the periodic continuation
    drafted = b.Add(start, b.Mod(b.const([[list(range(-1, length - 1))]]), period))
    is_root = b.const([[[True] + [False] * (length - 1)]], dtype=np.bool_)
    index = b.Where(is_root, b.Unsqueeze(root_idx, b.const([2])), drafted)  # [B, K, L]
    beams = b.Reshape(
        b.GatherElements(history, b.Flatten(index, axis=1), axis=1),
        b.const([0, num_beams, length]),
    )
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
