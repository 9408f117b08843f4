"""Shared test helpers: single-op ONNX models, tiny Hugging Face model folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from redcompile.example import char_tokenizer_json
from redcompile.ops.onnx_builder import spec_from_node
from redcompile.ops.opdef import BODY_OPSET, DOMAIN, DOMAIN_VERSION, ONNX_IR_VERSION, OpDef

# The trained benchmark fixture beside the checkout (../shared/fixtures/pycode-lm), used by the
# `slow` end-to-end tests (python -m pytest -m slow) and a few fast ones that read its files.
BENCHMARK_FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pycode-lm"

ONNX_TYPES = {
    torch.float32: onnx.TensorProto.FLOAT,
    torch.float16: onnx.TensorProto.FLOAT16,
    torch.int64: onnx.TensorProto.INT64,
    torch.bool: onnx.TensorProto.BOOL,
}


def single_op_model(
    op: OpDef, inputs: list, attrs: dict, static_dims: bool = True
) -> onnx.ModelProto:
    """A model holding one `redcompile` node of `op` with its function body attached.

    With `static_dims` the body knows the sizes its op asks for (`OpDef.static_dims`), as it
    does in a compiled graph; without, it reads them from the inputs' shapes.
    """
    names = [name if t is not None else "" for name, t in zip(op.input_names, inputs)]
    graph_inputs = [
        helper.make_tensor_value_info(
            name, ONNX_TYPES[t.dtype], [f"{name}_{i}" for i in range(t.dim())]
        )
        for name, t in zip(op.input_names, inputs)
        if t is not None
    ]
    outputs = [helper.make_empty_tensor_value_info(name) for name in op.output_names]
    node = helper.make_node(op.onnx_name, names, list(op.output_names), domain=DOMAIN, **attrs)
    types = {
        name: (ONNX_TYPES[t.dtype] if t is not None else None)
        for name, t in zip(op.input_names, inputs)
    }
    shapes = {name: tuple(t.shape) for name, t in zip(op.input_names, inputs) if t is not None}
    by_name = dict(zip(op.input_names, inputs))
    static = (
        {(n, a): int(by_name[n].shape[a]) for n, a in op.static_dims if by_name[n] is not None}
        if static_dims
        else {}
    )
    body = op.build_body(spec_from_node(op, attrs, types, shapes, static))
    graph = helper.make_graph([node], op.onnx_name, graph_inputs, outputs)
    model = helper.make_model(
        graph,
        functions=[body],
        ir_version=ONNX_IR_VERSION,
        opset_imports=[
            helper.make_opsetid("", BODY_OPSET),
            helper.make_opsetid(DOMAIN, DOMAIN_VERSION),
        ],
    )
    return model


def run_op_body(op: OpDef, inputs: list, attrs: dict, static_dims: bool = True) -> list[np.ndarray]:
    """Run `op`'s ONNX function body in stock ONNX Runtime (CPU) on torch inputs."""
    model = single_op_model(op, inputs, attrs, static_dims)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(op.input_names, inputs) if t is not None}
    return session.run(list(op.output_names), feeds)


# ---------------------------------------------------------------------------------------------
# Tiny Hugging Face model folders, written with transformers' own save_pretrained.

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
)
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")

# Prompts of different lengths (token ids < 97, the tiny vocabulary) for batch tests.
PROMPTS = [
    [5, 17, 33],
    [40, 2, 9, 61, 8, 30, 12],
    [3],
    [70, 71, 72, 73, 74],
    [11, 12],
    [90, 1, 2, 3, 4, 5, 6, 7, 8],
    [20, 21],
    [33, 34, 35],
]


def save_tiny_model(
    path,
    arch: str = "llama",
    *,
    tie: bool = False,
    dtype=None,
    seed: int = 0,
    rope_scaling: dict | None = None,
    max_shard_size: str | None = None,
    eos_token_id: int | None = 0,
    **overrides,
):
    """Save a randomly initialised tiny `arch` model (and a tokenizer) to `path`; return path."""
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }
    config_cls, model_cls = classes[arch]
    kwargs = {
        **TINY,
        "tie_word_embeddings": tie,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
        **overrides,
    }
    if rope_scaling is not None:
        kwargs["rope_parameters"] = {"rope_theta": 10000.0, **rope_scaling}
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # larger weights than the default init: peakier, more varied logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    if dtype is not None:
        model = model.to(dtype)
    save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **save_kwargs)
    (path / "tokenizer.json").write_text(char_tokenizer_json())
    return path


def hf_model(path):
    """Load a saved folder with transformers (the parity oracle)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def chi_square_p_value(observed, expected_probs, min_expected=5.0):
    """Pearson's chi-square p-value of counts against probabilities, cells with too small an
    expectation pooled into one; the tail is the regularised upper incomplete gamma function."""
    n = sum(observed)
    cells, pooled_o, pooled_e = [], 0, 0.0
    for o, p in zip(observed, expected_probs):
        if n * p >= min_expected:
            cells.append((o, n * p))
        else:
            pooled_o, pooled_e = pooled_o + o, pooled_e + n * p
    if pooled_e > 0:
        cells.append((pooled_o, pooled_e))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    if dof < 1:
        return 1.0
    tail = torch.special.gammaincc(
        torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)
    )
    return float(tail)


def branch_graphs(model: onnx.ModelProto) -> dict[str, onnx.GraphProto]:
    """The step graphs of an artifact: `tree` (the speculative step: the levels If's else
    branch, or the main graph of an artifact without levels) and, with levels, `autoregressive`
    (its then branch)."""
    from redcompile.passes.speculation_levels import CHOOSE_NODE

    for node in model.graph.node:
        if node.op_type == "If" and node.name == CHOOSE_NODE:
            branches = {a.name: a.g for a in node.attribute}
            return {"tree": branches["else_branch"], "autoregressive": branches["then_branch"]}
    return {"tree": model.graph}
