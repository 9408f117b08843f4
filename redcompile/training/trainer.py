"""`train-drafter`: Apple's recipe for the ReDrafter head, plus self-distillation.

The base model is frozen; the drafter reads its final-normed hidden state at position t and is
trained, teacher-forced, to predict tokens t+2 ... t+T (T-1 = `beam_length_train` - 1 drafted
positions; token t+1 is the base model's own choice) with cross-entropy, equal weights per
position (reference/redrafter.md §7). AdamW, linear warm-up then cosine decay. Matrix products
run in bfloat16 autocast (fp32 master weights), as Apple's recipe does. Two departures, both
measured in docs/training.md: the vocabulary projection starts from the base model's lm_head,
and drafted position i trains on a random share `depth_decay ** i` of its rows (deep drafts
are worth less tokens per step and cost as much to project).

Runs unchanged under `torchrun` (DistributedDataParallel; NCCL on GPUs, gloo on CPU): every rank
takes its slice of each global batch, so N processes compute what one process computes.
Deterministic for a seed; resumable from `OUT/checkpoint/`.

Self-distillation (`self_distill`) trains on what greedy decoding will show the drafter: labels
are the base model's greedy tokens, and a (position, depth) is scored only when the drafter's
input tokens are themselves greedy tokens. Half of each batch is the base model's own greedy
continuations of corpus prefixes (generated once, `distill_examples` of them), half is corpus
windows whose greedy stretches are scored (no generation cost, no repetition of examples).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from redcompile.errors import InputError
from redcompile.models.drafter import Drafter, DrafterConfig
from redcompile.output_guard import check_output_folder
from redcompile.training.config import TrainConfig
from redcompile.training.data import (
    Examples,
    batch_of,
    batch_sources,
    build_examples,
    target_token_counts,
)
from redcompile.training.losses import DrafterObjective, depth_sample, supervision

CHECKPOINT = "checkpoint"
Log = Callable[[str], None]


@dataclass
class TrainReport:
    """What a run did: data, time, losses, held-out accuracy per drafted position."""

    out_dir: str
    examples: int
    eval_examples: int
    target_tokens: int
    distill_seconds: float
    train_seconds: float
    steps: int
    world_size: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The --json output."""
        return asdict(self)


