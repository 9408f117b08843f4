"""Speculation levels (redcompile/speculation.py, passes/speculation_levels.py): one artifact
steps at full, chain or no speculation, chosen per step, and stays lossless while the level
changes from step to step; `tune` measures the levels and `generate` follows what it wrote."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from test_lookup import LOOKUP_ONLY, MIXED, REPEATING, cfg, ids

from redcompile.api import open_generator, open_model_folder
from redcompile.cli import main
from redcompile.compiler import ConvertOptions
from redcompile.errors import InputError
from redcompile.passes.host_graphs import step_graph
from redcompile.passes.speculation_levels import CHOOSE_NODE
from redcompile.speculation import SpeculationPolicy, choose_policy, read_tuning, tuning_path
from redcompile.tuning import choose_level

# the artifacts of test_lookup (the session converts each once): a chain, whose branches both
# attend with GroupQueryAttention, and a tree of drafter and lookup beams
TREE = MIXED


class Cycling:
    """A policy that changes the level every step, whatever the rows (duck-typed)."""

    def __init__(self, levels):
        self.levels = itertools.cycle(levels)

    def level(self, rows):
        return next(self.levels)


ALTERNATIONS = (["none", "full"], ["full", "chain", "none", "none", "full", "full", "chain"])


@pytest.fixture(scope="module")
def expected(tiny_llama):
    reference = open_model_folder(tiny_llama, autoregressive=True)
    return {
        "greedy": ids(reference.generate_ids(REPEATING, cfg(4))),
        "sampled": ids(reference.generate_ids(REPEATING, cfg(4, temperature=0.9, seed=5))),
    }


@pytest.fixture(scope="module")
def artifacts(tiny_llama, converted):
    return {
        "lookup": converted(tiny_llama, ConvertOptions.of(beam=LOOKUP_ONLY, max_seq_len=128)),
        "tree": converted(
            tiny_llama, ConvertOptions.of(beam=TREE, random_drafter=True, max_seq_len=128)
        ),
    }


@pytest.mark.parametrize("name", ["lookup", "tree"])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("levels", ALTERNATIONS, ids=["two", "seven"])
def test_onnx_runtime_is_lossless_while_the_level_alternates(
    artifacts, expected, name, batch_size, levels
):
    generator = open_generator(artifacts[name].out)
    generator.speculation = Cycling(levels)
    result = generator.generate_ids(REPEATING, cfg(batch_size))
    assert ids(result) == expected["greedy"]
    assert set(result.level_steps) == set(levels)
    generator.speculation = Cycling(levels)
    sampled = generator.generate_ids(REPEATING, cfg(batch_size, temperature=0.9, seed=5))
    assert ids(sampled) == expected["sampled"]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_the_pytorch_reference_is_lossless_while_the_level_alternates(
    tiny_llama, expected, batch_size
):
    generator = open_model_folder(tiny_llama, beam=TREE, random_drafter=True)
    generator.speculation = Cycling(ALTERNATIONS[1])
    assert ids(generator.generate_ids(REPEATING, cfg(batch_size))) == expected["greedy"]


def test_each_level_drafts_what_it_says(artifacts):
    generator = open_generator(artifacts["lookup"].out)
    per_step = {}
    for mode in ("off", "chain", "full"):
        generator.speculation = SpeculationPolicy.fixed(mode)
        per_step[mode] = generator.generate_ids(REPEATING, cfg(2)).tokens_per_step
    assert per_step["off"] == 1.0
    # one lookup beam: the chain is the whole tree
    assert per_step["chain"] == per_step["full"] > 1.2


def test_level_none_drops_the_drafts_it_is_handed_in_every_runtime(tiny_llama, artifacts):
    # full then none, repeatedly: each full step verifies a root-only tree (made at none) and
    # drafts; the none step after it discards those drafts unverified. So one token per step,
    # in ONNX Runtime and in the PyTorch reference alike, where full alone drafts well.
    onnx_generator = open_generator(artifacts["lookup"].out)
    reference = open_model_folder(tiny_llama, beam=LOOKUP_ONLY)
    for generator in (onnx_generator, reference):
        generator.speculation = Cycling(["full", "none"])
        alternating = generator.generate_ids(REPEATING, cfg(2))
        assert alternating.tokens_per_step == 1.0
        generator.speculation = SpeculationPolicy.fixed("full")
        assert generator.generate_ids(REPEATING, cfg(2)).tokens_per_step > 1.2


def test_the_autoregressive_branch_shares_the_weights(artifacts, tmp_path):
    for name, report in artifacts.items():
        model = onnx.load(str(report.out), load_external_data=False)
        (choose,) = [n for n in model.graph.node if n.op_type == "If"]
        branches = {a.name: a.g for a in choose.attribute}
        assert {"then_branch", "else_branch"} == set(branches)
        assert not any(n.op_type.startswith("BeamSearch") for n in branches["then_branch"].node)
        own = [t for t in model.graph.initializer if t.name.startswith("autoregressive/")]
        # only what the tree branch has no copy of: GroupQueryAttention's RoPE tables and
        # scalars; every weight matrix of the base model is the tree branch's own tensor
        matrices = [t.name for t in own if len(t.dims) == 2 and "_cache" not in t.name]
        assert matrices == [], name
        shared = report.manifest["autoregressive_branch"]
        assert shared["shared_weights"] >= shared["weights"] - len(own)
        assert report.manifest["speculation_levels"] == ["none", "chain", "full"]


def test_each_level_runs_in_a_session_of_its_own_and_decodes_as_the_if_does(
    artifacts, expected, tiny_llama, converted
):
    import onnxruntime as ort

    for name, report in artifacts.items():
        model = onnx.load(str(report.out))
        outputs = [v.name for v in model.graph.output]
        weights = {}
        for level in ("none", "tree"):
            branch = onnx.load_from_string(step_graph(model, level, greedy=False))
            assert CHOOSE_NODE not in {n.name for n in branch.graph.node}, name
            assert [v.name for v in branch.graph.output] == outputs
            assert [v.name for v in branch.graph.input] == [v.name for v in model.graph.input]
            weights[level] = {t.name for t in branch.graph.initializer}
        # the autoregressive session holds no drafting weights
        assert weights["none"] < {t.name for t in model.graph.initializer}
        generator = open_generator(report.out)
        assert generator.backend.split_by_level
        the_if = ort.InferenceSession(str(report.out), providers=["CPUExecutionProvider"])
        for levels in ALTERNATIONS:
            generator.speculation = Cycling(levels)
            with generator.backend.using_session(the_if):
                assert not generator.backend.split_by_level
                via_if = generator.generate_ids(REPEATING, cfg(3))
            assert ids(via_if) == expected["greedy"]
    plain = converted(tiny_llama, ConvertOptions.of(autoregressive=True))
    assert step_graph(onnx.load(str(plain.out)), "none", greedy=False) is None
    assert not open_generator(plain.out).backend.split_by_level


def test_policy_levels_by_rows():
    policy = SpeculationPolicy(((1, "full"), (3, "chain"), (8, "none")), "test")
    assert [policy.level(r) for r in (1, 2, 3, 7, 8, 64)] == [
        "full",
        "full",
        "chain",
        "chain",
        "none",
        "none",
    ]
    assert SpeculationPolicy.fixed("off").level(1) == "none"
    with pytest.raises(ValueError):
        SpeculationPolicy(((2, "full"),), "rows must start at 1")
    with pytest.raises(ValueError):
        SpeculationPolicy(((1, "most"),), "unknown level")


def _tuning(tmp_path, name="t", **fields):
    record = {
        "format": "redcompile-tuning",
        "version": 1,
        "manifest_sha256": "abc",
        "levels": {"1": "full", "4": "none"},
        **fields,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


def test_a_tuning_file_reads_back_only_for_its_artifact(tmp_path):
    policy = read_tuning(_tuning(tmp_path), "abc")
    assert policy.level(3) == "full" and policy.level(4) == "none"
    bad = [
        (_tuning(tmp_path, "a"), "def", "another artifact"),
        (_tuning(tmp_path, "b", format="x"), "abc", "not a redcompile tuning"),
        (_tuning(tmp_path, "c", version=9), "abc", "tuning format"),
        (_tuning(tmp_path, "d", levels={"1": "sometimes"}), "abc", "levels"),
        (_tuning(tmp_path, "e", levels={"0": "full"}), "abc", "levels"),
        (_tuning(tmp_path, "f", levels=[1]), "abc", "no levels"),
    ]
    for path, sha, message in bad:
        with pytest.raises(InputError, match=message):
            read_tuning(path, sha)
    garbage = tmp_path / "g.json"
    garbage.write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match="not a JSON"):
        read_tuning(garbage, "abc")
    with pytest.raises(InputError, match="applies to --speculation auto"):
        choose_policy("full", None, None, garbage)


def test_tune_drafts_only_where_drafting_wins_every_round():
    # rounds that overlap none's are noise: none; a level faster in every round wins
    assert choose_level({"none": [100, 110, 90], "full": [112, 95, 120]}) == "none"
    assert choose_level({"none": [100, 110], "chain": [111, 120], "full": [115, 130]}) == "full"
    assert choose_level({"none": [100], "chain": [90], "full": [100]}) == "none"
    assert choose_level({"none": [100, 104], "chain": [120, 121], "full": [101, 200]}) == "chain"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_tune_writes_the_policy_generate_follows(artifacts, tiny_llama, converted, tmp_path):
    artifact = tmp_path / "lookup.onnx"
    artifact.write_bytes(artifacts["lookup"].out.read_bytes())
    result = invoke(
        "tune",
        artifact,
        "--batch-size",
        "1,2",
        "--max-new-tokens",
        "8",
        "--repeats",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert set(record["levels"]) == {"1", "2"}
    assert set(record["tokens_per_second"]["2"]) == {"none", "chain", "full"}
    assert json.loads(tuning_path(artifact).read_text())["levels"] == record["levels"]
    result = invoke("generate", artifact, "--prompt", "ab", "--max-new-tokens", "4", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["speculation"]["source"].startswith("tuned")

    # an autoregressive artifact reports that it never drafts, and refuses to be told to
    other = converted(tiny_llama, ConvertOptions.of(autoregressive=True)).out
    result = invoke("generate", other, "--prompt", "ab", "--max-new-tokens", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["speculation"]["levels"] == {"1": "none"}

    # a tuning file of another artifact, and values no run can use: one line, exit 2
    for args in (
        ("generate", other, "--prompt", "ab", "--tuning", tuning_path(artifact)),
        ("generate", other, "--prompt", "ab", "--speculation", "full"),
        ("generate", artifact, "--prompt", "ab", "--speculation", "sometimes"),
        (
            "generate",
            artifact,
            "--prompt",
            "ab",
            "--speculation",
            "off",
            "--tuning",
            tuning_path(artifact),
        ),
        ("tune", other),
        ("tune", tmp_path),
        ("tune", artifact, "--batch-size", "0"),
    ):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_bench_reports_the_adaptive_engine(artifacts, converted, tiny_llama, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("abab", "xyz", "q")))
    baseline = converted(tiny_llama, ConvertOptions.of(autoregressive=True)).out
    out = tmp_path / "bench.json"
    result = invoke(
        "bench",
        artifacts["lookup"].out,
        "--baseline",
        baseline,
        "--prompts-file",
        prompts,
        "--batch-size",
        "1,3",
        "--repeats",
        "1",
        "--max-new-tokens",
        "8",
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())["results"]
    adaptive = [m for m in results if m["engine"].endswith(" adaptive")]
    assert [m["batch_size"] for m in adaptive] == [1, 3]
    # the default policy: full speculation at one row, none at three
    assert adaptive[0]["level_steps"].keys() == {"full"}
    assert adaptive[1]["level_steps"].keys() == {"none"}
    assert np.isclose(adaptive[1]["tokens_per_step"], 1.0)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_the_history_level_none_leaves_is_written_before_lookup_drafts_again(artifacts, batch_size):
    """Our level-none session skips the token-history upkeep; the loop writes each row's
    history back before the next drafting step, so lookup drafts what it drafts when the whole
    artifact (which keeps the history itself) runs every step: the same steps per prompt."""
    import onnxruntime as ort

    path = artifacts["lookup"].out
    generator = open_generator(path)
    assert not generator.backend.history_at_none
    levels = ["none", "none", "full", "full"]
    generator.speculation = Cycling(levels)
    split = generator.generate_ids(REPEATING, cfg(batch_size))
    whole = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with generator.backend.using_session(whole):
        assert generator.backend.history_at_none
        generator.speculation = Cycling(levels)
        kept = generator.generate_ids(REPEATING, cfg(batch_size))
    assert ids(split) == ids(kept)
    assert [c.steps for c in split.completions] == [c.steps for c in kept.completions]
    assert split.tokens_per_step > 1.2  # the lookup beams accept: the drafts matter
