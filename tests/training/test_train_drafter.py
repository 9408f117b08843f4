"""train-drafter on a tiny model: loss falls, outputs reload, runs repeat, resume, DDP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch

from redcompile.models.drafter_io import load_drafter
from redcompile.models.loader import load_decoder
from redcompile.training.trainer import TrainConfig, train_drafter

TEXT = "".join(f"def f{i}(x):\n    return x * {i % 7} + {i % 5}\n\n" for i in range(400))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "a.txt").write_text(TEXT[: len(TEXT) // 2])
    (folder / "b.jsonl").write_text(json.dumps({"text": TEXT[len(TEXT) // 2 :]}) + "\n")
    return folder


def small(**changes):
    values = dict(
        steps=30,
        batch_size=4,
        seq_len=48,
        eval_examples=8,
        eval_every=0,
        save_every=0,
        lr=3e-3,
        bf16=False,
    )
    values.update(changes)
    return TrainConfig(**values)


def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_loss_falls_and_the_output_reloads_with_identical_drafts(tiny_llama, corpus, tmp_path):
    losses = []
    report = train_drafter(
        tiny_llama,
        [corpus],
        tmp_path / "d",
        small(),
        on_step=lambda _step, loss: losses.append(loss),
    )
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert len(losses) == 30 and last < 0.8 * first, losses
    assert report.evals and len(report.evals[-1]["top1_by_position"]) == 4
    base = load_decoder(tiny_llama)
    drafter = load_drafter(tmp_path / "d", base.config)
    again = load_drafter(tmp_path / "d", base.config)
    h, root = torch.randn(2, 64), torch.tensor([5, 9])
    with torch.no_grad():
        a = drafter.beam_search(h, root, base.embedding, 3, 4)
        b = again.beam_search(h, root, base.embedding, 3, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["model_type"] == "recurrent_drafting_drafter" and config["rnn"] is True
    counts = json.loads((tmp_path / "d" / "token_frequencies.json").read_text())["counts"]
    assert len(counts) == base.config.vocab_size and sum(counts) == report.target_tokens


def test_a_narrower_drafter_trains_and_saves_its_input_projection(tiny_llama, corpus, tmp_path):
    losses = []
    train_drafter(
        tiny_llama,
        [corpus],
        tmp_path / "narrow",
        small(exit_dim=32),
        on_step=lambda _step, loss: losses.append(loss),
    )
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    config = json.loads((tmp_path / "narrow" / "config.json").read_text())
    assert config["exit_dim"] == 32
    drafter = load_drafter(tmp_path / "narrow", load_decoder(tiny_llama).config)
    assert drafter.input_proj is not None and drafter.input_proj.weight.shape == (32, 128)
    assert drafter.vocab_w.shape[1] == 32


def test_the_same_seed_gives_the_same_drafter(tiny_llama, corpus, tmp_path):
    train_drafter(tiny_llama, [corpus], tmp_path / "a", small(steps=8))
    train_drafter(tiny_llama, [corpus], tmp_path / "b", small(steps=8))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_from_a_checkpoint_continues_the_same_run(tiny_llama, corpus, tmp_path):
    train_drafter(tiny_llama, [corpus], tmp_path / "full", small(steps=10))
    train_drafter(
        tiny_llama, [corpus], tmp_path / "part", small(steps=10, save_every=5), resume=False
    )
    # Simulate an interruption after the checkpoint at step 5: resume from it.
    resumed = train_drafter(tiny_llama, [corpus], tmp_path / "part", small(steps=10), resume=True)
    assert resumed.steps == 10
    a, b = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_self_distillation_trains_on_greedy_continuations(tiny_llama, corpus, tmp_path):
    report = train_drafter(
        tiny_llama,
        [corpus],
        tmp_path / "sd",
        small(self_distill=True, distill_examples=24, prefix_len=16, window_fraction=0.0, steps=12),
    )
    assert report.distill_seconds > 0
    assert report.examples == 24 and report.target_tokens <= 24 * 32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_self_distillation_on_cuda_keeps_the_base_model_on_the_gpu(tiny_llama, corpus, tmp_path):
    # the continuations are generated on the base model's device, and training goes on there
    report = train_drafter(
        tiny_llama,
        [corpus],
        tmp_path / "sd",
        small(self_distill=True, distill_examples=24, prefix_len=16, steps=4, device="cuda"),
    )
    assert report.steps == 4 and report.examples == 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_under_torchrun_match_one_process(tiny_llama, corpus, tmp_path):
    args = [
        "train-drafter",
        str(tiny_llama),
        "--data",
        str(corpus),
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--seq-len",
        "48",
        "--eval-every",
        "0",
        "--save-every",
        "0",
        "--no-bf16",
        "--lr",
        "0.003",
    ]
    single = subprocess.run(
        [sys.executable, "-m", "redcompile.cli", *args, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "redcompile.cli",
            *args,
            "--out",
            str(tmp_path / "two"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert json.loads(ddp.stdout)["world_size"] == 2
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    # Same updates up to float reduction order, which Adam amplifies for near-zero gradients
    # (seen: 3e-5 at most); a rank training on the wrong rows would differ by ~lr * steps.
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2e-4


@pytest.mark.parametrize(
    "change,words",
    [
        (dict(steps=0), "--steps"),
        (dict(beam_length_train=1), "--beam-length-train"),
        (dict(device="cuda"), "cuda"),
        (dict(soft_labels=True), "--self-distill"),
        (dict(exit_dim=0), "--exit-dim"),
    ],
)
def test_bad_settings_are_refused(change, words):
    from redcompile.errors import InputError

    if change.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(InputError, match=words):
        small(**change).validate()
