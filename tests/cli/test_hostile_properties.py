"""Property tests: random config values, random artifact bytes and random prompts files never
give a traceback, never pass nonsense, never leave a file at OUT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from redcompile.cli import main
from redcompile.errors import RedcompileError
from redcompile.models.config import parse_decoder_config

BASE = {
    "model_type": "llama",
    "vocab_size": 97,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "eos_token_id": 0,
    "bos_token_id": 1,
}
KEYS = sorted(BASE) + [
    "head_dim",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
    "sliding_window",
    "rope_scaling",
    "rope_parameters",
    "partial_rotary_factor",
    "pad_token_id",
    "dtype",
]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["rope_type", "factor", "rope_theta", "type"]), children)
    ),
    max_leaves=6,
)
# derandomize: CI replays the same examples every run (a property test must not turn red on
# a landing that changed nothing); new examples come from changing the strategies or seeds here.
SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
QUICK = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _sane(cfg) -> bool:
    """What any accepted config must hold."""
    ints = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers)
    floats = (cfg.rms_norm_eps, cfg.rope.theta, cfg.rope.factor)
    return (
        all(isinstance(v, int) and v > 0 for v in ints)
        and cfg.num_heads % cfg.num_kv_heads == 0
        and cfg.head_dim > 0
        and cfg.head_dim % 2 == 0
        and all(math.isfinite(v) and v > 0 for v in floats)
        and all(0 <= t < cfg.vocab_size for t in cfg.eos_token_ids)
        and (cfg.bos_token_id is None or 0 <= cfg.bos_token_id < cfg.vocab_size)
        and isinstance(cfg.tie_word_embeddings, bool)
    )


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, min_size=1, max_size=4))
@example({"model_type": "\n"})  # found by CI: a value's newline broke the one-line message
@example({"hidden_act": "gelu\nx", "rope_scaling": {"rope_type": "\r"}})
def test_random_config_values_are_refused_by_name_or_sane(edits):
    cfg = {**BASE, **edits}
    try:
        parsed = parse_decoder_config(json.loads(json.dumps(cfg)), Path("config.json"))
    except RedcompileError as exc:
        assert "config" in str(exc) and "\n" not in str(exc)
        return
    assert _sane(parsed), parsed


def _run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result


@settings(max_examples=40, **QUICK)
@given(st.binary(max_size=2048), st.sampled_from([".onnx", ".pt2", ".bin"]))
def test_random_bytes_as_an_artifact_are_one_line_of_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"artifact{suffix}"
    path.write_bytes(data)
    for args in (["inspect", path], ["generate", path, "--prompt", "x"]):
        assert _run(args).exit_code == 2


@pytest.fixture(scope="module")
def artifact(tiny_llama, converted):
    from redcompile.compiler import ConvertOptions
    from redcompile.config import BeamShape

    return converted(tiny_llama, ConvertOptions.of(beam=BeamShape(2, 3), random_drafter=True)).out


@settings(max_examples=40, **QUICK)
@given(
    st.one_of(
        st.binary(max_size=512),
        st.lists(
            st.dictionaries(st.sampled_from(["prompt", "text"]), JSON_VALUES, max_size=2),
            max_size=3,
        ).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode()),
    )
)
def test_random_prompts_files_decode_or_are_one_line_of_error(artifact, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_bytes(data)
    _run(["generate", artifact, "--prompts-file", path, "--max-new-tokens", "2"])


@settings(max_examples=25, **QUICK)
@given(st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, min_size=1, max_size=3))
def test_random_configs_through_convert_leave_nothing_at_out(tiny_llama, tmp_path_factory, edits):
    import shutil

    work = tmp_path_factory.mktemp("convert")
    folder = work / "model"
    shutil.copytree(tiny_llama, folder)
    cfg = {**json.loads((folder / "config.json").read_text()), **edits}
    (folder / "config.json").write_text(json.dumps(cfg))
    out = work / "out.onnx"
    try:
        parse_decoder_config(json.loads(json.dumps(cfg)), folder / "config.json")
    except RedcompileError:
        result = _run(["convert", folder, out, "--random-drafter"])
        assert result.exit_code == 2 and not out.exists()
        assert sorted(p.name for p in work.iterdir()) == ["model"]
