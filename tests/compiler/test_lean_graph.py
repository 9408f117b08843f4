"""The lean ONNX Runtime step: chain artifacts attend with GroupQueryAttention, residual norms
are fused, `--weights int8|int4` writes MatMulNBits, and every one of them still decodes
token for token as its reference (and ReDrafter as the autoregressive artifact of the same
weights), at batch 1 and with in-flight batching."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import onnx
import pytest
from click.testing import CliRunner
from test_lookup import LOOKUP_ONLY, REPEATING, cfg, ids
from test_speculation_levels import Cycling

from redcompile.api import open_generator, open_model_folder
from redcompile.artifact import read_artifact
from redcompile.cli import main
from redcompile.compiler import ConvertOptions, convert
from redcompile.config import BeamShape
from redcompile.generation import GenerationConfig
from redcompile.models.weight_quant import parse_base_weights
from redcompile.speculation import SpeculationPolicy
from redcompile.verification import kept_cache, verify
from support import PROMPTS, branch_graphs, save_tiny_model

CHAIN_OPS = {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"}
TREE_OPS = {"TreeAttention", "KVCompaction", "AncestorMask"}


def op_types(path) -> Counter:
    """Op types of the artifact's tree step (its autoregressive branch is tested apart)."""
    model = onnx.load(str(path), load_external_data=False)
    return Counter(n.op_type for n in branch_graphs(model)["tree"].node)


def tokens(source, batch: int, new_tokens: int = 12) -> list[list[int]]:
    cfg = GenerationConfig(max_new_tokens=new_tokens, batch_size=batch)
    return [c.token_ids for c in open_generator(source).generate_ids(PROMPTS, cfg).completions]


@pytest.fixture(scope="module")
def lean(tiny_models, converted):
    llama = tiny_models["llama"]
    made = {}
    for arch in ("llama", "qwen3", "llama_tied"):
        made[f"{arch}-ar"] = converted(
            tiny_models[arch], ConvertOptions.of(autoregressive=True)
        ).out
    w1 = ConvertOptions.of(beam=BeamShape(1, 4, lookup=0), random_drafter=True)
    made["llama-w1"] = converted(llama, w1).out
    w2 = ConvertOptions.of(beam=BeamShape(2, 3, lookup=0), random_drafter=True)
    made["llama-w2"] = converted(llama, w2).out
    int4_l4 = ConvertOptions.of(autoregressive=True, base_weights=parse_base_weights("int4", 32, 4))
    made["llama-ar-int4-l4"] = converted(llama, int4_l4).out
    for name, block in (("int4", 32), ("int8", 16)):
        ar = ConvertOptions.of(autoregressive=True, base_weights=parse_base_weights(name, block, 1))
        made[f"llama-ar-{name}"] = converted(llama, ar).out
    # one speculative quantized artifact: MatMulNBits computes int8 and int4 alike
    int4_w1 = replace(w1, folder=replace(w1.folder, base_weights=parse_base_weights("int4", 32, 1)))
    made["llama-w1-int4"] = converted(llama, int4_w1).out
    # int8 activations where every row is a chain: a drafter's beam, a lookup beam
    int4_l4 = parse_base_weights("int4", 32, 4)
    w1_l4 = replace(w1, folder=replace(w1.folder, base_weights=int4_l4))
    made["llama-w1-int4-l4"] = converted(llama, w1_l4).out
    lookup_l4 = ConvertOptions.of(beam=LOOKUP_ONLY, max_seq_len=128, base_weights=int4_l4)
    made["llama-lookup-int4-l4"] = converted(llama, lookup_l4).out
    return made


@pytest.mark.parametrize("arch", ["llama", "qwen3", "llama_tied"])
def test_autoregressive_artifact_is_lean_and_exact(lean, tiny_models, arch):
    path = lean[f"{arch}-ar"]
    types = op_types(path)
    assert CHAIN_OPS <= set(types) and not TREE_OPS & set(types)
    assert types["GroupQueryAttention"] == 2  # one per layer
    reference = open_model_folder(tiny_models[arch], autoregressive=True)
    cfg = GenerationConfig(max_new_tokens=12, batch_size=3)
    want = [c.token_ids for c in reference.generate_ids(PROMPTS, cfg).completions]
    assert tokens(path, batch=3) == want
    assert tokens(path, batch=1) == want


def test_single_beam_redrafter_is_lean_and_decodes_as_autoregressive(lean):
    assert CHAIN_OPS <= set(op_types(lean["llama-w1"]))
    assert not TREE_OPS & set(op_types(lean["llama-w1"]))
    want = tokens(lean["llama-ar"], batch=1)
    assert tokens(lean["llama-w1"], batch=1) == want
    assert tokens(lean["llama-w1"], batch=4) == want


def test_trees_keep_tree_attention(lean):
    types = set(op_types(lean["llama-w2"]))
    assert "TreeAttention" in types and "GroupQueryAttention" not in types
    assert tokens(lean["llama-w2"], batch=4) == tokens(lean["llama-ar"], batch=1)


