"""Lookup beams (ops/prompt_lookup.py) in the step: lossless, per-row history, every runtime.

Greedy decoding with lookup beams, alone or next to drafter beams, must be token-identical to
autoregressive decoding, at batch 1 and with rows admitted mid-run. Lookup drafts depend on
nothing but the row's own tokens, so a lookup-only row takes exactly as many steps in a batch
as alone: a history leaking from a row's previous prompt, or from another row, would change that.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from redcompile.api import open_generator, open_model_folder
from redcompile.cli import main
from redcompile.compiler import ConvertOptions
from redcompile.config import BeamShape
from redcompile.generation import GenerationConfig
from support import PROMPTS

# Prompts with repeats in them, of different lengths, and some with none.
REPEATING = [
    [5, 17, 33, 5, 17, 33, 5],
    [40, 2, 9, 61, 8, 30, 12, 40, 2],
    [3],
    [70, 71, 72, 73, 74, 70, 71, 72],
    *PROMPTS[4:],
]
LOOKUP_ONLY = BeamShape(0, 5, lookup=1)
MIXED = BeamShape(2, 4, lookup=2, ngrams=(2, 1))


def ids(result):
    return [c.token_ids for c in result.completions]


def cfg(batch_size, **kw):
    return GenerationConfig(max_new_tokens=40, batch_size=batch_size, stop_token_ids=(), **kw)


@pytest.fixture(scope="module")
def expected(tiny_llama):
    return ids(open_model_folder(tiny_llama, autoregressive=True).generate_ids(REPEATING, cfg(4)))


@pytest.fixture(scope="module")
def artifacts(tiny_llama, converted):
    out = {}
    for name, beam, random in (("lookup", LOOKUP_ONLY, False), ("mixed", MIXED, True)):
        options = ConvertOptions.of(beam=beam, random_drafter=random, max_seq_len=128)
        out[name] = converted(tiny_llama, options)
    return out


@pytest.mark.parametrize("beam", [LOOKUP_ONLY, MIXED], ids=["lookup_only", "drafter_and_lookup"])
@pytest.mark.parametrize("batch_size", [1, 8, 3])
def test_pytorch_reference_is_lossless(tiny_llama, expected, beam, batch_size):
    generator = open_model_folder(tiny_llama, beam=beam, random_drafter=beam.width > 0)
    result = generator.generate_ids(REPEATING, cfg(batch_size))
    assert ids(result) == expected
    assert result.tokens_per_step > 1.2  # lookup drafts are accepted on repeating text


def test_lookup_only_rows_take_the_same_steps_alone_and_in_flight(tiny_llama):
    generator = open_model_folder(tiny_llama, beam=LOOKUP_ONLY)
    alone = [generator.generate_ids([p], cfg(1)).completions[0].steps for p in REPEATING]
    # two rows for eight prompts: each finished row takes the next prompt's history
    batched = [c.steps for c in generator.generate_ids(REPEATING, cfg(2)).completions]
    assert batched == alone


def test_without_a_drafter_lookup_beams_make_a_lookup_only_tree(tiny_llama):
    info = open_model_folder(tiny_llama, beam=BeamShape(4, 5, lookup=1)).info
    assert info["mode"] == "lookup" and info["beam_width"] == 0 and info["drafter"] is None


@pytest.mark.parametrize("name", ["lookup", "mixed"])
@pytest.mark.parametrize("batch_size", [1, 8, 3])
def test_onnx_runtime_is_lossless(artifacts, expected, name, batch_size):
    result = open_generator(artifacts[name].out, speculation="full").generate_ids(
        REPEATING, cfg(batch_size)
    )
    assert ids(result) == expected
    assert result.tokens_per_step > 1.2


def test_onnx_lookup_only_steps_equal_the_pytorch_reference(tiny_llama, artifacts):
    ours = open_generator(artifacts["lookup"].out, speculation="full").generate_ids(
        REPEATING, cfg(3)
    )
    reference = open_model_folder(tiny_llama, beam=LOOKUP_ONLY).generate_ids(REPEATING, cfg(3))
    assert [c.steps for c in ours.completions] == [c.steps for c in reference.completions]


def test_manifest_and_graph_of_a_lookup_only_artifact(artifacts):
    report = artifacts["lookup"]
    manifest = report.manifest
    assert manifest["mode"] == "lookup" and manifest["drafter"] is None
    assert manifest["beam"] == {
        "width": 0,
        "length": 5,
        "lookup_beams": 1,
        "lookup_ngrams": [3, 2, 1],
    }
    io = manifest["io"]
    assert {"name": "token_history", "dtype": "int64", "dims": ["batch", "cache"]} in io["inputs"]
    assert io["feedback"]["next_token_history"] == "token_history"
    # one lookup beam is a chain: attention is ONNX Runtime's GroupQueryAttention
    assert {p["name"]: p["matches"] for p in report.passes}["fuse-chain-attention"] == 2


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--random-drafter", "--lookup-beams", "-1"], "--lookup-beams must be between 0 and"),
        (["--random-drafter", "--lookup-beams", "17"], "--lookup-beams must be between 0 and"),
        (["--lookup-beams", "1", "--lookup-ngram", "0"], "--lookup-ngram takes n-gram sizes"),
        (["--lookup-beams", "1", "--lookup-ngram", "2,x"], "--lookup-ngram takes n-gram sizes"),
        (
            ["--beam-width", "0", "--lookup-beams", "1", "--drafter-weights", "int8"],
            "--drafter-weights configures a drafter",
        ),
        (
            ["--beam-width", "0", "--lookup-beams", "1", "--random-drafter"],
            "--random-drafter configures a drafter",
        ),
        (["--beam-width", "0", "--lookup-beams", "0"], "--beam-width must be between 1"),
    ],
)
def test_bad_lookup_options_fail_in_one_line_and_write_nothing(
    tiny_llama, tmp_path, flags, message
):
    result = invoke("convert", tiny_llama, tmp_path / "out.onnx", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_generate_and_inspect_a_lookup_artifact(artifacts):
    out = artifacts["mixed"].out
    result = invoke("generate", out, "--prompt", "abcabcabc", "--max-new-tokens", 12, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["lookup_beams"] == 2 and report["mode"] == "redrafter"
    result = invoke("inspect", out)
    assert result.exit_code == 0 and "+ 2 lookup (n-grams 2,1)" in result.output


def test_lookup_only_sampling_draws_exactly_the_models_distribution(tiny_llama):
    """A lookup beam is a deterministic draft: accepted with probability P(x), else the token
    is drawn from P without x, which is exact. The second generated token (the first one a
    lookup draft decides) is compared with its distribution enumerated from the model's logits
    under the same top-k warp and temperature; the test has the power to reject a wrong one."""
    import torch

    from redcompile.generation import generate_ids
    from redcompile.io_contract import DEFAULT_TOP_K
    from redcompile.ops.sampling import sampling_weights
    from support import chi_square_p_value, hf_model

    def probs(logits):
        n = logits.shape[0]
        controls = torch.full((n,), temperature), torch.full((n,), DEFAULT_TOP_K)
        w = sampling_weights(logits, *controls, torch.ones(n))
        return w / w.sum(-1, keepdim=True)

    prompt, temperature, samples = [5, 17, 33, 5, 17, 33, 5], 1.0, 3000
    generator = open_model_folder(tiny_llama, beam=LOOKUP_ONLY)
    config = GenerationConfig(
        max_new_tokens=2, batch_size=500, temperature=temperature, seed=11, stop_token_ids=()
    )
    result = generate_ids(generator.backend, [prompt] * samples, config)  # no stop tokens
    second = [c.token_ids[1] for c in result.completions]
    assert sum(c.steps for c in result.completions) == samples  # one decoding step each

    model = hf_model(tiny_llama)
    with torch.no_grad():
        first_logits = model(torch.tensor([prompt])).logits[0, -1]
        p1 = probs(first_logits.unsqueeze(0))[0]
        vocab = p1.shape[0]
        rows = torch.tensor([prompt + [t] for t in range(vocab)])
        p2_given = probs(model(rows).logits[:, -1])
    p2 = (p1.unsqueeze(1) * p2_given).sum(0).tolist()
    counts = [second.count(t) for t in range(vocab)]
    assert chi_square_p_value(counts, p2) > 1e-3
    # power: the first token's distribution, a plausible wrong answer, is rejected
    assert chi_square_p_value(counts, p1.tolist()) < 1e-6


def test_history_append_writes_kept_tokens_then_the_root_and_nothing_else():
    """Row 0 keeps a whole prompt chunk (keep_len = T), row 1 a root and one draft of a wider
    packed row, row 2 is idle: kept tokens land at cache_lengths + i, the root after them."""
    import torch

    from redcompile.models.step import SpeculativeStep

    history = torch.arange(100, 112).view(2, 6).repeat(2, 1)[:3]  # [3, 6], recognisable values
    input_ids = torch.tensor([[7, 8, 9], [4, 5, 6], [1, 2, 3]])
    keep_idx = torch.tensor([[0, 1, 2], [0, 2, 0], [0, 0, 0]])
    keep_len = torch.tensor([3, 2, 0])
    cache_lengths = torch.tensor([0, 3, 1])
    next_token = torch.tensor([[42], [43], [0]])
    active = torch.tensor([True, True, False])
    out, lengths = SpeculativeStep._append_history(
        history, input_ids, keep_idx, keep_len, cache_lengths, next_token, active
    )
    assert out.tolist() == [
        [7, 8, 9, 42, 104, 105],
        [106, 107, 108, 4, 6, 43],
        history[2].tolist(),
    ]
    assert lengths.tolist() == [4, 6, 0]
