"""Can ReDrafter decode exactly as autoregressive decoding when MatMulNBits rounds activations
to int8 (`--weights int4 --accuracy-level 4`)? What decides it, and what the fix costs.

Part 1, the kernels (ONNX Runtime's CPU ops in isolation, one thread, random data): whether a
row's result depends on how many rows share the call.
- MatMulNBits (int4, blocks of 32) at accuracy levels 1 and 4: each of 16 rows computed alone
  against the same rows in products of M = 1 ... 16 rows; elements that differ. And at level
  4 the products of M rows against one product of all 16 (whether two rows or more agree).
- GroupQueryAttention (RoPE, shared past/present cache, `query_seqlens`): six tokens as one
  chain against each token decoded alone, (a) as a row of one query, (b) padded with a zero
  token to two queries counting one of them, (c) padded and counting both (what
  fuse-chain-attention's `pad_queries` does); elements that differ per token.

Part 2, the tokens: an autoregressive and a lookup-only artifact (W0-L5-K1, one chain per
row, attending with GroupQueryAttention) of MODEL at `--weights int4 --accuracy-level 4`,
unpadded (as before `pad_queries`; built here by switching the pass option off and the
compiler's refusal of it), with only the attention rows padded (as before pad-lone-token) and
padded both ways (what `convert` writes); the prompts decoded greedily by both at batch 1 and
8, prompts whose tokens are identical; and each autoregressive artifact at batch 1 against
itself at batch 8.

Part 3, the cost: the three autoregressive artifacts step by step at batch 1, one thread,
taking turns prompt by prompt; median seconds per decoding step of each.

    python bench/studies/exact_int8_activations/chain_identity.py MODEL \
        --prompts-file P.jsonl [--prompts-file Q.jsonl] --work-dir W --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from redcompile.benchmarking.machine import cpu_description
from redcompile.compiler import ConvertOptions, convert
from redcompile.config import BeamShape
from redcompile.generation import GenerationConfig
from redcompile.models.weight_quant import parse_base_weights
from redcompile.prompts import read_prompts_file
from redcompile.runtime.loading import open_artifact
from redcompile.runtime.session import session_options

OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]


def _session(nodes, inputs, outputs, initializers) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = helper.make_model(graph, opset_imports=OPSETS)
    return ort.InferenceSession(model.SerializeToString(), options)


def matmulnbits_rows(
    level: int, k: int = 768, n: int = 256, block: int = 32, against: str = "alone"
) -> list[int]:
    """Per M = 1 ... 16: elements of an [M, n] MatMulNBits product that differ from the same
    rows computed one at a time (`against` "alone") or in one product of all 16 ("sixteen":
    whether products of two rows or more agree among themselves)."""
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, size=(n, k // block, block // 2), dtype=np.uint8)
    scales = (rng.random(n * (k // block)) * 0.05).astype(np.float32)
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "S"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=block,
        accuracy_level=level,
    )
    session = _session(
        [node],
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")],
    )
    a = rng.standard_normal((16, k)).astype(np.float32)
    if against == "alone":
        want = np.stack([session.run(None, {"A": a[i : i + 1]})[0][0] for i in range(16)])
    else:
        want = session.run(None, {"A": a})[0]
    return [int((session.run(None, {"A": a[:m]})[0] != want[:m]).sum()) for m in range(1, 17)]


def attention_rows(heads: int = 8, kv_heads: int = 4, head_dim: int = 32) -> dict[str, list]:
    """Per way of decoding a token alone: elements of its attention output that differ from
    the same token's inside a chain of six."""
    rng = np.random.default_rng(1)
    past, capacity, width = 20, 64, (heads + 2 * kv_heads) * head_dim
    angles = np.arange(128)[:, None] / 10000 ** (np.arange(head_dim // 2) / (head_dim // 2))
    tables = [np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)]
    node = helper.make_node(
        "GroupQueryAttention",
        ["qkv", "", "", "pk", "pv", "sk", "total", "cos", "sin", *[""] * 7, "qs"],
        ["y", "k", "v"],
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv_heads,
        do_rotary=1,
        scale=head_dim**-0.5,
    )
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    session = _session(
        [node],
        [
            helper.make_tensor_value_info("qkv", f32, [1, "T", width]),
            helper.make_tensor_value_info("pk", f32, [1, kv_heads, capacity, head_dim]),
            helper.make_tensor_value_info("pv", f32, [1, kv_heads, capacity, head_dim]),
            helper.make_tensor_value_info("sk", i32, [1]),
            helper.make_tensor_value_info("total", i32, [1]),
            helper.make_tensor_value_info("qs", i32, [1]),
        ],
        [helper.make_tensor_value_info(name, f32, None) for name in ("y", "k", "v")],
        [numpy_helper.from_array(t, name) for t, name in zip(tables, ("cos", "sin"))],
    )
    cache = rng.standard_normal((2, 1, kv_heads, capacity, head_dim)).astype(np.float32)
    qkv = rng.standard_normal((1, 6, width)).astype(np.float32)

    def attend(x, k, v, cached, queries):
        feeds = {"qkv": x, "pk": k, "pv": v, "qs": np.array([queries], np.int32)}
        feeds["sk"] = np.array([cached + queries - 1], np.int32)
        feeds["total"] = np.array([cached + x.shape[1]], np.int32)
        return session.run(None, feeds)

    chain = attend(qkv, cache[0], cache[1], past, 6)[0][0]
    out = {}
    for name, pad, queries in (
        ("one query", False, 1),
        ("padded, one query counted", True, 1),
        ("padded, both counted (pad_queries)", True, 2),
    ):
        k, v = cache[0], cache[1]
        diffs = []
        for t in range(6):
            x = qkv[:, t : t + 1]
            if pad:
                x = np.concatenate([x, np.zeros_like(x)], axis=1)
            y, k, v = attend(x, k, v, past + t, queries)
            diffs.append(int((y[0, 0] != chain[t]).sum()))
        out[name] = diffs
    return out


PADS = ("unpadded", "attention-padded", "padded")  # padded: attention and lone tokens


def build(model_dir: Path, work: Path, name: str, beam: BeamShape | None, pad: str) -> Path:
    """An int4, accuracy level 4 artifact of MODEL: its rows `pad` (PADS): not at all, only
    its attention rows (fuse-chain-attention's pad_queries, without pad-lone-token), or both
    (what `convert` writes)."""
    import redcompile.compiler as compiler
    from redcompile.passes import fuse_chain_attention, pad_lone_token

    out = work / f"{name}.onnx"
    if out.exists():
        return out
    weights = parse_base_weights("int4", 32, 4)
    options = (
        ConvertOptions.of(autoregressive=True, base_weights=weights)
        if beam is None
        else ConvertOptions.of(beam=beam, base_weights=weights)
    )
    plain_init = fuse_chain_attention.FuseChainAttention.__init__
    plain_check = compiler._check_base_weights
    plain_match = pad_lone_token.PadLoneToken.match
    plain_verify = pad_lone_token.PadLoneToken.verify
    if pad == "unpadded":  # the step as it was before pad_queries, and no refusal of it

        def unpadded(self, cos, sin, pad_queries=False):
            plain_init(self, cos, sin, False)

        fuse_chain_attention.FuseChainAttention.__init__ = unpadded
        compiler._check_base_weights = lambda f, target: f.base_weights
    if pad != "padded":  # the step as it was before pad-lone-token
        pad_lone_token.PadLoneToken.match = lambda self, graph, ctx: iter(())
        pad_lone_token.PadLoneToken.verify = lambda self, graph, ctx: None
    try:
        convert(model_dir, out, options)
    finally:
        fuse_chain_attention.FuseChainAttention.__init__ = plain_init
        compiler._check_base_weights = plain_check
        pad_lone_token.PadLoneToken.match = plain_match
        pad_lone_token.PadLoneToken.verify = plain_verify
    return out


def identical(
    a: Path, b: Path, prompts: list[list[int]], batch: int, batch_a: int | None = None
) -> dict:
    """Prompts whose greedy tokens are the same from artifacts a (at `batch_a` rows, default
    `batch`) and b (at `batch`)."""
    runs = [open_artifact(p, session_options=session_options(1)) for p in (a, b)]
    first, second = (
        r.generate_ids(prompts, GenerationConfig(max_new_tokens=128, batch_size=size))
        for r, size in zip(runs, (batch_a or batch, batch))
    )
    same = sum(x.token_ids == y.token_ids for x, y in zip(first.completions, second.completions))
    return {
        "identical": f"{same}/{len(prompts)}",
        "tokens_per_step": round(second.tokens_per_step, 3),
    }


def step_cost(paths: dict[str, Path], prompts: list[list[int]], rounds: int) -> dict:
    """Median seconds per decoding step of each artifact (batch 1, one thread, prompt by
    prompt in turns), and each one's over the first's."""
    engines = {n: open_artifact(p, session_options=session_options(1)) for n, p in paths.items()}
    cfg = GenerationConfig(max_new_tokens=128, batch_size=1)
    steps = {n: [] for n in engines}
    for index in range(rounds):
        for number, prompt in enumerate(prompts):
            order = list(engines) if (index + number) % 2 == 0 else list(engines)[::-1]
            for name in order:
                steps[name].extend(engines[name].generate_ids([prompt], cfg).step_seconds[1:])
    medians = {n: statistics.median(s) for n, s in steps.items()}
    first = next(iter(medians.values()))
    return {
        n: {"step_us": round(1e6 * m, 1), "over_first": round(m / first, 3)}
        for n, m in medians.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--prompts-file", type=Path, action="append", required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    kernels = {
        "matmulnbits_elements_differing_per_rows": {
            f"level {level}": matmulnbits_rows(level) for level in (1, 4)
        },
        "matmulnbits_elements_differing_from_sixteen_rows": {
            "level 4": matmulnbits_rows(4, against="sixteen")
        },
        "attention_elements_differing_per_token": attention_rows(),
    }
    say(json.dumps(kernels))
    lookup = BeamShape(0, 5, lookup=1)
    paths = {
        f"{kind}-{pad}": build(args.model_dir, args.work_dir, f"{kind}-{pad}", beam, pad)
        for kind, beam in (("ar", None), ("lookup", lookup))
        for pad in PADS
    }
    texts = [t for f in args.prompts_file for t in read_prompts_file(f)]
    codec = open_artifact(paths["ar-padded"]).codec
    prompts = [codec.encode(t) for t in texts]
    tokens = {}
    for pad in PADS:
        for batch in (1, 8):
            key = f"{pad}, batch {batch}"
            tokens[key] = identical(paths[f"ar-{pad}"], paths[f"lookup-{pad}"], prompts, batch)
            say(f"lookup vs autoregressive, {key}: {tokens[key]}")
    # the reference itself: the autoregressive artifact at batch 1 against batch 8
    batches = {
        pad: identical(paths[f"ar-{pad}"], paths[f"ar-{pad}"], prompts, 8, batch_a=1)["identical"]
        for pad in PADS
    }
    say(f"autoregressive at batch 1 vs batch 8: {batches}")
    cost = step_cost({f"ar-{pad}": paths[f"ar-{pad}"] for pad in PADS}, prompts[:32], args.rounds)
    say(json.dumps(cost))
    record = {
        "command": " ".join(["chain_identity.py", *[Path(a).name for a in sys.argv[1:]]]),
        "machine": {
            "cpu": cpu_description(),
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "python": platform.python_version(),
        },
        "model": str(args.model_dir),
        "prompts": len(prompts),
        "kernels": kernels,
        "lookup_vs_autoregressive_tokens": tokens,
        "autoregressive_batch_1_vs_8": batches,
        "autoregressive_step_cost": cost,
        "seconds": round(time.process_time(), 1),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
