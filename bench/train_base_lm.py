"""Train a larger pycode-lm: a Llama code model from scratch on the fixture's corpus and tokenizer.

The 5M-parameter fixture is too small for a decoding step to be memory-bound on a CPU, so its
end-to-end speedup says little about real models. This trains one of about 100M parameters
(hidden 768, 16 layers, 12 query / 4 key-value heads, 4096-token vocabulary: 107M) on the same
standard-library files with the same tokenizer, written as a Hugging Face folder that is a drop-in
fixture (config.json, model.safetensors, the fixture's tokenizer, train_files.txt and
dev_prompts.jsonl), so that `bench/pycode_recipe.sh` and `redcompile bench` run on it unchanged.
The fixture's recipe, scaled: next-token cross-entropy on random 512-token windows of the
corpus, AdamW (0.9, 0.95, weight decay 0.1), linear warm-up then cosine decay to a tenth,
gradient clipping at 1, bf16 autocast on CUDA; the last 1% of the corpus is held out for the
evaluation loss. Meant for the GPU machine (`bench/large_fixture.sh`); `--size tiny` runs
anywhere.

    python bench/train_base_lm.py --fixture PATH/pycode-lm --data WORK/corpus.jsonl \
        --out WORK/pycode-lm-100m --device cuda
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from random_llama import LLAMA_TINY
from tqdm import tqdm

from redcompile.tokenizer import TextCodec
from redcompile.training.data import read_corpus, token_stream

SIZES = {
    "100m": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=16,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
    ),
    "tiny": {k: v for k, v in LLAMA_TINY.items() if k != "vocab_size"},  # for tests
}
# Copied from the fixture so that the new folder is a fixture too.
FIXTURE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "train_files.txt",
    "dev_prompts.jsonl",
)
HELD_OUT_FRACTION = 0.01


def model_config(fixture_config: dict, size: str):  # a transformers LlamaConfig
    """A LlamaConfig of `size` with the fixture's vocabulary, special tokens and rope."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=fixture_config["vocab_size"],
        max_position_embeddings=fixture_config["max_position_embeddings"],
        rms_norm_eps=fixture_config["rms_norm_eps"],
        rope_parameters=fixture_config["rope_parameters"],
        bos_token_id=fixture_config["bos_token_id"],
        eos_token_id=fixture_config["eos_token_id"],
        tie_word_embeddings=False,
        **SIZES[size],
    )


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to a tenth of it at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def windows(stream: np.ndarray, starts: np.ndarray, seq_len: int, device: str) -> torch.Tensor:
    """[len(starts), seq_len] token windows of `stream` beginning at `starts`."""
    index = starts[:, None] + np.arange(seq_len)[None]
    return torch.from_numpy(stream[index]).to(device)


@torch.no_grad()
def evaluation_loss(model, stream: np.ndarray, seq_len: int, batch: int, device: str) -> float:
    """Mean next-token loss over the held-out stream's non-overlapping windows."""
    model.eval()
    starts = np.arange(0, len(stream) - seq_len, seq_len)
    losses = []
    for first in range(0, len(starts), batch):
        tokens = windows(stream, starts[first : first + batch], seq_len, device)
        with autocast(device):
            losses.append(float(model(input_ids=tokens, labels=tokens).loss))
    model.train()
    return float(np.mean(losses))


def autocast(device: str) -> torch.autocast:
    """bf16 autocast on CUDA; float32 elsewhere (a CPU run is a test, not a training run)."""
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")


def train(args: argparse.Namespace) -> dict:
    """Train and save the model; returns the training record."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    codec = TextCodec.from_file(args.fixture / "tokenizer.json")
    fixture_config = json.loads((args.fixture / "config.json").read_text())
    stream = token_stream(read_corpus(args.data), codec.encode, fixture_config["eos_token_id"])
    held_out = max(args.seq_len + 1, int(len(stream) * HELD_OUT_FRACTION))
    train_stream, eval_stream = stream[:-held_out], stream[-held_out:]
    if len(train_stream) <= args.seq_len:
        raise SystemExit(
            f"the corpus has {len(stream)} tokens, too few for {args.seq_len}-token windows"
        )

    model = LlamaForCausalLM(model_config(fixture_config, args.size)).to(args.device).train()
    parameters = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=args.device == "cuda",
    )
    warmup = max(1, args.steps // 50)
    evaluate = functools.partial(
        evaluation_loss, model, eval_stream, args.seq_len, args.batch_size, args.device
    )
    losses, evals, start = [], [], time.time()
    bar = tqdm(range(args.steps), desc="train", disable=args.quiet)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup)
        starts = rng.integers(0, len(train_stream) - args.seq_len, args.batch_size)
        tokens = windows(train_stream, starts, args.seq_len, args.device)
        with autocast(args.device):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.log_every == 0 or step == args.steps - 1:
            losses.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{losses[-1]['loss']:.3f}")
        if args.eval_every and step and step % args.eval_every == 0:
            evals.append({"step": step, "loss": round(evaluate(), 4)})
    seconds = time.time() - start
    evals.append({"step": args.steps, "loss": round(evaluate(), 4)})

    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float32).save_pretrained(args.out)
    for name in FIXTURE_FILES:
        if (args.fixture / name).exists():
            shutil.copy(args.fixture / name, args.out / name)
    record = {
        "what": f"pycode-lm at {args.size} ({parameters} parameters) trained from scratch on "
        "the fixture's corpus with its tokenizer",
        "parameters": parameters,
        "config": SIZES[args.size],
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "tokens_seen": args.steps * args.batch_size * args.seq_len,
        "corpus_tokens": int(len(stream)),
        "held_out_tokens": int(held_out),
        "peak_lr": args.lr,
        "seed": args.seed,
        "train_loss": losses,
        "eval_loss": evals,
        "train_seconds": round(seconds, 1),
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU {platform.machine()}",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "command": "python bench/train_base_lm.py --fixture FIXTURE --data "
        + " ".join(map(str, args.data))
        + f" --out OUT --size {args.size} --steps {args.steps} --batch-size {args.batch_size}"
        f" --seq-len {args.seq_len} --lr {args.lr} --seed {args.seed} --device {args.device}",
    }
    (args.out / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fixture", type=Path, required=True, help="pycode-lm (tokenizer, prompts)"
    )
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="Corpus (JSONL, text)")
    parser.add_argument("--out", type=Path, required=True, help="Folder to write the model to")
    parser.add_argument("--size", choices=sorted(SIZES), default="100m")
    parser.add_argument(
        "--steps", type=int, default=2000, help="2000 x 32 x 512: 33M tokens, about 4 epochs"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=1000, help="0: only at the end")
    parser.add_argument("--quiet", action="store_true", help="No progress bar")
    args = parser.parse_args()
    record = train(args)
    print(
        json.dumps(
            {k: record[k] for k in ("parameters", "tokens_seen", "train_seconds", "eval_loss")}
        )
    )


if __name__ == "__main__":
    main()
