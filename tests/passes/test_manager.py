"""The pass manager: records, dumps, checks, and the pipeline's coverage by tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from graphs import attention_model
from redcompile.passes.attach_function_bodies import AttachFunctionBodies
from redcompile.passes.fuse_tree_attention import FuseTreeAttention
from redcompile.passes.manager import PassManager
from redcompile.passes.pipelines import PASS_NAMES


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


@pytest.mark.parametrize("name", PASS_NAMES)
def test_every_pipeline_pass_has_a_test_module(name):
    module = Path(__file__).parent / f"test_{name.replace('-', '_')}.py"
    assert module.is_file(), f"pass {name} has no {module.name}"
