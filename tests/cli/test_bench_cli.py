"""`redcompile bench` on tiny models: every JSON field, the plot, the baseline rule."""

from __future__ import annotations

import json

from click.testing import CliRunner

from redcompile.benchmark import BenchReport, kernel_events
from redcompile.cli import main
from redcompile.compiler import ConvertOptions, convert
from redcompile.config import BeamShape

FIELDS = {
    "engine",
    "batch_size",
    "beam_width",
    "beam_length",
    "tokens_per_second",
    "tokens_per_step",
    "step_ms",
    "steps",
    "generated_tokens",
    "verified_tokens_per_step",
    "split_ms",
    "speedup",
    "draft_vocab",
}
SPLIT = {"base", "drafting", "tree", "acceptance", "kv", "host"}


def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("abc", "def g(", "x = 1")))
    return path


def test_bench_of_artifacts_writes_every_field_and_the_plot(tiny_llama, tmp_path):
    spec = convert(
        tiny_llama,
        tmp_path / "spec.onnx",
        options=ConvertOptions(beam=BeamShape(2, 3), random_drafter=True),
    ).out
    ar = convert(tiny_llama, tmp_path / "ar.onnx", options=ConvertOptions(autoregressive=True)).out
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(spec),
            "--baseline",
            str(ar),
            "--prompts-file",
            str(prompts(tmp_path)),
            "--batch-size",
            "1,2",
            "--max-new-tokens",
            "8",
            "--repeats",
            "1",
            "--json",
            str(out),
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert {"source", "runtime", "prompts", "machine", "results", "command"} <= set(record)
    assert record["drafter"]["exit_dim"] == 128 and record["drafter"]["random"] is True
    assert len(record["results"]) == 4  # 2 engines x 2 batch sizes
    for row in record["results"]:
        assert set(row) == FIELDS and set(row["split_ms"]) == SPLIT
        assert row["tokens_per_second"] > 0 and row["step_ms"] > 0
    for row in (r for r in record["results"] if r["engine"] != "autoregressive"):
        # every op's time is found in ONNX Runtime's profile, and the split adds up to a step
        assert all(row["split_ms"][k] > 0 for k in SPLIT), row["split_ms"]
        assert abs(sum(row["split_ms"].values()) - row["step_ms"]) < 0.01 * row["step_ms"] + 0.01
    baseline = [r for r in record["results"] if r["engine"] == "autoregressive"]
    assert all(r["speedup"] == 1.0 and r["tokens_per_step"] == 1.0 for r in baseline)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "speedup" in result.stdout
    assert BenchReport.from_json(record).to_json() == record


def test_bench_of_a_model_folder_in_torch(tiny_llama, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(tiny_llama),
            "--runtime",
            "torch",
            "--random-drafter",
            "--prompts-file",
            str(prompts(tmp_path)),
            "--beam-width",
            "1,2",
            "--beam-length",
            "3",
            "--draft-vocab",
            "40,60",
            "--max-new-tokens",
            "6",
            "--repeats",
            "1",
            "--json",
            str(tmp_path / "b.json"),
            "--plot",
            str(tmp_path / "b.png"),  # one batch size: plotted across beam widths
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["drafter"]["num_draft_layers"] == 2 and record["drafter"]["random"] is True
    rows = record["results"]
    engines = ["autoregressive", "W1-L3-V40", "W1-L3-V60", "W2-L3-V40", "W2-L3-V60"]
    assert [r["engine"] for r in rows] == engines
    assert [r["draft_vocab"] for r in rows] == [None, 40, 60, 40, 60]
    assert rows[1]["split_ms"]["drafting"] > 0
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_an_artifact_without_baseline_is_refused(tiny_llama, tmp_path):
    spec = convert(
        tiny_llama,
        tmp_path / "spec.onnx",
        options=ConvertOptions(beam=BeamShape(2, 3), random_drafter=True),
    ).out
    result = CliRunner().invoke(
        main, ["bench", str(spec), "--prompts-file", str(prompts(tmp_path))]
    )
    assert result.exit_code == 2 and "--baseline" in result.stderr


def test_bench_of_a_model_folder_with_a_quantized_drafter(tiny_llama, tmp_path):
    argv = ["bench", str(tiny_llama), "--random-drafter", "--drafter-weights", "int8"]
    argv += ["--prompts-file", str(prompts(tmp_path)), "--beam-width", "1", "--beam-length", "3"]
    argv += ["--max-new-tokens", "6", "--repeats", "1", "--work-dir", str(tmp_path / "work")]
    result = CliRunner().invoke(main, [*argv, "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["runtime"] == "onnxruntime" and record["drafter"]["quantized"] == "int8"
    # the quantized artifact is cached under its own name, never mistaken for a float one
    assert sorted(p.name for p in (tmp_path / "work").glob("*.onnx")) == [
        "W1-L3-int8.onnx",
        "autoregressive.onnx",
    ]


def test_the_step_split_counts_an_if_and_the_branch_it_ran_once():
    def event(name, op, ts, dur):
        return {
            "cat": "Node",
            "name": f"{name}_kernel_time",
            "ts": ts,
            "dur": dur,
            "args": {"op_name": op},
        }

    events = [
        event("_inlfunc_Accept_Accept.if_7", "If", 100, 50),
        event("_inlfunc_Accept_Accept.softmax_9", "Softmax", 110, 30),  # inside the If
        event("_inlfunc_Accept_Accept.argmax_3", "ArgMax", 90, 5),
        event("/model/MatMul", "MatMul", 160, 20),
        {"cat": "Session", "name": "model_run", "ts": 80, "dur": 200},
    ]
    kept = kernel_events(events)
    assert [e["args"]["op_name"] for e in kept] == ["ArgMax", "If", "MatMul"]