def _distributed(device: str) -> tuple[int, int]:
    """(rank, world size), initialising the process group under torchrun: NCCL for a CUDA
    run, else Gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _global_rows(local_rows: torch.Tensor, world: int) -> float:
    """Scored rows in the global batch (at least 1)."""
    if world > 1:
        local_rows = local_rows.clone()
        dist.all_reduce(local_rows)
    return max(1.0, float(local_rows))


def _lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    warmup = max(1, int(total * warmup_ratio))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(
    path: Path, drafter: Drafter, optimizer, scheduler, step: int, cfg: TrainConfig
) -> None:
    from redcompile.models.drafter_io import save_drafter

    tmp = path.with_name(path.name + ".tmp")
    save_drafter(drafter, tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step},
        tmp / "trainer_state.pt",
    )
    (tmp / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)


def _evaluate(
    objective: DrafterObjective, base, examples: Examples, cfg: TrainConfig, autocast
) -> dict[str, Any]:
    correct = torch.zeros(objective.depth, dtype=torch.long)
    counted = torch.zeros(objective.depth, dtype=torch.long)
    loss_sum = 0.0
    with torch.no_grad(), autocast():
        for start in range(0, len(examples), cfg.batch_size):
            batch = examples.subset(range(start, min(start + cfg.batch_size, len(examples))))
            tokens, targets = batch.tokens.to(cfg.device), batch.targets.to(cfg.device)
            hidden = base.causal_hidden_states(tokens)
            labels, scored, _ = supervision(
                base, tokens, targets, hidden, objective.depth, cfg.self_distill
            )
            summed, c, n = objective(hidden, base.embedding[tokens], labels, scored)  # hard CE
            correct += c.cpu()
            counted += n.cpu()
            loss_sum += float(summed)
    accuracy = (correct.float() / counted.clamp(min=1).float()).tolist()
    return {
        "loss": loss_sum / max(1, int(counted.sum())),
        "top1_by_position": [round(a, 4) for a in accuracy],
    }


def train_drafter(
    model_dir: Path | str,
    data: list[Path | str],
    out_dir: Path | str,
    cfg: TrainConfig | None = None,
    resume: bool = False,
    log: Log | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Train a drafter for `model_dir` on `data`; writes Apple's folder format to `out_dir`."""
    from redcompile.models.draft_vocab import TOKEN_FREQUENCIES, write_token_frequencies
    from redcompile.models.drafter_io import load_drafter, save_drafter
    from redcompile.models.loader import load_decoder
    from redcompile.tokenizer import TextCodec

    cfg = cfg or TrainConfig()
    cfg.validate()
    out_files = ("config.json", "model.safetensors", TOKEN_FREQUENCIES, "training_report.json")
    check_output_folder("train-drafter", Path(out_dir), out_files, [model_dir, *data])
    log = log or (lambda _msg: None)
    rank, world = _distributed(cfg.device)
    if cfg.batch_size % world:
        raise InputError(
            f"--batch-size {cfg.batch_size} must be a multiple of the {world} processes"
        )
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    base = load_decoder(model_dir, dtype="float32").to(cfg.device)
    base.requires_grad_(False)
    codec = TextCodec.from_file(Path(model_dir) / "tokenizer.json")
    data_sets = build_examples(base, codec, [Path(p) for p in data], cfg, rank, world, log)
    held_out = data_sets.held_out
    sources = batch_sources(data_sets, cfg)

    drafter_cfg = DrafterConfig(
        base.config.hidden_size,
        base.config.vocab_size,
        cfg.exit_dim or 2 * base.config.hidden_size,
        cfg.layers,
        cfg.rnn,
    )
    checkpoint = out / CHECKPOINT
    if resume and checkpoint.is_dir():
        drafter = load_drafter(checkpoint, base.config).float()
    else:
        torch.manual_seed(cfg.seed)
        drafter = Drafter(drafter_cfg)
        if cfg.init_from_lm_head:
            drafter.init_projection_from(base.lm_head.weight.detach())
    drafter = drafter.to(cfg.device).train()
    objective = DrafterObjective(drafter, cfg.beam_length_train - 1)
    model = objective
    if world > 1:
        model = nn.parallel.DistributedDataParallel(objective)
    optimizer = torch.optim.AdamW(drafter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, cfg.steps, cfg.warmup_ratio)
    )
    first_step = 0
    if resume and (checkpoint / "trainer_state.pt").is_file():
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        first_step = int(state["step"])
        log(f"resuming at step {first_step}")

    def autocast():
        return torch.autocast(cfg.device, dtype=torch.bfloat16, enabled=cfg.bf16)

    report = TrainReport(
        str(out),
        sum(len(e) for e, _ in sources),
        len(held_out),
        sum(int(e.targets.sum()) for e, _ in sources),
        round(data_sets.distill_seconds, 2),
        0.0,
        cfg.steps,
        world,
    )
    start = time.perf_counter()
    for step in range(first_step, cfg.steps):
        batch = batch_of(sources, step, cfg, rank, world)
        tokens, targets = batch.tokens.to(cfg.device), batch.targets.to(cfg.device)
        with torch.no_grad(), autocast():
            hidden = base.causal_hidden_states(tokens)
            embeddings = base.embedding[tokens]
            labels, scored, teacher = supervision(
                base, tokens, targets, hidden, objective.depth, cfg.self_distill
            )
            if cfg.depth_decay < 1:
                sample = depth_sample(scored.shape, step, cfg, rank, world)
                scored = scored & sample.to(scored.device)
        with autocast():
            summed, _, counted = model(
                hidden, embeddings, labels, scored, teacher if cfg.soft_labels else None
            )
        rows = _global_rows(counted.sum().detach(), world)
        # DistributedDataParallel averages gradients over ranks: scaling by world / rows makes
        # the update the mean over the global batch's rows, however they fall on the ranks.
        (summed * (world / rows)).backward()
        loss = summed.detach() / counted.sum().clamp(min=1)
        torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if on_step is not None:
            on_step(step + 1, value)
        if (step + 1) % 20 == 0 or step + 1 == cfg.steps:
            report.losses.append((step + 1, round(value, 4)))
        last = step + 1 == cfg.steps
        if rank == 0 and (last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)):
            drafter.eval()
            result = _evaluate(objective, base, held_out, cfg, autocast)
            drafter.train()
            report.evals.append({"step": step + 1, **result})
            log(f"step {step + 1}: held-out top-1 by drafted position {result['top1_by_position']}")
        if rank == 0 and not last and cfg.save_every and (step + 1) % cfg.save_every == 0:
            _save_checkpoint(checkpoint, drafter, optimizer, scheduler, step + 1, cfg)
    report.train_seconds = round(time.perf_counter() - start, 2)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_drafter(drafter.float().eval(), out)
        write_token_frequencies(
            out,
            target_token_counts(sources, base.config.vocab_size),
            "target tokens of train-drafter's training examples",
        )
        (out / "training_report.json").write_text(json.dumps(report.to_json(), indent=2))
    if world > 1:
        dist.barrier()
    return report
