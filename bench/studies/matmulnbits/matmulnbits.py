"""One drafter vocabulary projection, x [1, K] @ W [K, 32000], as float and as the quantized
forms `--drafter-weights` writes (DequantizeLinear -> MatMul, which ONNX Runtime fuses into
MatMulNBits), at ONNX Runtime's accuracy levels 4 (its default: activations quantized too) and 1
(float activations). Medians of 15 runs, each after a 256 MB write that evicts the caches.
With `--blocks`, each quantized form at each of those block sizes instead (accuracy level 4).

    python bench/studies/matmulnbits/matmulnbits.py --json OUT.json
    python bench/studies/matmulnbits/matmulnbits.py --k 2048,4096 --blocks 32,64,128,256
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from redcompile.models.weight_quant import WEIGHT_FORMATS, WeightFormat, quantize_blockwise
from redcompile.passes.quantize_drafter import quantized_constant

VOCAB, REPEATS = 32000, 15


def projection_model(w_kn: np.ndarray, fmt: WeightFormat | None) -> onnx.ModelProto:
    """y = x @ w_kn, with w_kn float or quantized as convert quantizes the drafter."""
    k = w_kn.shape[0]
    if fmt is None:
        nodes, inits = (
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            [numpy_helper.from_array(w_kn, "w")],
        )
    else:
        q_kn, scale = quantize_blockwise(torch.from_numpy(w_kn.T.copy()), fmt)
        inits = [
            onnx_graphsurgeon_export(quantized_constant("q", q_kn.numpy(), fmt)),
            numpy_helper.from_array(scale.numpy(), "scale"),
        ]
        nodes = [
            helper.make_node(
                "DequantizeLinear", ["q", "scale"], ["w"], axis=0, block_size=fmt.block_size
            ),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "projection",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, VOCAB])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def onnx_graphsurgeon_export(constant) -> onnx.TensorProto:
    """The TensorProto of a graphsurgeon constant (as the artifact stores it)."""
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    return OnnxExporter.export_tensor_proto(constant)


def time_projection(model: onnx.ModelProto, accuracy: int | None, k: int) -> float:
    """Median milliseconds with cold caches."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    if accuracy is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy))
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, k)).astype(np.float32)
    evict = np.ones(64 * 1024 * 1024, np.float32)
    for _ in range(3):
        session.run(None, {"x": x})
    times = []
    for _ in range(REPEATS):
        np.add(evict, 1.0, out=evict)
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="1024,2048", help="Comma-separated input widths")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--blocks", help="Comma-separated block sizes to compare (level 4)")
    args = parser.parse_args()
    if args.blocks:
        cases = [
            (WeightFormat(f.name, f.bits, int(bs)), 4)
            for f in WEIGHT_FORMATS.values()
            for bs in args.blocks.split(",")
        ]
    else:
        cases = [(f, level) for f in WEIGHT_FORMATS.values() for level in (4, 1)]
    rows = []
    for k in (int(v) for v in args.k.split(",")):
        w_kn = (np.random.default_rng(0).standard_normal((k, VOCAB)) * 0.02).astype(np.float32)
        for fmt, accuracy in [(None, None), *cases]:
            ms = time_projection(projection_model(w_kn, fmt), accuracy, k)
            row = {"k": k, "weights": fmt.name if fmt else "fp32", "accuracy_level": accuracy}
            if fmt:
                row["block_size"] = fmt.block_size
            rows.append({**row, "ms": round(ms, 3)})
            print(rows[-1], flush=True)
    record = {
        "what": "x [1, K] @ W [K, 32000]: fp32 MatMul vs DequantizeLinear -> MatMul as "
        "--drafter-weights writes it (fused by ONNX Runtime into MatMulNBits), cold caches",
        "device": f"CPU {platform.machine()}, 2 threads",
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
        "command": f"python bench/studies/matmulnbits/matmulnbits.py --k {args.k}"
        + (f" --blocks {args.blocks}" if args.blocks else ""),
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
