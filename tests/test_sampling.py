"""Sampling is exactly the model's distribution, end to end (issue: exact speculative sampling).

A tiny model made peaky (its lm_head scaled, entropy 1-2.5 nats) and a "lens" drafter whose
first draft is the base model's own top tokens (its projection is the base lm_head on h, its
residual blocks zero), so drafts are accepted often and a biased rule would show. For one
prompt, the joint distribution of the first three generated tokens is enumerated exactly from
the model's logits under the same temperature and top-k/top-p warps, and 2000 seeded samples
are held to it by Pearson's chi-square (fixed significance 10^-3), for the autoregressive mode
(the control) and ReDrafter with W = 1 and W = 4 beams of length 3, at T = 0.7 and 1.0, in the
PyTorch reference and in the ONNX artifact. Because the host indexes uniforms by the position of
the token they pick, a seeded speculative run also draws the autoregressive run's tokens.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from safetensors.torch import load_file, save_file

from redcompile.api import open_generator, open_model_folder
from redcompile.compiler import ConvertOptions, convert
from redcompile.config import BeamShape
from redcompile.generation import GenerationConfig, generate_ids
from redcompile.ops.sampling import sampling_weights
from support import chi_square_p_value, hf_model, save_tiny_model

PROMPT = [5, 17, 33, 5]
SAMPLES = 2000
SIGNIFICANCE = 1e-3
LENGTH = 3  # beam length: two drafts per beam


@pytest.fixture(scope="module")
def peaked_model(tmp_path_factory):
    """A tiny llama whose next-token distributions are peaked (lm_head scaled by 5)."""
    path = save_tiny_model(tmp_path_factory.mktemp("peaked") / "model", "llama", seed=3)
    weights = load_file(path / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 5
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def lens_drafter(peaked_model, tmp_path_factory):
    """A drafter in Apple's format that drafts the base model's next-token ranking."""
    from redcompile.models.drafter_io import random_drafter, save_drafter
    from redcompile.models.loader import load_decoder

    base = load_decoder(peaked_model)
    drafter = random_drafter(base.config, num_layers=1, seed=0)
    with torch.no_grad():
        drafter.res_w.zero_()
        drafter.res_b.zero_()
        drafter.init_projection_from(base.lm_head.weight)
    return save_drafter(drafter, tmp_path_factory.mktemp("lens") / "drafter")


@pytest.fixture(scope="module")
def exact(peaked_model):
    """exact(temperature, top_k, top_p) -> {(x1, x2, x3): probability} from the model."""
    model = hf_model(peaked_model)
    cache = {}

    def probs(contexts, temperature, top_k, top_p):
        with torch.no_grad():
            logits = model(torch.tensor(contexts)).logits[:, -1].float()
        n = logits.shape[0]
        w = sampling_weights(
            logits, torch.full((n,), temperature), torch.full((n,), top_k), torch.full((n,), top_p)
        )
        return (w / w.sum(-1, keepdim=True)).tolist()

    def joint(temperature, top_k=50, top_p=1.0):
        key = (temperature, top_k, top_p)
        if key not in cache:
            p1 = probs([PROMPT], *key)[0]
            firsts = [a for a, p in enumerate(p1) if p > 0]
            p2 = dict(zip(firsts, probs([PROMPT + [a] for a in firsts], *key)))
            pairs = [(a, b) for a in firsts for b, p in enumerate(p2[a]) if p > 0]
            p3 = dict(zip(pairs, probs([PROMPT + list(ab) for ab in pairs], *key)))
            cache[key] = {
                (a, b, c): p1[a] * p2[a][b] * p
                for (a, b), row in p3.items()
                for c, p in enumerate(row)
                if p > 0
            }
        return cache[key]

    return joint


@pytest.fixture(scope="module")
def artifacts(peaked_model, lens_drafter, tmp_path_factory):
    """ONNX artifacts of the peaked model: autoregressive, W = 1 and W = 4 (built on demand)."""
    root = tmp_path_factory.mktemp("sampling_artifacts")
    built = {}

    def artifact(width):
        if width not in built:
            options = (
                ConvertOptions.of(autoregressive=True, drafter_dir=lens_drafter)
                if width == 0
                else ConvertOptions.of(beam=BeamShape(width, LENGTH), drafter_dir=lens_drafter)
            )
            out = root / f"w{width}.onnx"
            convert(peaked_model, out, options=options)
            built[width] = open_generator(out)
        return built[width]

    return artifact


def sample(generator, temperature, top_k=50, top_p=1.0, seed=5):
    """The first three tokens of SAMPLES seeded runs of PROMPT, and decode tokens per step."""
    cfg = GenerationConfig(
        max_new_tokens=3,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        batch_size=SAMPLES,
        stop_token_ids=(),
    )
    result = generate_ids(generator.backend, [PROMPT] * SAMPLES, cfg)  # no stop tokens
    return [tuple(c.token_ids) for c in result.completions], result.tokens_per_step


def joint_p_value(draws, distribution):
    keys = sorted(distribution)
    counts = Counter(draws)
    assert set(counts) <= set(distribution), "a sequence of probability 0 was drawn"
    return chi_square_p_value([counts[k] for k in keys], [distribution[k] for k in keys])


def torch_generator(peaked_model, lens_drafter, width):
    if width == 0:
        return open_model_folder(peaked_model, autoregressive=True)
    return open_model_folder(peaked_model, drafter_dir=lens_drafter, beam=BeamShape(width, LENGTH))


@pytest.mark.parametrize("runtime", ["pytorch", "onnx"])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampled_first_tokens_follow_the_exact_joint_distribution(
    runtime, temperature, peaked_model, lens_drafter, exact, artifacts
):
    """Autoregressive (control), W = 1 and W = 4: chi-square against the exact joint; the
    speculative runs accept drafts (tokens per step > 1.05) and, seeded alike, emit the
    autoregressive run's tokens for at least 99% of the prompts."""

    def make(width):
        if runtime == "onnx":
            return artifacts(width)
        return torch_generator(peaked_model, lens_drafter, width)

    distribution = exact(temperature)
    baseline, _ = sample(make(0), temperature)
    assert joint_p_value(baseline, distribution) > SIGNIFICANCE
    for width in (1, 4):
        draws, tokens_per_step = sample(make(width), temperature)
        assert tokens_per_step > 1.05, (width, tokens_per_step)
        assert joint_p_value(draws, distribution) > SIGNIFICANCE, width
        same = sum(a == b for a, b in zip(draws, baseline)) / SAMPLES
        assert same >= 0.99, (width, same)
    # power: the other temperature's distribution, a plausible wrong answer, is rejected
    other = exact(1.7 - temperature)
    assert joint_p_value(draws, other) < 1e-6


