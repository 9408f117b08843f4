"""A small, self-contained example model folder, written without network access.

`redcompile example DIR` writes a randomly initialised Llama-architecture model in Hugging Face
format (transformers 5 config, safetensors, a character-level tokenizer.json) plus a random
drafter in Apple's format under DIR/drafter, so every command can be tried on a fresh machine.
Random weights produce gibberish and accept few drafts; use a real model and `train-drafter`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from redcompile.errors import InputError
from redcompile.models.config import DecoderConfig, RopeConfig
from redcompile.models.drafter_io import random_drafter, save_drafter
from redcompile.models.llama import Decoder

EXAMPLE = DecoderConfig(
    architecture="llama",
    vocab_size=97,
    hidden_size=128,
    intermediate_size=352,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    rms_norm_eps=1e-6,
    rope=RopeConfig(theta=10000.0),
    max_position_embeddings=1024,
    eos_token_ids=(0,),
    bos_token_id=0,
)


def char_tokenizer_json() -> str:
    """A character-level tokenizer.json: id 0 is <|endoftext|>, then newline and printable ASCII."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tok.to_str()


def hf_config_json(cfg: DecoderConfig) -> dict:
    """A transformers-5 style config.json for `cfg`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": {"rope_theta": cfg.rope.theta, "rope_type": "default"},
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_ids[0],
        "pad_token_id": None,
        "dtype": "float32",
    }


def write_example(out_dir: Path | str, seed: int = 0) -> Path:
    """Write the example model (and its drafter) to `out_dir`, which must not exist yet."""
    out = Path(out_dir)
    if out.exists():
        raise InputError(f"example: {out} already exists; choose a new folder")
    torch.manual_seed(seed)
    model = Decoder(EXAMPLE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05 if "embed" not in name else 1.0)
    out.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config_json(EXAMPLE), indent=2) + "\n")
    (out / "tokenizer.json").write_text(char_tokenizer_json())
    save_drafter(random_drafter(EXAMPLE, seed=seed), out / "drafter")
    return out
