"""Acceptance: which packed tokens of a step are kept, and the base model's next token.

Shapes (B batch, T packed tokens, V vocabulary, W beams, L beam length, C = L - 1 drafts):

    logits            [B, T, V]   base model logits at every packed token
    tokens            [B, T]      the packed tokens
    num_tokens        [B]         valid packed tokens per row (0 = idle row)
    forced            [B]         leading chain tokens kept without a test (prompt chunk, root)
    temperature       [B]         <= 0: greedy; > 0: speculative sampling at that temperature
    sample_uniforms   [B]         U(0, 1) for drawing the next token
    paths             [B, W, L]   optional: packed index of each beam position, rooted at the
                                  last forced token (absent for autoregressive steps)
    draft_logprobs    [B, W, C, V]  optional: drafter log Q for each drafted position
    accept_uniforms   [B, W, C]   optional: U(0, 1) for the per-beam acceptance test
    ->  keep_idx      [B, T]      packed indices of the kept path, in order (padding: 0)
        keep_len      [B]         forced + accepted drafts
        last_idx      [B]         packed index of the last kept token (its hidden state drafts next)
        new_tokens    [B, L]      accepted drafts then the next token (padding: 0)
        num_new       [B]         accepted drafts + 1 (0 for idle rows)

Rule (Apple's recurrent_drafting.py, §5 of reference/redrafter.md). The logits at beam position
l predict position l + 1. Greedy: a drafted token passes when it equals the argmax there.
Sampling: P = softmax(top-k-warped logits / temperature), Q = the drafter's distribution; token x
passes when U < P(x) / Q(x), with an independent uniform per (beam, position). Each beam keeps its
leading passes; the beam with the most wins (first on ties). The next token is the argmax at the
last kept token (greedy), or is drawn from P there when every draft passed, else from
normalize(max(P - Q, 0)) at the first rejection (P where that residual is all zero). Because beams
are tested independently, the sampled distribution is not exactly P (Apple's known issue).
"""

from __future__ import annotations

import torch

from redcompile.ops.drafter_beam_search import warp_top_k
from redcompile.ops.onnx_builder import BOOL, FLOAT, INT64, FunctionBuilder
from redcompile.ops.opdef import BodySpec, OpDef


