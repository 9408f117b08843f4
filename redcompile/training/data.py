"""Training data for the drafter: text corpora, packed windows, self-distilled continuations.

An example is a token sequence plus a mask of the positions whose token is a training target.
- plain: windows of `seq_len` tokens cut from the tokenized corpus (documents joined by EOS);
  every token is a target (Apple's recipe on ground-truth text);
- self-distilled: a prefix of `prefix_len` corpus tokens followed by the base model's own greedy
  continuation; only the continuation is a target. Greedy decoding only ever accepts what the
  base model would produce, so this is exactly the distribution the drafter must predict
  (the paper reports about 10% more tokens per step).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from redcompile.errors import InputError

TEXT_FIELDS = ("text", "content", "prompt")


@dataclass
class Examples:
    """`tokens` [N, seq_len] int64 and `targets` [N, seq_len] bool (positions to predict)."""

    tokens: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, index: Sequence[int] | torch.Tensor) -> Examples:
        """The examples at `index`."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Examples(self.tokens[index], self.targets[index])


def _documents_of(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        docs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"--data: {path} line {number} is not valid JSON") from None
            field = next((f for f in TEXT_FIELDS if isinstance(record.get(f), str)), None)
            if field is None:
                raise InputError(
                    f"--data: {path} line {number} has no text field ({', '.join(TEXT_FIELDS)})"
                )
            docs.append(record[field] + record.get("completion", ""))
        return docs
    try:
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        return []  # binary files in a folder are skipped


def read_corpus(paths: Sequence[Path | str]) -> list[str]:
    """Documents from text files, JSONL files (a `text` field per line) and folders of them."""
    docs: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"--data: {path} does not exist")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            docs.extend(d for d in _documents_of(file) if d.strip())
    if not docs:
        raise InputError(f"--data: no text found in {', '.join(str(p) for p in paths)}")
    return docs


def token_stream(docs: Sequence[str], encode: Callable[[str], list[int]], eos: int) -> np.ndarray:
    """All documents tokenized and joined, each followed by EOS."""
    parts = []
    for doc in docs:
        parts.append(np.asarray(encode(doc), dtype=np.int64))
        parts.append(np.asarray([eos], dtype=np.int64))
    return np.concatenate(parts)


def plain_examples(stream: np.ndarray, seq_len: int) -> Examples:
    """Non-overlapping windows of `seq_len` tokens, every position a target."""
    count = len(stream) // seq_len
    if count == 0:
        raise InputError(
            f"--data: the corpus has {len(stream)} tokens, fewer than one window of {seq_len}"
        )
    tokens = torch.from_numpy(stream[: count * seq_len].reshape(count, seq_len).copy())
    return Examples(tokens, torch.ones_like(tokens, dtype=torch.bool))


def prefixes(
    stream: np.ndarray, count: int, prefix_len: int, rng: np.random.Generator
) -> list[list[int]]:
    """`count` prefixes of `prefix_len` tokens at random offsets of the stream."""
    if len(stream) <= prefix_len:
        raise InputError(f"--data: the corpus has {len(stream)} tokens, too few for prefixes")
    starts = rng.integers(0, len(stream) - prefix_len, size=count)
    return [stream[s : s + prefix_len].tolist() for s in starts]


def distilled_examples(
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    seq_len: int,
    pad: int,
) -> Examples:
    """prefix + greedy continuation, right-padded to seq_len; targets = the continuation."""
    tokens = torch.full((len(prompts), seq_len), pad, dtype=torch.long)
    targets = torch.zeros((len(prompts), seq_len), dtype=torch.bool)
    for row, (prompt, cont) in enumerate(zip(prompts, continuations)):
        seq = (list(prompt) + list(cont))[:seq_len]
        tokens[row, : len(seq)] = torch.tensor(seq)
        targets[row, len(prompt) : len(seq)] = True
    return Examples(tokens, targets)
