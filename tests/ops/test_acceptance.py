"""Acceptance: the greedy worked example and the sampling rule on hand-made distributions."""

from __future__ import annotations

import math

import pytest
import torch

from redcompile.ops.acceptance import accept_reference
from redcompile.ops.tree_building import build_tree_reference
from test_tree_building import BEAMS

V = 100


def greedy_logits(tokens, parent_to_child):
    """Logits whose argmax at packed position p is parent_to_child[p] (others get a default)."""
    logits = torch.zeros(1, tokens.shape[1], V)
    for position, child in parent_to_child.items():
        logits[0, position, child] = 10.0
    return logits


def accept(
    logits,
    tokens,
    num_tokens,
    forced,
    paths=None,
    draft_logprobs=None,
    temperature=0.0,
    u_accept=None,
    u_sample=0.5,
    top_k=0,
):
    b = tokens.shape[0]
    temp = torch.full((b,), float(temperature))
    us = torch.full((b,), float(u_sample))
    if paths is not None and u_accept is None:
        u_accept = torch.zeros(paths.shape[0], paths.shape[1], paths.shape[2] - 1)
    if paths is not None and draft_logprobs is None:  # greedy rows never read Q
        draft_logprobs = torch.zeros(*u_accept.shape, logits.shape[-1])
    return accept_reference(
        logits, tokens, num_tokens, forced, temp, us, paths, draft_logprobs, u_accept, top_k
    )


def test_greedy_worked_example_accepts_the_longest_matching_beam():
    tokens, _, _, num_tokens, paths = build_tree_reference(BEAMS)
    # The base model follows beam 1 for two drafts (91 -> 92 -> 94) and then wants 7, not 96.
    logits = greedy_logits(tokens, {0: 92, 1: 94, 4: 7})
    keep_idx, keep_len, last_idx, new_tokens, num_new = accept(
        logits, tokens, num_tokens, torch.tensor([1]), paths
    )
    assert keep_len.tolist() == [3] and keep_idx[0, :3].tolist() == [0, 1, 4]
    assert last_idx.tolist() == [4]
    assert num_new.tolist() == [3] and new_tokens[0].tolist() == [92, 94, 7, 0]


def test_greedy_full_acceptance_emits_the_bonus_token():
    tokens, _, _, num_tokens, paths = build_tree_reference(BEAMS)
    logits = greedy_logits(tokens, {0: 92, 1: 93, 2: 97, 6: 42})  # all of beam 2, then 42
    keep_idx, keep_len, _, new_tokens, num_new = accept(
        logits, tokens, num_tokens, torch.tensor([1]), paths
    )
    assert keep_idx[0, :4].tolist() == [0, 1, 2, 6]
    assert new_tokens[0].tolist() == [92, 93, 97, 42] and num_new.tolist() == [4]


def test_prefill_rows_keep_every_token_and_idle_rows_keep_none():
    tokens = torch.tensor([[5, 6, 7, 8], [1, 2, 0, 0]])
    logits = greedy_logits(tokens[:1], {3: 33}).expand(2, -1, -1).clone()
    logits[1, 1, 44] = 10.0
    keep_idx, keep_len, last_idx, new_tokens, num_new = accept(
        logits, tokens, torch.tensor([4, 0]), torch.tensor([4, 0])
    )
    assert keep_len.tolist() == [4, 0] and keep_idx[0].tolist() == [0, 1, 2, 3]
    assert new_tokens[:, 0].tolist() == [33, 0] and num_new.tolist() == [1, 0]
    assert last_idx.tolist() == [3, 0]


def chain_case(p_row, q_row):
    """One beam, one draft: root at 0, drafted token 1 at packed 1; P and Q over 3 tokens."""
    tokens = torch.tensor([[0, 1]])
    paths = torch.tensor([[[0, 1]]])
    logits = torch.full((1, 2, 3), -1e9)
    logits[0, 0] = torch.log(torch.tensor(p_row))
    logits[0, 1] = torch.log(torch.tensor([0.2, 0.3, 0.5]))  # P after the draft
    q = torch.log(torch.tensor(q_row)).view(1, 1, 1, 3)
    return logits, tokens, paths, q


