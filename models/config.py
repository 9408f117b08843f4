"""Decoder configuration read from a Hugging Face `config.json`.

Both config styles exist in the wild and both are read here:
- transformers 4: `rope_theta` and `rope_scaling` at top level, `torch_dtype`;
- transformers 5: `rope_parameters` (holding `rope_theta` and the scaling keys), `dtype`.
Anything this decoder does not implement is refused by name rather than approximated.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redcompile.errors import ModelLoadError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters; `rope_type` selects how `inv_freq` is scaled."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    # llama3
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    # yarn
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class DecoderConfig:
    """Everything the Llama-family decoder needs, independent of the config.json style."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    sliding_window: int | None = None

    @property
    def kv_groups(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, used in artifact manifests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        """Inverse of `to_dict`."""
        data = dict(data)
        data["rope"] = RopeConfig(**data.get("rope", {}))
        data["eos_token_ids"] = tuple(data.get("eos_token_ids", ()))
        return cls(**data)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object from `path`, turning every failure into a one-line `ModelLoadError`."""
    if not path.is_file():
        raise ModelLoadError(f"{what}: {path} not found; the folder must contain it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{what}: {path} is not valid JSON ({exc}); re-export the model"
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what}: {path} must hold a JSON object")
    return data


def _require(cfg: dict[str, Any], key: str, path: Path, kind: type = int) -> Any:
    if key not in cfg:
        raise ModelLoadError(f"config: {path} lacks '{key}'; it is required for this architecture")
    value = cfg[key]
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ModelLoadError(f"config: '{key}' in {path} must be a positive integer, got {value!r}")
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise ModelLoadError(f"config: '{key}' in {path} must be a number, got {value!r}")
    return value


def _rope_from(cfg: dict[str, Any], path: Path) -> RopeConfig:
    """Merge the two config styles into one RopeConfig."""
    params: dict[str, Any] = {}
    if isinstance(cfg.get("rope_parameters"), dict):  # transformers 5
        params.update(cfg["rope_parameters"])
    if isinstance(cfg.get("rope_scaling"), dict):  # transformers 4
        params.update(cfg["rope_scaling"])
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"config: rope type '{rope_type}' in {path} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if not isinstance(theta, (int, float)) or theta <= 0:
        raise ModelLoadError(
            f"config: rope_theta in {path} must be a positive number, got {theta!r}"
        )
    factor = params.get("factor")
    if rope_type != "default" and not isinstance(factor, (int, float)):
        raise ModelLoadError(f"config: rope type '{rope_type}' in {path} needs a numeric 'factor'")
    original = params.get("original_max_position_embeddings")
    if rope_type in ("llama3", "yarn") and original is None:
        original = cfg.get("max_position_embeddings")
    return RopeConfig(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(factor) if factor is not None else 1.0,
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=original,
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=params.get("attention_factor"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
    )


def _architecture_of(cfg: dict[str, Any], path: Path) -> str:
    model_type = cfg.get("model_type")
    if model_type in SUPPORTED_ARCHITECTURES:
        return model_type
    named = model_type or ",".join(cfg.get("architectures") or []) or "unknown"
    raise UnsupportedModelError(
        f"config: architecture '{named}' in {path} is not supported "
        f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
    )


def _sliding_window(cfg: dict[str, Any], arch: str) -> int | None:
    """The active sliding window, or None when every layer attends to the full context."""
    window = cfg.get("sliding_window")
    if window is None:
        return None
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list):
        return int(window) if "sliding_attention" in layer_types else None
    if arch in ("qwen2", "qwen3") and not cfg.get("use_sliding_window", False):
        return None
    return int(window)


def _dtype_of(cfg: dict[str, Any], path: Path) -> str:
    dtype = cfg.get("dtype", cfg.get("torch_dtype")) or "float32"
    if isinstance(dtype, str):
        dtype = dtype.removeprefix("torch.")
    if dtype not in DTYPES:
        raise UnsupportedModelError(
            f"config: dtype '{dtype}' in {path} is not supported (supported: {', '.join(DTYPES)})"
        )
    return dtype


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def parse_decoder_config(cfg: dict[str, Any], path: Path) -> DecoderConfig:
    """Validate a config.json dict and turn it into a DecoderConfig (refusing what we can't run)."""
    arch = _architecture_of(cfg, path)
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedModelError(
            f"config: activation '{cfg.get('hidden_act')}' in {path} is not supported (only silu)"
        )
    if float(cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UnsupportedModelError(f"config: partial_rotary_factor in {path} is not supported")
    hidden = _require(cfg, "hidden_size", path)
    heads = _require(cfg, "num_attention_heads", path)
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    if heads % kv_heads:
        raise ModelLoadError(
            f"config: num_attention_heads={heads} is not a multiple of "
            f"num_key_value_heads={kv_heads} in {path}"
        )
    if head_dim % 2:
        raise ModelLoadError(f"config: head_dim={head_dim} in {path} must be even for RoPE")
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    if not math.isfinite(eps) or eps <= 0:
        raise ModelLoadError(f"config: rms_norm_eps in {path} must be positive")
    # Bias layout differs by architecture: qwen2 always has q/k/v bias and no o bias, mistral
    # has none, llama and qwen3 put `attention_bias` on all four projections.
    attention_bias = bool(cfg.get("attention_bias", False))
    qkv_bias = {"qwen2": True, "mistral": False}.get(arch, attention_bias)
    o_proj_bias = {"qwen2": False, "mistral": False}.get(arch, attention_bias)
    return DecoderConfig(
        architecture=arch,
        vocab_size=_require(cfg, "vocab_size", path),
        hidden_size=hidden,
        intermediate_size=_require(cfg, "intermediate_size", path),
        num_layers=_require(cfg, "num_hidden_layers", path),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=eps,
        rope=_rope_from(cfg, path),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_proj_bias=o_proj_bias,
        mlp_bias=arch == "llama" and bool(cfg.get("mlp_bias", False)),
        qk_norm=arch == "qwen3",
        dtype=_dtype_of(cfg, path),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_token_ids(cfg.get("eos_token_id")),
        pad_token_id=cfg.get("pad_token_id"),
        sliding_window=_sliding_window(cfg, arch),
    )


def load_decoder_config(model_dir: Path) -> DecoderConfig:
    """Read and validate `model_dir/config.json`."""
    path = Path(model_dir) / "config.json"
    return parse_decoder_config(read_json(path, "config"), path)
