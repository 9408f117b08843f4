"""Convert time and peak memory, for the fixture and a 1B-parameter random-weight Llama.

Each conversion runs `redcompile convert --json` in a fresh process; the peak resident memory is
the child's maximum RSS (getrusage of the finished child), compared with the bytes of weights
the artifact holds. The 1B model (Llama-3.2-1B-like shapes, fp32, one safetensors shard per
layer, plus a random 2-block drafter) is written to a scratch folder first. Usage:

    python bench/studies/convert_cost/convert_cost.py --fixture PATH/pycode-lm \
        --scratch /tmp/redcompile-bench \
        [--out bench/studies/convert_cost/convert_cost.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# random_llama.py is a fixture builder, in bench/fixtures/
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures"))
from random_llama import LLAMA_1B, write_config_and_tokenizer


def write_random_llama(folder: Path, seed: int = 0) -> int:
    """A sharded fp32 Llama folder with random weights (and a random drafter); returns #params."""
    from redcompile.models.config import DecoderConfig, RopeConfig
    from redcompile.models.drafter_io import random_drafter, save_drafter

    cfg = LLAMA_1B
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q, kv = (
        cfg["num_attention_heads"] * cfg["head_dim"],
        cfg["num_key_value_heads"] * cfg["head_dim"],
    )
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    weight_map, params = {}, 0
    shards = [
        (
            "model-embed.safetensors",
            {
                "model.embed_tokens.weight": w(v, h),
                "model.norm.weight": torch.ones(h),
                "lm_head.weight": w(v, h),
            },
        )
    ]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shards.append(
            (
                f"model-layer{layer:02d}.safetensors",
                {
                    p + "self_attn.q_proj.weight": w(q, h),
                    p + "self_attn.k_proj.weight": w(kv, h),
                    p + "self_attn.v_proj.weight": w(kv, h),
                    p + "self_attn.o_proj.weight": w(h, q),
                    p + "mlp.gate_proj.weight": w(i, h),
                    p + "mlp.up_proj.weight": w(i, h),
                    p + "mlp.down_proj.weight": w(h, i),
                    p + "input_layernorm.weight": torch.ones(h),
                    p + "post_attention_layernorm.weight": torch.ones(h),
                },
            )
        )
    for name, tensors in shards:
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = name
            params += tensor.numel()
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    write_config_and_tokenizer(folder, cfg, rope_theta=500000.0)
    base = DecoderConfig(
        architecture="llama",
        vocab_size=v,
        hidden_size=h,
        intermediate_size=i,
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        num_kv_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"],
        rope=RopeConfig(theta=500000.0),
    )
    save_drafter(random_drafter(base, seed=seed), folder / "drafter")
    return params


def convert_in_child(model: Path, out: Path, extra: list[str]) -> dict:
    """Run `redcompile convert --json` in a fresh process; add its wall time and max RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "redcompile.cli", "convert", str(model), str(out), "--json", *extra],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads(result.stdout)
    report["wall_seconds"] = round(wall, 2)
    report["child_peak_rss_bytes"] = max(peak, before) * 1024
    report["peak_rss_over_weights"] = round(
        report["child_peak_rss_bytes"] / report["weight_bytes"], 3
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, default=Path("bench/studies/convert_cost/convert_cost.json")
    )
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    runs = {}
    runs["pycode-lm (5.2M, fp32, random drafter)"] = convert_in_child(
        args.fixture, args.scratch / "fixture.onnx", ["--random-drafter"]
    )
    llama = args.scratch / "llama-1b"
    if not (llama / "config.json").exists():
        write_random_llama(llama)
    runs["llama-1b random (fp32, 2-block drafter)"] = convert_in_child(
        llama, args.scratch / "llama-1b.onnx", ["--max-seq-len", "4096"]
    )
    record = {
        "what": "redcompile convert: wall time, time per stage, peak RSS of the converting "
        "process vs the bytes of weights in the artifact",
        "device": f"CPU ({platform.machine()}), {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "command": "python bench/studies/convert_cost/convert_cost.py --fixture pycode-lm"
        " --scratch SCRATCH",
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
