"""bench/fixtures/train_base_lm.py at a tiny size: it learns, and what it writes is a fixture
redcompile loads (the GPU machine trains the ~100M one with the same code)."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from redcompile.api import open_model_folder
from redcompile.generation import GenerationConfig

REPO = Path(__file__).resolve().parents[2]


def small_corpus(path: Path) -> Path:
    """A few standard-library modules as JSONL (the real corpus is the fixture's files)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    with path.open("w", encoding="utf-8") as out:
        for module in sorted((stdlib / "json").glob("*.py")):
            out.write(json.dumps({"text": module.read_text(encoding="utf-8")}) + "\n")
    return path


def test_tiny_model_learns_and_is_a_fixture_redcompile_opens(pycode_lm, tmp_path):
    out = tmp_path / "model"
    command = [
        sys.executable,
        str(REPO / "bench/fixtures/train_base_lm.py"),
        "--fixture",
        str(pycode_lm),
        "--data",
        str(small_corpus(tmp_path / "corpus.jsonl")),
        "--out",
        str(out),
        "--size",
        "tiny",
        "--steps",
        "40",
        "--batch-size",
        "8",
        "--seq-len",
        "64",
        "--log-every",
        "39",
        "--eval-every",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    record = json.loads((out / "TRAINING.json").read_text())
    first, last = record["train_loss"][0], record["train_loss"][-1]
    assert (first["step"], last["step"]) == (0, 39)
    assert first["loss"] > 8.0  # about ln(4096) = 8.3 from random weights
    assert last["loss"] < first["loss"] - 1.0
    assert record["eval_loss"][-1]["step"] == 40 and record["eval_loss"][-1]["loss"] < first["loss"]
    assert record["tokens_seen"] == 40 * 8 * 64 and record["parameters"] > 0
    for name in ("tokenizer.json", "train_files.txt", "dev_prompts.jsonl", "model.safetensors"):
        assert (out / name).exists(), name

    config = json.loads((out / "config.json").read_text())
    fixture_config = json.loads((pycode_lm / "config.json").read_text())
    for key in ("vocab_size", "eos_token_id", "rope_parameters", "model_type", "rms_norm_eps"):
        assert config[key] == fixture_config[key], key
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2

    # redcompile decodes it token for token as transformers does (greedy)
    import torch
    from transformers import LlamaForCausalLM

    prompt = [5, 6, 7, 300, 41]
    generator = open_model_folder(out, autoregressive=True)
    cfg = GenerationConfig(max_new_tokens=12, stop_token_ids=(-1,))
    ours = generator.generate_ids([prompt], cfg).completions[0].token_ids
    reference = LlamaForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = reference.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
    assert list(ours) == theirs