def sample_inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one index per row from unnormalised `weights` [..., V] with uniforms [...]."""
    cdf = torch.cumsum(weights, dim=-1)
    threshold = uniforms.unsqueeze(-1) * cdf[..., -1:]
    index = (cdf <= threshold).sum(dim=-1)
    return index.clamp(max=weights.shape[-1] - 1)


def _probs(logits: torch.Tensor, inv_temperature: torch.Tensor, top_k: int) -> torch.Tensor:
    """P = softmax(warp(logits) / T), with the temperature broadcast over leading dims."""
    scale = inv_temperature.reshape(inv_temperature.shape + (1,) * (logits.dim() - 1))
    return torch.softmax(warp_top_k(logits, top_k) * scale, dim=-1)


def accept_reference(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    num_tokens: torch.Tensor,
    forced: torch.Tensor,
    temperature: torch.Tensor,
    sample_uniforms: torch.Tensor,
    paths: torch.Tensor | None,
    draft_logprobs: torch.Tensor | None,
    accept_uniforms: torch.Tensor | None,
    top_k: int,
) -> tuple[torch.Tensor, ...]:
    """Greedy and sampling acceptance for every row (ground truth); see module docstring."""
    b, t, v = logits.shape
    logits = logits.float()
    rows = torch.arange(b, device=logits.device)
    greedy = temperature <= 0
    inv_t = 1.0 / torch.where(greedy, torch.ones_like(temperature), temperature).float()
    active = num_tokens > 0
    last_forced = (forced - 1).clamp(min=0)
    zero = torch.zeros(b, dtype=torch.int64, device=logits.device)
    if paths is None:
        n, best, last_idx = zero, zero, last_forced
        draft_tokens = torch.zeros(b, 1, 0, dtype=torch.int64, device=logits.device)
        width_new = 1
    else:
        w, length = paths.shape[1], paths.shape[2]
        c = length - 1
        width_new = length
        has_tree = num_tokens > forced
        paths = paths.clamp(0, t - 1)
        draft_tokens = torch.gather(tokens, 1, paths[:, :, 1:].reshape(b, w * c)).view(b, w, c)
        source = paths[:, :, :-1].reshape(b, w * c)  # positions whose logits predict the drafts
        logits_at = torch.gather(logits, 1, source.unsqueeze(-1).expand(b, w * c, v))
        logits_at = logits_at.view(b, w, c, v)
        greedy_pass = logits_at.argmax(dim=-1) == draft_tokens
        log_p = torch.log(_probs(logits_at, inv_t, top_k))
        p_draft = torch.gather(log_p, 3, draft_tokens.unsqueeze(-1)).squeeze(-1)
        q_draft = torch.gather(draft_logprobs.float(), 3, draft_tokens.unsqueeze(-1)).squeeze(-1)
        sample_pass = accept_uniforms.float() < torch.exp(p_draft - q_draft)
        passed = torch.where(greedy.view(b, 1, 1), greedy_pass, sample_pass)
        passed = passed & has_tree.view(b, 1, 1)
        per_beam = (torch.cumsum((~passed).to(torch.int64), dim=-1) == 0).sum(dim=-1)  # [B, W]
        best = per_beam.argmax(dim=-1)  # first beam with the longest accepted run
        n = per_beam[rows, best]
        last_idx = torch.where(has_tree, paths[rows, best, n], last_forced)

    # Next token: argmax, or a draw from P (all drafts passed / no tree) or from the residual.
    last_logits = logits[rows, last_idx]  # [B, V]
    greedy_next = last_logits.argmax(dim=-1)
    p_last = _probs(last_logits, inv_t, top_k)
    if paths is not None:
        rejected = has_tree & (n < c)
        q_at = draft_logprobs.float()[rows, best, n.clamp(max=c - 1)].exp()
        residual = (p_last - q_at).clamp(min=0)
        residual_ok = residual.sum(dim=-1) > 0
        weights = torch.where((rejected & residual_ok).unsqueeze(-1), residual, p_last)
    else:
        weights = p_last
    sampled_next = sample_inverse_cdf(weights, sample_uniforms.float())
    next_token = torch.where(greedy, greedy_next, sampled_next)

    keep_len = torch.where(active, forced + n, zero)
    positions = torch.arange(t, device=logits.device).expand(b, t)
    keep_idx = positions.clone()
    if paths is not None:
        beam_path = paths[rows, best]  # [B, L]
        draft_slot = (positions - forced.unsqueeze(1) + 1).clamp(0, width_new - 1)
        keep_idx = torch.where(
            positions >= forced.unsqueeze(1), torch.gather(beam_path, 1, draft_slot), positions
        )
    keep_idx = torch.where(positions < keep_len.unsqueeze(1), keep_idx, torch.zeros_like(keep_idx))

    slots = torch.arange(width_new, device=logits.device).expand(b, width_new)
    if paths is not None:
        best_drafts = draft_tokens[rows, best]  # [B, C]
        padded = torch.cat([best_drafts, zero.unsqueeze(1)], dim=1)
    else:
        padded = zero.unsqueeze(1)
    new_tokens = torch.where(slots < n.unsqueeze(1), padded, torch.zeros_like(padded))
    new_tokens = torch.where(slots == n.unsqueeze(1), next_token.unsqueeze(1), new_tokens)
    new_tokens = torch.where(active.unsqueeze(1), new_tokens, torch.zeros_like(new_tokens))
    num_new = torch.where(active, n + 1, zero)
    return keep_idx, keep_len, torch.where(active, last_idx, zero), new_tokens, num_new


def accept_fake(
    logits,
    tokens,
    num_tokens,
    forced,
    temperature,
    sample_uniforms,  # noqa: ANN001
    paths,
    draft_logprobs,
    accept_uniforms,
    top_k,
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


def _warp(b: FunctionBuilder, logits: str, top_k: int, vocab: str) -> str:
    if top_k <= 0:
        return logits
    values, _ = b.TopK(logits, b.Min(b.const([top_k]), vocab), axis=-1, outputs=2)
    kth = b.Slice(values, b.const([-1]), b.const([2**62]), b.const([-1]))
    return b.Where(b.Less(logits, kth), b.const(-50000.0, "float32"), logits)


class _Rows:
    """What every acceptance body reads per row, and the pieces the bodies share: the
    sampling distribution P, the draw from weights, the residual after a rejection."""

    def __init__(self, b: FunctionBuilder, spec: BodySpec) -> None:
        self.b, self.spec = b, spec
        self.top_k = int(spec.attributes["top_k"])
        self.tokens, self.num_tokens = b.input("tokens"), b.input("num_tokens")
        self.forced = b.input("forced")
        self.logits = self.as_float("logits")
        self.temperature = self.as_float("temperature")
        self.vocab = b.dim(self.logits, 2)
        self.greedy = b.LessOrEqual(self.temperature, b.const(0.0, "float32"))  # [B]
        self.active = b.Greater(self.num_tokens, b.const(0))  # [B]
        self.last_forced = b.Max(b.Sub(self.forced, b.const(1)), b.const(0))  # [B]
        # The sampling test and the draw over the vocabulary run only when a row samples
        # (an If): some temperature is above 0 (the host refuses NaN temperatures).
        self.any_sampling = b.Greater(
            b.ReduceMax(self.temperature, keepdims=0), b.const(0.0, "float32")
        )  # 0-d

    def as_float(self, name: str) -> str:
        """Input `name` as float32 (no Cast when it already is)."""
        if self.spec.input_types.get(name) == FLOAT:
            return self.b.input(name)
        return self.b.Cast(self.b.input(name), to=FLOAT)

    def per_row(self, x: str, rank: int) -> str:
        """[B] -> [B, 1, ..., 1] of `rank` dims."""
        return self.b.Unsqueeze(x, self.b.const(list(range(1, rank))))

    def probs(self, x: str, rank: int) -> str:
        """P = softmax(warp(x) / T) over the last axis of `x` (rank `rank`, rows first)."""
        b = self.b
        inv_t = b.Reciprocal(b.Where(self.greedy, b.const(1.0, "float32"), self.temperature))
        warped = _warp(b, x, self.top_k, self.vocab)
        return b.Softmax(b.Mul(warped, self.per_row(inv_t, rank)), axis=-1)

    def draw(self, weights: str) -> str:
        """One index per row of unnormalised `weights` [B, V], by the row's sample uniform."""
        b = self.b
        cdf = b.CumSum(weights, b.const(-1))
        total = b.Slice(cdf, b.const([-1]), b.const([2**62]), b.const([-1]))
        threshold = b.Mul(b.Unsqueeze(self.as_float("sample_uniforms"), b.const([1])), total)
        drawn = b.ReduceSum(
            b.Cast(b.LessOrEqual(cdf, threshold), to=INT64), b.const([-1]), keepdims=0
        )
        return b.Min(drawn, b.Squeeze(b.Sub(self.vocab, b.const([1])), b.const([0])))

    def residual(self, p_last: str, q_at: str, rejected: str) -> str:
        """Where a draft was rejected, normalize(max(P - Q, 0)) unless that is all zero; P else."""
        b = self.b
        residual = b.Relu(b.Sub(p_last, q_at))
        usable = b.Greater(
            b.ReduceSum(residual, b.const([-1]), keepdims=0), b.const(0.0, "float32")
        )
        return b.Where(b.Unsqueeze(b.And(rejected, usable), b.const([1])), residual, p_last)


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
    """No tree: the next token at the last forced position, greedy or drawn from P."""
    last_col = b.Unsqueeze(rows.last_forced, b.const([1]))  # [B, 1]
    argmax_bt = b.ArgMax(rows.logits, axis=-1, keepdims=0)  # [B, T]
    greedy_col = b.GatherElements(argmax_bt, last_col, axis=1)  # [B, 1]

    def sampled() -> list[str]:
        last_logits = b.GatherND(rows.logits, last_col, batch_dims=1)  # [B, V]
        drawn = rows.draw(rows.probs(last_logits, 2))
        return [
            b.Where(
                b.Unsqueeze(rows.greedy, b.const([1])), greedy_col, b.Unsqueeze(drawn, b.const([1]))
            )
        ]

    next_col = b.If(rows.any_sampling, sampled, lambda: [greedy_col], [INT64])
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


