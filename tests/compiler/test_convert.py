"""`convert` end to end on tiny models: the artifact runs in stock ONNX Runtime, losslessly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import onnx
import pytest
from click.testing import CliRunner

from redcompile.api import open_generator, open_model_folder
from redcompile.artifact import read_artifact
from redcompile.cli import main
from redcompile.compiler import ConvertOptions, convert
from redcompile.config import BeamShape
from redcompile.generation import GenerationConfig
from redcompile.models.weight_quant import WEIGHT_FORMATS
from support import PROMPTS, branch_graphs


@pytest.fixture(scope="module")
def artifacts(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    spec = convert(
        tiny_models["qwen3"],
        out / "spec.onnx",
        options=ConvertOptions.of(beam=BeamShape(3, 4), random_drafter=True),
    )
    ar = convert(
        tiny_models["qwen3"], out / "ar.onnx", options=ConvertOptions.of(autoregressive=True)
    )
    return {"spec": spec, "ar": ar, "model": tiny_models["qwen3"]}


def ids(result):
    return [c.token_ids for c in result.completions]


def test_artifact_is_one_file_of_standard_ops_and_redcompile_ops_with_bodies(artifacts):
    report = artifacts["spec"]
    assert report.files == [report.out]
    model = onnx.load(str(report.out))
    assert [n.op_type for n in model.graph.node][-1] == "If"  # the speculation levels
    tree = branch_graphs(model)["tree"]
    domains = Counter(n.domain or "ai.onnx" for n in tree.node)
    assert set(domains) == {"ai.onnx", "redcompile", "com.microsoft"}  # fused residual norms
    assert {n.op_type for n in tree.node if n.domain == "com.microsoft"} == {
        "SkipSimplifiedLayerNormalization"
    }
    bodies = {f.name for f in model.functions}
    assert {n.op_type for n in tree.node if n.domain == "redcompile"} == bodies
    assert bodies == {
        "TreeAttention",
        "DrafterBeamSearch",
        "BuildTree",
        "AncestorMask",
        "Accept",
        "KVCompaction",
        "PromptLookup",  # the default lookup beam
    }
    assert model.ir_version == 10 and {(o.domain, o.version) for o in model.opset_import} == {
        ("", 23),
        ("redcompile", 1),
        ("com.microsoft", 1),
    }
    manifest = read_artifact(report.out).manifest
    assert (
        manifest["beam"]
        == {
            "width": 3,
            "length": 4,
            "lookup_beams": 1,
            "lookup_ngrams": [3, 2, 1],
        }
        and manifest["mode"] == "redrafter"
    )
    assert [p["name"] for p in manifest["passes"]][0] == "fuse-tree-attention"


def test_stock_onnxruntime_runs_it_without_redcompile(artifacts):
    code = f"""
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession({str(artifacts["spec"].out)!r}, providers=['CPUExecutionProvider'])
feeds = {{}}
for i in s.get_inputs():
    dims = [{{'batch': 1, 'tokens': 2, 'cache': 8}}.get(d, d) for d in i.shape]
    dtype = np.int64 if i.type == 'tensor(int64)' else np.float32
    feeds[i.name] = np.zeros(dims, dtype)
