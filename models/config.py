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


_MISSING = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(
    cfg: dict[str, Any], key: str, path: Path, default: Any = _MISSING, minimum: int = 1
) -> Any:
    """cfg[key] as an integer >= `minimum`; `default` when absent or null (required when no
    default is given). Every message names the key and the file."""
    value = cfg.get(key)
    if value is None:
        if default is _MISSING:
            raise ModelLoadError(
                f"config: {path} lacks '{key}'; it is required for this architecture"
            )
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ModelLoadError(f"config: '{key}' in {path} must be {wanted}, got {value!r}")
    return value


def _number(cfg: dict[str, Any], key: str, path: Path, default: Any, positive: bool = True) -> Any:
    """cfg[key] as a finite number (positive unless told), `default` when absent or null."""
    value = cfg.get(key)
    if value is None:
        return default
    if not _is_number(value) or not math.isfinite(value) or (positive and value <= 0):
        wanted = "a finite positive number" if positive else "a finite number"
        raise ModelLoadError(f"config: '{key}' in {path} must be {wanted}, got {value!r}")
    return float(value)


def _typed(cfg: dict[str, Any], key: str, path: Path, default: Any, kind: type, wanted: str) -> Any:
    """cfg[key] when it is a `kind` (a JSON boolean or string), `default` when absent or null."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise ModelLoadError(f"config: '{key}' in {path} must be {wanted}, got {value!r}")
    return value


def _flag(cfg: dict[str, Any], key: str, path: Path, default: bool = False) -> bool:
    """cfg[key] as a JSON boolean."""
    return _typed(cfg, key, path, default, bool, "true or false")


def _text(cfg: dict[str, Any], key: str, path: Path, default: str) -> str:
    """cfg[key] as a JSON string."""
    return _typed(cfg, key, path, default, str, "a string")


def _rope_from(cfg: dict[str, Any], path: Path) -> RopeConfig:
    """Merge the two config styles into one RopeConfig."""
    params: dict[str, Any] = {}
    for key in ("rope_parameters", "rope_scaling"):  # transformers 5, transformers 4
        value = cfg.get(key)
        if value is not None and not isinstance(value, dict):
            raise ModelLoadError(f"config: '{key}' in {path} must be an object, got {value!r}")
        params.update(value or {})
    top_theta = _number(cfg, "rope_theta", path, None)  # transformers 4's place, checked too
    if params.get("rope_theta") is None and top_theta is not None:
        params["rope_theta"] = top_theta
    rope_type = params.get("rope_type", params.get("type")) or "default"
    if not isinstance(rope_type, str) or rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"config: rope type {rope_type!r} in {path} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    factor = _number(params, "factor", path, None)
    if rope_type != "default" and factor is None:
        raise ModelLoadError(f"config: rope type '{rope_type}' in {path} needs a numeric 'factor'")
    original = _int(params, "original_max_position_embeddings", path, None)
    if rope_type in ("llama3", "yarn") and original is None:
        original = _int(cfg, "max_position_embeddings", path, None)
    return RopeConfig(
        theta=_number(params, "rope_theta", path, 10000.0),
        rope_type=rope_type,
        factor=factor if factor is not None else 1.0,
        low_freq_factor=_number(params, "low_freq_factor", path, 1.0),
        high_freq_factor=_number(params, "high_freq_factor", path, 4.0),
        original_max_position_embeddings=original,
        beta_fast=_number(params, "beta_fast", path, 32.0),
        beta_slow=_number(params, "beta_slow", path, 1.0),
        attention_factor=_number(params, "attention_factor", path, None),
        mscale=_number(params, "mscale", path, None, positive=False),
        mscale_all_dim=_number(params, "mscale_all_dim", path, None, positive=False),
        truncate=_flag(params, "truncate", path, True),
    )


def _architecture_of(cfg: dict[str, Any], path: Path) -> str:
    model_type = cfg.get("model_type")
    if model_type in SUPPORTED_ARCHITECTURES:
        return model_type
    named = model_type or ",".join(cfg.get("architectures") or []) or "unknown"
    raise UnsupportedModelError(
        f"config: architecture {named!r} in {path} is not supported "
        f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
    )


def _sliding_window(cfg: dict[str, Any], arch: str, path: Path) -> int | None:
    """The active sliding window, or None when every layer attends to the full context."""
    window = _int(cfg, "sliding_window", path, None)
    if window is None:
        return None
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list):
        return window if "sliding_attention" in layer_types else None
    if arch in ("qwen2", "qwen3") and not _flag(cfg, "use_sliding_window", path):
        return None
    return window


def _dtype_of(cfg: dict[str, Any], path: Path) -> str:
    dtype = cfg.get("dtype", cfg.get("torch_dtype")) or "float32"
    if isinstance(dtype, str):
        dtype = dtype.removeprefix("torch.")
    if dtype not in DTYPES:
        raise UnsupportedModelError(
            f"config: dtype {dtype!r} in {path} is not supported (supported: {', '.join(DTYPES)})"
        )
    return dtype


def token_ids(cfg: dict[str, Any], key: str, path: Path, vocab: int) -> tuple[int, ...]:
    """cfg[key] (an id or a list of ids) as token ids inside the vocabulary."""
    value = cfg.get(key)
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    for token in values:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
            raise ModelLoadError(
                f"config: '{key}' in {path} must be token ids in 0 ... {vocab - 1} "
                f"(vocab_size {vocab}), got {value!r}"
            )
    return tuple(values)


def _one_token_id(cfg: dict[str, Any], key: str, path: Path, vocab: int) -> int | None:
    ids = token_ids(cfg, key, path, vocab)
    if len(ids) > 1:
        raise ModelLoadError(f"config: '{key}' in {path} must be one token id, got {list(ids)}")
    return ids[0] if ids else None


def _pad_token_id(cfg: dict[str, Any], vocab: int) -> int | None:
    """The pad id when it is a token of the vocabulary, else None: decoding never reads it,
    and real configs carry -1 or ids past the vocabulary there."""
    value = cfg.get("pad_token_id")
    valid = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab
    return value if valid else None


def parse_decoder_config(cfg: dict[str, Any], path: Path) -> DecoderConfig:
    """Validate a config.json dict and turn it into a DecoderConfig (refusing what we can't run).

    Every key the decoder reads is checked for its JSON type, sign and finiteness, and token
    ids for lying inside the vocabulary, so a bad file fails here with the key's name rather
    than later inside torch or ONNX Runtime.
    """
    arch = _architecture_of(cfg, path)
    activation = _text(cfg, "hidden_act", path, "silu")
    if activation != "silu":
        raise UnsupportedModelError(
            f"config: activation {activation!r} in {path} is not supported (only silu)"
        )
    if _number(cfg, "partial_rotary_factor", path, 1.0) != 1.0:
        raise UnsupportedModelError(f"config: partial_rotary_factor in {path} is not supported")
    vocab = _int(cfg, "vocab_size", path)
    hidden = _int(cfg, "hidden_size", path)
    heads = _int(cfg, "num_attention_heads", path)
    kv_heads = _int(cfg, "num_key_value_heads", path, heads)
    head_dim = _int(cfg, "head_dim", path, hidden // heads)
    if head_dim < 1:
        raise ModelLoadError(
            f"config: hidden_size={hidden} in {path} is smaller than num_attention_heads={heads}"
        )
    if heads % kv_heads:
        raise ModelLoadError(
            f"config: num_attention_heads={heads} is not a multiple of "
            f"num_key_value_heads={kv_heads} in {path}"
        )
    if head_dim % 2:
        raise ModelLoadError(f"config: head_dim={head_dim} in {path} must be even for RoPE")
    # Bias layout differs by architecture: qwen2 always has q/k/v bias and no o bias, mistral
    # has none, llama and qwen3 put `attention_bias` on all four projections.
    attention_bias = _flag(cfg, "attention_bias", path)
    qkv_bias = {"qwen2": True, "mistral": False}.get(arch, attention_bias)
    o_proj_bias = {"qwen2": False, "mistral": False}.get(arch, attention_bias)
    return DecoderConfig(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=_int(cfg, "intermediate_size", path),
        num_layers=_int(cfg, "num_hidden_layers", path),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_number(cfg, "rms_norm_eps", path, 1e-6),
        rope=_rope_from(cfg, path),
        max_position_embeddings=_int(cfg, "max_position_embeddings", path, 2048, minimum=2),
        tie_word_embeddings=_flag(cfg, "tie_word_embeddings", path),
        qkv_bias=qkv_bias,
        o_proj_bias=o_proj_bias,
        mlp_bias=arch == "llama" and _flag(cfg, "mlp_bias", path),
        qk_norm=arch == "qwen3",
        dtype=_dtype_of(cfg, path),
        bos_token_id=_one_token_id(cfg, "bos_token_id", path, vocab),
        eos_token_ids=token_ids(cfg, "eos_token_id", path, vocab),
        pad_token_id=_pad_token_id(cfg, vocab),
        sliding_window=_sliding_window(cfg, arch, path),
    )


def load_decoder_config(model_dir: Path) -> DecoderConfig:
    """Read and validate `model_dir/config.json`."""
    path = Path(model_dir) / "config.json"
    return parse_decoder_config(read_json(path, "config"), path)