def test_top_k_and_top_p_sampling_is_exact_through_the_tree(peaked_model, lens_drafter, exact):
    """The warps hold through the tree: W = 4 with top-k 20 and top-p 0.8 at T = 1."""
    draws, tokens_per_step = sample(
        torch_generator(peaked_model, lens_drafter, 4), 1.0, top_k=20, top_p=0.8
    )
    assert tokens_per_step > 1.05
    assert joint_p_value(draws, exact(1.0, 20, 0.8)) > SIGNIFICANCE
    assert joint_p_value(draws, exact(1.0)) < 1e-6  # the warps change the distribution


def test_a_prompts_samples_do_not_depend_on_the_batch(peaked_model, lens_drafter):
    """Prompt i of a run draws from the stream (seed, i): batch size and neighbours do not
    change its tokens."""
    generator = torch_generator(peaked_model, lens_drafter, 4)
    prompts = [PROMPT, [40, 2, 9], PROMPT, [3]]
    runs = []
    for batch in (1, 4):
        cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=9, batch_size=batch)
        runs.append([c.token_ids for c in generator.generate_ids(prompts, cfg).completions])
    assert runs[0] == runs[1]
    alone = generator.generate_ids(
        [PROMPT], GenerationConfig(max_new_tokens=6, temperature=1.0, seed=9)
    )
    assert alone.completions[0].token_ids == runs[0][0]
    assert runs[0][0] != runs[0][2]  # the same prompt at another index draws other values
