"""PromptLookup against a brute-force oracle written from the rule in its docstring.

The edge cases the rule names (a history shorter than the n-gram, no occurrence, an occurrence
that ends right before the row's last n-gram, continuations longer than what follows them,
rows past the capacity, idle rows) are cases of their own; random histories over tiny
vocabularies cover the rest, in the torch reference and the ONNX body alike.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from redcompile.ops import PROMPT_LOOKUP
from support import run_op_body


def oracle(x: list[int], ngrams: list[int], num_beams: int, length: int) -> list[list[int]]:
    """The rule, one row, in plain Python."""
    m = len(x)
    if m == 0:
        return [[0] * length for _ in range(num_beams)]
    root = x[-1]
    candidates = []
    for q in range(m - 1):  # end positions whose continuation starts before the end
        level = sum(1 for k in set(ngrams) if q - k + 1 >= 0 and x[q - k + 1 : q + 1] == x[m - k :])
        if level:
            candidates.append((level, q))
    if not candidates:
        return [[root] * length for _ in range(num_beams)]
    ranked = sorted(candidates, reverse=True)  # level, then latest
    beams = []
    for j in range(num_beams):
        _, q = ranked[j] if j < len(ranked) else ranked[0]
        start, period = q + 1, m - (q + 1)
        beams.append([root] + [x[start + i % period] for i in range(length - 1)])
    return beams


def lookup(history, lengths, ngrams, num_beams, length):
    return PROMPT_LOOKUP.reference(
        torch.tensor(history), torch.tensor(lengths), ngrams, num_beams, length
    ).tolist()


def test_copies_the_continuation_of_the_latest_occurrence():
    #          0  1  2  3  4  5  6  7
    history = [[7, 1, 2, 3, 9, 1, 2, 4, 5, 1, 2]]
    # last 2 tokens "1 2": occurrences at 1 and 5; the latest (5) continues "4 5 1"
    assert lookup(history, [11], [2], 2, 4) == [[[2, 4, 5, 1], [2, 3, 9, 1]]]


def test_longest_ngram_wins_and_backs_off():
    history = [[1, 2, 3, 8, 2, 3, 9, 1, 2, 3]]
    # "1 2 3" occurs at 0 (continues 8), "2 3" latest at 4 (continues 9)
    assert lookup(history, [10], [3, 2], 1, 3) == [[[3, 8, 2]]]
    assert lookup(history, [10], [2], 1, 3) == [[[3, 9, 1]]]
    # no earlier "5 3": backs off to "3"
    assert lookup([[3, 6, 5, 3]], [4], [2, 1], 1, 3) == [[[3, 6, 5]]]


def test_history_shorter_than_the_ngram_and_no_occurrence_repeat_the_root():
    assert lookup([[4, 5, 0, 0]], [2], [3], 1, 4) == [[[5, 5, 5, 5]]]
    assert lookup([[4, 5, 6, 0]], [3], [1], 2, 3) == [[[6, 6, 6], [6, 6, 6]]]


def test_occurrence_right_before_the_end_continues_periodically():
    # "7 7 7": the latest earlier "7 7" is at 0, followed by the root itself, period 1
    assert lookup([[7, 7, 7]], [3], [2], 1, 5) == [[[7, 7, 7, 7, 7]]]
    # "1 2 1 2": "1 2" at 0 continues "1 2" and then repeats with period 2
    assert lookup([[1, 2, 1, 2]], [4], [2], 1, 6) == [[[2, 1, 2, 1, 2, 1]]]


def test_further_beams_fall_back_to_older_then_shorter_matches():
    #          0  1  2  3  4  5  6  7
    history = [[1, 2, 9, 5, 2, 7, 1, 2]]
    # "1 2" ends at 1 (both sizes match: level 2), "2" alone at 4 (level 1); a third beam
    # repeats the first
    assert lookup(history, [8], [2, 1], 3, 2) == [[[2, 9], [2, 7], [2, 9]]]


def test_fewer_occurrences_than_beams_repeat_the_latest():
    assert lookup([[1, 5, 2, 1]], [4], [1], 3, 3) == [[[1, 5, 2]] * 3]


def test_idle_rows_are_zero_and_lengths_are_clamped_to_the_capacity():
    history = [[1, 2, 1, 2], [3, 3, 3, 3]]
    assert lookup(history, [0, 9], [1], 1, 3) == [[[0, 0, 0]], [[3, 3, 3]]]


@pytest.mark.parametrize("seed", range(6))
def test_random_histories_match_the_oracle_in_reference_and_onnx_body(seed):
    rng = random.Random(seed)
    for trial in range(40):
        b, s = rng.randint(1, 4), rng.randint(1, 24)
        num_beams, length = rng.randint(1, 3), rng.randint(2, 6)
        ngrams = rng.sample([1, 2, 3, 4], rng.randint(1, 3))
        history = torch.randint(0, rng.choice([2, 3, 6]), (b, s))
        lengths = torch.tensor([rng.randint(0, s + 2) for _ in range(b)])
        expected = [
            oracle(history[r, : min(int(lengths[r]), s)].tolist(), ngrams, num_beams, length)
            for r in range(b)
        ]
        got = PROMPT_LOOKUP.reference(history, lengths, ngrams, num_beams, length)
        assert got.tolist() == expected
        if trial % 8 == 0:
            attrs = {"ngrams": ngrams, "num_beams": num_beams, "beam_length": length}
            body = run_op_body(PROMPT_LOOKUP, [history, lengths], attrs)[0]
            np.testing.assert_array_equal(body, np.array(expected))
