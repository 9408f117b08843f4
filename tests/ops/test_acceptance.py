"""Acceptance: the greedy worked example, the sampling warps, and exact speculative sampling
on hand-made trees (the emitted sequences' distribution is the autoregressive one)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from redcompile.ops import ACCEPT
from redcompile.ops.acceptance import accept_reference
from redcompile.ops.sampling import draw, sampling_weights
from redcompile.ops.tree_building import build_tree_reference
from support import chi_square_p_value, run_op_body
from test_tree_building import BEAMS

V = 100


def greedy_logits(tokens, parent_to_child):
    """Logits whose argmax at packed position p is parent_to_child[p] (others get a default)."""
    logits = torch.zeros(1, tokens.shape[1], V)
    for position, child in parent_to_child.items():
        logits[0, position, child] = 10.0
    return logits


def accept(logits, tokens, num_tokens, forced, paths=None, temperature=0.0, top_k=0, top_p=1.0):
    """Accept with the same controls for every row and uniforms of 0.5."""
    b = tokens.shape[0]
    length = 1 if paths is None else paths.shape[2]
    return accept_reference(
        logits,
        tokens,
        num_tokens,
        forced,
        torch.full((b,), float(temperature)),
        torch.full((b,), top_k),
        torch.full((b,), float(top_p)),
        torch.full((b, length), 0.5),
        paths,
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


def weights_of(probs, top_k=0, top_p=1.0, temperature=1.0):
    """sampling_weights of one row given by its probabilities (logits = log P)."""
    logits = torch.log(torch.tensor([probs]))
    return sampling_weights(
        logits, torch.tensor([temperature]), torch.tensor([top_k]), torch.tensor([top_p])
    )[0]


def test_top_k_keeps_the_k_largest_and_ties_with_the_kth():
    kept = weights_of([0.1, 0.3, 0.2, 0.2, 0.2], top_k=2) > 0
    assert kept.tolist() == [False, True, True, True, True]  # 0.2 ties with the 2nd largest
    assert (weights_of([0.1, 0.4, 0.2, 0.3], top_k=2) > 0).tolist() == [False, True, False, True]
    assert (weights_of([0.1, 0.9], top_k=0) > 0).all() and (
        weights_of([0.1, 0.9], top_k=9) > 0
    ).all()


@pytest.mark.parametrize(
    "top_p,kept",
    [
        (0.8, [True, True, False, False]),  # 0.5 + 0.3 reaches 0.8: the nucleus stops there
        (0.81, [True, True, True, False]),
        (0.3, [True, False, False, False]),  # the most likely token is always in the nucleus
        (1.0, [True, True, True, True]),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p, kept):
    w = weights_of([0.5, 0.3, 0.15, 0.05], top_p=top_p)
    assert (w > 0).tolist() == kept
    np.testing.assert_allclose(w[w > 0].numpy(), np.array([0.5, 0.3, 0.15, 0.05])[kept], rtol=1e-5)


def test_top_p_applies_to_the_top_k_distribution_and_keeps_ties():
    # top-k 3 renormalises [0.4, 0.3, 0.2] to [0.444, 0.333, 0.222]; top-p 0.7 needs two of them
    assert (weights_of([0.4, 0.3, 0.2, 0.1], top_k=3, top_p=0.7) > 0).tolist() == [
        True,
        True,
        False,
        False,
    ]
    assert (weights_of([0.4, 0.2, 0.2, 0.2], top_p=0.5) > 0).tolist() == [True] * 4  # ties kept


def test_the_draw_never_picks_a_token_of_zero_weight():
    weights = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0]] * 4)
    uniforms = torch.tensor([0.0, 0.4999, 0.5, 1.0 - 2**-24])
    assert draw(weights, uniforms).tolist() == [1, 1, 2, 2]
    assert draw(torch.tensor([[0.25, 0.0, 0.75]]), torch.tensor([1.0])).tolist() == [2]


def test_a_temperature_too_small_to_divide_by_is_greedy():
    tokens, _, _, num_tokens, paths = build_tree_reference(BEAMS)
    logits = greedy_logits(tokens, {0: 92, 1: 94, 4: 7})
    for temperature in (1e-30, 1e-45, 0.0):
        _, _, _, new_tokens, _ = accept(
            logits, tokens, num_tokens, torch.tensor([1]), paths, temperature
        )
        assert new_tokens[0].tolist() == [92, 94, 7, 0]


# Hand-made trees over V = 6 tokens, root token 0. Each row of the tests' batch is the same
# tree; every node has its own distribution P (standing for P given the path to it).
TREES = {
    # several children at the root and at depth 1, a repeated prefix (beams 0 and 3)
    "branching": [[0, 1, 2, 3], [0, 1, 3, 1], [0, 2, 1, 1], [0, 1, 2, 4]],
    # one chain
    "chain": [[0, 1, 1, 2]],
    # every beam the same: one path, deduplicated
    "repeated": [[0, 3, 2, 1]] * 3,
}


def tree_case(name, seed):
    """tokens, parents, num_tokens, paths of a tree, and logits [1, T, 6] at its nodes: the
    root's argmax is a child, and some tokens have probability 0 at every node."""
    beams = torch.tensor([TREES[name]])
    tokens, parents, _, num_tokens, paths = build_tree_reference(beams)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, tokens.shape[1], 6, generator=g)
    for node in range(1, int(num_tokens[0])):  # drafts are likely, as a drafter's would be
        logits[0, parents[0, node], tokens[0, node]] += 1.5
    logits[0, 0, 1] = 3.0  # the root's argmax is the drafted child 1
    logits[:, :, 5] = float("-inf")  # P(5) = 0 everywhere
    return tokens, parents, num_tokens, paths, logits


