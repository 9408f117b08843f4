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


def build_accept_body(spec: BodySpec):  # noqa: ANN201
    """The acceptance rule in standard ops, specialised to whether the step carries a tree."""
    b = FunctionBuilder(ACCEPT, spec)
    top_k = int(spec.attributes["top_k"])
    tokens, num_tokens, forced = b.input("tokens"), b.input("num_tokens"), b.input("forced")
    logits = b.Cast(b.input("logits"), to=FLOAT)
    vocab, t = b.dim(logits, 2), b.dim(logits, 1)
    zero = b.Mul(num_tokens, b.const(0))  # [B] zeros
    temperature = b.Cast(b.input("temperature"), to=FLOAT)
    greedy = b.LessOrEqual(temperature, b.const(0.0, "float32"))
    active = b.Greater(num_tokens, b.const(0))
    last_forced = b.Max(b.Sub(forced, b.const(1)), b.const(0))

    def per_row(x: str, rank: int) -> str:  # [B] -> [B, 1, ..., 1]
        return b.Unsqueeze(x, b.const(list(range(1, rank))))

    def probs(x: str, rank: int) -> str:  # only inside the sampling branches
        inv_t = b.Reciprocal(b.Where(greedy, b.const(1.0, "float32"), temperature))
        return b.Softmax(b.Mul(_warp(b, x, top_k, vocab), per_row(inv_t, rank)), axis=-1)

    def draft_logprobs() -> str:
        return b.Cast(b.input("draft_logprobs"), to=FLOAT)

    # The sampling test and the draw over the vocabulary run only when a row samples (If):
    # some temperature is above 0 (the host refuses NaN temperatures).
    any_sampling = b.Greater(b.ReduceMax(temperature, keepdims=0), b.const(0.0, "float32"))  # 0-d

    with_tree = spec.has("paths")
    if with_tree:
        paths = b.Clip(
            b.input("paths"), b.const(0), b.Squeeze(b.Sub(t, b.const([1])), b.const([0]))
        )
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
            log_p = b.Log(probs(logits_at, 4))
            p_draft = b.Squeeze(b.GatherElements(log_p, drafts_4d, axis=3), b.const([3]))
            q_draft = b.Squeeze(b.GatherElements(draft_logprobs(), drafts_4d, axis=3), b.const([3]))
            uniforms = b.Cast(b.input("accept_uniforms"), to=FLOAT)
            return [b.Less(uniforms, b.Exp(b.Sub(p_draft, q_draft)))]

        sample_pass = b.If(
            any_sampling, sample_test, lambda: [b.Equal(drafts, b.const(-1))], [BOOL]
        )
        greedy_3d = per_row(greedy, 3)
        chosen = b.Or(b.And(greedy_3d, greedy_pass), b.And(b.Not(greedy_3d), sample_pass))
        passed = b.And(chosen, per_row(has_tree, 3))
        failures = b.CumSum(b.Cast(b.Not(passed), to=INT64), b.const(-1))
        per_beam = b.ReduceSum(
            b.Cast(b.Equal(failures, b.const(0)), to=INT64), b.const([-1]), keepdims=0
        )  # [B, W]
        best = b.ArgMax(b.Cast(per_beam, to=FLOAT), axis=1, keepdims=1)  # [B, 1], first max
        n = b.Squeeze(b.GatherElements(per_beam, best, axis=1), b.const([1]))
        beam_path = b.GatherND(paths, best, batch_dims=1)  # [B, L]
        last_tree = b.Squeeze(
            b.GatherElements(beam_path, b.Unsqueeze(n, b.const([1])), axis=1), b.const([1])
        )
        last_idx = b.Where(has_tree, last_tree, last_forced)
    else:
        n, last_idx = zero, last_forced

    last_logits = b.GatherND(logits, b.Unsqueeze(last_idx, b.const([1])), batch_dims=1)  # [B, V]
    greedy_next = b.ArgMax(last_logits, axis=-1, keepdims=0)

    def draw() -> list[str]:
        weights = probs(last_logits, 2)
        if with_tree:
            rejected = b.And(has_tree, b.Less(n, b.Squeeze(c, b.const([0]))))
            q_rows = b.GatherND(draft_logprobs(), best, batch_dims=1)  # [B, C, V]
            at = b.Min(n, b.Squeeze(b.Sub(c, b.const([1])), b.const([0])))
            q_at = b.Exp(b.GatherND(q_rows, b.Unsqueeze(at, b.const([1])), batch_dims=1))
            residual = b.Relu(b.Sub(weights, q_at))
            usable = b.Greater(
                b.ReduceSum(residual, b.const([-1]), keepdims=0), b.const(0.0, "float32")
            )
            weights = b.Where(b.Unsqueeze(b.And(rejected, usable), b.const([1])), residual, weights)
        cdf = b.CumSum(weights, b.const(-1))
        total = b.Slice(cdf, b.const([-1]), b.const([2**62]), b.const([-1]))
        threshold = b.Mul(
            b.Unsqueeze(b.Cast(b.input("sample_uniforms"), to=FLOAT), b.const([1])), total
        )
        drawn = b.ReduceSum(
            b.Cast(b.LessOrEqual(cdf, threshold), to=INT64), b.const([-1]), keepdims=0
        )
        return [b.Min(drawn, b.Squeeze(b.Sub(vocab, b.const([1])), b.const([0])))]

    drawn = b.If(any_sampling, draw, lambda: [zero], [INT64])
    next_token = b.Where(greedy, greedy_next, drawn)

    keep_len = b.Where(active, b.Add(forced, n) if with_tree else forced, zero)
    outputs = {"keep_len": keep_len}
    # Outputs nothing reads (the cache write and drafting of chain artifacts fused into
    # GroupQueryAttention, an autoregressive step's last_idx) are not computed.
    if not spec.used("keep_idx"):
        outputs["keep_idx"] = b.Identity(tokens)
    if not spec.used("last_idx"):
        outputs["last_idx"] = b.Identity(num_tokens)

    def kept_indices() -> str:
        positions = b.Unsqueeze(
            b.Range(b.const(0), b.Squeeze(t, b.const([0])), b.const(1)), b.const([0])
        )  # [1, T]
        forced_col = b.Unsqueeze(forced, b.const([1]))
        keep_idx = b.Add(positions, b.Unsqueeze(zero, b.const([1])))  # [B, T]
        if with_tree:
            slot = b.Clip(
                b.Add(b.Sub(positions, forced_col), b.const(1)),
                b.const(0),
                b.Squeeze(c, b.const([0])),
            )
            from_path = b.GatherElements(beam_path, slot, axis=1)
            keep_idx = b.Where(b.GreaterOrEqual(positions, forced_col), from_path, keep_idx)
        keep_idx = b.Where(
            b.Less(positions, b.Unsqueeze(keep_len, b.const([1]))), keep_idx, b.const(0)
        )
        return keep_idx

    if "keep_idx" not in outputs:
        outputs["keep_idx"] = kept_indices()

    n_col = b.Unsqueeze(n, b.const([1]))
    if with_tree:
        best_drafts = b.GatherND(drafts, best, batch_dims=1)  # [B, C]
        padded = b.Concat(best_drafts, b.Unsqueeze(zero, b.const([1])), axis=1)  # [B, L]
        slots = b.Unsqueeze(
            b.Range(b.const(0), b.Squeeze(length, b.const([0])), b.const(1)), b.const([0])
        )
        new_tokens = b.Where(b.Less(slots, n_col), padded, b.const(0))
        new_tokens = b.Where(
            b.Equal(slots, n_col), b.Unsqueeze(next_token, b.const([1])), new_tokens
        )
    else:
        new_tokens = b.Unsqueeze(next_token, b.const([1]))
    active_col = b.Unsqueeze(active, b.const([1]))
    if "last_idx" not in outputs:
        outputs["last_idx"] = b.Where(active, last_idx, zero)
    outputs["new_tokens"] = b.Where(active_col, new_tokens, b.const(0))
    # n + 1 for active rows; without a tree n is 0
    num_new = b.Where(active, b.Add(n, b.const(1)), zero) if with_tree else b.Cast(active, to=INT64)
    outputs["num_new"] = num_new
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
    cuda_kernel="redcompile_accept",
    doc=__doc__ or "",
)
