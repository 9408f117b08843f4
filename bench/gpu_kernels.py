"""GPU kernel benchmarks: tree-attention bandwidth and beam-selection time (needs a GPU).

Tree attention (torch.ops.redcompile.tree_attention on CUDA) at Llama-7B head shapes: Hq = Hkv =
32, D = 128, fp16, batch 1, a 32-token tree, over 1K to 16K cached tokens (4K is the headline).
Achieved bandwidth = bytes of K/V cache read / kernel time, against the device's peak bandwidth
(memory clock x bus width) and a measured device-to-device copy. The pure-torch reference of the
op is timed on the same inputs for context. Beam selection (torch.ops.redcompile_cuda.beam_select,
one step of the drafter's search) is timed against the same selection in torch ops, as the
op's reference does it. Every timing is the median of CUDA-event-timed calls, each after the L2
cache was flushed, following warm-up calls. Writes JSON (device, versions, command, figures).

Usage (repository root, after `pip install -e . --no-deps`):

    python bench/gpu_kernels.py [--out bench/results/gpu_kernels.json] [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

# Peak DRAM bandwidth by device name (GB/s), for when the memory clock cannot be read.
KNOWN_PEAK_GBPS = {
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H200": 4800.0,
    "A100-SXM4-80GB": 2039.0,
    "A100-SXM4-40GB": 1555.0,
    "A100-PCIE-40GB": 1555.0,
    "A100 80GB PCIe": 1935.0,
    "L40S": 864.0,
}


def peak_bandwidth_gbps() -> tuple[float | None, str]:
    """Theoretical DRAM bandwidth (GB/s) and where the figure came from."""
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(torch.cuda.current_device())
        clock_khz, bus_bits = props["memoryClockRate"], props["memoryBusWidth"]
        if clock_khz and bus_bits:
            return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "cupy: 2 x memory clock x bus width"
    except Exception:  # cupy missing or the attribute unsupported
        pass
    name = torch.cuda.get_device_name()
    for key, value in KNOWN_PEAK_GBPS.items():
        if key in name:
            return value, f"datasheet figure for '{key}'"
    return None, "unknown"


class Timer:
    """Median CUDA-event time of fn(), each call after flushing the L2 cache."""

    def __init__(self, repeats: int, warmup: int = 5) -> None:
        self.repeats, self.warmup = repeats, warmup
        l2 = torch.cuda.get_device_properties(0).L2_cache_size
        self.flush_buffer = torch.empty(max(4 * l2, 256 << 20), dtype=torch.uint8, device="cuda")

    def median_ms(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            self.flush_buffer.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


def copy_bandwidth_gbps(timer: Timer) -> float:
    """Device-to-device copy of 1 GiB, counting bytes read and written."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = timer.median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def tree_inputs(cache: int, tokens: int, heads: int, dim: int, dtype, seed: int = 0):
    """Inputs of one decoding step: a random 32-token tree after `cache` cached tokens."""
    from redcompile.ops.tree_building import ancestor_mask, lifting_steps

    g = torch.Generator(device="cuda").manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, device="cuda", dtype=dtype)

    parents = torch.full((tokens,), -1, dtype=torch.int64)
    depths = torch.zeros(tokens, dtype=torch.int64)
    cpu = torch.Generator().manual_seed(seed)
    for i in range(1, tokens):
        parents[i] = int(torch.randint(0, i, (1,), generator=cpu))
        depths[i] = depths[parents[i]] + 1
    tree_mask = ancestor_mask(parents[None], depths[None], lifting_steps(int(depths.max()) + 1))
    return [
        r(1, heads, tokens, dim),
        r(1, heads, tokens, dim),
        r(1, heads, tokens, dim),
        r(1, heads, cache, dim),
        r(1, heads, cache, dim),
        torch.ones(1, 1, 1, cache, dtype=torch.bool, device="cuda"),
        tree_mask[:, None].to("cuda"),
    ]


