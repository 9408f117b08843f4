"""fuse-chain-attention on the exported step of tiny models: it fires once per layer, the fused
graph computes every output as the unfused one does (prefill, decoding and idle rows in one
batch, the cache included), a second run finds nothing, and head sizes ONNX Runtime's kernel
refuses are rejected with a reason."""

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


def compiled(folder, tmp_path, fused: bool):
    """The tiny model's autoregressive step through the onnxruntime pipeline, with or
    without fuse-chain-attention; returns (model, pass records, rejections, rope tables)."""
    step = open_model_folder(folder, autoregressive=True).backend.module
    work = tmp_path / ("fused" if fused else "plain")
    work.mkdir()
    path = _export_to(work, step)
    tables = _chain_rope_tables(step)
    passes = pipeline(
        "onnxruntime", step.signature, "float32", rope_tables=tables if fused else None
    )
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


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_fused_step_computes_what_the_tree_step_does(tiny_models, tmp_path, arch):
    plain, _, _, _ = compiled(tiny_models[arch], tmp_path, fused=False)
    fused, records, _, _ = compiled(tiny_models[arch], tmp_path, fused=True)
    assert dict((r.name, r.matches) for r in records)["fuse-chain-attention"] == 2
    kinds = {n.op_type for n in fused.graph.node}
    assert "GroupQueryAttention" in kinds
    assert not kinds & {"TreeAttention", "KVCompaction", "AncestorMask"}
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
