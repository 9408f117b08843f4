"""Summed cross-entropy of low-precision logits, without float [rows, V] intermediates.

Why: train-drafter projects every scored (position, depth) row to the vocabulary, about
5600 x 4096 bfloat16 logits per step on the fixture. `F.cross_entropy(logits.float(), ...)`
makes its float copy, a float log-softmax, and in the backward a zeroed float gradient, the
scatter of the targets, the log-softmax backward and the cast back to bfloat16: seven passes
over float [rows, V] tensors, about 40% of a training step on the 2-core CPU (torch
profiler, docs/training.md). Here the forward keeps only each row's log-sum-exp, and the
backward writes the gradient, softmax - one-hot, once, in the logits' dtype, a block of rows
at a time so that the float temporaries stay in cache.

The value is the same sum of -log softmax(logits)[target] that `F.cross_entropy(...,
reduction="sum")` computes on the float logits, and so is the gradient up to its final
rounding to the logits' dtype (tests/training/test_losses.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from redcompile.models.drafter import Drafter

if TYPE_CHECKING:
    from redcompile.training.config import TrainConfig

ROWS_PER_BLOCK = 32  # 32 x 4096 float32 = 512 KiB of temporaries: they stay in cache


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_nv: torch.Tensor, target_n: torch.Tensor) -> torch.Tensor:
        lse_n = torch.empty(logits_nv.shape[0], dtype=torch.float32, device=logits_nv.device)
        for start in range(0, logits_nv.shape[0], ROWS_PER_BLOCK):
            block = logits_nv[start : start + ROWS_PER_BLOCK].float()
            lse_n[start : start + ROWS_PER_BLOCK] = torch.logsumexp(block, dim=-1)
        picked_n = logits_nv.gather(1, target_n[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits_nv, target_n, lse_n)
        return (lse_n - picked_n).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits_nv, target_n, lse_n = ctx.saved_tensors
        grad_nv = torch.empty_like(logits_nv)
        for start in range(0, logits_nv.shape[0], ROWS_PER_BLOCK):
            stop = min(start + ROWS_PER_BLOCK, logits_nv.shape[0])
            probs = logits_nv[start:stop].float().sub_(lse_n[start:stop, None]).exp_()
            probs[torch.arange(stop - start), target_n[start:stop]] -= 1.0
            grad_nv[start:stop] = probs.mul_(grad)
        return grad_nv, None


def summed_cross_entropy(logits_nv: torch.Tensor, target_n: torch.Tensor) -> torch.Tensor:
    """Sum over rows of -log softmax(logits_nv)[target_n], computed in float32 from logits of
    any float dtype; the gradient comes back in the logits' dtype."""
    if logits_nv.dim() != 2 or target_n.shape != logits_nv.shape[:1]:
        raise ValueError(
            f"summed_cross_entropy takes logits [N, V] and targets [N], got "
            f"{tuple(logits_nv.shape)} and {tuple(target_n.shape)}"
        )
    return _SummedCrossEntropy.apply(logits_nv, target_n)


# The drafter's training objective (the trainer runs it; train-drafter's module doc explains it).
class DrafterObjective(nn.Module):
    """The training loss around the drafter (what DistributedDataParallel wraps).

    forward(hidden [B, T, H], embeddings [B, T, H], labels [B, T], scored [B, depth, T] bool,
            teacher_logits [B, T, V] or None)
        -> (summed cross-entropy, correct [depth], counted [depth])
    Position t at depth i (the drafter having consumed tokens t+1 .. t+i+1) is scored against
    labels[t + i + 2] where scored[:, i, t] is set. With `teacher_logits` (the base model's
    logits for the token at each position), the target is the base model's whole distribution
    there instead of its argmax: cross-entropy against soft labels.
    """

    def __init__(self, drafter: Drafter, depth: int) -> None:
        super().__init__()
        self.drafter, self.depth = drafter, depth

    def forward(self, hidden, embeddings, labels, scored, teacher_logits=None):
        """Loss over every scored (position, depth)."""
        t = labels.shape[1]
        features = self.drafter.teacher_forced_features(hidden, embeddings, self.depth)
        losses, correct, counted = [], [], []
        for i, feats in enumerate(features):
            shift = i + 2
            mask = scored[:, i, : t - shift]
            selected = feats[:, : t - shift][mask]  # only scored positions are projected
            target = labels[:, shift:][mask]
            logits = F.linear(selected, self.drafter.vocab_w)  # bfloat16 under autocast
            if teacher_logits is None:
                losses.append(summed_cross_entropy(logits, target))
            else:
                teacher = torch.softmax(teacher_logits[:, shift:][mask].float(), dim=-1)
                losses.append(-(teacher * torch.log_softmax(logits.float(), dim=-1)).sum())
            if self.drafter.training:  # accuracy is for evaluation; argmax costs a pass
                correct.append(target.new_zeros(()))
            else:
                correct.append((logits.argmax(-1) == target).sum())
            counted.append(target.new_tensor(target.numel()))
        return torch.stack(losses).sum(), torch.stack(correct), torch.stack(counted)


def supervision(
    base,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    hidden: torch.Tensor,
    depth: int,
    greedy_labels: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(labels [B, T], scored [B, depth, T], teacher_logits [B, T, V] or None) for a batch.

    Ground truth (Apple's recipe): labels are the tokens, position t at depth i is scored when
    token t+i+2 is a target. Greedy (self-distillation): labels are the base model's greedy
    choices given the prefix, and position t at depth i is scored only when the drafter's
    inputs t+1 .. t+i+1 are themselves the base model's greedy choices, which is the only
    situation greedy decoding ever shows the drafter; teacher_logits[:, t] are the base model's
    logits for the token at t (from position t-1), for soft labels.
    """
    b, t = tokens.shape
    scored = torch.zeros(b, depth, t, dtype=torch.bool, device=tokens.device)
    if not greedy_labels:
        for i in range(depth):
            scored[:, i, : t - i - 2] = targets[:, i + 2 :]
        return tokens, scored, None
    teacher_logits = base.lm_head(hidden).roll(1, dims=1)  # [:, 0] wraps around: never scored
    greedy = teacher_logits.max(dim=-1).indices  # argmax (first maximum); 4x faster in bf16
    greedy[:, 0] = -1
    on_path = (tokens == greedy) & targets
    run = torch.ones(b, t, dtype=torch.bool, device=tokens.device)  # inputs t+1..t+i+1 on path
    for i in range(depth):
        run[:, : t - i - 1] &= on_path[:, i + 1 :]
        scored[:, i, : t - i - 2] = run[:, : t - i - 2] & targets[:, i + 2 :]
    return greedy, scored, teacher_logits


def depth_sample(
    scored_shape: torch.Size, step: int, cfg: TrainConfig, rank: int, world: int
) -> torch.Tensor:
    """Which scored rows of this rank's batch enter the loss at `step` ([B, depth, T] bool):
    row (b, i, t) with probability depth_decay ** i, drawn for the global batch from
    (seed, step), so that runs repeat, resume and split across processes identically."""
    _, depth, t = scored_shape
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    draws = torch.rand((cfg.batch_size, depth, t), generator=generator)
    keep = draws < (cfg.depth_decay ** torch.arange(depth, dtype=torch.float32))[:, None]
    per_rank = cfg.batch_size // world
    return keep[rank * per_rank : (rank + 1) * per_rank]
