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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from redcompile.errors import InputError

if TYPE_CHECKING:
    from redcompile.training.config import TrainConfig

Log = Callable[[str], None]

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


# The training set of a run and its batches (what every rank of a global batch reads).
@dataclass
class TrainingData:
    """Training sources and the held-out set.

    `continuations`: prefix + greedy continuation (self-distillation), or None;
    `windows`: corpus windows (ground-truth labels, or greedy labels when self-distilling);
    `held_out`: greedy continuations when self-distilling (the distribution greedy decoding
    shows the drafter), else corpus windows.
    """

    continuations: Examples | None
    windows: Examples | None
    held_out: Examples
    distill_seconds: float


def build_examples(
    base, codec, data: list[Path], cfg: TrainConfig, rank: int, world: int, log: Log
) -> TrainingData:
    """The training data of the module docstring (identical on every rank)."""
    eos = (base.config.eos_token_ids or (0,))[0]
    stream = token_stream(read_corpus(data), codec.encode, eos)
    rng = np.random.default_rng(cfg.seed)
    windows = plain_examples(stream, cfg.seq_len)
    windows = windows.subset(torch.from_numpy(rng.permutation(len(windows))))
    if not cfg.self_distill:
        if len(windows) <= cfg.eval_examples:
            raise InputError(
                f"--data gives {len(windows)} windows of {cfg.seq_len} tokens; "
                f"more than the {cfg.eval_examples} held out are needed"
            )
        held = windows.subset(range(cfg.eval_examples))
        return TrainingData(None, windows.subset(range(cfg.eval_examples, len(windows))), held, 0.0)
    start = time.perf_counter()
    count = cfg.distill_examples + cfg.eval_examples
    prompts = prefixes(stream, count, cfg.prefix_len, rng)
    mine = list(range(rank, count, world))
    log(
        f"self-distillation: greedy continuations of {count} prefixes "
        f"({cfg.seq_len - cfg.prefix_len} tokens each)"
    )
    continuations = _greedy(base, [prompts[i] for i in mine], cfg.seq_len - cfg.prefix_len, eos)
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, list(zip(mine, continuations)))
        by_index = dict(pair for part in gathered for pair in part)
        continuations = [by_index[i] for i in range(count)]
    generated = distilled_examples(prompts, continuations, cfg.seq_len, eos)
    # The held-out prompts come first, so they do not depend on --distill-examples.
    held = generated.subset(range(cfg.eval_examples))
    train = generated.subset(range(cfg.eval_examples, count)) if cfg.distill_examples else None
    use_windows = cfg.window_fraction > 0 or train is None
    return TrainingData(train, windows if use_windows else None, held, time.perf_counter() - start)


def _greedy(base, prompts: list[list[int]], new_tokens: int, eos: int) -> list[list[int]]:
    """The base model's greedy continuations (the PyTorch reference step, batched), on the
    device the base model is on, which training keeps using afterwards."""
    from redcompile.generation import GenerationConfig, generate_ids
    from redcompile.models.step import SpeculativeStep
    from redcompile.runtime.torch_backend import TorchBackend
    from redcompile.torch_target import register_device_kernels

    if not prompts:
        return []
    device = next(base.parameters()).device
    register_device_kernels(device.type)  # on CUDA: the kernels of cuda/, or the references
    step = SpeculativeStep(base, None, 1, 1, max(2048, 4 * new_tokens))
    backend = TorchBackend(step, device=str(device))
    cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=256, stop_token_ids=(eos,))
    return [c.token_ids for c in generate_ids(backend, prompts, cfg).completions]


def batch_sources(data: TrainingData, cfg: TrainConfig) -> list[tuple[Examples, int]]:
    """(examples, rows per global batch) for each source that feeds the batches."""
    if data.continuations is None:
        return [(data.windows, cfg.batch_size)]
    if data.windows is None:
        return [(data.continuations, cfg.batch_size)]
    from_windows = round(cfg.batch_size * cfg.window_fraction)
    return [(data.continuations, cfg.batch_size - from_windows), (data.windows, from_windows)]


def batch_of(
    sources: list[tuple[Examples, int]], step: int, cfg: TrainConfig, rank: int, world: int
) -> Examples:
    """This rank's share of global batch `step`: each source walks its own seeded epochs."""
    tokens, targets = [], []
    for number, (examples, rows) in enumerate(sources):
        if rows == 0:
            continue
        epoch, offset = divmod(step * rows, len(examples))
        order = np.random.default_rng([cfg.seed, number, epoch]).permutation(len(examples))
        index = [int(order[(offset + j) % len(examples)]) for j in range(rows)]
        part = examples.subset(index)
        tokens.append(part.tokens)
        targets.append(part.targets)
    batch = Examples(torch.cat(tokens), torch.cat(targets))
    per_rank = cfg.batch_size // world
    return batch.subset(range(rank * per_rank, (rank + 1) * per_rank))


def target_token_counts(sources: list[tuple[Examples, int]], vocab_size: int) -> torch.Tensor:
    """How often each token is a training target [V]: what --draft-vocab ranks tokens by."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for examples, _ in sources:
        counts += torch.bincount(examples.tokens[examples.targets], minlength=vocab_size)
    return counts
