"""pad-lone-token on the tiny model's int4 autoregressive step (accuracy level 4): it fires
once, a one-row one-token step multiplies two rows in every MatMulNBits while longer steps pad
nothing, and a lone token then computes bit for bit what it computes beside another row (on
CPUs where MatMulNBits has a one-row kernel of its own, that is what the pass is for)."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from redcompile.api import open_model_folder
from redcompile.compiler import _chain_rope_tables, _export_to
from redcompile.models.weight_quant import parse_base_weights
from redcompile.passes.base import PassContext
from redcompile.passes.contrib import MATMUL_NBITS
from redcompile.passes.manager import PassManager
from redcompile.passes.pad_lone_token import PadLoneToken
from redcompile.passes.pipelines import pipeline


@pytest.fixture(scope="module")
def int4_step(tiny_models, tmp_path_factory):
    """(compiled model, pass records) of the autoregressive step at int4, level 4."""
    step = open_model_folder(tiny_models["llama"], autoregressive=True).backend.module
    work = tmp_path_factory.mktemp("pad_lone_token")
    path = _export_to(work, step)
    passes = pipeline(
        "onnxruntime",
        step.signature,
        "float32",
        rope_tables=_chain_rope_tables(step),
        base_weights=parse_base_weights("int4", 32, 4),
    )
    ctx = PassContext(target="onnxruntime", weights_dir=work)
    model, records = PassManager(passes).run(onnx.load(str(path), load_external_data=False), ctx)
    onnx.load_external_data_for_model(model, str(work))
    return model, records


def feeds(model: onnx.ModelProto, rows: list[list[int]], cached: list[int]) -> dict:
    """A step of len(rows) rows decoding `rows` tokens after `cached` cached ones each."""
    width = max(len(r) for r in rows)
    out = {}
    for value in model.graph.input:
        dims = [
            d.dim_value or {"batch": len(rows), "tokens": width, "cache": 16}[d.dim_param]
            for d in value.type.tensor_type.shape.dim
        ]
        if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            out[value.name] = np.zeros(dims, np.int64)
        else:  # row by row, so a row's cache is the same in any batch
            seed = zlib.crc32(value.name.encode())
            rows_of = [
                np.random.default_rng([seed, i]).standard_normal(dims[1:]) for i in range(dims[0])
            ]
            out[value.name] = np.stack(rows_of).astype(np.float32)
    for i, tokens in enumerate(rows):
        out["input_ids"][i, : len(tokens)] = tokens
        out["depths"][i, : len(tokens)] = range(len(tokens))
        out["parent_ids"][i] = -1
        out["parent_ids"][i, 1 : len(tokens)] = range(len(tokens) - 1)
    out["num_tokens"][:] = out["forced"][:] = [len(r) for r in rows]
    out["cache_lengths"][:] = cached
    out["temperature"][:] = 0
    return out


def run(model: onnx.ModelProto, inputs: dict, extra: list[str] = ()) -> dict:
    """Outputs of one step, plus the named intermediate tensors."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for name in extra:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs)))


def test_the_pass_fires_once_and_attention_keeps_no_constant_pad(int4_step):
    model, records = int4_step
    assert {r.name: r.matches for r in records}[PadLoneToken.name] == 1
    pads = [n for n in model.graph.node if n.op_type == "Pad"]
    assert pads and all(n.input[1].startswith(PadLoneToken.name) for n in pads)


@pytest.mark.parametrize(
    "rows, want",
    [([[5]], 2), ([[5, 9, 2]], 3), ([[5], [7]], 2)],
    ids=["one token, one row", "a chain of three", "two rows"],
)
def test_no_product_has_one_row(int4_step, rows, want):
    model, _ = int4_step
    products = [n.input[0] for n in model.graph.node if n.op_type == MATMUL_NBITS]
    out = run(model, feeds(model, rows, [4] * len(rows)), products)
    seen = {name: int(np.prod(out[name].shape[:-1])) for name in products}
    assert set(seen.values()) == {want}, seen


def test_a_lone_token_computes_what_it_computes_beside_another_row(int4_step):
    model, _ = int4_step
    alone = run(model, feeds(model, [[5]], [4]))
    beside = run(model, feeds(model, [[5], [0]], [4, 0]))  # the second row idle
    assert alone["new_tokens"][0, 0] == beside["new_tokens"][0, 0]
    for name in alone:
        if name.startswith("present."):
            np.testing.assert_array_equal(alone[name][0, :, :5], beside[name][0, :, :5])
