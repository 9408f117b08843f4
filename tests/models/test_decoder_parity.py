"""The decoder loaded from Hugging Face folders matches transformers' logits (fp32, 1e-4)."""

from __future__ import annotations

import pytest
import torch

from redcompile.models.loader import load_decoder
from redcompile.ops import KV_COMPACTION
from redcompile.ops.tree_building import ancestor_mask
from support import hf_model, save_tiny_model

ATOL = 1e-4


def chain(b: int, t: int):
    parents = torch.arange(-1, t - 1).expand(b, t)
    depths = torch.arange(t).expand(b, t)
    return parents, depths


def prefill_logits(model, ids: torch.Tensor, capacity: int = 64):
    """Run a causal prefill through the tree interface and return logits and the written cache."""
    b, t = ids.shape
    parents, depths = chain(b, t)
    mask = ancestor_mask(parents, depths, 8)
    lengths = torch.zeros(b, dtype=torch.long)
    past = model.empty_cache(b, capacity)
    logits, _, new_kv = model(ids, depths, mask, lengths, past)
    keep = torch.arange(t).expand(b, t)
    keep_len = torch.full((b,), t)
    present = [
        tuple(KV_COMPACTION.reference(p, n, lengths, keep, keep_len) for p, n in zip(pk, nk))
        for pk, nk in zip(past, new_kv)
    ]
    return logits, present


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "llama_tied"])
def test_prefill_and_cached_decoding_match_transformers(tiny_models, arch):
    folder = tiny_models[arch]
    ours, theirs = load_decoder(folder), hf_model(folder)
    torch.manual_seed(3)
    ids = torch.randint(1, 96, (2, 9))
    with torch.no_grad():
        expected = theirs(ids).logits
        logits, present = prefill_logits(ours, ids[:, :6])
        assert (logits - expected[:, :6]).abs().max() < ATOL
        # Cached decoding: the next three tokens one at a time against the cache.
        lengths = torch.full((2,), 6)
        for t in range(6, 9):
            one = ids[:, t : t + 1]
            mask = torch.ones(2, 1, 1, dtype=torch.bool)
            step_logits, _, new_kv = ours(one, lengths.unsqueeze(1), mask, lengths, present)
            assert (step_logits[:, 0] - expected[:, t]).abs().max() < ATOL
            keep, keep_len = torch.zeros(2, 1, dtype=torch.long), torch.ones(2, dtype=torch.long)
            present = [
                tuple(
                    KV_COMPACTION.reference(p, n, lengths, keep, keep_len) for p, n in zip(pk, nk)
                )
                for pk, nk in zip(present, new_kv)
            ]
            lengths = lengths + 1


def test_tied_embeddings_share_one_tensor(tiny_models):
    model = load_decoder(tiny_models["llama_tied"])
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 2.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ],
)
def test_rope_scaling_variants_match_transformers(tmp_path, scaling):
    folder = save_tiny_model(tmp_path / "m", "llama", rope_scaling=scaling)
    ours, theirs = load_decoder(folder), hf_model(folder)
    ids = torch.randint(1, 96, (1, 40))
    with torch.no_grad():
        logits, _ = prefill_logits(ours, ids)
        assert (logits - theirs(ids).logits).abs().max() < ATOL


def test_sharded_checkpoint_loads_identically(tmp_path, tiny_llama):
    folder = save_tiny_model(tmp_path / "sharded", "llama", max_shard_size="40KB")
    assert (folder / "model.safetensors.index.json").is_file()
    ids = torch.randint(1, 96, (1, 7))
    with torch.no_grad():
        sharded, _ = prefill_logits(load_decoder(folder), ids)
        single, _ = prefill_logits(load_decoder(tiny_llama), ids)
    assert torch.equal(sharded, single)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_checkpoints_load_in_their_dtype(tmp_path, dtype, tol):
    folder = save_tiny_model(tmp_path / "half", "qwen2", dtype=dtype)
    model = load_decoder(folder)
    assert model.embedding.dtype == dtype
    ids = torch.randint(1, 96, (1, 6))
    with torch.no_grad():
        ours, _ = prefill_logits(model, ids)
        ref, _ = prefill_logits(load_decoder(folder, dtype="float32"), ids)
    assert (ours.float() - ref).abs().max() < tol * ref.abs().max()


def test_sdpa_and_op_attention_agree(tiny_llama):
    model = load_decoder(tiny_llama)
    ids = torch.randint(1, 96, (2, 8))
    with torch.no_grad():
        by_op, _ = prefill_logits(model, ids)
        model.attention_impl = "sdpa"
        by_sdpa, _ = prefill_logits(model, ids)
    assert (by_op - by_sdpa).abs().max() < 1e-5