def _chain_body(b: FunctionBuilder, rows: _Rows) -> dict[str, str]:
    """One beam (a chain): the tree's path is the beam itself, so a greedy step needs one
    ArgMax over the packed tokens; the sampling rule runs in an If only when a row samples."""
    spec = rows.spec
    length = spec.static_dims[("paths", 2)] if ("paths", 2) in spec.static_dims else None
    t_last = b.Squeeze(b.Sub(b.dim(rows.tokens, 1), b.const([1])), b.const([0]))
    beam = b.Clip(b.Squeeze(b.input("paths"), b.const([1])), b.const(0), t_last)  # [B, L]
    has_tree = b.Greater(rows.num_tokens, rows.forced)  # [B]
    has_tree_col = b.Unsqueeze(has_tree, b.const([1]))
    # Rows without a tree read their last forced token at every slot (only slot 0 counts).
    path = b.Where(has_tree_col, beam, b.Unsqueeze(rows.last_forced, b.const([1])))  # [B, L]
    argmax_bl = b.GatherElements(b.ArgMax(rows.logits, axis=-1, keepdims=0), path, axis=1)
    tokens_bl = b.GatherElements(rows.tokens, path, axis=1)
    end = b.const([length if length is not None else 2**62])
    drafts = b.Slice(tokens_bl, b.const([1]), end, b.const([1]))  # [B, C]
    predicted = b.Slice(argmax_bl, b.const([0]), b.const([-1]), b.const([1]))  # [B, C]
    greedy_pass = b.And(b.Equal(predicted, drafts), has_tree_col)
    n_greedy = _leading(b, greedy_pass, 2)
    if length is not None:
        slots = b.const([list(range(length))])  # [1, L]
    else:
        slots = b.Unsqueeze(
            b.Range(b.const(0), b.Squeeze(b.dim(path, 1), b.const([0])), b.const(1)), b.const([0])
        )
    # Greedy: an accepted draft equals the argmax before it, the next token is the argmax at
    # the last accepted one, so the new tokens are the path's argmaxes up to slot n.
    new_greedy = b.Where(
        b.LessOrEqual(slots, b.Unsqueeze(n_greedy, b.const([1]))), argmax_bl, b.const(0)
    )

    def sampled() -> list[str]:
        c = b.Sub(b.dim(path, 1), b.const([1]))  # [1]
        sources = b.Slice(path, b.const([0]), b.const([-1]), b.const([1]))  # [B, C]
        logits_at = b.GatherND(rows.logits, b.Unsqueeze(sources, b.const([-1])), batch_dims=1)
        drafts_3d = b.Unsqueeze(drafts, b.const([-1]))
        log_p = b.Log(rows.probs(logits_at, 3))  # [B, C, V]
        p_draft = b.Squeeze(b.GatherElements(log_p, drafts_3d, axis=2), b.const([2]))
        log_q = b.Squeeze(rows.as_float("draft_logprobs"), b.const([1]))  # [B, C, V]
        q_draft = b.Squeeze(b.GatherElements(log_q, drafts_3d, axis=2), b.const([2]))
        uniforms = b.Squeeze(rows.as_float("accept_uniforms"), b.const([1]))  # [B, C]
        sample_pass = b.Less(uniforms, b.Exp(b.Sub(p_draft, q_draft)))
        greedy_col = b.Unsqueeze(rows.greedy, b.const([1]))  # (no bool Where in ORT)
        chosen = b.Or(b.And(greedy_col, greedy_pass), b.And(b.Not(greedy_col), sample_pass))
        passed = b.And(chosen, has_tree_col)
        n = _leading(b, passed, 2)
        n_col = b.Unsqueeze(n, b.const([1]))
        last_logits = b.GatherND(rows.logits, b.GatherElements(path, n_col, axis=1), batch_dims=1)
        greedy_next = b.GatherElements(argmax_bl, n_col, axis=1)  # [B, 1]
        rejected = b.And(has_tree, b.Less(n, b.Squeeze(c, b.const([0]))))
        at = b.Min(n_col, b.Sub(c, b.const([1])))  # [B, 1]
        q_at = b.Exp(b.GatherND(log_q, at, batch_dims=1))  # [B, V]
        drawn = rows.draw(rows.residual(rows.probs(last_logits, 2), q_at, rejected))
        next_col = b.Where(
            b.Unsqueeze(rows.greedy, b.const([1])), greedy_next, b.Unsqueeze(drawn, b.const([1]))
        )
        padded = b.Pad(drafts, b.const([0, 0, 0, 1]))  # [B, L]: the drafts, then 0
        new = b.Where(b.Less(slots, n_col), padded, b.const(0))
        return [n, b.Where(b.Equal(slots, n_col), next_col, new)]

    n, new_tokens = b.If(rows.any_sampling, sampled, lambda: [n_greedy, new_greedy], [INT64, INT64])
    active = b.Cast(rows.active, to=INT64)
    keep_len = b.Mul(b.Add(rows.forced, n), active)
    outputs = {
        "keep_len": keep_len,
        "new_tokens": b.Mul(new_tokens, b.Unsqueeze(active, b.const([1]))),
        "num_new": b.Mul(b.Add(n, b.const(1)), active),
    }
    if spec.used("last_idx"):
        last = b.GatherElements(path, b.Unsqueeze(n, b.const([1])), axis=1)
        outputs["last_idx"] = b.Mul(b.Squeeze(last, b.const([1])), active)
    if spec.used("keep_idx"):
        outputs["keep_idx"] = _kept_indices(b, rows, keep_len, path)
    return outputs


