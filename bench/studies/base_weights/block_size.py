"""What `--weight-block-size` trades: the autoregressive step's speed against how close the
quantized base model stays to the float one, per block size (`--weights int4|int8`,
accuracy level 4 or 1).

Speed: autoregressive artifacts of one model, one per block size (`--artifact NAME=PATH`, each
`redcompile convert MODEL OUT --autoregressive --weights int4 --accuracy-level 4
--weight-block-size B`), decode the same prompts greedily at batch 1, taking turns prompt by
prompt within each round (this shared machine's speed changes within seconds); per round,
each artifact's seconds over the first artifact's; median and range over the rounds.

Quality: the float checkpoint and, per artifact, a copy with the weights its manifest names
(models/weight_quant.py, the arithmetic the artifact carries; at accuracy level 4 each
matrix product's input rounded to int8 per block, as MatMulNBits does) read the prompts
teacher-forced. At every position: whether the quantized model's most likely next token is
the float model's, KL(float || quantized) of the next-token distributions, and the
quantized model's perplexity of the prompt text.

    python bench/studies/base_weights/block_size.py MODEL --prompts-file P.jsonl \
        --artifact b32=ar-int4-b32.onnx --artifact b128=ar-int4-b128.onnx --json OUT.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from redcompile.benchmarking.machine import portable_argument
from redcompile.generation import GenerationConfig
from redcompile.models.weight_quant import base_weights_of, fake_quantize, round_activations
from redcompile.prompts import read_prompts_file
from redcompile.runtime.loading import open_artifact
from redcompile.runtime.session import session_options


def quantized(model: torch.nn.Module, manifest: dict) -> torch.nn.Module:
    """A copy of the Hugging Face `model` with the base weights `manifest` records."""
    weights = base_weights_of(manifest)
    copy_ = copy.deepcopy(model)
    if weights.fmt is None:
        return copy_
    block = weights.fmt.block_size

    def round_input(_module, args):
        return (round_activations(args[0], block), *args[1:])

    with torch.no_grad():
        copy_.lm_head.weight = torch.nn.Parameter(copy_.lm_head.weight.detach().clone())
        for module in [*copy_.model.layers.modules(), copy_.lm_head]:
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(fake_quantize(module.weight, weights.fmt))
                if weights.accuracy_level == 4:
                    module.register_forward_pre_hook(round_input)
    return copy_


@torch.no_grad()
def log_probs(model: torch.nn.Module, ids: list[list[int]]) -> list[torch.Tensor]:
    """Next-token log-probabilities [T, V] of each prompt, teacher-forced."""
    return [torch.log_softmax(model(torch.tensor([x])).logits[0].float(), -1) for x in ids]


def closeness(reference: list[torch.Tensor], other: list[torch.Tensor], ids) -> dict:
    """Top-1 agreement and mean KL against `reference`, and `other`'s perplexity."""
    agree = positions = 0
    kl = nll = 0.0
    predicted = 0
    for ref, q, x in zip(reference, other, ids):
        agree += int((ref.argmax(-1) == q.argmax(-1)).sum())
        positions += ref.shape[0]
        kl += float((ref.exp() * (ref - q)).sum())
        targets = torch.tensor(x[1:])
        nll -= float(q[:-1].gather(1, targets[:, None]).sum())
        predicted += len(targets)
    return {
        "top1_agreement": round(agree / positions, 4),
        "mean_kl": round(kl / positions, 5),
        "perplexity": round(float(np.exp(nll / predicted)), 3),
        "positions": positions,
    }


def timed(engines: dict, ids: list[list[int]], rounds: int, new_tokens: int) -> dict:
    """Per round, each engine's seconds over all prompts, prompt by prompt in turn."""
    cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=1)
    names = list(engines)
    for engine in engines.values():
        engine.generate_ids(ids[:2], cfg)  # warm-up
    seconds = {name: [] for name in names}
    for index in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        for number, prompt in enumerate(ids):
            for name in names if (index + number) % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                engines[name].generate_ids([prompt], cfg)
                spent[name] += time.perf_counter() - start
        for name in names:
            seconds[name].append(round(spent[name], 4))
    return seconds


def main() -> None:
    """Parse options, measure speed and closeness, print and write the record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--prompts-file", type=Path, required=True)
    parser.add_argument("--artifact", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    paths = dict(item.split("=", 1) for item in args.artifact)
    engines = {
        name: open_artifact(Path(path), session_options=session_options(args.threads))
        for name, path in paths.items()
    }
    first = next(iter(engines.values()))
    texts = read_prompts_file(args.prompts_file)
    ids = [first.codec.encode(t) for t in texts]
    seconds = timed(engines, ids, args.rounds, args.max_new_tokens)
    base = next(iter(seconds.values()))
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=torch.float32).eval()
    reference = log_probs(model, ids)
    rows = {}
    for name, engine in engines.items():
        manifest = engine.backend.manifest
        ratios = sorted(own / b for own, b in zip(seconds[name], base))
        rows[name] = {
            "artifact": Path(paths[name]).name,
            "base_weights": manifest.get("base_weights"),
            "rounds_s": seconds[name],
            "seconds_over_first": round(statistics.median(ratios), 3),
            "range": [round(ratios[0], 3), round(ratios[-1], 3)],
            **closeness(reference, log_probs(quantized(model, manifest), ids), ids),
        }
    record = {
        "question": "what --weight-block-size trades: step speed against closeness to float",
        "command": "python bench/studies/base_weights/block_size.py "
        + " ".join(portable_argument(a) for a in sys.argv[1:]),
        "model": str(args.model_dir),
        "prompts": len(ids),
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "threads": args.threads,
        "float": closeness(reference, reference, ids),
        "artifacts": rows,
        "machine": f"{platform.machine()}, onnxruntime {ort.__version__}, "
        f"torch {torch.__version__}",
    }
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
