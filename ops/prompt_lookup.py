"""Prompt lookup: draft beams copied from each row's own token history ("lookup beams").

Shapes (B batch, S history capacity, K lookup beams, L beam length including the root):

    history   [B, S] int64   each row's tokens so far: prompt, accepted tokens, and last the
                             root the next step verifies; slots at and beyond `lengths` are
                             stale and never read
    lengths   [B]    int64   tokens in each row's history (0: idle row); clamped to [0, S]
    ngrams    attribute      n-gram sizes to match, tried longest first (backoff)
    num_beams attribute      K
    beam_length attribute    L
    ->  beams [B, K, L] int64   beams[..., 0] == history[b, lengths[b] - 1] (the root)

Rule, for one row with sequence x = history[b, :M]: for each n-gram size k (longest first) the
occurrences are the positions p with x[p : p + k] == x[M - k : M] and p + k <= M - 1 (strictly
earlier than the row's last k tokens). The longest k with any occurrence wins; beam j copies
the continuation of the j-th latest occurrence p_j (the latest when there are fewer than j + 1):
draft i is x[q + (i mod d)] with q = p_j + k and d = M - q, which is the text after the
occurrence and, where that runs into the end of x, its periodic extension (a repeat of period d
continues as the repeat). With no occurrence at all every beam repeats the root. Idle rows
(M = 0) get zeros.

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
    """q [B, K]: the history index of each lookup beam's first drafted token (see module doc);
    lengths - 1 (the root) where no n-gram occurs earlier."""
    b, s = history.shape
    m = lengths.clamp(0, s).unsqueeze(1)  # [B, 1]
    positions = torch.arange(s, device=history.device).unsqueeze(0)  # [1, S]
    start = (m - 1).expand(b, num_beams)
    for k in sorted(set(ngrams)):  # longer n-grams override shorter ones
        tail_idx = (m - k + torch.arange(k, device=history.device)).clamp(0, s - 1)
        tail = torch.gather(history, 1, tail_idx)  # [B, k] the row's last k tokens
        match = positions <= m - 1 - k
        for j in range(k):
            shifted = torch.cat([history[:, j:], history.new_full((b, min(j, s)), -1)], dim=1)
            match = match & (shifted == tail[:, j : j + 1])
        candidates = torch.where(match, positions, torch.full_like(match, -1, dtype=torch.int64))
        padded = torch.cat([candidates, history.new_full((b, num_beams), -1)], dim=1)
        latest = torch.topk(padded, num_beams, dim=1).values  # [B, K], latest first
        found = latest[:, :1] >= 0
        latest = torch.where(latest >= 0, latest, latest[:, :1])
        start = torch.where(found, latest + k, start)
    return start


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


def prompt_lookup_fake(history, lengths, ngrams, num_beams, beam_length):  # noqa: ANN001, ANN201
    """beams [B, K, L] int64."""
    return history.new_empty((history.shape[0], num_beams, beam_length))


def build_prompt_lookup_body(spec: BodySpec):  # noqa: ANN201
    """The rule in standard ops: per n-gram size, k shifted Equal masks over the history, the
    K latest matches by TopK, backoff by Where, the periodic copy by GatherElements."""
    b = FunctionBuilder(PROMPT_LOOKUP, spec)
    ngrams = sorted({int(k) for k in spec.attributes["ngrams"]})
    num_beams, length = int(spec.attributes["num_beams"]), int(spec.attributes["beam_length"])
    history = b.input("history")
    batch, s = b.dim(history, 0), b.dim(history, 1)
    s_scalar = b.Squeeze(s, b.const([0]))
    last_slot = b.Sub(s_scalar, b.const(1))
    m = b.Unsqueeze(b.Clip(b.input("lengths"), b.const(0), s_scalar), b.const([1]))  # [B, 1]
    positions = b.Unsqueeze(b.Range(b.const(0), s_scalar, b.const(1)), b.const([0]))  # [1, S]
    beams_shape = b.Concat(batch, b.const([num_beams]), axis=0)
    minus_one = b.Expand(b.const(-1), beams_shape)  # [B, K] of -1 (TopK padding)

    start = b.Expand(b.Sub(m, b.const(1)), beams_shape)
    for k in ngrams:
        tail_idx = b.Clip(
            b.Add(b.Sub(m, b.const(k)), b.const([list(range(k))])), b.const(0), last_slot
        )
        tail = b.GatherElements(history, tail_idx, axis=1)  # [B, k]
        match = b.LessOrEqual(positions, b.Sub(m, b.const(1 + k)))
        for j in range(k):
            shifted = history
            if j:
                fill = b.Expand(b.const(-1), b.Concat(batch, b.Min(b.const([j]), s), axis=0))
                shifted = b.Concat(b.Slice(history, b.const([j]), s, b.const([1])), fill, axis=1)
            column = b.Slice(tail, b.const([j]), b.const([j + 1]), b.const([1]))
            match = b.And(match, b.Equal(shifted, column))
        candidates = b.Where(match, positions, b.const(-1))
        padded = b.Concat(candidates, minus_one, axis=1)
        latest, _ = b.TopK(padded, b.const([num_beams]), axis=1, outputs=2)  # [B, K] latest first
        newest = b.Slice(latest, b.const([0]), b.const([1]), b.const([1]))
        found = b.GreaterOrEqual(newest, b.const(0))
        latest = b.Where(b.GreaterOrEqual(latest, b.const(0)), latest, newest)
        start = b.Where(found, b.Add(latest, b.const(k)), start)

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
    root_idx = b.Clip(b.Sub(m, b.const(1)), b.const(0), last_slot)
    root = b.GatherElements(history, root_idx, axis=1)  # [B, 1]
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
