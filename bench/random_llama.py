"""The Hugging Face folder files of a random-weight Llama, shared by the bench scripts."""

from __future__ import annotations

import json
from pathlib import Path

# Production shapes the bench scripts build random models at (transformers config fields).
LLAMA_350M = dict(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=64,
)
LLAMA_1B = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
)

LLAMA_7B = dict(  # Llama-2-7B / Vicuna-7B
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    head_dim=128,
)
LLAMA_TINY = dict(  # for the bench scripts' own tests
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


def transformers_config(shapes: dict, rope_theta: float, dtype: str = "float32") -> dict:
    """The config.json of a random Llama of `shapes` (transformers 5 style, untied)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **shapes,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "rope_parameters": {"rope_theta": rope_theta, "rope_type": "default"},
        "tie_word_embeddings": False,
        "dtype": dtype,
        "eos_token_id": 0,
    }


def write_config_and_tokenizer(folder: Path, shapes: dict, rope_theta: float) -> None:
    """config.json (fp32) and a character tokenizer."""
    from redcompile.example import char_tokenizer_json

    config = transformers_config(shapes, rope_theta)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer.json").write_text(char_tokenizer_json())