def test_head_sizes_the_cpu_kernel_refuses_keep_tree_attention(tmp_path):
    folder = save_tiny_model(tmp_path / "d8", "llama", head_dim=8, num_attention_heads=8)
    report = convert(folder, tmp_path / "ar.onnx", options=ConvertOptions.of(autoregressive=True))
    types = set(op_types(report.out))
    assert "TreeAttention" in types and "GroupQueryAttention" not in types
    reference = open_model_folder(folder, autoregressive=True)
    cfg = GenerationConfig(max_new_tokens=8, batch_size=2)
    assert tokens(report.out, batch=2, new_tokens=8) == [
        c.token_ids for c in reference.generate_ids(PROMPTS, cfg).completions
    ]


@pytest.mark.parametrize("name", ["int4", "int8"])
def test_quantized_weights_are_matmulnbits(lean, name):
    ar = lean[f"llama-ar-{name}"]
    types = op_types(ar)
    assert types["MatMulNBits"] == 2 * 5 + 1  # qkv, o, gate, up, down per layer; lm_head
    assert "MatMul" not in types
    assert read_artifact(ar).manifest["base_weights"]["format"] == name
    assert tokens(ar, batch=1) != tokens(lean["llama-ar"], batch=1)  # the weights did change


def test_speculation_on_quantized_weights_stays_exact(lean):
    want = tokens(lean["llama-ar-int4"], batch=1)
    assert tokens(lean["llama-w1-int4"], batch=1) == want
    assert tokens(lean["llama-w1-int4"], batch=4) == want


def test_a_tied_head_is_quantized_with_the_rest(tiny_models, tmp_path):
    options = ConvertOptions.of(autoregressive=True, base_weights=parse_base_weights("int8", 16))
    report = convert(tiny_models["llama_tied"], tmp_path / "tied.onnx", options=options)
    assert op_types(report.out)["MatMulNBits"] == 2 * 5 + 1
    assert verify(report.out, tiny_models["llama_tied"]).passed
    # no --accuracy-level: the fastest exact level, int8 activations for a chain
    assert read_artifact(report.out).manifest["base_weights"]["accuracy_level"] == 4


def test_lookup_beams_without_a_drafter_default_to_the_chain_accuracy_level(
    tiny_models, tmp_path, lean
):
    """The default shape (four drafter beams) with one lookup beam and no drafter folder is a
    lookup-only chain, and --weights int4 with no --accuracy-level must then round activations
    as it does for --beam-width 0: the level is chosen on the shape actually built, or the
    artifact would hold other products than the autoregressive artifact of the same weights."""
    assert not (tiny_models["llama"] / "drafter").exists()
    options = ConvertOptions.of(
        beam=BeamShape(length=4, lookup=1), max_seq_len=128, base_weights=parse_base_weights("int4")
    )
    report = convert(tiny_models["llama"], tmp_path / "lookup.onnx", options=options)
    manifest = read_artifact(report.out).manifest
    assert manifest["beam"]["width"] == 0
    assert manifest["base_weights"]["accuracy_level"] == 4
    assert tokens(report.out, batch=2) == tokens(lean["llama-ar-int4-l4"], batch=1)


def test_the_default_accuracy_level_of_a_tree_is_float_products(tiny_models, tmp_path):
    options = ConvertOptions.of(
        beam=BeamShape(2, 3, lookup=0), random_drafter=True, base_weights=parse_base_weights("int4")
    )
    report = convert(tiny_models["llama"], tmp_path / "w2.onnx", options=options)
    assert read_artifact(report.out).manifest["base_weights"]["accuracy_level"] == 1
    assert "Pad" not in op_types(report.out)  # no padded attention rows: nothing rounds


def test_verify_holds_int8_weights_to_the_dequantized_reference(lean, tiny_models):
    report = verify(lean["llama-ar-int8"], tiny_models["llama"])  # accuracy level 1: float
    assert report.passed, "\n".join(report.lines())
    assert all(c.mismatches == 0 for c in report.first_step)


def test_verify_holds_int4_weights_with_int8_activations_to_their_reference(lean, tiny_models):
    """Accuracy level 4: the reference rounds activations to int8 per block as MatMulNBits."""
    report = verify(lean["llama-ar-int4-l4"], tiny_models["llama"])
    assert report.passed, "\n".join(report.lines())
    caches = [c for c in report.first_step if c.name.startswith("present.")]
    assert all(c.mismatches <= 0.01 * c.elements for c in caches)


def test_reference_without_int8_activations_would_not_match(lean, tiny_models):
    """The activation rounding is what makes the reference match (a test that can fail)."""
    from redcompile.generation import first_step_outputs
    from redcompile.runtime.loading import open_artifact

    ids = [p for p in PROMPTS[:2]]
    got = kept_cache(first_step_outputs(open_artifact(lean["llama-ar-int4-l4"]).backend, ids, 8))
    for level, close in ((4, True), (1, False)):
        reference = open_model_folder(
            tiny_models["llama"],
            autoregressive=True,
            base_weights=parse_base_weights("int4", 32, level),
        )
        want = kept_cache(first_step_outputs(reference.backend, ids, 8))
        diff = abs(got["present.0.key"] - want["present.0.key"]).max()
        assert (diff < 1e-4) == close, (level, diff)


