"""Tree building: Apple's worked example exactly, and properties over random beams."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from redcompile.ops.tree_building import (
    ancestor_mask,
    build_tree_reference,
    lifting_steps,
    prefix_tree,
    unpack_beams,
)

# reference/redrafter.md §4.4 (Apple's tree_attention_test.py, batch row 0).
BEAMS = torch.tensor([[[91, 92, 93, 95], [91, 92, 94, 96], [91, 92, 93, 97]]])
PREFIX_TREE = [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 2]]
PACKED = [91, 92, 93, 95, 94, 96, 97]
UNPACKER = [[0, 1, 2, 3], [0, 1, 4, 5], [0, 1, 2, 6]]
POSITION_OFFSETS = [0, 1, 2, 3, 2, 3, 3]


def test_worked_example_from_apples_tests():
    assert prefix_tree(BEAMS)[0].tolist() == PREFIX_TREE
    tokens, parents, depths, num_tokens, paths = build_tree_reference(BEAMS)
    n = int(num_tokens[0])
    assert n == 7
    assert tokens[0, :n].tolist() == PACKED
    assert paths[0].tolist() == UNPACKER
    assert depths[0, :n].tolist() == POSITION_OFFSETS
    assert parents[0, :n].tolist() == [-1, 0, 1, 2, 1, 4, 2]
    # Padding slots (W * (L - 1) + 1 = 10 in all) are inert roots.
    assert tokens[0, n:].tolist() == [0, 0, 0] and parents[0, n:].tolist() == [-1, -1, -1]


def test_worked_example_mask_is_the_ancestor_relation():
    _, parents, depths, _, _ = build_tree_reference(BEAMS)
    mask = ancestor_mask(parents, depths, lifting_steps(10))[0, :7, :7].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 0],
        [1, 1, 1, 0, 0, 0, 1],
    ]


@st.composite
def beam_batches(draw):
    b, w, length = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    alphabet = draw(st.integers(1, 3))  # few symbols: many shared prefixes
    values = draw(
        st.lists(st.integers(0, alphabet), min_size=b * w * length, max_size=b * w * length)
    )
    beams = torch.tensor(values).view(b, w, length)
    beams[:, :, 0] = beams[:, :1, 0]  # one root per row
    return beams


@settings(max_examples=200, deadline=None)
@given(beam_batches())
def test_packing_then_unpacking_returns_the_beams(beams):
    tokens, _, _, _, paths = build_tree_reference(beams)
    assert torch.equal(unpack_beams(tokens, paths), beams)


@settings(max_examples=200, deadline=None)
@given(beam_batches())
def test_dedup_merges_exactly_the_equal_prefixes(beams):
    _, _, depths, num_tokens, paths = build_tree_reference(beams)
    b, w, length = beams.shape
    for row in range(b):
        prefixes = {}
        for i in range(w):
            for j in range(length):
                prefixes.setdefault(tuple(beams[row, i, : j + 1].tolist()), set()).add(
                    int(paths[row, i, j])
                )
        # one slot per distinct prefix, different prefixes never share a slot
        assert all(len(slots) == 1 for slots in prefixes.values())
        assert len({s for slots in prefixes.values() for s in slots}) == len(prefixes)
        assert int(num_tokens[row]) == len(prefixes)
        for prefix, (slot,) in prefixes.items():
            assert int(depths[row, slot]) == len(prefix) - 1


@settings(max_examples=200, deadline=None)
@given(beam_batches())
def test_mask_is_exactly_the_ancestor_relation(beams):
    _, parents, depths, num_tokens, _ = build_tree_reference(beams)
    n = parents.shape[1]
    mask = ancestor_mask(parents, depths, lifting_steps(n))
    for row in range(beams.shape[0]):
        for i in range(n):
            assert parents[row, i] < i  # parents precede children
            ancestors, node = set(), i
            while node >= 0:
                ancestors.add(node)
                node = int(parents[row, node])
            assert {j for j in range(n) if mask[row, i, j]} == ancestors


def test_ancestor_mask_of_a_long_chain_is_causal():
    t = 300
    parents = torch.arange(-1, t - 1).unsqueeze(0)
    depths = torch.arange(t).unsqueeze(0)
    mask = ancestor_mask(parents, depths, lifting_steps(t))
    assert torch.equal(mask[0], torch.tril(torch.ones(t, t, dtype=torch.bool)))
