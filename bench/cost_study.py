"""Step cost against tree size at production shapes, and the speedup it implies (a projection).

Random weights at "350M" Llama shapes (hidden 1024, 24 layers, 16 query / 4 key-value heads,
intermediate 2816, vocab 32000; 334M parameters, fp32) plus a random 2-block drafter, compiled
by redcompile and timed in ONNX Runtime on this CPU, batch 1, 256 cached tokens:

- t_base(T): the autoregressive artifact verifying a T-token chain (T = 1, 2, 4, ..., 64);
- t_step(W, L): a whole ReDrafter step per beam shape (drafting, tree, acceptance included),
  whose random drafter verifies about W(L-1)+1 tokens per step (few shared prefixes).

Projection, for each shape: speedup = tau(W, L) * t_base(1) / t_step'(W, L), where tau and the
verified tokens per step v(W, L) are MEASURED on the pycode-lm fixture with the trained drafter
(bench/results/pycode_shapes.json), and t_step' = t_step(W, L) - t_base(T_random) + t_base(v),
i.e. the measured step with its verification cost moved to the fixture's deduplicated tree
size (interpolated in the measured t_base curve). What is projected is that acceptance measured
on the fixture carries over to a model of these shapes.

    python bench/cost_study.py --scratch SCRATCH --shapes-record bench/results/pycode_shapes.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from random_llama import write_config_and_tokenizer
from safetensors.torch import save_file

SHAPES_350M = dict(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=64,
)
BEAMS = ((1, 3), (1, 5), (2, 5), (4, 5))  # narrow beams; each is a ~1.3 GB convert
CACHED, REPEATS = 256, 15


def write_model(folder: Path, shapes: dict, seed: int = 0) -> None:
    """A random fp32 Llama folder with a random drafter (skipped if present)."""
    from redcompile.models.config import DecoderConfig, RopeConfig
    from redcompile.models.drafter_io import random_drafter, save_drafter
    from redcompile.models.llama import Decoder

    if (folder / "config.json").exists():
        return
    cfg = DecoderConfig(
        architecture="llama",
        vocab_size=shapes["vocab_size"],
        hidden_size=shapes["hidden_size"],
        intermediate_size=shapes["intermediate_size"],
        num_layers=shapes["num_hidden_layers"],
        num_heads=shapes["num_attention_heads"],
        num_kv_heads=shapes["num_key_value_heads"],
        head_dim=shapes["head_dim"],
        rope=RopeConfig(theta=10000.0),
        max_position_embeddings=4096,
        eos_token_ids=(0,),
    )
    torch.manual_seed(seed)
    model = Decoder(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    folder.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    write_config_and_tokenizer(folder, shapes, rope_theta=10000.0)
    save_drafter(random_drafter(cfg, seed=seed), folder / "drafter")


def chain_step_ms(artifact: Path, tokens: int) -> float:
    """Median time of one step verifying a `tokens`-long chain after CACHED cached tokens."""
    from redcompile.runtime.loading import open_artifact

    backend = open_artifact(artifact).backend
    backend.reset(1, CACHED + tokens + 8)
    arrays = {
        "input_ids": np.full((1, tokens), 7, np.int64),
        "parent_ids": np.arange(-1, tokens - 1, dtype=np.int64)[None],
        "depths": np.arange(tokens, dtype=np.int64)[None],
        "num_tokens": np.array([tokens]),
        "forced": np.array([tokens]),
        "cache_lengths": np.array([CACHED]),
    }
    times = []
    for repeat in range(REPEATS + 2):
        backend.write(arrays)
        start = time.perf_counter()
        backend.step()
        if repeat >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def decode_step_ms(artifact: Path) -> tuple[float, float]:
    """Median decoding-step time and mean verified tokens, 256-token prompt, 24 new tokens."""
    from redcompile.generation import GenerationConfig
    from redcompile.runtime.loading import open_artifact

    generator = open_artifact(artifact)
    prompt = [list(np.random.default_rng(0).integers(1, 90, CACHED))]
    backend = generator.backend
    sizes: list[int] = []
    original = backend.step

    def observed():  # noqa: ANN202
        state = backend.read(["num_tokens", "forced"])
        if state["forced"][0] == 1:
            sizes.append(int(state["num_tokens"][0]))
        return original()

    backend.step = observed
    runs = []
    for _ in range(3):
        result = generator.generate_ids(
            prompt, GenerationConfig(max_new_tokens=24, stop_token_ids=(-1,))
        )
        runs.append(statistics.median(result.step_seconds[1:]) * 1e3)  # skip the prefill step
    return statistics.median(runs), float(np.mean(sizes))


def main() -> None:
    from redcompile.compiler import ConvertOptions, convert
    from redcompile.config import BeamShape

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument(
        "--shapes-record", type=Path, default=Path("bench/results/pycode_shapes.json")
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/cost_study_cpu.json"))
    args = parser.parse_args()
    folder = args.scratch / "llama-350m"
    write_model(folder, SHAPES_350M)
    ar = args.scratch / "llama-350m-ar.onnx"
    if not ar.exists():
        convert(folder, ar, options=ConvertOptions(autoregressive=True))
    base = {t: round(chain_step_ms(ar, t), 3) for t in (1, 2, 4, 8, 16, 32, 64)}
    print("t_base(T) ms:", base, flush=True)
    fixture = {
        (r["beam_width"], r["beam_length"]): r
        for r in json.loads(args.shapes_record.read_text())["results"]
        if r["engine"] != "autoregressive"
    }
    sizes, costs = np.array(list(base)), np.array(list(base.values()))
    rows = []
    for width, length in BEAMS:
        path = args.scratch / f"llama-350m-W{width}-L{length}.onnx"
        if not path.exists():
            convert(folder, path, options=ConvertOptions(beam=BeamShape(width, length)))
        step, verified_random = decode_step_ms(path)
        row = {
            "beam_width": width,
            "beam_length": length,
            "step_ms": round(step, 3),
            "verified_tokens_random_drafter": round(verified_random, 2),
        }
        measured = fixture.get((width, length))
        if measured:
            tau, verified = measured["tokens_per_step"], measured["verified_tokens_per_step"]
            adjusted = (
                step - np.interp(verified_random, sizes, costs) + np.interp(verified, sizes, costs)
            )
            row.update(
                {
                    "fixture_tokens_per_step": tau,
                    "fixture_verified_tokens": verified,
                    "projected_step_ms": round(float(adjusted), 3),
                    "projected_speedup": round(tau * base[1] / float(adjusted), 3),
                }
            )
        rows.append(row)
        print(row, flush=True)
    record = {
        "what": "step cost vs tree size at 350M Llama shapes (random weights, fp32, ONNX "
        "Runtime CPU, batch 1, 256 cached tokens) and the speedup projected with "
        "acceptance measured on pycode-lm",
        "measured": [
            "t_base(T): autoregressive artifact verifying a T-token chain",
            "step_ms: whole ReDrafter step with a random drafter",
        ],
        "projected": "projected_speedup = fixture tokens/step x t_base(1) / (step_ms with "
        "verification moved to the fixture's verified tree size)",
        "shapes": SHAPES_350M,
        "device": f"CPU {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
        "command": "python bench/cost_study.py --scratch SCRATCH",
        "t_base_ms": base,
        "shapes_tried": rows,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