def exact_emitted(tokens, parents, num_tokens, weights_tv):
    """The exact distribution of one step's emitted sequence: from the root, pick x ~ P at the
    node; if x is a child's token, go on from the child, else x ends the sequence (so does
    any pick at a leaf): autoregressive sampling stopped at the first token off the tree."""
    n = int(num_tokens[0])
    children = {node: {} for node in range(n)}
    for node in range(1, n):
        children[int(parents[0, node])][int(tokens[0, node])] = node
    probs = weights_tv / weights_tv.sum(-1, keepdim=True)
    out = Counter()

    def walk(node, prefix, mass):
        for x, p in enumerate(probs[node].tolist()):
            if p > 0:
                child = children[node].get(x)
                if child is None:
                    out[prefix + (x,)] += mass * p
                else:
                    walk(child, prefix + (x,), mass * p)

    walk(0, (), 1.0)
    return out


def emitted_sequences(outputs):
    _, _, _, new_tokens, num_new = outputs
    return [tuple(row[:k]) for row, k in zip(np.asarray(new_tokens).tolist(), np.asarray(num_new))]


@pytest.mark.parametrize("implementation", ["reference", "onnx"])
@pytest.mark.parametrize(
    "name,temperature,top_k,top_p",
    [
        ("branching", 1.0, 0, 1.0),
        ("branching", 0.7, 3, 1.0),
        ("branching", 1.3, 0, 0.8),
        ("chain", 0.7, 0, 1.0),
        ("repeated", 1.0, 4, 0.9),
    ],
)
def test_speculative_sampling_emits_the_autoregressive_distribution(
    implementation, name, temperature, top_k, top_p
):
    """2 * 10^5 seeded steps over one tree: every emitted sequence's frequency is its exact
    probability within 5 standard errors, no impossible sequence appears, and Pearson's
    chi-square over all of them does not reject at 10^-4."""
    n = 200_000
    tokens, parents, num_tokens, paths, logits = tree_case(name, seed=len(name) + top_k)
    t = tokens.shape[1]
    batch = [
        logits.expand(n, t, 6).contiguous(),
        tokens.expand(n, t).contiguous(),
        num_tokens.expand(n).contiguous(),
        torch.ones(n, dtype=torch.int64),
        torch.full((n,), temperature),
        torch.full((n,), top_k),
        torch.full((n,), top_p),
        torch.rand(n, paths.shape[2], generator=torch.Generator().manual_seed(7)),
        paths.expand(n, *paths.shape[1:]).contiguous(),
    ]
    if implementation == "reference":
        outputs = accept_reference(*batch)
    else:
        outputs = run_op_body(ACCEPT, batch, {})
    counts = Counter(emitted_sequences(outputs))
    weights = sampling_weights(
        logits[0], torch.full((t,), temperature), torch.full((t,), top_k), torch.full((t,), top_p)
    )
    exact = exact_emitted(tokens, parents, num_tokens, weights)
    assert set(counts) <= set(exact), set(counts) - set(exact)
    for seq, p in exact.items():
        bound = 5 * (p * (1 - p) / n) ** 0.5 + 1e-6
        assert abs(counts[seq] / n - p) <= bound, (seq, counts[seq] / n, p)
    keys = sorted(exact)
    assert chi_square_p_value([counts[k] for k in keys], [exact[k] for k in keys]) > 1e-4
    # the tree is used: some steps emit more than one token
    assert sum(c for seq, c in counts.items() if len(seq) > 1) > n // 20


