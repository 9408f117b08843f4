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

import torch

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
