"""Drafter beam search: W beams of C = L - 1 drafted tokens from one hidden state and root token.

Shapes (B batch, H base hidden size, E drafter width, V vocabulary, N residual blocks):

    hidden        [B, H]        base model's final-normed hidden state that produced `root`
    root          [B]           the token the base model chose (every beam starts with it)
    embedding     [V, H]        the base model's input embedding table (the drafter borrows it)
    rnn_w         [H, H]        optional: recurrent input weight (RNN drafters)
    rnn_u_w/_b    [H, H], [H]   optional: recurrent state weight and bias
    input_proj_w  [E, 2H]       optional: projection of [h, s] when E != 2H, with bias [E]
    res_w, res_b  [N, E, E], [N, E]   residual SiLU blocks x + silu(W x + b)
    vocab_w       [V', E]       vocabulary projection (no bias)
    draft_vocab   [V'] int64    optional: the token id of each row of vocab_w, when the drafter
                                drafts from a subset of the vocabulary (V' < V); absent: V' = V
    ->  beams     [B, W, L] int64   beams[..., 0] == root
        logprobs  [B, W, C, V] float32   log Q(. | beam prefix) that drafted beams[..., t + 1]

A draft vocabulary (`draft_vocab`) makes the vocabulary projection, the drafter's largest cost at
production vocabularies, V / V' times cheaper: the search runs over V' candidates, tokens are
mapped back to ids, and tokens outside the subset get log Q = LOG_0 (the drafter never proposes
them, so acceptance stays exact).

The math follows Apple's reference (recurrent_drafting/modeling_drafter.py): state
s_t = silu(rnn_w e + rnn_u s_{t-1} + b) (or a running sum of embeddings), logits from the
concatenation [h, s] (h first), per-row max subtraction, top-k warp (LOG_0 = -5e4) and
log-softmax, beams seeded with log P = [0, LOG_0, ...] so that step 1 expands beam 0 only.
The search is deterministic: randomness only enters at acceptance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from redcompile.ops.onnx_builder import FLOAT, FunctionBuilder
from redcompile.ops.opdef import BodySpec, OpDef

LOG_0 = -50000.0


def drafter_state(
    state: torch.Tensor,
    token_embedding: torch.Tensor,
    rnn_w: torch.Tensor | None,
    rnn_u_w: torch.Tensor | None,
    rnn_u_b: torch.Tensor | None,
) -> torch.Tensor:
    """Next recurrent state from the previous state and the embedding of the newest token."""
    if rnn_w is None:
        return state + token_embedding
    return F.silu(F.linear(token_embedding, rnn_w) + F.linear(state, rnn_u_w, rnn_u_b))


def drafter_features(
    hidden: torch.Tensor,
    state: torch.Tensor,
    input_proj_w: torch.Tensor | None,
    input_proj_b: torch.Tensor | None,
    res_w: torch.Tensor,
    res_b: torch.Tensor,
) -> torch.Tensor:
    """The drafter's features before the vocabulary projection ([..., E]): [h, s] (h first),
    optional input projection, then the residual SiLU blocks."""
    x = torch.cat([hidden, state], dim=-1)
    if input_proj_w is not None:
        x = F.linear(x, input_proj_w, input_proj_b)
    for i in range(res_w.shape[0]):
        x = x + F.silu(F.linear(x, res_w[i], res_b[i]))
    return x


def drafter_logits(
    hidden: torch.Tensor,
    state: torch.Tensor,
    input_proj_w: torch.Tensor | None,
    input_proj_b: torch.Tensor | None,
    res_w: torch.Tensor,
    res_b: torch.Tensor,
    vocab_w: torch.Tensor,
) -> torch.Tensor:
    """Drafter vocabulary logits from the context `hidden` and the recurrent `state` ([..., V])."""
    return F.linear(
        drafter_features(hidden, state, input_proj_w, input_proj_b, res_w, res_b), vocab_w
    )


def warp_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the top_k largest logits per row, set the rest to LOG_0 (Apple's warp_logits)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return torch.where(logits < kth, torch.full_like(logits, LOG_0), logits)


def beam_select(
    beam_scores: torch.Tensor, logprobs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One beam-search selection: the top W (beam, token) pairs by accumulated log-prob.

    beam_scores [B, W], logprobs [B, W, V] -> (scores [B, W], parent beam [B, W], token [B, W]),
    sorted by score, best first.
    """
    b, w, v = logprobs.shape
    joint = (logprobs + beam_scores.unsqueeze(-1)).reshape(b, w * v)
    scores, flat = torch.topk(joint, w, dim=-1)
    return scores, torch.div(flat, v, rounding_mode="floor"), flat % v


