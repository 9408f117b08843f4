"""`redcompile bench` on tiny models: every JSON field, the plot, the baseline rule."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from redcompile.api import open_model_folder
from redcompile.benchmarking.intervals import (
    paired_difference_interval,
    prompt_counts,
    tokens_per_step_interval,
)
from redcompile.benchmarking.report import BenchReport
from redcompile.benchmarking.step_split import decoding_step_totals, kernel_events
from redcompile.cli import main
from redcompile.compiler import ConvertOptions
from redcompile.config import BeamShape
from redcompile.generation import GenerationConfig

FIELDS = {
    "engine",
    "rounds_s",
    "level_steps",
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
    "tokens_per_step_ci95",
    "prompt_counts",
    "lookup_beams",
    "draft_sources",
}
SPLIT = {"base", "drafting", "lookup", "tree", "acceptance", "kv", "host"}


def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("abc", "def g(", "x = 1")))
    return path


def test_bench_of_artifacts_writes_every_field_and_the_plot(tiny_llama, converted, tmp_path):
    spec = converted(tiny_llama, ConvertOptions.of(beam=BeamShape(2, 3), random_drafter=True)).out
    ar = converted(tiny_llama, ConvertOptions.of(autoregressive=True)).out
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
    # the baseline, the tree at full speculation and adaptive, x 2 batch sizes
    assert len(record["results"]) == 6
    adaptive = [r for r in record["results"] if r["engine"].endswith(" adaptive")]
    assert [r["level_steps"].keys() for r in adaptive] == [{"full"}, {"full"}]  # <= 2 rows
    for row in record["results"]:
        assert set(row) == FIELDS and set(row["split_ms"]) == SPLIT
        assert row["tokens_per_second"] > 0 and row["step_ms"] > 0
        assert len(row["rounds_s"]) == 1 and row["rounds_s"][0] > 0  # --repeats 1
        low, high = row["tokens_per_step_ci95"]
        assert low <= row["tokens_per_step"] <= high and len(row["prompt_counts"]) == 3
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
            "--lookup-beams",
            "0",
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


def test_an_artifact_without_baseline_is_refused(tiny_llama, converted, tmp_path):
    spec = converted(tiny_llama, ConvertOptions.of(beam=BeamShape(2, 3), random_drafter=True)).out
    result = CliRunner().invoke(
        main, ["bench", str(spec), "--prompts-file", str(prompts(tmp_path))]
    )
    assert result.exit_code == 2 and "--baseline" in result.stderr


def test_bench_of_a_model_folder_with_a_quantized_drafter(tiny_llama, tmp_path):
    argv = ["bench", str(tiny_llama), "--random-drafter", "--drafter-weights", "int8"]
    argv += ["--prompts-file", str(prompts(tmp_path)), "--beam-width", "1", "--beam-length", "3"]
    argv += ["--lookup-beams", "0"]
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


def _kernel(name, ts, dur):
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {}}


def _model_run(ts, dur):
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def test_the_step_split_leaves_out_steps_that_only_prefill():
    events = [
        _model_run(0, 100),  # prefill: the whole prompt through the base model
        _kernel("/model/MatMul", 10, 80),
        _model_run(200, 50),
        _kernel("/model/MatMul", 210, 20),
        _kernel("_inlfunc_DrafterBeamSearch_DrafterBeamSearch.gemm_1", 235, 10),
        _model_run(300, 50),
        _kernel("/model/MatMul", 310, 30),
        _kernel("/model/MatMul", 400, 30),  # after the last run ORT recorded whole
    ]
    totals, steps = decoding_step_totals(events, [False, True, True, True])
    assert steps == 2 and totals == pytest.approx({"base": 50e-6, "drafting": 10e-6})
    # one new token: no step decodes, and the split falls back to every recorded run
    totals, steps = decoding_step_totals(events, [False, False, False])
    assert steps == 3 and totals == pytest.approx({"base": 130e-6, "drafting": 10e-6})


def test_the_tokens_per_step_interval_comes_from_resampling_prompts():
    # prompts that agree leave no sampling error
    assert tokens_per_step_interval([[20, 10]] * 8) == [2.0, 2.0]
    # prompts that differ: the interval holds the pooled ratio, is reproducible, and narrows
    # with four times the prompts by about half
    mixed = [[30, 10], [12, 10], [25, 10], [16, 10]]
    few, many = tokens_per_step_interval(mixed), tokens_per_step_interval(mixed * 4)
    assert few[0] < 2.075 < few[1] and few == tokens_per_step_interval(mixed)
    assert 0.35 < (many[1] - many[0]) / (few[1] - few[0]) < 0.65
    assert tokens_per_step_interval([[1, 0]]) == [0.0, 0.0]  # nothing decoded


def test_a_paired_difference_cancels_what_the_prompts_share():
    a = [[30, 10], [12, 10], [25, 10], [16, 10]] * 4
    b = [[t + 2, s] for t, s in a]  # B drafts 0.2 more tokens per step on every prompt
    assert paired_difference_interval(a, b) == pytest.approx([0.2, 0.2])
    low, high = tokens_per_step_interval(a)
    assert high - low > 0.5  # unpaired, the prompts' spread would hide the difference
    assert paired_difference_interval(a, a) == [0.0, 0.0]
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference_interval(a, b[:-1])


def test_bench_keeps_every_prompts_counts(tiny_llama, tmp_path):
    engine = open_model_folder(tiny_llama, autoregressive=True)
    result = engine.generate_ids([[1, 2, 3], [4, 5]], GenerationConfig(max_new_tokens=5))
    counts = prompt_counts(result)
    assert len(counts) == 2 and all(steps == tokens for tokens, steps in counts)
    assert sum(t for t, _ in counts) / sum(s for _, s in counts) == result.tokens_per_step


@pytest.mark.slow  # about a minute on two cores: four torch engines with profiling
def test_bench_attributes_accepted_drafts_to_drafter_and_lookup_beams(tiny_llama, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(tiny_llama),
            "--prompts-file",
            str(prompts(tmp_path)),
            "--runtime",
            "torch",
            "--random-drafter",
            "--drafter-weights",
            "int8",
            "--beam-width",
            "0,2",
            "--beam-length",
            "4",
            "--lookup-beams",
            "0,1",
            "--repeats",
            "1",
            "--max-new-tokens",
            "24",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {r["engine"]: r for r in json.loads(out.read_text())["results"]}
    # width 0 pairs with lookup beams only
    assert set(rows) == {"autoregressive", "W2-L4", "W0-L4-K1", "W2-L4-K1"}
    assert (
        rows["autoregressive"]["draft_sources"] is None and rows["W2-L4"]["draft_sources"] is None
    )
    lookup_only = rows["W0-L4-K1"]["draft_sources"]
    assert lookup_only["drafter"] == 0 and lookup_only["both"] == 0 and lookup_only["lookup"] > 0
    for name in ("W0-L4-K1", "W2-L4-K1"):
        row = rows[name]
        # every accepted draft is attributed: tokens per step = 1 + the three sources
        # (up to the drafts cut by --max-new-tokens, which the attribution still counts)
        accepted = sum(row["draft_sources"].values())
        assert row["tokens_per_step"] - 1 <= accepted + 1e-6
        assert accepted <= row["tokens_per_step"] - 1 + 0.5
    assert "by source" in result.output