def bench_tree_attention(timer: Timer, peak: float | None, copy_gbps: float) -> dict:
    from redcompile.ops.tree_attention import tree_attention_reference

    heads, dim, tokens, dtype = 32, 128, 32, torch.float16
    results = {}
    for cache in (1024, 4096, 16384):
        inputs = tree_inputs(cache, tokens, heads, dim, dtype)
        scale = dim**-0.5
        kernel_ms = timer.median_ms(partial(torch.ops.redcompile.tree_attention, *inputs, scale))
        reference_ms = timer.median_ms(partial(tree_attention_reference, *inputs, scale))
        cache_bytes = 2 * heads * cache * dim * inputs[3].element_size()
        all_bytes = sum(x.numel() * x.element_size() for x in inputs) + inputs[0].numel() * 2
        gbps = cache_bytes / (kernel_ms * 1e-3) / 1e9
        results[str(cache)] = {
            "kernel_ms": round(kernel_ms, 4),
            "kv_cache_bytes": cache_bytes,
            "kv_cache_gbps": round(gbps, 1),
            "all_bytes_gbps": round(all_bytes / (kernel_ms * 1e-3) / 1e9, 1),
            "fraction_of_peak": round(gbps / peak, 3) if peak else None,
            "fraction_of_measured_copy": round(gbps / copy_gbps, 3),
            "torch_reference_ms": round(reference_ms, 4),
            "speedup_vs_torch_reference": round(reference_ms / kernel_ms, 2),
        }
        print(f"tree_attention S={cache}: {kernel_ms:.4f} ms, {gbps:.0f} GB/s", flush=True)
    return {
        "shape": {
            "batch": 1,
            "q_heads": heads,
            "kv_heads": heads,
            "head_dim": dim,
            "tree_tokens": tokens,
            "dtype": "float16",
        },
        "by_cache_tokens": results,
    }


def select_reference(logits, scores, top_k):
    from redcompile.ops.drafter_beam_search import beam_select, warp_top_k

    x = logits.float()
    x = warp_top_k(x - x.amax(dim=-1, keepdim=True), top_k)
    return beam_select(scores, torch.log_softmax(x, dim=-1))


def bench_beam_select(timer: Timer) -> dict:
    results = {}
    for width, vocab, top_k in [
        (4, 32000, 50),
        (8, 32000, 50),
        (16, 32000, 50),
        (64, 32000, 64),
        (8, 128256, 50),
        (16, 151936, 0),
    ]:
        logits = torch.randn(1, width, vocab, device="cuda", dtype=torch.float16) * 3
        scores = torch.randn(1, width, device="cuda").sort(descending=True).values
        kernel_ms = timer.median_ms(
            partial(torch.ops.redcompile_cuda.beam_select, logits, scores, top_k)
        )
        torch_ms = timer.median_ms(partial(select_reference, logits, scores, top_k))
        key = f"W{width}_V{vocab}_topk{top_k}"
        results[key] = {
            "kernel_ms": round(kernel_ms, 4),
            "torch_reference_ms": round(torch_ms, 4),
            "speedup": round(torch_ms / kernel_ms, 2),
        }
        print(f"beam_select {key}: {kernel_ms:.4f} ms vs torch {torch_ms:.4f} ms", flush=True)
    return {"batch": 1, "logits_dtype": "float16", "by_shape": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_kernels.json"))
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench/gpu_kernels.py: needs an NVIDIA GPU (torch.cuda.is_available() is False)",
            file=sys.stderr,
        )
        return 2
    from redcompile import cuda

    cuda.load_library()
    timer = Timer(args.repeats)
    peak, peak_source = peak_bandwidth_gbps()
    copy_gbps = copy_bandwidth_gbps(timer)
    props = torch.cuda.get_device_properties(0)
    record = {
        "what": "CUDA kernels: tree-attention K/V-cache bandwidth (Llama-7B heads, fp16, batch 1, "
        "32-token tree) and beam-selection time vs the torch reference",
        "device": {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "peak_bandwidth_gbps": round(peak, 1) if peak else None,
            "peak_bandwidth_source": peak_source,
            "measured_copy_gbps": round(copy_gbps, 1),
        },
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "command": "python " + " ".join(sys.argv),
        "timing": f"median of {args.repeats} CUDA-event-timed calls, L2 flushed before each",
        "date": time.strftime("%Y-%m-%d"),
        "tree_attention": bench_tree_attention(timer, peak, copy_gbps),
        "beam_select": bench_beam_select(timer),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(f.name, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
