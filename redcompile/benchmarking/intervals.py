"""The prompts' sampling error: bootstrap intervals of tokens per step over the prompts, for one
run and for the difference of two paired runs on the same prompts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from redcompile.generation import GenerationResult


def prompt_counts(result: GenerationResult) -> list[list[int]]:
    """[decoded tokens, decoding steps] of every prompt, in prompt order: what tokens per step
    is made of, kept in the record so that runs on the same prompts can be compared pairwise."""
    return [[c.decode_tokens, c.steps] for c in result.completions]


def _bootstrap_tokens_per_step(counts: Sequence[Sequence[int]], picks: np.ndarray) -> np.ndarray:
    """Tokens per step of every resample: `picks` [resamples, prompts] indexes `counts`."""
    tokens, steps = np.asarray(counts, dtype=np.float64).reshape(-1, 2).T
    return tokens[picks].sum(axis=1) / np.maximum(steps[picks].sum(axis=1), 1)


def _prompt_picks(prompts: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, prompts, (resamples, prompts))


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def tokens_per_step_interval(
    counts: Sequence[Sequence[int]], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> list[float]:
    """[low, high]: the `level` bootstrap interval of tokens per step over the prompts, from
    their `prompt_counts`.

    Tokens per step is a ratio of sums over prompts, and prompts differ: a few dozen of them
    leave several percent of sampling error. Resampling whole prompts (fixed seed, so a record
    is reproducible) keeps each prompt's steps together."""
    if not sum(steps for _, steps in counts):
        return [0.0, 0.0]
    picks = _prompt_picks(len(counts), resamples, seed)
    return _interval(_bootstrap_tokens_per_step(counts, picks), level)


def paired_difference_interval(
    counts_a: Sequence[Sequence[int]],
    counts_b: Sequence[Sequence[int]],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> list[float]:
    """[low, high]: the `level` bootstrap interval of tokens per step of B minus A, two runs
    over the same prompts (e.g. two drafters), resampling the prompts together. Much narrower
    than either run's own interval: what the prompts share cancels."""
    if len(counts_a) != len(counts_b):
        raise ValueError(f"paired runs need the same prompts: {len(counts_a)} != {len(counts_b)}")
    picks = _prompt_picks(len(counts_a), resamples, seed)
    delta = _bootstrap_tokens_per_step(counts_b, picks) - _bootstrap_tokens_per_step(
        counts_a, picks
    )
    return _interval(delta, level)
