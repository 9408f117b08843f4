"""Which (position, depth) pairs are scored, and against which label."""

from __future__ import annotations

import torch

from redcompile.training.losses import supervision


class GreedyBase:
    """A base model whose greedy choice for position p is `choices[p]` (p >= 1)."""

    def __init__(self, choices: list[int], vocab: int = 10) -> None:
        self.choices, self.vocab = choices, vocab

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        t = hidden.shape[1]
        logits = torch.zeros(1, t, self.vocab)
        for p in range(t - 1):  # hidden[p] predicts position p + 1 (the last: nothing)
            logits[0, p, self.choices[p + 1]] = 1.0
        return logits


def test_ground_truth_scores_every_target_at_every_depth():
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[False, False, True, True, True, True]])
    labels, scored, teacher = supervision(None, tokens, targets, torch.zeros(1, 6, 4), 2, False)
    assert torch.equal(labels, tokens) and teacher is None
    # depth 0: t scored when token t+2 is a target; depth 1: token t+3.
    assert scored[0, 0].tolist() == [True, True, True, True, False, False]
    assert scored[0, 1].tolist() == [True, True, True, False, False, False]


def test_greedy_labels_score_only_inputs_on_the_greedy_path():
    tokens = torch.tensor([[1, 2, 3, 9, 5, 6, 7, 8]])
    #            greedy:      -  2  3  4  5  6  7  8   (the text leaves the path at position 3)
    base = GreedyBase([0, 2, 3, 4, 5, 6, 7, 8])
    targets = torch.ones(1, 8, dtype=torch.bool)
    labels, scored, teacher = supervision(base, tokens, targets, torch.zeros(1, 8, 4), 3, True)
    assert labels[0, 1:].tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert torch.equal(teacher[0, 1:].argmax(-1), labels[0, 1:])  # aligned with the labels
    # depth 0 at t needs token t+1 on the path (and a label at t+2 inside the sequence).
    assert scored[0, 0].tolist() == [True, True, False, True, True, True, False, False]
    # depth 1 at t needs tokens t+1 and t+2 on the path.
    assert scored[0, 1].tolist() == [True, False, False, True, True, False, False, False]
    # depth 2 at t needs t+1..t+3: only t = 3 (tokens 5, 6, 7), scored against label 8.
    assert scored[0, 2].tolist() == [False, False, False, True, False, False, False, False]
    assert labels[0, 3 + 2 + 2].item() == 8


def test_greedy_labels_respect_the_target_mask():
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6]])
    base = GreedyBase([0, 2, 3, 4, 5, 6])
    targets = torch.tensor([[False, False, False, True, True, True]])  # a prefix, then output
    _, scored, _ = supervision(base, tokens, targets, torch.zeros(1, 6, 4), 1, True)
    # inputs must be targets (on the generated path) and so must the label position
    assert scored[0, 0].tolist() == [False, False, True, True, False, False]


def test_soft_labels_of_a_certain_teacher_equal_hard_labels():
    from redcompile.models.drafter import Drafter, DrafterConfig
    from redcompile.training.losses import DrafterObjective

    torch.manual_seed(0)
    objective = DrafterObjective(Drafter(DrafterConfig(8, 10, 16, 1, True)), 2)
    hidden, embeddings = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    labels = torch.randint(0, 10, (2, 7))
    scored = torch.rand(2, 2, 7) > 0.3
    certain = torch.nn.functional.one_hot(labels, 10).float() * 100.0  # softmax = one-hot
    hard, correct, counted = objective(hidden, embeddings, labels, scored)
    soft, correct_soft, _ = objective(hidden, embeddings, labels, scored, certain)
    assert torch.allclose(hard, soft, atol=1e-5) and torch.equal(correct, correct_soft)
    unsure = torch.zeros(2, 7, 10)  # a uniform teacher: the loss is the cross-entropy to uniform
    assert not torch.allclose(objective(hidden, embeddings, labels, scored, unsure)[0], hard)
    # depth i at t is counted when scored and its label t + i + 2 lies inside the 7 tokens
    assert counted.tolist() == [int(scored[:, 0, :5].sum()), int(scored[:, 1, :4].sum())]


def test_depth_sampling_keeps_decay_to_the_depth_and_splits_the_batch_across_ranks():
    from redcompile.training.config import TrainConfig
    from redcompile.training.losses import depth_sample

    cfg = TrainConfig(batch_size=64, depth_decay=0.5, seed=3)
    shape = torch.Size([64, 4, 200])
    keep = depth_sample(shape, 7, cfg, rank=0, world=1)
    shares = keep.float().mean(dim=(0, 2))
    assert torch.allclose(shares, torch.tensor([1.0, 0.5, 0.25, 0.125]), atol=0.02), shares
    halves = [depth_sample(torch.Size([32, 4, 200]), 7, cfg, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), keep)  # two processes train on what one does
    assert torch.equal(depth_sample(shape, 7, cfg, 0, 1), keep)  # repeatable (resume)
    assert not torch.equal(depth_sample(shape, 8, cfg, 0, 1), keep)  # fresh at every step