def _gather_beams(x: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    index = parent.reshape(parent.shape + (1,) * (x.dim() - 2)).expand(parent.shape + x.shape[2:])
    return torch.gather(x, 1, index)


def drafter_beam_search_reference(
    hidden: torch.Tensor,
    root: torch.Tensor,
    embedding: torch.Tensor,
    rnn_w: torch.Tensor | None,
    rnn_u_w: torch.Tensor | None,
    rnn_u_b: torch.Tensor | None,
    input_proj_w: torch.Tensor | None,
    input_proj_b: torch.Tensor | None,
    res_w: torch.Tensor,
    res_b: torch.Tensor,
    vocab_w: torch.Tensor,
    draft_vocab: torch.Tensor | None,
    beam_width: int,
    beam_length: int,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apple's drafter beam search (ground truth); see the module docstring for shapes."""
    if beam_length < 2 or beam_width < 1:
        raise ValueError(
            f"beam search needs beam_length >= 2 and beam_width >= 1, "
            f"got {beam_length} and {beam_width}"
        )
    b, h = hidden.shape
    w = beam_width
    context = hidden.unsqueeze(1).expand(b, w, h)
    beams = root.reshape(b, 1, 1).expand(b, w, 1)
    scores = torch.full((b, w), LOG_0, dtype=torch.float32, device=hidden.device)
    scores[:, 0] = 0.0
    state = torch.zeros(b, w, h, dtype=hidden.dtype, device=hidden.device)
    history = None  # [B, W, t, V]
    for _ in range(beam_length - 1):
        state = drafter_state(state, embedding[beams[..., -1]], rnn_w, rnn_u_w, rnn_u_b)
        logits = drafter_logits(context, state, input_proj_w, input_proj_b, res_w, res_b, vocab_w)
        logits = logits.float()
        logits = warp_top_k(logits - logits.amax(dim=-1, keepdim=True), top_k)
        logprobs = torch.log_softmax(logits, dim=-1)
        scores, parent, token = beam_select(scores, logprobs)
        if draft_vocab is not None:
            token = draft_vocab[token]
        beams = torch.cat([_gather_beams(beams, parent), token.unsqueeze(-1)], dim=-1)
        state = _gather_beams(state, parent)
        chosen = _gather_beams(logprobs, parent).unsqueeze(2)
        history = (
            chosen
            if history is None
            else torch.cat([_gather_beams(history, parent), chosen], dim=2)
        )
    if draft_vocab is not None:
        history = scatter_to_vocabulary(history, draft_vocab, embedding.shape[0])
    return beams.contiguous(), history.contiguous()


def scatter_to_vocabulary(
    logprobs: torch.Tensor, draft_vocab: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """logprobs [..., V'] over the draft vocabulary -> [..., V], LOG_0 outside it."""
    full = logprobs.new_full((*logprobs.shape[:-1], vocab_size), LOG_0)
    return full.scatter(-1, draft_vocab.expand(logprobs.shape), logprobs)


def drafter_beam_search_fake(
    hidden,
    root,
    embedding,
    rnn_w,
    rnn_u_w,
    rnn_u_b,
    input_proj_w,
    input_proj_b,
    res_w,
    res_b,
    vocab_w,
    draft_vocab,
    beam_width,
    beam_length,
    top_k,
):
    """beams [B, W, L] int64 and logprobs [B, W, L - 1, V] float32 (V: embedding rows)."""
    b = hidden.shape[0]
    v = embedding.shape[0]
    beams = hidden.new_empty((b, beam_width, beam_length), dtype=torch.int64)
    logprobs = hidden.new_empty((b, beam_width, beam_length - 1, v), dtype=torch.float32)
    return beams, logprobs


def build_drafter_beam_search_body(spec: BodySpec):
    """The beam search unrolled over C steps in standard ops (Gemm, TopK, GatherND, ...). The
    drafted positions' distributions (`logprobs`) are gathered only when something reads them:
    a step graph does not (acceptance needs no draft probabilities)."""
    b = FunctionBuilder(DRAFTER_BEAM_SEARCH, spec)
    keep_logprobs = spec.used("logprobs")
    width = int(spec.attributes["beam_width"])
    length = int(spec.attributes["beam_length"])
    top_k = int(spec.attributes["top_k"])
    hidden, root, embedding = b.input("hidden"), b.input("root"), b.input("embedding")
    res_w, res_b, vocab_w = b.input("res_w"), b.input("res_b"), b.input("vocab_w")
    if "res_w" not in spec.input_shapes:
        raise ValueError("DrafterBeamSearch body needs the static shape of res_w to unroll blocks")
    num_res = spec.input_shapes["res_w"][0]

    batch = b.dim(hidden, 0)
    vocab = b.dim(vocab_w, 0)
    h_size = b.dim(hidden, 1)
    rows = b.Concat(b.const([-1]), h_size, axis=0)  # reshape to [B*W, H]
    bw_h = b.Concat(batch, b.const([width]), h_size, axis=0)

    def linear(x2d: str, weight: str, bias: str | None) -> str:
        inputs = (x2d, weight) if bias is None else (x2d, weight, bias)
        return b.Gemm(*inputs, transB=1)

    context = b.Reshape(b.Expand(b.Unsqueeze(hidden, b.const([1])), bw_h), rows)  # [B*W, H]
    beams = b.Expand(
        b.Reshape(root, b.const([-1, 1, 1])), b.Concat(batch, b.const([width, 1]), axis=0)
    )  # [B, W, 1]
    seed = b.const([[0.0] + [-50000.0] * (width - 1)], "float32")  # [1, W]
    scores = b.Expand(seed, b.Concat(batch, b.const([width]), axis=0))
    state = b.Expand(b.const_like(0.0, hidden), b.Shape(context))  # zeros [B*W, H]
    history = None
    res_w_list = [b.Gather(res_w, b.const(i), axis=0) for i in range(num_res)]
    res_b_list = [b.Gather(res_b, b.const(i), axis=0) for i in range(num_res)]
    for _ in range(length - 1):
        last = b.Reshape(
            b.Slice(beams, b.const([-1]), b.const([2**62]), b.const([2])), b.const([-1])
        )  # [B*W]
        emb = b.Gather(embedding, last, axis=0)  # [B*W, H]
        if spec.has("rnn_w"):
            pre = b.Add(
                linear(emb, b.input("rnn_w"), None),
                linear(state, b.input("rnn_u_w"), b.input("rnn_u_b")),
            )
            state = b.Mul(pre, b.Sigmoid(pre))
        else:
            state = b.Add(state, emb)
        x = b.Concat(context, state, axis=-1)
        if spec.has("input_proj_w"):
            x = linear(x, b.input("input_proj_w"), b.input("input_proj_b"))
        for w_i, b_i in zip(res_w_list, res_b_list):
            pre = linear(x, w_i, b_i)
            x = b.Add(x, b.Mul(pre, b.Sigmoid(pre)))
        logits = b.Cast(linear(x, vocab_w, None), to=FLOAT)  # [B*W, V]
        logits = b.Sub(logits, b.ReduceMax(logits, b.const([-1]), keepdims=1))
        if 0 < top_k:
            kth_all, _ = b.TopK(logits, b.Min(b.const([top_k]), vocab), axis=-1, outputs=2)
            kth = b.Slice(kth_all, b.const([-1]), b.const([2**62]), b.const([-1]))
            logits = b.Where(b.Less(logits, kth), b.const(-50000.0, "float32"), logits)
        logprobs = b.Reshape(
            b.LogSoftmax(logits, axis=-1), b.Concat(batch, b.const([width]), vocab, axis=0)
        )  # [B, W, V]
        if width == 1:  # one beam: the best token extends it, no beam is reordered
            token = b.ArgMax(logprobs, axis=-1, keepdims=1)  # [B, 1, 1], first of ties
            if spec.has("draft_vocab"):
                token = b.Gather(b.input("draft_vocab"), token, axis=0)
            beams = b.Concat(beams, token, axis=-1)
            if keep_logprobs:
                chosen = b.Unsqueeze(logprobs, b.const([2]))  # [B, 1, 1, V]
                history = chosen if history is None else b.Concat(history, chosen, axis=2)
            continue
        joint = b.Reshape(
            b.Add(logprobs, b.Unsqueeze(scores, b.const([-1]))),
            b.Concat(batch, b.const([-1]), axis=0),
        )  # [B, W*V]
        scores, flat = b.TopK(joint, b.const([width]), axis=-1, outputs=2)
        parent = b.Unsqueeze(b.Div(flat, vocab), b.const([-1]))  # [B, W, 1]
        token = b.Unsqueeze(b.Mod(flat, vocab), b.const([-1]))
        if spec.has("draft_vocab"):
            token = b.Gather(b.input("draft_vocab"), token, axis=0)
        beams = b.Concat(b.GatherND(beams, parent, batch_dims=1), token, axis=-1)
        state = b.Reshape(b.GatherND(b.Reshape(state, bw_h), parent, batch_dims=1), rows)
        if keep_logprobs:
            chosen = b.Unsqueeze(b.GatherND(logprobs, parent, batch_dims=1), b.const([2]))
            history = (
                chosen
                if history is None
                else b.Concat(b.GatherND(history, parent, batch_dims=1), chosen, axis=2)
            )
    if not keep_logprobs:  # unread: a float32 constant of the output's rank, folded away
        return b.build({"beams": beams, "logprobs": b.const([[[[0.0]]]], "float32")})
    if spec.has("draft_vocab"):  # [B, W, C, V'] -> [B, W, C, V], LOG_0 outside
        full_shape = b.Concat(b.Shape(history, end=-1), b.dim(embedding, 0), axis=0)
        history = b.ScatterElements(
            b.Expand(b.const(LOG_0, "float32"), full_shape),
            b.Expand(b.input("draft_vocab"), b.Shape(history)),
            history,
            axis=-1,
        )
    return b.build({"beams": beams, "logprobs": history})


DRAFTER_BEAM_SEARCH = OpDef(
    name="drafter_beam_search",
    onnx_name="DrafterBeamSearch",
    schema=(
        "(Tensor hidden, Tensor root, Tensor embedding, Tensor? rnn_w, Tensor? rnn_u_w, "
        "Tensor? rnn_u_b, Tensor? input_proj_w, Tensor? input_proj_b, Tensor res_w, "
        "Tensor res_b, Tensor vocab_w, Tensor? draft_vocab, int beam_width, int beam_length, "
        "int top_k) -> (Tensor, Tensor)"
    ),
    reference=drafter_beam_search_reference,
    fake=drafter_beam_search_fake,
    build_body=build_drafter_beam_search_body,
    input_names=(
        "hidden",
        "root",
        "embedding",
        "rnn_w",
        "rnn_u_w",
        "rnn_u_b",
        "input_proj_w",
        "input_proj_b",
        "res_w",
        "res_b",
        "vocab_w",
        "draft_vocab",
    ),
    output_names=("beams", "logprobs"),
    attribute_names=("beam_width", "beam_length", "top_k"),
    cuda_kernel="redcompile_beam_select",
    doc=__doc__ or "",
)
