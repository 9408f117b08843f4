"""examples/host_onnxruntime.py, a host written from docs/artifact.md with no redcompile code,
decodes every artifact kind token for token as `redcompile generate` does: batch 1 and batch 4
with in-flight admission, greedy and seeded sampling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from redcompile.api import open_generator
from redcompile.compiler import ConvertOptions
from redcompile.config import BeamShape
from redcompile.generation import GenerationConfig

HOST = Path(__file__).resolve().parents[2] / "examples" / "host_onnxruntime.py"
# Run the host and prove it never imported redcompile (installed in this environment).
RUNNER = (
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'redcompile')\n"
    "assert not leaked, leaked\n"
)
PROMPTS = ["def f(x):", "ab ab ab ab", "import os", "x = 1\ny = 2\nx", "The ", "class A:"]
KINDS = {
    "redrafter": ("llama", ConvertOptions.of(beam=BeamShape(2, 3), random_drafter=True)),
    "autoregressive": ("llama", ConvertOptions.of(autoregressive=True)),
    "lookup-only": ("llama", ConvertOptions.of(beam=BeamShape(0, 5, lookup=1), max_seq_len=128)),
    "drafter-and-lookup": (
        "llama",
        ConvertOptions.of(
            beam=BeamShape(2, 4, lookup=2, ngrams=(2, 1)), random_drafter=True, max_seq_len=128
        ),
    ),
    "quantized-drafter": (
        "qwen3",
        ConvertOptions.of(beam=BeamShape(3, 4), random_drafter=True, drafter_weights="int4"),
    ),
}


def host_tokens(artifact, prompts_file, *flags):
    process = subprocess.run(
        [sys.executable, "-c", RUNNER, str(HOST), str(artifact), "--prompts-file", prompts_file,
         *map(str, flags)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    records = [json.loads(line) for line in process.stdout.splitlines()]
    assert [r["prompt_index"] for r in records] == list(range(len(PROMPTS)))
    return [r["token_ids"] for r in records]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("host") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return str(path)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_example_host_decodes_as_redcompile_does(kind, tiny_models, converted, prompts_file):
    model, options = KINDS[kind]
    artifact = converted(tiny_models[model], options).out
    generator = open_generator(artifact)
    runs = [(1, {}), (4, {})]
    if kind in ("redrafter", "lookup-only"):
        runs.append((4, {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 5}))
    for batch, sampling in runs:
        cfg = GenerationConfig(max_new_tokens=16, batch_size=batch, **sampling)
        want = [c.token_ids for c in generator.generate(PROMPTS, cfg).result.completions]
        flags = ["--max-new-tokens", 16, "--batch-size", batch]
        for key, value in sampling.items():
            flags += [f"--{key.replace('_', '-')}", value]
        assert host_tokens(artifact, prompts_file, *flags) == want, (kind, batch, sampling)


def test_the_example_host_stays_a_short_reference():
    assert len(HOST.read_text().splitlines()) < 200
    assert "redcompile" not in "".join(
        line for line in HOST.read_text().splitlines() if line.startswith(("import", "from"))
    )
