"""The pass manager: records, dumps, checks, and the pipeline's coverage by tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphs import attention_model
from redcompile.io_contract import step_signature
from redcompile.models.weight_quant import parse_base_weights
from redcompile.passes.attach_function_bodies import AttachFunctionBodies
from redcompile.passes.fuse_tree_attention import FuseTreeAttention
from redcompile.passes.manager import PassManager
from redcompile.passes.pipelines import pipeline


def test_records_and_dumps_every_pass(tmp_path):
    model, records = PassManager(
        [FuseTreeAttention(), AttachFunctionBodies()], dump_dir=tmp_path
    ).run(attention_model())
    assert [(r.name, r.matches) for r in records] == [
        ("fuse-tree-attention", 1),
        ("attach-function-bodies", 1),
    ]
    assert records[0].nodes_before == 4 and records[0].nodes_after == 1
    dumped = sorted(p.name for p in tmp_path.iterdir())
    assert dumped == [
        "00_exported.onnx",
        "00_exported.txt",
        "01_fuse-tree-attention.onnx",
        "01_fuse-tree-attention.txt",
        "02_attach-function-bodies.onnx",
        "02_attach-function-bodies.txt",
    ]
    assert "redcompile::TreeAttention" in (tmp_path / "01_fuse-tree-attention.txt").read_text()


def test_a_pass_listed_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        PassManager([FuseTreeAttention(), FuseTreeAttention()])


def pipeline_pass_names() -> set[str]:
    """Every pass any pipeline runs: each ONNX target with every optional pass switched on
    (chain attention's rope tables, quantized base weights, a quantized drafter)."""
    signature = step_signature(num_layers=1, beam_width=2, beam_length=3)
    rope = (np.zeros((4, 2), np.float32), np.zeros((4, 2), np.float32))
    names = set()
    for target in ("onnxruntime", "tensorrt"):
        for extras in ({}, {"rope_tables": rope, "base_weights": parse_base_weights("int4")}):
            passes = pipeline(target, signature, "float32", drafter_weights="int8", **extras)
            names |= {p.name for p in passes}
    return names


def test_the_pipelines_hold_every_optional_pass():
    names = pipeline_pass_names()
    assert {"fuse-chain-attention", "quantize-weights", "quantize-drafter"} <= names


@pytest.mark.parametrize("name", sorted(pipeline_pass_names()))
def test_every_pipeline_pass_has_a_test_module(name):
    module = Path(__file__).parent / f"test_{name.replace('-', '_')}.py"
    assert module.is_file(), f"pass {name} has no {module.name}"
