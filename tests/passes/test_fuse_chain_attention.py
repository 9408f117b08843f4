"""fuse-chain-attention on the exported step of tiny models: it fires once per layer, the fused
graph computes every output as the unfused one does (prefill, decoding and idle rows in one
batch, the cache included), with rows padded to two queries too, a second run finds nothing,
and head sizes ONNX Runtime's kernel refuses are rejected with a reason. Also what the padding
rests on: ONNX Runtime's GroupQueryAttention gives a padded row's token exactly what it gives
the same token in a chain."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from redcompile.api import open_model_folder
from redcompile.compiler import _chain_rope_tables, _export_to
from redcompile.passes.base import PassContext
from redcompile.passes.fuse_chain_attention import FuseChainAttention
from redcompile.passes.manager import PassManager
from redcompile.passes.pipelines import pipeline
from support import save_tiny_model


def compiled(folder, tmp_path, fused: bool, pad: bool = False):
    """The tiny model's autoregressive step through the onnxruntime pipeline, with or
    without fuse-chain-attention (`pad`: its rows padded to two queries); returns (model,
    pass records, rejections, rope tables)."""
    step = open_model_folder(folder, autoregressive=True).backend.module
    work = tmp_path / ("padded" if pad else "fused" if fused else "plain")
    work.mkdir()
    path = _export_to(work, step)
    tables = _chain_rope_tables(step)
    passes = pipeline(
        "onnxruntime", step.signature, "float32", rope_tables=tables if fused else None
    )
    for graph_pass in passes:
        if isinstance(graph_pass, FuseChainAttention):
            graph_pass.pad_queries = pad
    ctx = PassContext(target="onnxruntime", weights_dir=work)
    model, records = PassManager(passes).run(onnx.load(str(path), load_external_data=False), ctx)
    onnx.load_external_data_for_model(model, str(work))
    return model, records, ctx.rejections, tables


def step_feeds(model: onnx.ModelProto, capacity: int = 16) -> dict:
    """Three rows: a 4-token prompt chunk, one decoding token after 5 cached ones, idle."""
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        dims = [
            d.dim_value or {"batch": 3, "tokens": 4, "cache": capacity}[d.dim_param]
            for d in value.type.tensor_type.shape.dim
        ]
        if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            feeds[value.name] = np.zeros(dims, np.int64)
        else:
            feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    feeds["input_ids"][:] = [[5, 9, 2, 7], [11, 0, 0, 0], [0, 0, 0, 0]]
    feeds["parent_ids"][:] = [[-1, 0, 1, 2], [-1, -1, -1, -1], [-1, -1, -1, -1]]
    feeds["depths"][:] = [[0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 0, 0]]
    feeds["num_tokens"][:] = [4, 1, 0]
    feeds["forced"][:] = [4, 1, 0]
    feeds["cache_lengths"][:] = [0, 5, 0]
    feeds["temperature"][:] = 0
    return feeds


def run(model: onnx.ModelProto, feeds: dict) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.mark.parametrize(
    "arch, pad",
    [("llama", False), ("qwen3", False), ("llama", True)],
    ids=["llama", "qwen3", "padded"],
)
def test_fused_step_computes_what_the_tree_step_does(tiny_models, tmp_path, arch, pad):
    plain, _, _, _ = compiled(tiny_models[arch], tmp_path, fused=False)
    fused, records, _, _ = compiled(tiny_models[arch], tmp_path, fused=True, pad=pad)
    assert dict((r.name, r.matches) for r in records)["fuse-chain-attention"] == 2
    kinds = [n.op_type for n in fused.graph.node]
    assert "GroupQueryAttention" in kinds
    assert not set(kinds) & {"TreeAttention", "KVCompaction", "AncestorMask"}
    assert kinds.count("Pad") == (2 if pad else 0)
    feeds = step_feeds(plain)
    want, got = run(plain, feeds), run(fused, feeds)
    for name, value in want.items():
        if name.startswith("present."):  # rows' valid entries: the rest is never read
            for row, length in enumerate([4, 6, 0]):
                np.testing.assert_allclose(
                    got[name][row, :, :length], value[row, :, :length], rtol=1e-4, atol=1e-5
                )
        else:
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_second_run_finds_nothing(tiny_models, tmp_path):
    fused, _, _, tables = compiled(tiny_models["llama"], tmp_path, fused=True)
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(fused)
    assert list(FuseChainAttention(*tables).match(graph, PassContext())) == []


def test_head_sizes_the_kernel_refuses_are_rejected_with_a_reason(tmp_path):
    folder = save_tiny_model(tmp_path / "d8", "llama", head_dim=8, num_attention_heads=8)
    model, records, rejections, _ = compiled(folder, tmp_path, fused=True)
    assert dict((r.name, r.matches) for r in records)["fuse-chain-attention"] == 0
    assert any("multiple of 16" in r.reason for r in rejections)
    assert "TreeAttention" in {n.op_type for n in model.graph.node}


def _gqa_session(heads: int, kv_heads: int, head_dim: int, tables) -> ort.InferenceSession:
    """One GroupQueryAttention with RoPE and query_seqlens, as the pass writes it."""
    f32, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    inputs = ["qkv", "", "", "past_k", "past_v", "seqlens_k", "total", "cos", "sin"]
    node = onnx.helper.make_node(
        "GroupQueryAttention",
        [*inputs, *[""] * 7, "query_seqlens"],
        ["y", "present_k", "present_v"],
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv_heads,
        do_rotary=1,
        scale=head_dim**-0.5,
    )
    width = (heads + 2 * kv_heads) * head_dim
    cache = [1, kv_heads, "S", head_dim]
    graph = onnx.helper.make_graph(
        [node],
        "gqa",
        [
            onnx.helper.make_tensor_value_info("qkv", f32, [1, "T", width]),
            onnx.helper.make_tensor_value_info("past_k", f32, cache),
            onnx.helper.make_tensor_value_info("past_v", f32, cache),
            onnx.helper.make_tensor_value_info("seqlens_k", i32, [1]),
            onnx.helper.make_tensor_value_info("total", i32, [1]),
            onnx.helper.make_tensor_value_info("query_seqlens", i32, [1]),
        ],
        [onnx.helper.make_tensor_value_info(n, f32, None) for n in node.output],
        initializer=[
            onnx.numpy_helper.from_array(np.ascontiguousarray(t), n)
            for t, n in zip(tables, ("cos", "sin"))
        ],
    )
    opsets = [onnx.helper.make_opsetid("", 21), onnx.helper.make_opsetid("com.microsoft", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        onnx.helper.make_model(graph, opset_imports=opsets).SerializeToString(), options
    )


def test_a_padded_row_attends_exactly_as_in_a_chain():
    """What pad_queries rests on: token t decoded alone, padded to two queries (the pad
    counted in query_seqlens), gets the very bits it gets inside a chain of six tokens."""
    heads, kv_heads, head_dim, past, capacity = 8, 4, 32, 20, 64
    rng = np.random.default_rng(0)
    positions = np.arange(128)[:, None] / 10000 ** (np.arange(head_dim // 2) / (head_dim // 2))
    tables = (np.cos(positions).astype(np.float32), np.sin(positions).astype(np.float32))
    session = _gqa_session(heads, kv_heads, head_dim, tables)
    cache = [rng.standard_normal((1, kv_heads, capacity, head_dim)).astype(np.float32)] * 2
    qkv = rng.standard_normal((1, 6, (heads + 2 * kv_heads) * head_dim)).astype(np.float32)

    def attend(x, k, v, cached, queries):
        feeds = {"qkv": x, "past_k": k, "past_v": v, "query_seqlens": np.array([queries], np.int32)}
        feeds["seqlens_k"] = np.array([cached + queries - 1], np.int32)
        feeds["total"] = np.array([cached + x.shape[1]], np.int32)
        return session.run(None, feeds)

    chain = attend(qkv, *cache, past, 6)[0][0]
    k, v = cache
    for t in range(6):
        padded = np.concatenate([qkv[:, t : t + 1], np.zeros_like(qkv[:, :1])], axis=1)
        y, k, v = attend(padded, k, v, past + t, 2)
        np.testing.assert_array_equal(y[0, 0], chain[t], err_msg=f"token {t}")