@pytest.mark.parametrize("u,accepted", [(0.49, True), (0.51, False)])
def test_sampling_accepts_when_uniform_is_below_p_over_q(u, accepted):
    logits, tokens, paths, q = chain_case([0.25, 0.25, 0.5], [0.25, 0.5, 0.25])  # p/q = 0.5
    _, keep_len, _, new_tokens, num_new = accept(
        logits,
        tokens,
        torch.tensor([2]),
        torch.tensor([1]),
        paths,
        q,
        temperature=1.0,
        u_accept=torch.tensor([[[u]]]),
        u_sample=0.99,
    )
    assert keep_len.item() == (2 if accepted else 1)
    if accepted:  # the bonus token is drawn from P after the draft with u = 0.99 -> token 2
        assert new_tokens[0].tolist() == [1, 2]
    else:  # residual max(P - Q, 0) = [0, 0, 0.25]: always token 2
        assert new_tokens[0].tolist() == [2, 0] and num_new.item() == 1


def test_sampling_never_accepts_a_token_the_base_model_rules_out():
    logits, tokens, paths, q = chain_case([0.5, 0.0, 0.5], [0.1, 0.8, 0.1])
    _, keep_len, _, new_tokens, _ = accept(
        logits,
        tokens,
        torch.tensor([2]),
        torch.tensor([1]),
        paths,
        q,
        temperature=1.0,
        u_accept=torch.tensor([[[0.0]]]),
        u_sample=0.3,
    )
    assert keep_len.item() == 1 and new_tokens[0, 0].item() in (0, 2)


def test_top_k_warp_rules_out_tokens_outside_the_top_k():
    logits, tokens, paths, q = chain_case([0.6, 0.1, 0.3], [0.1, 0.8, 0.1])
    _, keep_len, _, _, _ = accept(
        logits,
        tokens,
        torch.tensor([2]),
        torch.tensor([1]),
        paths,
        q,
        temperature=1.0,
        u_accept=torch.tensor([[[0.0]]]),
        top_k=2,
    )
    assert keep_len.item() == 1  # token 1 is third: warped to LOG_0


def test_temperature_scales_the_base_distribution():
    # With T = 2, P(1) = softmax(log p / 2) = sqrt(p) normalised.
    p = torch.tensor([0.25, 0.25, 0.5])
    tempered = p.sqrt() / p.sqrt().sum()
    logits, tokens, paths, q = chain_case(p.tolist(), [1 / 3, 1 / 3, 1 / 3])
    ratio = float(tempered[1] / (1 / 3))
    for u, expected in ((ratio - 1e-3, 2), (ratio + 1e-3, 1)):
        _, keep_len, _, _, _ = accept(
            logits,
            tokens,
            torch.tensor([2]),
            torch.tensor([1]),
            paths,
            q,
            temperature=2.0,
            u_accept=torch.tensor([[[u]]]),
        )
        assert keep_len.item() == expected


def test_single_draft_speculative_sampling_reproduces_the_base_distribution():
    """With one beam of one draft, the rule is Leviathan et al.'s, which is exact: the first
    emitted token is distributed as P whatever Q is."""
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    drafts = torch.multinomial(q, n, replacement=True, generator=gen)
    tokens = torch.stack([torch.zeros(n, dtype=torch.long), drafts], 1)
    logits = torch.log(p).expand(n, 2, 4).clone()
    paths = torch.tensor([0, 1]).expand(n, 1, 2)
    _, _, _, new_tokens, _ = accept_reference(
        logits,
        tokens,
        torch.full((n,), 2),
        torch.ones(n, dtype=torch.long),
        torch.ones(n),
        torch.rand(n, generator=gen),
        paths,
        torch.log(q).expand(n, 1, 1, 4),
        torch.rand(n, 1, 1, generator=gen),
        0,
    )
    freq = torch.bincount(new_tokens[:, 0], minlength=4).float() / n
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / n)
