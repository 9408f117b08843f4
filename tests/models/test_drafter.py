"""The ReDrafter head: Apple's math, beam search, checkpoint formats and refusals."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from redcompile.errors import IncompatibleDrafterError, ModelLoadError
from redcompile.models.config import DecoderConfig
from redcompile.models.drafter import Drafter, DrafterConfig
from redcompile.models.drafter_io import apple_state_dict, load_drafter, save_drafter

BASE = DecoderConfig(
    architecture="llama",
    vocab_size=11,
    hidden_size=6,
    intermediate_size=8,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=3,
)


def make_drafter(rnn=True, exit_dim=12, layers=2, seed=0) -> Drafter:
    torch.manual_seed(seed)
    d = Drafter(DrafterConfig(6, 11, exit_dim, layers, rnn))
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.7)
    return d.eval()


def apple_logits(d: Drafter, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Apple's compute_logits written out from the paper/code description, one module at a time."""
    x = torch.cat([h, s], -1)  # context first
    if d.input_proj is not None:
        x = x @ d.input_proj.weight.T + d.input_proj.bias
    for i in range(d.config.num_draft_layers):
        x = x + F.silu(x @ d.res_w[i].T + d.res_b[i])
    return x @ d.vocab_w.T


def apple_state(d: Drafter, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    if d.rnn_w is None:
        return s + e
    return F.silu(e @ d.rnn_w.T + s @ d.rnn_u.weight.T + d.rnn_u.bias)


def loop_beam_search(d: Drafter, h, root, emb, width, length, allowed=range(11)):
    """Beam search written with Python loops over beams and tokens (independent oracle);
    `allowed` are the tokens it may draft (a draft vocabulary)."""
    allowed = list(allowed)
    beams = [([int(root)], 0.0 if w == 0 else -50000.0, torch.zeros(6)) for w in range(width)]
    for _ in range(length - 1):
        candidates = []
        for tokens, score, state in beams:
            new_state = apple_state(d, state, emb[tokens[-1]])
            logp = torch.log_softmax(apple_logits(d, h, new_state)[allowed], -1)
            for v, lp in zip(allowed, logp.tolist()):
                candidates.append((score + lp, tokens + [v], new_state))
        candidates.sort(key=lambda c: -c[0])
        beams = [(tokens, score, state) for score, tokens, state in candidates[:width]]
    return [tokens for tokens, _, _ in beams]


@pytest.mark.parametrize("rnn,exit_dim", [(True, 12), (False, 12), (True, 10)])
def test_beam_search_matches_a_loop_implementation_of_apples_algorithm(rnn, exit_dim):
    d = make_drafter(rnn=rnn, exit_dim=exit_dim)
    emb = torch.randn(11, 6)
    h = torch.randn(2, 6)
    root = torch.tensor([3, 7])
    with torch.no_grad():
        beams, logprobs = d.beam_search(h, root, emb, beam_width=3, beam_length=4, top_k=0)
        for b in range(2):
            assert beams[b].tolist() == loop_beam_search(d, h[b], root[b], emb, 3, 4)
    assert logprobs.shape == (2, 3, 3, 11)
    assert torch.allclose(logprobs.exp().sum(-1), torch.ones(2, 3, 3), atol=1e-5)


def test_a_draft_vocabulary_drafts_only_its_tokens_and_keeps_the_search_exact():
    full = make_drafter()
    emb, h, root = torch.randn(11, 6), torch.randn(2, 6), torch.tensor([3, 7])
    allowed = [9, 2, 4, 0, 6]  # any order: rows of vocab_w follow it
    d = make_drafter()
    d.restrict_vocabulary(torch.tensor(allowed))
    assert d.vocab_w.shape == (5, 12)
    with torch.no_grad():
        beams, logprobs = d.beam_search(h, root, emb, beam_width=3, beam_length=4, top_k=0)
        for b in range(2):
            assert beams[b].tolist() == loop_beam_search(full, h[b], root[b], emb, 3, 4, allowed)
    outside = [v for v in range(11) if v not in allowed]
    assert logprobs.shape == (2, 3, 3, 11)
    assert (logprobs[..., outside] == -50000.0).all()
    assert torch.allclose(logprobs[..., allowed].exp().sum(-1), torch.ones(2, 3, 3), atol=1e-5)


@pytest.mark.parametrize("ids", [[], [1, 1], [11], [-1]])
def test_a_draft_vocabulary_must_be_distinct_ids_of_the_vocabulary(ids):
    with pytest.raises(ValueError):
        make_drafter().restrict_vocabulary(torch.tensor(ids, dtype=torch.long))


def test_input_projection_exists_iff_exit_dim_differs_from_2h():
    assert make_drafter(exit_dim=12).input_proj is None
    assert make_drafter(exit_dim=10).input_proj is not None


@pytest.mark.parametrize("exit_dim", [12, 8, 6, 4])
def test_projection_initialised_from_lm_head_reads_h_at_the_best_rank(exit_dim):
    d = make_drafter(exit_dim=exit_dim, layers=0)
    lm_head = torch.randn(11, 6)
    d.init_projection_from(lm_head)
    hidden, state = torch.randn(5, 6), torch.randn(5, 6)
    u, s, vt = torch.linalg.svd(lm_head, full_matrices=False)
    rank = min(exit_dim, 6)
    best = (u[:, :rank] * s[:rank]) @ vt[:rank]  # lm_head itself when rank = H
    with torch.no_grad():
        assert torch.allclose(d.logits(hidden, state), hidden @ best.T, atol=1e-5)


def test_teacher_forced_logits_equal_step_by_step_drafting():
    d = make_drafter()
    emb = torch.randn(11, 6)
    tokens = torch.tensor([[1, 4, 2, 9, 5, 3]])
    hidden = torch.randn(1, 6, 6)
    with torch.no_grad():
        trained = d.teacher_forced_logits(hidden, emb[tokens], depth=3)
        t = 1  # position t: the drafter sees hidden[t] and consumes tokens t+1, t+2, ...
        state = torch.zeros(6)
        for i in range(3):
            state = apple_state(d, state, emb[tokens[0, t + 1 + i]])
            assert torch.allclose(trained[i][0, t], apple_logits(d, hidden[0, t], state), atol=1e-5)


def write_variant(folder, tensors, config):
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_tensor_name_variants_load_the_same_drafter(tmp_path, variant):
    d = make_drafter(rnn=False, exit_dim=10)
    tensors = apple_state_dict(d)
    if variant == "B":
        tensors = {
            k.replace("lm_head.", "lm_heads.").replace("input_proj.", "input_projs."): v
            for k, v in tensors.items()
        }
    if variant == "C":
        tensors = {k.replace("lm_head.", "0."): v for k, v in tensors.items()}
    tensors["emb_norm.weight"] = torch.ones(6)  # Apple's MLX trainer leaves an unused norm
    config = {"hidden_size": 6, "exit_dim": 10, "num_draft_layers": 2, "rnn": False}
    loaded = load_drafter(write_variant(tmp_path / variant, tensors, config), BASE)
    for key, value in d.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_save_then_load_round_trips(tmp_path):
    d = make_drafter()
    loaded = load_drafter(save_drafter(d, tmp_path / "out"), BASE)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "recurrent_drafting_drafter" and cfg["num_draft_layers"] == 2
    h, root, emb = torch.randn(1, 6), torch.tensor([2]), torch.randn(11, 6)
    with torch.no_grad():
        assert torch.equal(
            d.beam_search(h, root, emb, 2, 3)[0], loaded.beam_search(h, root, emb, 2, 3)[0]
        )


def test_pickle_checkpoint_needs_explicit_opt_in(tmp_path):
    folder = tmp_path / "pt"
    folder.mkdir()
    d = make_drafter()
    torch.save(apple_state_dict(d), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({"hidden_size": 6, "rnn": True}))
    with pytest.raises(ModelLoadError, match="pickle.*--allow-pickle"):
        load_drafter(folder, BASE)
    loaded = load_drafter(folder, BASE, allow_pickle=True)
    assert torch.equal(loaded.vocab_w, d.vocab_w)


def test_drafter_that_does_not_fit_the_base_is_refused(tmp_path):
    d = make_drafter()
    folder = save_drafter(d, tmp_path / "d")
    wider = DecoderConfig(**{**BASE.to_dict(), "rope": BASE.rope, "hidden_size": 8})
    with pytest.raises(IncompatibleDrafterError, match="hidden size 6"):
        load_drafter(folder, wider)
    bigger_vocab = DecoderConfig(**{**BASE.to_dict(), "rope": BASE.rope, "vocab_size": 12})
    with pytest.raises(IncompatibleDrafterError, match="vocabulary of 11"):
        load_drafter(folder, bigger_vocab)


def test_config_that_contradicts_the_weights_is_refused(tmp_path):
    folder = save_drafter(make_drafter(), tmp_path / "d")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_draft_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="num_draft_layers=3"):
        load_drafter(folder, BASE)


def test_the_draft_vocabulary_is_the_most_frequent_tokens_ties_to_the_lower_id(tmp_path):
    from redcompile.errors import InputError
    from redcompile.models.draft_vocab import (
        most_frequent,
        read_token_frequencies,
        write_token_frequencies,
    )

    counts = torch.tensor([5, 0, 9, 5, 1, 9, 2])
    assert most_frequent(counts, 3).tolist() == [0, 2, 5]  # 9, 9, then the first 5
    assert most_frequent(counts, 4).tolist() == [0, 2, 3, 5]
    write_token_frequencies(tmp_path, counts, "test")
    assert torch.equal(read_token_frequencies(tmp_path, 7), counts)
    with pytest.raises(InputError, match="counts 7 tokens, the base model has 8"):
        read_token_frequencies(tmp_path, 8)  # a file written for another vocabulary
