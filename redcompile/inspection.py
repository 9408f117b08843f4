"""`inspect`: what an artifact holds, without running it.

The JSON form (`describe_artifact`) is a stable contract documented in docs/cli.md: the keys
below are always present, in this order, and new keys are only ever added.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from redcompile.artifact import read_artifact
from redcompile.onnx_graphs import all_graphs

# ONNX element types under the manifest's names (float32, not ONNX's FLOAT), so inspect, the
# manifest and docs/artifact.md name dtypes alike.
ELEMENT_TYPES = {
    **{v: k.lower() for k, v in onnx.TensorProto.DataType.items()},
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
}


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in tensor.shape.dim]
    return {"name": value.name, "dtype": ELEMENT_TYPES.get(tensor.elem_type, "?"), "shape": dims}


def _weight_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return int({e.key: e.value for e in tensor.external_data}["length"])
    return len(tensor.raw_data) or tensor.ByteSize()


# The manifest fields `inspect` reports as they are, in the documented key order.
MANIFEST_FIELDS = (
    "format_version",
    "redcompile_version",
    "target",
    "mode",
    "dtype",
    "beam",
    "max_seq_len",
    "draft_top_k",
    "model",
    "drafter",
    "stop_token_ids",
)


def _manifest_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    return {key: manifest[key] for key in MANIFEST_FIELDS}


def _levels(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's speculation levels (older artifacts: none) and the branch they share."""
    return {
        "speculation_levels": manifest.get("speculation_levels", []),
        "autoregressive_branch": manifest.get("autoregressive_branch"),
    }


