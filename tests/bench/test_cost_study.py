"""The cost study's PyTorch runtime (bench/cost_study.py --runtime torch), at tiny shapes.

On the GPU machine the study times Llama-7B steps built in memory, in fp16, replayed from CUDA
graphs; that machine has torch with CUDA but not every dependency of the compiler. These tests run
the same code on the CPU (and the CUDA graph replay where a GPU is present), so that the one GPU
run the study gets finds it working.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
SHAPES_RECORD = REPO / "bench/results/pycode_shapes_d8192.json"  # 2 x hidden, 4 blocks


@pytest.fixture
def bench_path(monkeypatch):
    """bench/ importable, as the scripts import each other (random_llama from bench/fixtures/)."""
    monkeypatch.syspath_prepend(str(BENCH / "fixtures"))
    monkeypatch.syspath_prepend(str(BENCH))


def run_study(out: Path, *flags: str) -> dict:
    """bench/cost_study.py in a process where onnx_graphsurgeon cannot be imported (the GPU
    machine has none): the torch runtime must not need the ONNX compiler."""
    argv = ["cost_study.py", "--runtime", "torch", "--size", "tiny", *flags, "--out", str(out)]
    code = (
        "import runpy, sys; sys.modules['onnx_graphsurgeon'] = None; "
        f"sys.path.insert(0, {str(BENCH)!r}); sys.argv = {argv!r}; "
        f"runpy.run_path({str(BENCH / 'cost_study.py')!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_torch_runtime_times_steps_side_by_side_and_projects(tmp_path):
    record = run_study(
        tmp_path / "study.json",
        "--beams",
        "1x4,4x5",
        "--layers",
        "4",
        "--shapes-record",
        str(SHAPES_RECORD),
    )
    assert record["runtime"] == "torch" and record["dtype"] == "float32"
    assert record["cuda_graphs"] is False and record["kernels"] == "reference"
    assert "--runtime torch --device cpu --dtype float32" in record["command"]
    assert record["device"].startswith("CPU") and record["versions"]["torch"] == torch.__version__
    relative = record["t_base_relative"]
    assert relative["1"] == 1.0 and set(relative) == {
        str(t) for t in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64)
    }
    assert all(ms > 0 for ms in record["t_base_ms"].values())

    fixture = {
        (r["beam_width"], r["beam_length"]): r
        for r in json.loads(SHAPES_RECORD.read_text())["results"]
        if r["engine"] != "autoregressive"
    }
    rows = {(r["beam_width"], r["beam_length"]): r for r in record["shapes_tried"]}
    assert set(rows) == {(1, 4), (4, 5)}
    chain = rows[1, 4]
    assert chain["verified_tokens_random_drafter"] == 4  # one beam: a chain of L tokens
    assert chain["exit_dim"] == 2 * 64 and chain["num_draft_layers"] == 4
    # a measured ratio, whose size a loaded machine can move either way: structure only here
    # (speed belongs in benchmarks, not in a test that a busy CI host can fail)
    assert chain["step_over_base_1"] > 0
    assert chain["fixture_tokens_per_step"] == fixture[1, 4]["tokens_per_step"]
    # W = 1: the tree is a chain either way, so nothing is moved on the t_base curve
    assert chain["projected_speedup"] == pytest.approx(
        chain["fixture_tokens_per_step"] / chain["step_over_base_1"], abs=1e-3
    )
    wide = rows[4, 5]
    assert 5 <= wide["verified_tokens_random_drafter"] <= 4 * 4 + 1
    assert wide["fixture_verified_tokens"] == fixture[4, 5]["verified_tokens_per_step"]
    assert wide["projected_speedup"] > 0 and len(wide["projected_speedup_ci95"]) == 2


@pytest.mark.parametrize("flag", ["--drafter-weights", "--base-weights"])
def test_torch_runtime_refuses_quantized_weights_it_would_time_as_float(tmp_path, flag):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "cost_study.py"),
            "--runtime",
            "torch",
            "--size",
            "tiny",
            flag,
            "int4",
            "--out",
            str(tmp_path / "x.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--drafter-weights and --base-weights apply to --runtime onnxruntime" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_random_steps_are_made_on_the_device_in_the_dtype_asked_for(bench_path):
    from random_llama import LLAMA_TINY
    from torch_steps import random_decoder, random_drafter_for

    base = random_decoder(LLAMA_TINY, "bfloat16", "cpu")
    assert {p.dtype for p in base.parameters()} == {torch.bfloat16}
    assert base.inv_freq.dtype == torch.float32  # rotary frequencies stay exact
    assert float(base.lm_head.weight.float().std()) == pytest.approx(0.02, rel=0.1)
    drafter = random_drafter_for(base, 3, 96, 100)
    assert {p.dtype for p in drafter.parameters()} == {torch.bfloat16}
    assert drafter.config.exit_dim == 96 and drafter.config.num_draft_layers == 3
    assert drafter.describe(True)["draft_vocab"] == 100


@pytest.mark.cuda
def test_cuda_graph_replay_equals_the_eager_step(bench_path):
    if not torch.cuda.is_available():
        pytest.skip("CUDA graphs need a GPU: torch sees no CUDA device")
    import cost_study
    from random_llama import LLAMA_TINY
    from torch_steps import (
        CudaGraphBackend,
        random_decoder,
        random_drafter_for,
        register_kernels,
        step_generator,
    )

    from redcompile.config import BeamShape

    register_kernels("cuda", "reference")
    base = random_decoder(LLAMA_TINY, "float16", "cuda")
    generator = step_generator(base, random_drafter_for(base, 2, None, None), BeamShape(4, 5))
    inputs = cost_study.decoding_inputs(generator)
    eager = generator.backend
    cache = {
        n: eager.state[n].clone() for n in eager.signature.input_names() if n.startswith("past")
    }
    graphed = CudaGraphBackend(eager)
    graphed.write(inputs)
    replayed = [graphed.step() for _ in range(3)]
    for name, value in cache.items():  # the eager step after the capture sees the same cache
        eager.state[name] = value
    eager.write(inputs)
    tokens, counts = eager.step()
    for graph_tokens, graph_counts in replayed:
        np.testing.assert_array_equal(graph_tokens, tokens)
        np.testing.assert_array_equal(graph_counts, counts)


def test_a_projection_is_carried_to_the_peer_by_the_measured_ratio(bench_path, tmp_path):
    import cost_study

    systems = {
        "ar-int4-l4": {"tokens_per_second": 45.0},
        "genai-int4": {"tokens_per_second": 50.0},
    }
    peers = {
        "configs": [
            {"threads": "1", "batch_size": 8, "systems": {}},
            {"threads": "1", "batch_size": 1, "systems": systems},
            {
                "threads": "0",
                "batch_size": 1,
                "systems": systems,
                "tokens_per_second_ratio": {"ar-int4-l4/genai-int4": 1.5},
            },
        ]
    }
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(peers))
    record = {"threads": 1, "shapes_tried": [{"projected_speedup": 1.5}, {"beam_width": 4}]}
    out = cost_study.project_against_peer(record, path, "ar-int4-l4/genai-int4")
    assert out["peer"]["ratio"] == 0.9 and out["peer"]["threads"] == 1
    assert out["shapes_tried"][0]["projected_vs_peer"] == 1.35
    assert "projected_vs_peer" not in out["shapes_tried"][1]  # nothing projected, nothing carried
    # the paired per-round ratio where the record has one, not the ratio of the medians
    paired = cost_study.project_against_peer(
        {**record, "threads": 0}, path, "ar-int4-l4/genai-int4"
    )
    assert paired["peer"]["ratio"] == 1.5
    with pytest.raises(SystemExit, match="no batch-1 configuration at 2 threads"):
        cost_study.project_against_peer({**record, "threads": 2}, path, "ar-int4-l4/genai-int4")
