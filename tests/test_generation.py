"""Lossless decoding: greedy ReDrafter is token-identical to greedy autoregressive decoding."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest
import torch
from torch import nn

from redcompile.generation import GenerationConfig, generate_ids
from redcompile.models.drafter_io import random_drafter
from redcompile.models.loader import load_decoder
from redcompile.models.step import SpeculativeStep
from redcompile.runtime.torch_backend import TorchBackend
from redcompile.tokenizer import TextCodec

PROMPTS = [[5, 17, 33], [40, 2, 9, 61, 8, 30, 12], [3], [70, 71, 72, 73, 74]]


def run(base, drafter, prompts, width=1, length=1, **cfg):
    step = SpeculativeStep(base, drafter, width, length, max_seq_len=512)
    settings = {"max_new_tokens": 24, "batch_size": 1, **cfg}
    return generate_ids(TorchBackend(step), prompts, GenerationConfig(**settings))


def token_ids(result):
    return [c.token_ids for c in result.completions]


class BigramDrafter(nn.Module):
    """Test double: drafts from bigram statistics of a reference run, so that drafts are often
    but not always right and acceptance is ragged across rows and steps."""

    def __init__(self, sequences, vocab_size):
        super().__init__()
        counts = defaultdict(Counter)
        for seq in sequences:
            for a, b in zip(seq, seq[1:]):
                counts[a][b] += 1
        self.successors = {a: [t for t, _ in c.most_common()] for a, c in counts.items()}
        self.vocab_size = vocab_size

    def beam_search(self, hidden, root, embedding, width, length, top_k):
        b = root.shape[0]
        beams = torch.zeros(b, width, length, dtype=torch.long)
        for row in range(b):
            for w in range(width):
                token = int(root[row])
                beams[row, w, 0] = token
                for depth in range(1, length):
                    options = self.successors.get(token, [0])
                    token = options[w % len(options)] if depth == 1 else options[0]
                    beams[row, w, depth] = token
        logprobs = torch.full(
            (b, width, length - 1, self.vocab_size),
            -float(torch.log(torch.tensor(float(self.vocab_size)))),
        )
        return beams, logprobs


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "llama_tied"])
def test_random_drafter_is_lossless_on_every_architecture(tiny_models, arch):
    base = load_decoder(tiny_models[arch])
    expected = token_ids(run(base, None, PROMPTS[:2]))
    drafter = random_drafter(base.config, seed=1)
    assert token_ids(run(base, drafter, PROMPTS[:2], 3, 4)) == expected


@pytest.mark.parametrize("width,length", [(1, 2), (2, 5), (4, 3), (8, 4)])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_ragged_acceptance_is_lossless_for_every_beam_shape(tiny_llama, width, length, batch_size):
    base = load_decoder(tiny_llama)
    reference = run(base, None, PROMPTS, batch_size=batch_size, max_new_tokens=40)
    sequences = [p + c for p, c in zip(PROMPTS, token_ids(reference))]
    drafter = BigramDrafter(sequences, base.config.vocab_size)
    result = run(base, drafter, PROMPTS, width, length, batch_size=batch_size, max_new_tokens=40)
    assert token_ids(result) == token_ids(reference)
    assert all(len(ids) == 40 for ids in token_ids(result))
    per_prompt = [c.tokens_per_step for c in result.completions]
    assert result.tokens_per_step > 1.2  # drafts are accepted...
    assert len(set(per_prompt)) > 1  # ...and not equally in every row


def test_more_prompts_than_rows_admits_prompts_into_finished_rows(tiny_llama):
    base = load_decoder(tiny_llama)
    prompts = PROMPTS + [[11, 12], [90, 1, 2, 3, 4, 5, 6, 7, 8]]
    alone = [token_ids(run(base, None, [p], max_new_tokens=40))[0] for p in prompts]
    drafter = BigramDrafter([p + a for p, a in zip(prompts, alone)], base.config.vocab_size)
    # Two rows for six prompts: each finished row takes the next prompt (a prefill row) while
    # the other row is mid-decoding, and a stop token makes rows finish at different steps.
    stop = alone[0][25]
    expected = [a[: a.index(stop)] if stop in a else a for a in alone]
    mixed = run(
        base, drafter, prompts, 3, 4, batch_size=2, max_new_tokens=40, stop_token_ids=(stop,)
    )
    assert token_ids(mixed) == expected
    assert len({len(ids) for ids in expected}) > 1


class WidthSpy(TorchBackend):
    """Records the packed width of every batched step and how many prompts were prefilled."""

    def __init__(self, step):
        super().__init__(step)
        self.widths, self.prefills = [], 0

    def step(self):
        self.widths.append(self.state["input_ids"].shape[1])
        return super().step()

    def step_row(self, row, inputs):
        self.prefills += 1
        return super().step_row(row, inputs)


@pytest.mark.parametrize("width,length", [(1, 1), (3, 4)])
def test_admissions_prefill_alone_and_batched_steps_keep_the_tree_width(tiny_llama, width, length):
    """The first batch prefills in the first step; a prompt admitted mid-run is prefilled as a
    batch of one: no later batched step is widened to a prompt's length (the nine-token prompt
    here), and every prompt is prefilled once."""
    base = load_decoder(tiny_llama)
    prompts = PROMPTS + [[11, 12], [90, 1, 2, 3, 4, 5, 6, 7, 8]]
    drafter = random_drafter(base.config, seed=2) if length > 1 else None
    spy = WidthSpy(SpeculativeStep(base, drafter, width, length, max_seq_len=512))
    result = generate_ids(spy, prompts, GenerationConfig(max_new_tokens=12, batch_size=2))
    assert spy.prefills == len(prompts) - 2
    assert spy.widths[0] == max(len(p) for p in prompts[:2])
    assert max(spy.widths[1:]) <= width * (length - 1) + 1
    alone = [token_ids(run(base, None, [p], max_new_tokens=12))[0] for p in prompts]
    assert token_ids(result) == alone


def test_stop_tokens_end_generation_at_the_same_place(tiny_llama):
    base = load_decoder(tiny_llama)
    free = token_ids(run(base, None, PROMPTS[:1], max_new_tokens=30))[0]
    stop = free[10]
    cut = free.index(stop)
    ar = run(base, None, PROMPTS[:1], max_new_tokens=30, stop_token_ids=(stop,))
    assert token_ids(ar)[0] == free[:cut] and ar.completions[0].finish_reason == "stop"
    drafter = BigramDrafter([PROMPTS[0] + free], base.config.vocab_size)
    spec = run(base, drafter, PROMPTS[:1], 2, 5, max_new_tokens=30, stop_token_ids=(stop,))
    assert token_ids(spec) == token_ids(ar)


def test_sampling_respects_the_seed_and_is_batch_independent(tiny_llama):
    base = load_decoder(tiny_llama)
    drafter = random_drafter(base.config, seed=2)

    def sample(seed, batch_size):
        return token_ids(
            run(base, drafter, PROMPTS, 2, 3, temperature=1.0, seed=seed, batch_size=batch_size)
        )

    first = sample(7, 1)
    assert sample(7, 1) == first
    assert sample(7, 4) == first  # each prompt draws from its own generator
    assert sample(8, 1) != first


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 4])
def test_fixture_with_random_drafter_is_lossless(pycode_lm, batch_size):
    base = load_decoder(pycode_lm)
    codec = TextCodec.from_file(pycode_lm / "tokenizer.json")
    lines = (pycode_lm / "dev_prompts.jsonl").read_text().splitlines()[:4]
    prompts = [codec.encode(json.loads(line)["prompt"]) for line in lines]
    cfg = dict(max_new_tokens=32, batch_size=batch_size, stop_token_ids=(0,))
    step_ar = SpeculativeStep(base, None, 1, 1, 2048)
    expected = token_ids(generate_ids(TorchBackend(step_ar), prompts, GenerationConfig(**cfg)))
    drafter = random_drafter(base.config, seed=0)
    for width, length in [(2, 5), (4, 3)]:
        step = SpeculativeStep(base, drafter, width, length, 2048)
        got = generate_ids(TorchBackend(step), prompts, GenerationConfig(**cfg))
        assert token_ids(got) == expected
