"""`train-drafter`'s settings, torch-free so the command line can show their defaults
without importing PyTorch."""

from __future__ import annotations

from dataclasses import dataclass

from redcompile.errors import InputError


@dataclass(frozen=True)
class TrainConfig:
    """Settings of `train-drafter`; defaults are defined once, here."""

    steps: int = 2700
    batch_size: int = 16
    seq_len: int = 160
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    layers: int = 4
    # Width of the residual blocks and the projection (Apple's exit_dim); None: 2 x hidden.
    # Below that, input_proj narrows [h, s] first: drafting reads fewer bytes per position.
    exit_dim: int | None = None
    rnn: bool = True
    beam_length_train: int = 5  # counts the root like --beam-length: 5 trains 4 drafted tokens
    self_distill: bool = False
    prefix_len: int = 32
    # 8192: on pycode-lm's 108 held-out prompts, 3% more tokens per step than 4096 (paired
    # interval clear of zero; docs/training.md) for 4 more minutes of generation (27 min in all)
    distill_examples: int = 8192
    soft_labels: bool = False  # with self_distill: the base model's distribution as the target
    window_fraction: float = 0.5  # with self_distill: share of each batch from corpus windows
    # Share of the scored rows at drafted position i (0-based) that enter the loss: decay ** i.
    # A draft at depth i only counts when every shallower one was accepted, so deep positions
    # are worth less tokens per step; sampling them less weights the loss toward shallow ones
    # and skips their vocabulary projections. 1.0 is Apple's equal weighting.
    depth_decay: float = 0.6
    init_from_lm_head: bool = True  # start the projection from the base model's lm_head
    eval_examples: int = 64
    eval_every: int = 300
    save_every: int = 300
    seed: int = 0
    device: str = "cpu"
    bf16: bool = True

    def validate(self) -> None:
        """One clear line for values no run can use."""
        checks = [
            (self.steps >= 1, "--steps must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.layers >= 0, "--layers must be >= 0"),
            (self.exit_dim is None or self.exit_dim >= 1, "--exit-dim must be at least 1"),
            (self.beam_length_train >= 2, "--beam-length-train must be at least 2"),
            (self.seq_len > self.beam_length_train + 1, "--seq-len is too short"),
            (self.lr > 0, "--lr must be positive"),
            (0 < self.depth_decay <= 1, "--depth-decay must be in (0, 1]"),
            (self.device in ("cpu", "cuda"), "--device must be cpu or cuda"),
            (not self.soft_labels or self.self_distill, "--soft-labels needs --self-distill"),
            (
                not self.self_distill or self.prefix_len < self.seq_len,
                "--seq-len must exceed the distillation prefix",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InputError("--device cuda: no CUDA device is available")
