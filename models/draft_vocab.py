"""Draft vocabularies: which tokens a drafter may propose, chosen by how often they are predicted.

The vocabulary projection is the drafter's largest cost at production vocabularies: 32K-128K
rows, read once per drafted position. Drafting only from the N most frequent tokens of what the
drafter was trained to predict makes that projection V/N times cheaper and loses only the drafts
of rarer tokens; verification is untouched, so decoding stays exact (docs/benchmarks.md measures
what it costs in tokens per step). The counts come from training: `train-drafter` writes
`token_frequencies.json` next to the drafter's weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from redcompile.errors import InputError

TOKEN_FREQUENCIES = "token_frequencies.json"


def write_token_frequencies(out_dir: Path | str, counts: torch.Tensor, source: str) -> Path:
    """Save counts [V] of the tokens a drafter was trained to predict (plain JSON)."""
    path = Path(out_dir) / TOKEN_FREQUENCIES
    record = {"source": source, "vocab_size": int(counts.numel()), "counts": counts.tolist()}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


def read_token_frequencies(drafter_dir: Path | str, vocab_size: int) -> torch.Tensor:
    """counts [V] from `drafter_dir/token_frequencies.json`, refusing a missing or foreign file."""
    path = Path(drafter_dir) / TOKEN_FREQUENCIES
    if not path.is_file():
        raise InputError(
            f"--draft-vocab: {path} does not exist; it is written by `redcompile train-drafter` "
            f"(retrain, or leave out --draft-vocab)"
        )
    try:
        counts = json.loads(path.read_text(encoding="utf-8"))["counts"]
        tensor = torch.tensor(counts, dtype=torch.long)
    except (ValueError, KeyError, TypeError):
        raise InputError(f"--draft-vocab: {path} is not a token frequency file") from None
    if tensor.dim() != 1 or bool((tensor < 0).any()):
        raise InputError(f"--draft-vocab: {path} must hold one non-negative count per token")
    if tensor.numel() != vocab_size:
        raise InputError(
            f"--draft-vocab: {path} counts {tensor.numel()} tokens, the base model has "
            f"{vocab_size}; it was written for another model (retrain the drafter)"
        )
    return tensor


def most_frequent(counts: torch.Tensor, size: int) -> torch.Tensor:
    """Ids of the `size` most frequent tokens (ties: the lower id), ascending."""
    order = torch.argsort(-counts.long(), stable=True)  # stable: equal counts keep id order
    return order[:size].sort().values


def check_draft_vocab_size(size: int | None, vocab_size: int) -> int | None:
    """The draft vocabulary size to use: None when drafting from the whole vocabulary."""
    if size is None or size == vocab_size:
        return None
    if not 1 <= size <= vocab_size:
        raise InputError(f"--draft-vocab must be between 1 and the vocabulary size {vocab_size}")
    return size
