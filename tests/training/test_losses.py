"""The training loss: the same value and gradient as torch's cross-entropy, in any dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from redcompile.training.losses import ROWS_PER_BLOCK, summed_cross_entropy


def _logits_and_targets(rows: int, vocab: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(rows)
    logits = (4 * torch.randn(rows, vocab, generator=g)).to(dtype)
    return logits, torch.randint(0, vocab, (rows,), generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, ROWS_PER_BLOCK, 3 * ROWS_PER_BLOCK + 5])
def test_value_and_gradient_match_torch_cross_entropy(dtype, rows):
    logits, target = _logits_and_targets(rows, 257, dtype)
    weight = torch.rand(())  # an upstream gradient other than 1

    ours = logits.clone().requires_grad_()
    loss = summed_cross_entropy(ours, target)
    (loss * weight).backward()

    theirs = logits.clone().requires_grad_()
    want = F.cross_entropy(theirs.float(), target, reduction="sum")
    (want * weight).backward()

    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-4)
    assert ours.grad.dtype == dtype
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(ours.grad, theirs.grad, **tolerance)
    # each row's gradient is a distribution minus a one-hot: it sums to zero
    assert float(ours.grad.float().sum(-1).abs().max()) < 0.02 * float(weight) + 1e-6


def test_no_rows_give_zero_loss_and_an_empty_gradient():
    logits = torch.zeros(0, 11, requires_grad=True)
    loss = summed_cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad.shape == (0, 11)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"logits \[N, V\] and targets \[N\]"):
        summed_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