feeds['input_ids'][:] = [[5, 6]]; feeds['parent_ids'][:] = [[-1, 0]]; feeds['depths'][:] = [[0, 1]]
feeds['num_tokens'][:] = 2; feeds['forced'][:] = 2
out = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
assert 'redcompile' not in sys.modules
print(int(out['num_new_tokens'][0]), int(out['next_cache_lengths'][0]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "2"]


@pytest.mark.parametrize("batch_size", [1, 8])
def test_greedy_artifact_equals_pytorch_and_autoregressive(artifacts, batch_size):
    cfg = GenerationConfig(max_new_tokens=24, batch_size=batch_size, stop_token_ids=())
    expected = ids(
        open_model_folder(artifacts["model"], autoregressive=True).generate_ids(PROMPTS, cfg)
    )
    reference = open_model_folder(artifacts["model"], beam=BeamShape(3, 4), random_drafter=True)
    assert ids(reference.generate_ids(PROMPTS, cfg)) == expected
    assert ids(open_generator(artifacts["spec"].out).generate_ids(PROMPTS, cfg)) == expected
    assert ids(open_generator(artifacts["ar"].out).generate_ids(PROMPTS, cfg)) == expected


def test_session_options_reach_onnx_runtime_and_decoding_stays_the_same(artifacts):
    import onnxruntime as ort

    cfg = GenerationConfig(max_new_tokens=12, stop_token_ids=())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    generator = open_generator(artifacts["spec"].out, session_options=options)
    assert generator.backend.session.get_session_options().intra_op_num_threads == 1
    expected = ids(open_generator(artifacts["spec"].out).generate_ids(PROMPTS, cfg))
    assert ids(generator.generate_ids(PROMPTS, cfg)) == expected


def test_new_prompts_join_rows_that_are_decoding(artifacts):
    generator = open_generator(artifacts["spec"].out)
    solo = [
        ids(generator.generate_ids([p], GenerationConfig(max_new_tokens=20)))[0] for p in PROMPTS
    ]
    # 3 rows for 8 prompts, with a stop token: rows finish at different steps and each takes the
    # next prompt as a prefill row beside rows that are mid-decoding.
    stop = solo[0][9]
    expected = [s[: s.index(stop)] if stop in s else s for s in solo]
    cfg = GenerationConfig(max_new_tokens=20, batch_size=3, stop_token_ids=(stop,))
    assert ids(generator.generate_ids(PROMPTS, cfg)) == expected
    assert len({len(e) for e in expected}) > 1


def test_sampling_artifact_matches_pytorch_for_the_same_seed(artifacts):
    cfg = GenerationConfig(max_new_tokens=16, temperature=0.8, seed=3, batch_size=2)
    torch_ids = ids(
        open_model_folder(
            artifacts["model"], beam=BeamShape(3, 4), random_drafter=True
        ).generate_ids(PROMPTS[:4], cfg)
    )
    ort_ids = ids(open_generator(artifacts["spec"].out).generate_ids(PROMPTS[:4], cfg))
    assert ort_ids == torch_ids


def test_a_draft_vocabulary_drafts_the_same_in_the_artifact_and_stays_lossless(artifacts, tmp_path):
    model = artifacts["model"]
    # 48 ids (384 bytes) exceed the exporter's 256-byte inline limit: the index table is
    # written as external data, which shape inference cannot read inside a function body
    shape = dict(beam=BeamShape(3, 4), random_drafter=True, draft_vocab=48)
    report = convert(model, tmp_path / "v.onnx", options=ConvertOptions.of(**shape))
    assert report.manifest["drafter"]["draft_vocab"] == 48
    assert "--draft-vocab 48" in report.manifest["command"]
    artifact = open_generator(report.out, speculation="full")
    reference = open_model_folder(model, **shape)
    cfg = GenerationConfig(max_new_tokens=24, batch_size=4, stop_token_ids=())
    expected = open_model_folder(model, autoregressive=True).generate_ids(PROMPTS, cfg)
    got, want = artifact.generate_ids(PROMPTS, cfg), reference.generate_ids(PROMPTS, cfg)
    assert ids(got) == ids(want) == ids(expected)
    assert got.steps == want.steps  # the artifact drafts exactly what the reference drafts
    sampled = GenerationConfig(max_new_tokens=16, temperature=0.8, seed=3, batch_size=2)
    assert ids(artifact.generate_ids(PROMPTS[:4], sampled)) == ids(
        reference.generate_ids(PROMPTS[:4], sampled)
    )


def test_cli_convert_json_and_dump_passes(tiny_llama, tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        main,
        [
            "convert",
            str(tiny_llama),
            str(out),
            "--random-drafter",
            "--beam-width",
            "2",
            "--beam-length",
            "3",
            "--json",
            "--dump-passes",
            str(tmp_path / "dump"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target"] == "onnxruntime" and report["files"][0]["path"] == str(out)
    assert [p["name"] for p in report["passes"]] == [
        "fuse-tree-attention",
        "share-weights",
        "pack-qkv",
        "fuse-skip-rms-norm",
        "fold-constants",
        "attach-function-bodies",
        "check-graph",
    ]
    assert report["passes"][0]["matches"] == 2  # one Attention per layer
    assert (tmp_path / "dump" / "01_fuse-tree-attention.txt").is_file()
    # the autoregressive branch's pipeline dumps beside it
    assert (tmp_path / "dump" / "autoregressive" / "01_fuse-tree-attention.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "m.onnx"]  # no temp files


def test_a_quantized_drafter_stays_lossless_and_verifies(artifacts, converted):
    from redcompile.verification import DRAFT_OUTPUTS, verify

    model = artifacts["model"]
    shape = dict(beam=BeamShape(3, 4), random_drafter=True)
    report = converted(model, ConvertOptions.of(**shape, drafter_weights="int4"))
    assert report.manifest["drafter"]["quantized"] == "int4"
    assert report.manifest["drafter"]["quantized_block_size"] == WEIGHT_FORMATS["int4"].block_size
    assert "--drafter-weights int4" in report.manifest["command"]
    assert "quantize-drafter" in [p["name"] for p in report.passes]
    described = CliRunner().invoke(main, ["inspect", str(report.out)])
    assert "int4 weights in blocks of 128 (beam search inlined)" in described.output
    graph_ops = Counter(n.op_type for n in branch_graphs(onnx.load(str(report.out)))["tree"].node)
    assert graph_ops["DrafterBeamSearch"] == 0 and graph_ops["DequantizeLinear"] > 0
    cfg = GenerationConfig(max_new_tokens=24, batch_size=4, stop_token_ids=())
    expected = open_model_folder(model, autoregressive=True).generate_ids(PROMPTS, cfg)
    assert ids(open_generator(report.out).generate_ids(PROMPTS, cfg)) == ids(expected)
    reference = open_model_folder(model, **shape, drafter_weights="int4")
    assert ids(reference.generate_ids(PROMPTS, cfg)) == ids(expected)
    checked = verify(report.out, model, max_new_tokens=16)
    assert checked.passed, "\n".join(checked.lines())
    informational = {c.name for c in checked.first_step if c.informational}
    assert informational == set(DRAFT_OUTPUTS)  # drafts only: tokens and the cache must match
    assert {c.name for c in checked.first_step} - informational >= {"new_tokens", "present.0.key"}


def test_cli_refuses_drafter_weights_without_a_drafter(tiny_llama, tmp_path):
    out = tmp_path / "m.onnx"
    argv = ["convert", str(tiny_llama), str(out), "--autoregressive", "--drafter-weights", "int8"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2 and "--drafter-weights needs a drafter" in result.output
    assert not out.exists()


def test_drafter_weights_are_refused_for_the_torch_target():
    from redcompile.compiler import _check_drafter_weights
    from redcompile.errors import InputError

    with pytest.raises(InputError, match="applies to ONNX artifacts"):
        _check_drafter_weights(ConvertOptions.of(drafter_weights="int4").folder, "torch")
    _check_drafter_weights(
        ConvertOptions.of(drafter_weights="int4").folder, "tensorrt"
    )  # ONNX: fine


def test_cli_generate_refuses_drafter_weights_for_an_artifact(artifacts):
    argv = ["generate", str(artifacts["spec"].out), "--prompt", "ab", "--drafter-weights", "int8"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2
    assert "--drafter-weights applies to model folders" in result.output


def test_an_fp16_speculative_artifact_loads_and_decodes_like_the_fp16_autoregressive_one(
    tiny_models, tmp_path
):
    # The drafter's unread distributions output must not carry a float32 record that the
    # fp16 body contradicts: ONNX Runtime refuses such a model at load.
    half = dict(dtype="fp16")
    spec = convert(
        tiny_models["llama"],
        tmp_path / "spec16.onnx",
        options=ConvertOptions.of(beam=BeamShape(3, 4), random_drafter=True, **half),
    ).out
    ar_options = ConvertOptions.of(autoregressive=True, **half)
    ar = convert(tiny_models["llama"], tmp_path / "ar16.onnx", options=ar_options).out
    greedy = GenerationConfig(max_new_tokens=12, batch_size=2)
    spec_ids = ids(open_generator(spec).generate_ids(PROMPTS[:4], greedy))
    ar_ids = ids(open_generator(ar).generate_ids(PROMPTS[:4], greedy))
    same = sum(a == b for s, r in zip(spec_ids, ar_ids) for a, b in zip(s, r))
    print(f"fp16 speculative agrees with fp16 autoregressive on {same}/48 tokens")
    assert all(len(s) == 12 for s in spec_ids)
    assert same >= 36
    seeded = GenerationConfig(max_new_tokens=12, batch_size=2, temperature=0.8, seed=5)
    spec_sampled = ids(open_generator(spec).generate_ids(PROMPTS[:4], seeded))
    ar_sampled = ids(open_generator(ar).generate_ids(PROMPTS[:4], seeded))
    assert spec_sampled == ar_sampled  # one uniform per emitted position: the same draws


def test_a_model_that_left_the_artifact_onnx_versions_is_never_written():
    from onnx import helper

    from redcompile.compiler import _min_onnxruntime
    from redcompile.errors import PassError
    from redcompile.ops.opdef import ONNX_IR_VERSION, ONNX_OPSET

    graph = helper.make_graph([], "g", [], [])
    current = helper.make_model(
        graph, ir_version=ONNX_IR_VERSION, opset_imports=[helper.make_opsetid("", ONNX_OPSET)]
    )
    assert _min_onnxruntime(current) == "1.23"
    for ir, opset in ((ONNX_IR_VERSION + 1, ONNX_OPSET), (ONNX_IR_VERSION, ONNX_OPSET + 1)):
        newer = helper.make_model(
            graph, ir_version=ir, opset_imports=[helper.make_opsetid("", opset)]
        )
        with pytest.raises(PassError, match="newer exporter"):
            _min_onnxruntime(newer)
