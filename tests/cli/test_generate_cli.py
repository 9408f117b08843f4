"""`redcompile generate`: output contract and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from redcompile.cli import main
from redcompile.models.drafter_io import apple_state_dict, random_drafter, save_drafter
from redcompile.models.loader import load_decoder


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_with_drafter(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("with_drafter") / "m"
    shutil.copytree(tiny_llama, folder)
    save_drafter(random_drafter(load_decoder(folder).config), folder / "drafter")
    return folder


def test_json_report_has_text_ids_steps_and_rates(model_with_drafter, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "abc"}\n\n{"prompt": "hello world", "source": "x"}\n')
    result = invoke(
        "generate",
        model_with_drafter,
        "--prompts-file",
        prompts,
        "--json",
        "--max-new-tokens",
        8,
        "--batch-size",
        2,
        "--beam-width",
        2,
        "--beam-length",
        3,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "redrafter" and (report["beam_width"], report["beam_length"]) == (2, 3)
    assert [c["prompt"] for c in report["completions"]] == ["abc", "hello world"]
    for c in report["completions"]:
        assert set(c) >= {"text", "token_ids", "steps", "tokens_per_step", "finish_reason"}
        assert len(c["token_ids"]) <= 8
    assert {"steps", "tokens_per_step", "tokens_per_second", "generated_tokens"} <= set(report)


def test_greedy_cli_output_equals_autoregressive(model_with_drafter):
    args = (
        "generate",
        model_with_drafter,
        "--prompt",
        "def f(x):",
        "--json",
        "--max-new-tokens",
        12,
    )
    spec = json.loads(invoke(*args).stdout)
    ar = json.loads(invoke(*args, "--autoregressive").stdout)
    assert spec["completions"][0]["token_ids"] == ar["completions"][0]["token_ids"]
    assert ar["tokens_per_step"] == 1.0


def test_streaming_prints_the_completion(model_with_drafter):
    result = invoke(
        "generate", model_with_drafter, "--prompt", "abc", "--max-new-tokens", 5, "--autoregressive"
    )
    assert result.exit_code == 0
    assert "tokens/step" in result.stderr


def break_config(folder):
    (folder / "config.json").write_text("{not json")


def unsupported_arch(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(cfg))


def truncate_weights(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def garbage_weights(folder):
    (folder / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file")


def wrong_drafter(hidden=None, vocab=None):
    def apply(folder):
        base = load_decoder(folder).config
        values = base.to_dict()
        values.update({k: v for k, v in (("hidden_size", hidden), ("vocab_size", vocab)) if v})
        from redcompile.models.config import DecoderConfig

        save_drafter(random_drafter(DecoderConfig.from_dict(values)), folder / "drafter")

    return apply


def pickle_drafter(folder):
    d = random_drafter(load_decoder(folder).config)
    (folder / "drafter").mkdir()
    torch.save(apple_state_dict(d), folder / "drafter" / "model.pt")
    (folder / "drafter" / "config.json").write_text('{"rnn": true}')


def remove(name):
    return lambda folder: (folder / name).unlink()


BAD = [
    ("missing folder", None, ["--prompt", "x"], "does not exist"),
    (
        "no config",
        remove("config.json"),
        ["--prompt", "x", "--autoregressive"],
        "config.json not found",
    ),
    ("corrupt config", break_config, ["--prompt", "x", "--autoregressive"], "not valid JSON"),
    (
        "unsupported architecture",
        unsupported_arch,
        ["--prompt", "x", "--autoregressive"],
        "architecture 'gpt_neox'",
    ),
    (
        "no weights",
        remove("model.safetensors"),
        ["--prompt", "x", "--autoregressive"],
        "no model.safetensors",
    ),
    ("truncated weights", truncate_weights, ["--prompt", "x", "--autoregressive"], "safetensors"),
    ("garbage weights", garbage_weights, ["--prompt", "x", "--autoregressive"], "safetensors"),
    (
        "no tokenizer",
        remove("tokenizer.json"),
        ["--prompt", "x", "--autoregressive"],
        "tokenizer.json not found",
    ),
    ("no drafter", None, ["--prompt", "x", "--lookup-beams", "0"], "no drafter at"),
    ("drafter hidden size", wrong_drafter(hidden=32), ["--prompt", "x"], "hidden size 32"),
    ("drafter vocabulary", wrong_drafter(vocab=90), ["--prompt", "x"], "vocabulary of 90"),
    ("drafter pickle", pickle_drafter, ["--prompt", "x"], "--allow-pickle"),
    (
        "beam width 0",
        None,
        ["--prompt", "x", "--random-drafter", "--beam-width", "0"],
        "--beam-width",
    ),
    (
        "beam length 1",
        None,
        ["--prompt", "x", "--random-drafter", "--beam-length", "1"],
        "--beam-length",
    ),
    (
        "beam too large",
        None,
        ["--prompt", "x", "--random-drafter", "--beam-width", "64", "--beam-length", "9"],
        "tree of 521 tokens",  # 64 drafter beams and the default lookup beam
    ),
    ("no new tokens", None, ["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("negative temperature", None, ["--prompt", "x", "--temperature", "-1"], "--temperature"),
    ("NaN temperature", None, ["--prompt", "x", "--temperature", "nan"], "--temperature"),
    ("infinite temperature", None, ["--prompt", "x", "--temperature", "inf"], "--temperature"),
    ("top-p zero", None, ["--prompt", "x", "--top-p", "0"], "--top-p"),
    ("top-p above one", None, ["--prompt", "x", "--top-p", "1.5"], "--top-p"),
    ("top-p NaN", None, ["--prompt", "x", "--top-p", "nan"], "--top-p"),
    ("negative top-k", None, ["--prompt", "x", "--top-k", "-1"], "--top-k"),
    ("negative seed", None, ["--prompt", "x", "--seed", "-1"], "--seed"),
    ("seed too large", None, ["--prompt", "x", "--seed", str(2**63)], "--seed"),
    ("both prompt sources", None, ["--prompt", "x", "--prompts-file", "p.jsonl"], "exactly one"),
    (
        "prompt too long",
        None,
        ["--prompt", "x" * 600, "--autoregressive"],
        "maximum sequence length",
    ),
]


@pytest.mark.parametrize("name,breaker,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_with_exit_code_2(tiny_llama, tmp_path, name, breaker, args, message):
    folder = tmp_path / "model"
    if name != "missing folder":
        shutil.copytree(tiny_llama, folder)
    if breaker is not None:
        breaker(folder)
    result = invoke("generate", folder, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_a_temperature_that_underflows_decodes_greedily(tiny_llama):
    """1e-45 (the smallest float32) is not 'generate nothing': it is greedy decoding."""
    args = ["--prompt", "ab", "--autoregressive", "--max-new-tokens", "6", "--json"]
    greedy = invoke("generate", tiny_llama, *args)
    tiny = invoke("generate", tiny_llama, *args, "--temperature", "1e-45", "--seed", "3")
    assert greedy.exit_code == 0 and tiny.exit_code == 0, tiny.output
    first = json.loads(greedy.stdout)["completions"][0]["token_ids"]
    assert json.loads(tiny.stdout)["completions"][0]["token_ids"] == first
    assert len(first) == 6