def _base_weights(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `base_weights` (older artifacts: float)."""
    return manifest.get("base_weights") or {"format": "float"}


def describe_artifact(path: Path | str) -> dict[str, Any]:
    """A JSON-ready description of an artifact (see docs/cli.md, `inspect --json`)."""
    from redcompile.pt2_artifact import is_pt2_file

    if Path(path).is_file() and is_pt2_file(Path(path)):
        return describe_pt2_artifact(path)
    artifact = read_artifact(path)
    model, manifest = artifact.model, artifact.manifest
    graphs = list(all_graphs(model.graph))  # the step's branches too (speculation levels)
    nodes = [n for g in graphs for n in g.node]
    domains = Counter(n.domain or "ai.onnx" for n in nodes)
    bodies = {(f.domain, f.name) for f in model.functions}
    custom = Counter(n.op_type for n in nodes if n.domain == "redcompile")
    weights = [t for g in graphs for t in g.initializer]
    external = [t for t in weights if t.data_location == onnx.TensorProto.EXTERNAL]
    return {
        "path": str(artifact.path),
        **_manifest_fields(manifest),
        "inputs": [_value_info(v) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
        "ops_by_domain": dict(sorted(domains.items())),
        "custom_ops": [
            {
                "op": f"redcompile::{name}",
                "nodes": count,
                "function_body": ("redcompile", name) in bodies,
            }
            for name, count in sorted(custom.items())
        ],
        "weights": {
            "tensors": len(weights),
            "bytes": sum(_weight_bytes(t) for t in weights),
            "external_data_file": (artifact.path.name + ".data") if external else None,
        },
        "passes": manifest["passes"],
        "sources": manifest["sources"],
        "command": manifest["command"],
        "base_weights": _base_weights(manifest),
        **_levels(manifest),
    }


def describe_pt2_artifact(path: Path | str) -> dict[str, Any]:
    """`describe_artifact` for a .pt2 package: the same keys, then `aoti` (the package's device,
    platform and CPU ISA). Ops are the torch ops the compiled code calls through the dispatcher;
    everything else is compiled into its kernels, so `ops_by_domain` counts only those."""
    from redcompile.pt2_artifact import read_pt2_artifact

    artifact = read_pt2_artifact(path)
    manifest = artifact.manifest
    model = manifest["model"]
    sizes = {
        "vocab": model["vocab_size"],
        "kv_heads": model["num_kv_heads"],
        "head_dim": model["head_dim"],
    }

    def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "name": t["name"],
                "dtype": manifest["dtype"] if t["dtype"] == "model" else t["dtype"],
                "shape": [sizes.get(d, d) for d in t["dims"]],
            }
            for t in items
        ]

    domains: Counter[str] = Counter()
    for op, count in artifact.custom_ops.items():
        domains[op.split("::")[0]] += count
    weights = manifest.get("weights", {})
    return {
        "path": str(artifact.path),
        **_manifest_fields(manifest),
        "inputs": tensors(manifest["io"]["inputs"]),
        "outputs": tensors(manifest["io"]["outputs"]),
        "ops_by_domain": dict(sorted(domains.items())),
        "custom_ops": [
            {"op": op, "nodes": count, "function_body": None}
            for op, count in artifact.custom_ops.items()
            if op.startswith("redcompile::")
        ],
        "weights": {
            "tensors": weights.get("tensors", 0),
            "bytes": weights.get("bytes", 0),
            "external_data_file": None,
        },
        "passes": manifest["passes"],
        "sources": manifest["sources"],
        "command": manifest["command"],
        "base_weights": _base_weights(manifest),
        **_levels(manifest),
        "aoti": {
            "device": artifact.aoti.get("AOTI_DEVICE_KEY", manifest.get("device")),
            "platform": artifact.aoti.get("AOTI_PLATFORM"),
            "machine": artifact.aoti.get("AOTI_MACHINE"),
            "cpu_isa": artifact.aoti.get("AOTI_CPU_ISA"),
            "compute_capability": artifact.aoti.get("AOTI_COMPUTE_CAPABILITY") or None,
            "torch_version": manifest.get("torch_version"),
        },
    }


def format_description(info: dict[str, Any]) -> str:
    """The human-readable form of `describe_artifact`."""
    lines = [
        f"{info['path']}: redcompile artifact v{info['format_version']} "
        f"(redcompile {info['redcompile_version']}), target {info['target']}",
        f"  mode {info['mode']}, beam W={info['beam']['width']} L={info['beam']['length']}"
        f"{_lookup_text(info['beam'])}, "
        f"dtype {info['dtype']}, max_seq_len {info['max_seq_len']}, "
        f"draft top_k {info['draft_top_k']}",
        f"  model {info['model']['architecture']}: {info['model']['num_layers']} layers, hidden "
        f"{info['model']['hidden_size']}, vocab {info['model']['vocab_size']}",
    ]
    if info["drafter"]:
        d = info["drafter"]
        lines.append(
            f"  drafter: {d['num_draft_layers']} blocks, exit_dim {d['exit_dim']}, "
            f"rnn {d['rnn']}{' (random)' if d.get('random') else ''}"
            + (f", drafts from {d['draft_vocab']} tokens" if d.get("draft_vocab") else "")
            + (f", {_quantized(d)} (beam search inlined)" if d.get("quantized") else "")
        )
    if info.get("speculation_levels"):
        branch = info.get("autoregressive_branch")
        shared = (
            f"; autoregressive branch shares {branch['shared_weights']} of its "
            f"{branch['weights']} initializers"
            if branch
            else ""
        )
        levels = ", ".join(info["speculation_levels"])
        lines.append(f"  speculation levels (input `speculation`): {levels}{shared}")
    base = info.get("base_weights") or {"format": "float"}
    if base["format"] != "float":
        lines.append(
            f"  base weights: {base['format']} (MatMulNBits), symmetric, blocks of "
            f"{base['block_size']} inputs, accuracy level {base['accuracy_level']}; embedding float"
        )
    w = info["weights"]
    where = f" in {w['external_data_file']}" if w["external_data_file"] else ""
    lines.append(f"  weights: {w['tensors']} tensors, {w['bytes'] / 1e6:.1f} MB{where}")
    lines.append("  ops: " + ", ".join(f"{d} {n}" for d, n in info["ops_by_domain"].items()))
    for op in info["custom_ops"]:
        if op["function_body"] is None:  # .pt2: a torch op the compiled code calls
            body = "torch op: needs `import redcompile.ops` or the cuda/ library"
        else:
            body = "function body" if op["function_body"] else "NO function body"
        lines.append(f"    {op['op']} x{op['nodes']} ({body})")
    lines.append("  inputs:")
    lines += [f"    {v['name']}: {v['dtype']} {v['shape']}" for v in info["inputs"]]
    lines.append("  outputs:")
    lines += [f"    {v['name']}: {v['dtype']} {v['shape']}" for v in info["outputs"]]
    lines.append("  passes: " + ", ".join(f"{p['name']} ({p['matches']})" for p in info["passes"]))
    if "aoti" in info:
        a = info["aoti"]
        lines.append(
            f"  compiled by AOTInductor (PyTorch {a['torch_version']}) for {a['device']} on "
            f"{a['platform']} {a['machine']}"
            + (f", CPU ISA {a['cpu_isa']}" if a["cpu_isa"] else "")
            + (f", compute capability {a['compute_capability']}" if a["compute_capability"] else "")
        )
    lines.append(f"  made by: {info['command']}")
    return "\n".join(lines)


def _quantized(drafter: dict) -> str:
    """`int4 weights in blocks of 128` (no block size where the manifest records none)."""
    block = drafter.get("quantized_block_size")
    return f"{drafter['quantized']} weights" + (f" in blocks of {block}" if block else "")


def _lookup_text(beam: dict) -> str:
    """' + 1 lookup (n-grams 3,2,1)' for a tree with lookup beams, else ''."""
    if not beam.get("lookup_beams"):
        return ""
    ngrams = ",".join(map(str, beam.get("lookup_ngrams", [])))
    return f" + {beam['lookup_beams']} lookup (n-grams {ngrams})"
