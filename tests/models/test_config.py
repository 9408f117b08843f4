"""config.json parsing: transformers 4 and 5 styles, and refusals by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from redcompile.errors import ModelLoadError, UnsupportedModelError
from redcompile.models.config import load_decoder_config, parse_decoder_config
from redcompile.models.loader import load_decoder


def to_transformers4_style(cfg: dict) -> dict:
    """Rewrite a transformers-5 config the way transformers 4 wrote it."""
    cfg = dict(cfg)
    params = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = params.pop("rope_theta")
    rope_type = params.pop("rope_type", "default")
    if rope_type != "default":
        cfg["rope_scaling"] = {"type": rope_type, **params}
    cfg["torch_dtype"] = cfg.pop("dtype")
    return cfg


def test_both_config_styles_give_the_same_decoder(tmp_path, tiny_llama):
    v5 = json.loads((tiny_llama / "config.json").read_text())
    assert "rope_parameters" in v5 and "dtype" in v5
    copy = tmp_path / "v4"
    shutil.copytree(tiny_llama, copy)
    (copy / "config.json").write_text(json.dumps(to_transformers4_style(v5)))
    assert load_decoder_config(copy) == load_decoder_config(tiny_llama)
    ids = torch.randint(1, 96, (1, 5))
    a, b = load_decoder(copy), load_decoder(tiny_llama)
    mask = torch.tril(torch.ones(1, 5, 5, dtype=torch.bool))
    args = (ids, torch.arange(5)[None], mask, torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        assert torch.equal(a(*args, a.empty_cache(1, 8))[0], b(*args, b.empty_cache(1, 8))[0])


def test_fixture_is_read_in_transformers5_style(pycode_lm):
    cfg = load_decoder_config(pycode_lm)
    assert (cfg.architecture, cfg.num_kv_heads, cfg.head_dim, cfg.rope.theta) == (
        "llama",
        4,
        32,
        1e4,
    )
    assert cfg.dtype == "float32" and cfg.eos_token_ids == (0,)


def test_v4_rope_scaling_is_read():
    cfg = parse_decoder_config(
        {
            "model_type": "llama",
            "vocab_size": 10,
            "hidden_size": 8,
            "intermediate_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "torch_dtype": "bfloat16",
        },
        Path("config.json"),
    )
    assert cfg.rope.rope_type == "llama3" and cfg.rope.theta == 500000.0
    assert cfg.dtype == "bfloat16" and cfg.num_kv_heads == 2


BASE = {
    "model_type": "llama",
    "vocab_size": 10,
    "hidden_size": 8,
    "intermediate_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


@pytest.mark.parametrize(
    "change,error,words",
    [
        ({"model_type": "gpt2"}, UnsupportedModelError, "architecture 'gpt2'"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, UnsupportedModelError, "dynamic"),
        ({"hidden_act": "gelu"}, UnsupportedModelError, "gelu"),
        ({"dtype": "float64"}, UnsupportedModelError, "float64"),
        ({"hidden_size": -3}, ModelLoadError, "hidden_size"),
        ({"num_key_value_heads": 3}, ModelLoadError, "multiple"),
    ],
)
def test_bad_configs_are_refused_by_name(change, error, words):
    with pytest.raises(error, match=words):
        parse_decoder_config({**BASE, **change}, Path("config.json"))


def test_missing_key_is_named():
    cfg = dict(BASE)
    del cfg["vocab_size"]
    with pytest.raises(ModelLoadError, match="vocab_size"):
        parse_decoder_config(cfg, Path("config.json"))


def test_sliding_window_is_refused_when_it_would_apply(tmp_path):
    from support import save_tiny_model

    folder = save_tiny_model(tmp_path / "m", "mistral", sliding_window=32)
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        load_decoder(folder)
    assert load_decoder(folder, max_seq_len=32).config.sliding_window == 32
