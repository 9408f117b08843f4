"""Load a Hugging Face causal-LM folder into the redcompile decoder."""

from __future__ import annotations

from pathlib import Path

import torch

from redcompile.errors import InputError, ModelLoadError, UnsupportedModelError
from redcompile.models.config import DecoderConfig, load_decoder_config
from redcompile.models.llama import Decoder
from redcompile.models.rope import inverse_frequencies
from redcompile.models.weights import TORCH_DTYPES, iter_tensors, load_into, weight_files

# Buffers some exporters save next to the weights; they are recomputed, never loaded.
IGNORED_TENSORS = ("rotary_emb.inv_freq",)


def check_model_dir(model_dir: Path) -> Path:
    """The folder as a Path, or a one-line error when it does not exist."""
    path = Path(model_dir)
    if not path.exists():
        raise ModelLoadError(f"model: folder {path} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"model: {path} is not a folder (expected config.json + safetensors)")
    return path


def load_decoder(
    model_dir: Path | str,
    dtype: str | None = None,
    max_seq_len: int | None = None,
) -> Decoder:
    """Read config.json and the safetensors weights of `model_dir` into a `Decoder` (CPU).

    `dtype` ("float32", "float16", "bfloat16") overrides the checkpoint's dtype. `max_seq_len`,
    when given, is checked against the model's sliding window, which this decoder does not apply.
    """
    path = check_model_dir(Path(model_dir))
    cfg = load_decoder_config(path)
    if dtype is not None:
        cfg = _with_dtype(cfg, dtype)
    if max_seq_len is not None and max_seq_len > cfg.max_position_embeddings:
        raise InputError(
            f"--max-seq-len {max_seq_len} is above {path}'s max_position_embeddings "
            f"({cfg.max_position_embeddings}): the model was not trained for longer sequences; "
            f"use at most {cfg.max_position_embeddings}"
        )
    _check_sliding_window(cfg, max_seq_len or cfg.max_position_embeddings, path)
    files = weight_files(path)
    torch_dtype = TORCH_DTYPES[cfg.dtype]
    with torch.device("meta"):
        model = Decoder(cfg)
    ignore = IGNORED_TENSORS + (("lm_head.weight",) if cfg.tie_word_embeddings else ())
    if cfg.tie_word_embeddings:
        del model.lm_head.weight  # re-tied after loading
    load_into(model, iter_tensors(files, torch_dtype), path, ignore=ignore)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Buffers were created on the meta device with the module; compute them for real.
    model.inv_freq, model.rope_scale = inverse_frequencies(cfg.rope, cfg.head_dim)
    return model.eval()


def _with_dtype(cfg: DecoderConfig, dtype: str) -> DecoderConfig:
    if dtype not in TORCH_DTYPES:
        raise ModelLoadError(f"dtype: '{dtype}' is not one of {', '.join(TORCH_DTYPES)}")
    values = cfg.to_dict()
    values["dtype"] = dtype
    return DecoderConfig.from_dict(values)


def _check_sliding_window(cfg: DecoderConfig, max_seq_len: int, path: Path) -> None:
    if cfg.sliding_window is not None and cfg.sliding_window < max_seq_len:
        raise UnsupportedModelError(
            f"model: {path} uses sliding-window attention (window {cfg.sliding_window}) which "
            f"redcompile does not implement; use a maximum length <= {cfg.sliding_window}"
        )