def _tree_body(b: FunctionBuilder, rows: _Rows) -> dict[str, str]:
    """Several beams: test every beam's drafts, keep the beam with the most leading passes."""
    spec = rows.spec
    tokens, num_tokens, forced = rows.tokens, rows.num_tokens, rows.forced
    logits, greedy = rows.logits, rows.greedy
    t = b.dim(logits, 1)
    zero = b.Mul(num_tokens, b.const(0))  # [B] zeros
    paths = b.Clip(b.input("paths"), b.const(0), b.Squeeze(b.Sub(t, b.const([1])), b.const([0])))
    length = b.dim(paths, 2)
    c = b.Sub(length, b.const([1]))
    has_tree = b.Greater(num_tokens, forced)
    draft_idx = b.Slice(paths, b.const([1]), length, b.const([2]))  # [B, W, C]
    source_idx = b.Slice(paths, b.const([0]), c, b.const([2]))
    flat = b.Concat(b.dim(paths, 0), b.const([-1]), axis=0)
    drafts = b.Reshape(
        b.GatherElements(tokens, b.Reshape(draft_idx, flat), axis=1), b.Shape(draft_idx)
    )
    logits_at = b.GatherND(logits, b.Unsqueeze(source_idx, b.const([-1])), batch_dims=1)
    greedy_pass = b.Equal(b.ArgMax(logits_at, axis=-1, keepdims=0), drafts)

    def sample_test() -> list[str]:
        drafts_4d = b.Unsqueeze(drafts, b.const([-1]))
        log_p = b.Log(rows.probs(logits_at, 4))
        p_draft = b.Squeeze(b.GatherElements(log_p, drafts_4d, axis=3), b.const([3]))
        q_draft = b.Squeeze(
            b.GatherElements(rows.as_float("draft_logprobs"), drafts_4d, axis=3), b.const([3])
        )
        uniforms = rows.as_float("accept_uniforms")
        return [b.Less(uniforms, b.Exp(b.Sub(p_draft, q_draft)))]

    sample_pass = b.If(
        rows.any_sampling, sample_test, lambda: [b.Equal(drafts, b.const(-1))], [BOOL]
    )
    greedy_3d = rows.per_row(greedy, 3)
    chosen = b.Or(b.And(greedy_3d, greedy_pass), b.And(b.Not(greedy_3d), sample_pass))
    per_beam = _leading(b, b.And(chosen, rows.per_row(has_tree, 3)), 3)  # [B, W]
    best = b.ArgMax(b.Cast(per_beam, to=FLOAT), axis=1, keepdims=1)  # [B, 1], first max
    n = b.Squeeze(b.GatherElements(per_beam, best, axis=1), b.const([1]))
    beam_path = b.GatherND(paths, best, batch_dims=1)  # [B, L]
    last_tree = b.Squeeze(
        b.GatherElements(beam_path, b.Unsqueeze(n, b.const([1])), axis=1), b.const([1])
    )
    last_idx = b.Where(has_tree, last_tree, rows.last_forced)

    last_logits = b.GatherND(logits, b.Unsqueeze(last_idx, b.const([1])), batch_dims=1)  # [B, V]
    greedy_next = b.ArgMax(last_logits, axis=-1, keepdims=0)

    def draw() -> list[str]:
        rejected = b.And(has_tree, b.Less(n, b.Squeeze(c, b.const([0]))))
        q_rows = b.GatherND(rows.as_float("draft_logprobs"), best, batch_dims=1)  # [B, C, V]
        at = b.Min(n, b.Squeeze(b.Sub(c, b.const([1])), b.const([0])))
        q_at = b.Exp(b.GatherND(q_rows, b.Unsqueeze(at, b.const([1])), batch_dims=1))
        return [rows.draw(rows.residual(rows.probs(last_logits, 2), q_at, rejected))]

    drawn = b.If(rows.any_sampling, draw, lambda: [zero], [INT64])
    next_token = b.Where(greedy, greedy_next, drawn)

    keep_len = b.Where(rows.active, b.Add(forced, n), zero)
    outputs = {"keep_len": keep_len}
    if spec.used("keep_idx"):
        outputs["keep_idx"] = _kept_indices(b, rows, keep_len, beam_path)
    n_col = b.Unsqueeze(n, b.const([1]))
    best_drafts = b.GatherND(drafts, best, batch_dims=1)  # [B, C]
    padded = b.Concat(best_drafts, b.Unsqueeze(zero, b.const([1])), axis=1)  # [B, L]
    slots = b.Unsqueeze(
        b.Range(b.const(0), b.Squeeze(length, b.const([0])), b.const(1)), b.const([0])
    )
    new_tokens = b.Where(b.Less(slots, n_col), padded, b.const(0))
    new_tokens = b.Where(b.Equal(slots, n_col), b.Unsqueeze(next_token, b.const([1])), new_tokens)
    if spec.used("last_idx"):
        outputs["last_idx"] = b.Where(rows.active, last_idx, zero)
    outputs["new_tokens"] = b.Where(b.Unsqueeze(rows.active, b.const([1])), new_tokens, b.const(0))
    outputs["num_new"] = b.Where(rows.active, b.Add(n, b.const(1)), zero)
    return outputs