def naive_walk(tokens, parents, num_tokens, forced, logits, controls, uniforms):
    """Acceptance of one decoding row written as the walk the rule describes: from the root,
    the node's pick; go to the child holding it, or stop."""
    temperature, top_k, top_p = controls
    n = int(num_tokens)
    root = int(forced) - 1
    children = {}
    for node in range(root + 1, n):
        children.setdefault(int(parents[node]), {})[int(tokens[node])] = node
    node, emitted, kept = root, [], list(range(root + 1))
    for depth in range(uniforms.shape[0]):
        if temperature < 1e-5:
            pick = int(logits[node].argmax())
        else:
            w = sampling_weights(
                logits[node : node + 1],
                torch.tensor([temperature]),
                torch.tensor([top_k]),
                torch.tensor([top_p]),
            )
            pick = int(draw(w, uniforms[depth : depth + 1])[0])
        emitted.append(pick)
        child = children.get(node, {}).get(pick)
        if child is None:
            break
        node = child
        kept.append(child)
    return emitted, kept, node


def test_the_reference_is_the_walk_down_the_tree():
    """Random trees with shared prefixes, random logits biased towards the drafts: the
    vectorised rule (the longest beam of leading passes) equals the walk, row by row."""
    g = torch.Generator().manual_seed(3)
    b, w, length, v = 64, 4, 4, 5
    beams = torch.randint(0, 3, (b, w, length), generator=g)
    beams[:, :, 0] = 4  # the root every beam shares
    tokens, parents, _, num_tokens, paths = build_tree_reference(beams)
    logits = torch.randn(b, tokens.shape[1], v, generator=g)
    logits[:, :, :3] += 2.0
    temperature = torch.where(torch.arange(b) % 4 == 0, 0.0, 0.9)
    top_k = torch.where(torch.arange(b) % 3 == 0, 3, 0)
    top_p = torch.where(torch.arange(b) % 5 == 0, 0.7, 1.0)
    uniforms = torch.rand(b, length, generator=g)
    forced = torch.ones(b, dtype=torch.int64)
    keep_idx, keep_len, last_idx, new_tokens, num_new = accept_reference(
        logits, tokens, num_tokens, forced, temperature, top_k, top_p, uniforms, paths
    )
    for row in range(b):
        controls = (float(temperature[row]), int(top_k[row]), float(top_p[row]))
        emitted, kept, last = naive_walk(
            tokens[row],
            parents[row],
            num_tokens[row],
            forced[row],
            logits[row],
            controls,
            uniforms[row],
        )
        assert new_tokens[row, : num_new[row]].tolist() == emitted
        assert keep_idx[row, : keep_len[row]].tolist() == kept
        assert int(last_idx[row]) == last