def test_int8_activations_speculate_exactly_where_every_row_is_a_chain(lean):
    """Every GroupQueryAttention row padded to two queries (fuse-chain-attention): a token's
    attention is then the same computation verified alone and in a chain, and the int8
    rounding of the activations has no last-bit difference to turn into another token."""
    types = op_types(lean["llama-w1-int4-l4"])
    assert types["GroupQueryAttention"] == 2 and types["Pad"] >= 2
    want = tokens(lean["llama-ar-int4-l4"], batch=1)
    assert tokens(lean["llama-w1-int4-l4"], batch=1) == want
    assert tokens(lean["llama-w1-int4-l4"], batch=4) == want


@pytest.mark.parametrize("batch_size", [1, 3])
def test_lookup_with_int8_activations_is_exact_while_the_level_alternates(lean, batch_size):
    want = ids(open_generator(lean["llama-ar-int4-l4"]).generate_ids(REPEATING, cfg(1)))
    generator = open_generator(lean["llama-lookup-int4-l4"])
    generator.speculation = SpeculationPolicy.fixed("full")
    full = generator.generate_ids(REPEATING, cfg(batch_size))
    assert ids(full) == want and full.tokens_per_step > 1.5  # the lookup beams do accept
    generator.speculation = Cycling(["none", "full", "full"])
    assert ids(generator.generate_ids(REPEATING, cfg(batch_size))) == want


def test_int8_activations_are_refused_for_trees(tiny_models, tmp_path):
    out = tmp_path / "m.onnx"
    args = ["convert", str(tiny_models["llama"]), str(out), "--random-drafter"]
    result = CliRunner().invoke(main, [*args, "--weights", "int4", "--accuracy-level", "4"])
    assert result.exit_code == 2 and "--accuracy-level 1" in result.output
    assert "one beam" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_int8_activations_are_refused_where_attention_stays_a_tree_op(tmp_path):
    folder = save_tiny_model(tmp_path / "d8", "llama", head_dim=8, num_attention_heads=8)
    out = tmp_path / "w1.onnx"
    args = ["convert", str(folder), str(out), "--random-drafter", "--beam-width", "1"]
    args += ["--lookup-beams", "0", "--weights", "int4", "--accuracy-level", "4"]
    args += ["--weight-block-size", "16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "GroupQueryAttention" in result.output and "multiple of 16" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weights", "int3"], "--weights"),
        (["--weights", "int4", "--weight-block-size", "24"], "power of two"),
        (["--weights", "int4", "--weight-block-size", "64"], "does not divide"),
        (["--weights", "int4", "--accuracy-level", "9"], "--accuracy-level"),
        (["--weights", "int4", "--dtype", "bf16"], "bf16"),
        (["--weights", "int8", "--target", "torch"], "MatMulNBits"),
    ],
)
def test_bad_weight_options_exit_2_with_one_line_and_no_file(tiny_models, tmp_path, args, message):
    out = tmp_path / ("m.pt2" if "torch" in args else "m.onnx")
    result = CliRunner().invoke(
        main, ["convert", str(tiny_models["llama"]), str(out), "--autoregressive", *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bench_converts_both_engines_with_the_same_base_weights(tiny_models, tmp_path, lean):
    from redcompile.benchmarking.report import BenchConfig
    from redcompile.benchmarking.run import bench
    from redcompile.errors import InputError

    cfg = BenchConfig(beams=(BeamShape(1, 3, lookup=0),), repeats=1, max_new_tokens=6)
    options = dict(random_drafter=True, weights="int4", weight_block_size=32, accuracy_level=1)
    report = bench(tiny_models["llama"], ["ab", "cde"], cfg, work_dir=tmp_path, **options)
    made = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert made == ["W1-L3-baseint4.onnx", "autoregressive-baseint4.onnx"]
    assert all(
        read_artifact(tmp_path / m).manifest["base_weights"]["format"] == "int4" for m in made
    )
    assert {m.engine for m in report.measurements} == {
        "autoregressive",
        "W1-L3",
        "W1-L3 adaptive",
    }
    with pytest.raises(InputError, match="model folders"):
        bench(
            lean["llama-ar"],
            ["ab"],
            cfg,
            baseline=lean["llama-ar"],
            weights="int4",
            weight_block_size=32,
            accuracy_level=4,
        )


def test_the_manifest_command_names_the_base_weights(lean):
    command = read_artifact(lean["llama-ar-int8"]).manifest["command"]
    assert "--weights int8 --weight-block-size 16 --accuracy-level 1" in command
    assert "--weights" not in read_artifact(lean["llama-ar"]).manifest["command"]