def build_accept_body(spec: BodySpec):  # noqa: ANN201
    """The acceptance rule in standard ops, specialised to the step's tree: none (an
    autoregressive step), one beam (a chain), or several beams. Outputs nothing reads (the
    cache write and drafting that chain artifacts fuse into GroupQueryAttention, an
    autoregressive step's last_idx) are not computed: the formal output is bound to an input of
    the same shape family, which the runtime drops with the unread value."""
    b = FunctionBuilder(ACCEPT, spec)
    rows = _Rows(b, spec)
    if not spec.has("paths"):
        outputs = _autoregressive_body(b, rows)
    elif spec.static_dims.get(("paths", 1)) == 1:
        outputs = _chain_body(b, rows)
    else:
        outputs = _tree_body(b, rows)
    for name, unread in (("keep_idx", rows.tokens), ("last_idx", rows.num_tokens)):
        outputs.setdefault(name, b.Identity(unread))
    return b.build(outputs)


ACCEPT = OpDef(
    name="accept",
    onnx_name="Accept",
    schema=(
        "(Tensor logits, Tensor tokens, Tensor num_tokens, Tensor forced, Tensor temperature, "
        "Tensor sample_uniforms, Tensor? paths, Tensor? draft_logprobs, "
        "Tensor? accept_uniforms, int top_k) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
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
        "sample_uniforms",
        "paths",
        "draft_logprobs",
        "accept_uniforms",
    ),
    output_names=("keep_idx", "keep_len", "last_idx", "new_tokens", "num_new"),
    attribute_names=("top_k",),
    static_dims=(("paths", 1), ("paths", 2)),
    cuda_kernel="redcompile_accept",
    doc=__doc__ or "",
)
