"""The benchmark fixture compiled and decoded: dev prompts, batch 1 and 8, fp32 and fp16."""

from __future__ import annotations

import json

import pytest

from redcompile.api import open_generator, open_model_folder
from redcompile.compiler import ConvertOptions, convert
from redcompile.config import BeamShape
from redcompile.generation import GenerationConfig
from support import BENCHMARK_FIXTURE as FIXTURE

# The trained fixture end to end: minutes on two cores, so run with `python -m pytest -m slow`.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"benchmark fixture not at {FIXTURE}"),
]
NEW_TOKENS = 32


def dev_prompts():
    lines = (FIXTURE / "dev_prompts.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixture")
    opts = dict(beam=BeamShape(4, 5), random_drafter=True)
    return {
        "fp32": convert(FIXTURE, out / "spec.onnx", options=ConvertOptions.of(**opts)).out,
        "ar": convert(FIXTURE, out / "ar.onnx", options=ConvertOptions.of(autoregressive=True)).out,
        "fp16": convert(
            FIXTURE, out / "spec16.onnx", options=ConvertOptions.of(dtype="fp16", **opts)
        ).out,
    }


def texts_and_ids(generator, batch_size):
    report = generator.generate(
        dev_prompts(), GenerationConfig(max_new_tokens=NEW_TOKENS, batch_size=batch_size)
    )
    return [c.token_ids for c in report.result.completions]


@pytest.fixture(scope="module")
def reference():
    return texts_and_ids(open_model_folder(FIXTURE, autoregressive=True), batch_size=8)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_dev_prompts_decode_identically_in_every_runtime(compiled, reference, batch_size):
    assert texts_and_ids(open_generator(compiled["fp32"]), batch_size) == reference
    assert texts_and_ids(open_generator(compiled["ar"]), batch_size) == reference


def test_pytorch_redrafter_generator_matches_too(reference):
    torch_spec = open_model_folder(FIXTURE, beam=BeamShape(4, 5), random_drafter=True)
    assert texts_and_ids(torch_spec, 8) == reference


def test_fp16_artifact_agrees_with_fp32_on_most_tokens(compiled, reference):
    half = texts_and_ids(open_generator(compiled["fp16"]), 8)
    same = sum(a == b for ours, ref in zip(half, reference) for a, b in zip(ours, ref))
    total = sum(len(ref) for ref in reference)
    rate = same / total
    print(f"fp16 agrees with fp32 on {same}/{total} tokens ({rate:.1%})")
    assert rate > 0.75
