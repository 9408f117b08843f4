"""Blockwise symmetric weight-only quantization of the drafter's matrices (int8, int4).

Why: at batch 1 float drafting is memory-bound. Every drafted position reads the drafter's
vocabulary projection, E x V floats (131 MB at E = 1024, V = 32000): at 350M shapes the float
drafter took 25.7 ms of a 116 ms step on the CPU, the int8 one 8.1 ms
(bench/results/profile_350m_*_e1024_w1l5.json). Stored as int8 (int4) the matrices read 4x (8x)
fewer bytes. Only the drafter is quantized: the base model still decides every token, so greedy
decoding stays token-identical to plain decoding; quantization can only change which tokens are
proposed, which shows up in tokens per step (measured in docs/benchmarks.md).

One definition of the arithmetic, used by both sides that must agree:
- the compiler pass (passes/quantize_drafter.py) stores `q` and `scale` in the artifact, where
  a standard DequantizeLinear(axis=0, block_size) rebuilds the matrix;
- the PyTorch reference (`fake_quantize`) runs the drafter with the dequantized values, so
  `redcompile verify` compares an artifact against exactly the weights it carries.

Layout: a Linear weight is [N, K] (out x in). `q` is stored transposed, [K, N], with blocks of
`block_size` consecutive input features sharing one scale per output: scale [ceil(K / bs), N].
That is the layout ONNX Runtime's DequantizeLinear -> MatMul fusion (MatMulNBits) accepts.

    scale[j, n] = max_{k in block j} |w[n, k]| / qmax      (1 for an all-zero block)
    q[k, n]     = clamp(round(w[n, k] / scale[k // bs, n]), -qmax - 1, qmax)
    w'[n, k]    = q[k, n] * scale[k // bs, n]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from redcompile.errors import InputError

if TYPE_CHECKING:  # the CLI reads the format names without importing torch
    import torch


@dataclass(frozen=True)
class WeightFormat:
    """A quantized storage format: bits per weight and the block of inputs sharing a scale."""

    name: str
    bits: int
    block_size: int

    @property
    def qmax(self) -> int:
        """Largest quantized value (the smallest is -qmax - 1)."""
        return 2 ** (self.bits - 1) - 1


# Blocks of 128 (the common choice of GPTQ, AWQ and ONNX Runtime's quantizer): ONNX Runtime's
# int4 MatMulNBits on AVX2 is 15-25% faster at 128 than at 32 for the same bytes, and the
# fixture's drafter loses about 1% of tokens per step to it (docs/benchmarks.md).
WEIGHT_FORMATS = {
    "int8": WeightFormat("int8", bits=8, block_size=128),
    "int4": WeightFormat("int4", bits=4, block_size=128),
}
FLOAT = "float"  # the drafter's weights as the checkpoint (or --dtype) gives them
WEIGHT_FORMAT_NAMES = (FLOAT, *WEIGHT_FORMATS)


def weight_format(name: str | None) -> WeightFormat | None:
    """The format called `name`; None for float weights (None or "float")."""
    if name in (None, FLOAT):
        return None
    if name not in WEIGHT_FORMATS:
        raise ValueError(f"unknown drafter weight format {name!r}; one of {WEIGHT_FORMAT_NAMES}")
    return WEIGHT_FORMATS[name]


def parse_drafter_weights(name: str) -> WeightFormat | None:
    """The `--drafter-weights` option as a format (None: float), refusing unknown names in one
    line for users."""
    if name not in WEIGHT_FORMAT_NAMES:
        raise InputError(
            f"--drafter-weights must be one of {', '.join(WEIGHT_FORMAT_NAMES)}, got {name!r}"
        )
    return weight_format(name)


def recorded_format(name: str, block_size: int | None) -> WeightFormat:
    """The format an artifact's manifest names (`drafter.quantized`, `quantized_block_size`),
    refused in one line for users when its blocks are not the ones this version writes (the
    reference would then quantize differently from the artifact)."""
    fmt = WEIGHT_FORMATS.get(name)
    if fmt is None:
        raise InputError(
            f"the artifact's drafter is quantized as {name!r}, which this version does not "
            f"know (it writes {', '.join(WEIGHT_FORMATS)})"
        )
    if block_size is not None and block_size != fmt.block_size:
        raise InputError(
            f"the artifact's {name} drafter uses blocks of {block_size} inputs; this version "
            f"quantizes {name} in blocks of {fmt.block_size}: convert it again"
        )
    return fmt


def quantize_blockwise(w_nk: torch.Tensor, fmt: WeightFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float weight -> (q [K, N] int8 holding values of `fmt.bits` bits, scale
    [ceil(K / bs), N] in w's dtype). See the module docstring for the formula."""
    import torch

    if w_nk.dim() != 2:
        raise ValueError(f"quantize_blockwise takes a matrix, got shape {tuple(w_nk.shape)}")
    n, k = w_nk.shape
    bs = fmt.block_size
    blocks = -(-k // bs)
    w_kn = w_nk.detach().float().t()  # [K, N]
    padded = torch.zeros(blocks * bs, n, dtype=torch.float32, device=w_nk.device)
    padded[:k] = w_kn
    amax = padded.reshape(blocks, bs, n).abs().amax(dim=1)  # [blocks, N]
    scale = torch.where(amax > 0, amax / fmt.qmax, torch.ones_like(amax)).to(w_nk.dtype)
    per_row = scale.float().repeat_interleave(bs, dim=0)[:k]  # [K, N]
    q = torch.clamp(torch.round(w_kn / per_row), -fmt.qmax - 1, fmt.qmax).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize_blockwise(
    q_kn: torch.Tensor, scale: torch.Tensor, fmt: WeightFormat
) -> torch.Tensor:
    """(q [K, N], scale [ceil(K / bs), N]) -> the [N, K] weight they stand for, in scale's
    dtype: what DequantizeLinear(axis=0, block_size) followed by a transpose computes."""
    k = q_kn.shape[0]
    per_row = scale.float().repeat_interleave(fmt.block_size, dim=0)[:k]
    return (q_kn.float() * per_row).to(scale.dtype).t().contiguous()


def fake_quantize(w_nk: torch.Tensor, fmt: WeightFormat) -> torch.Tensor:
    """The float weight an artifact with `fmt` weights effectively multiplies by ([N, K])."""
    return dequantize_blockwise(*quantize_blockwise(w_nk, fmt), fmt)


# The base model's weights (`convert --weights`): the same arithmetic, with block size and
# ONNX Runtime's accuracy level as options. Blocks of 32 inputs, as onnxruntime-genai's int4
# models. Accuracy level 1 (float32 products of the dequantized weights): every beam shape
# decodes exactly as autoregressive decoding with the same weights. Level 4 (int8
# activations, integer products) is ONNX Runtime's fastest CPU path; its rounding turns any
# last-bit difference between verifying one token and verifying it in a tree into other
# tokens, so it is offered where every row is a chain (autoregressive, one drafter beam, one
# lookup beam), whose attention fuse-chain-attention then makes the same computation for both
# (116 of 140 fixture prompts identical without that, 140 with it:
# bench/studies/exact_int8_activations; docs/cli.md). The default (None) is the fastest exact
# level for the artifact: 4 where every row is a chain, 1 for a tree (`BaseWeights.resolved`).
BASE_WEIGHT_FORMAT_NAMES = (FLOAT, "int8", "int4")
DEFAULT_BASE_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = None
# ONNX Runtime's MatMulNBits compute: 1 float32; 4 int8 activations (each block of
# `block_size` inputs rounded to int8 with its own scale, `round_activations`), integer products.
# The other levels (fp16, bf16 compute) are not offered: the reference could not match them.
ACCURACY_LEVELS = (1, 4)
INT8_ACTIVATIONS = 4
FLOAT_PRODUCTS = 1


@dataclass(frozen=True)
class BaseWeights:
    """How `convert --weights` stores the base model's matrices: a format (None: float), and
    the ONNX Runtime compute accuracy of its products."""

    fmt: WeightFormat | None
    accuracy_level: int | None = DEFAULT_ACCURACY_LEVEL  # None: chosen by `resolved`

    @property
    def name(self) -> str:
        """The `--weights` name: float, int8 or int4."""
        return FLOAT if self.fmt is None else self.fmt.name

    def resolved(self, chains_only: bool) -> BaseWeights:
        """These weights with the default accuracy level made concrete for an artifact whose
        rows are all chains (`chains_only`: int8 activations, exact there) or not (float32
        products); a level given explicitly stays."""
        if self.accuracy_level is not None:
            return self
        level = INT8_ACTIVATIONS if chains_only else FLOAT_PRODUCTS
        return BaseWeights(self.fmt, level)

    @property
    def rounds_activations(self) -> bool:
        """Whether the products round their inputs to int8 (quantized weights at level 4)."""
        return self.fmt is not None and self.accuracy_level == INT8_ACTIVATIONS

    def to_manifest(self) -> dict:
        """The manifest's `base_weights` entry."""
        if self.fmt is None:
            return {"format": FLOAT}
        return {
            "format": self.fmt.name,
            "bits": self.fmt.bits,
            "block_size": self.fmt.block_size,
            "accuracy_level": self.accuracy_level,
            "symmetric": True,
        }


def parse_base_weights(
    name: str,
    block_size: int = DEFAULT_BASE_BLOCK_SIZE,
    accuracy_level: int | None = DEFAULT_ACCURACY_LEVEL,
) -> BaseWeights:
    """`--weights`, `--weight-block-size` and `--accuracy-level` (None: the artifact's fastest
    exact level, `BaseWeights.resolved`) as a BaseWeights, refusing values no ONNX Runtime
    kernel takes in one line for users."""
    if name not in BASE_WEIGHT_FORMAT_NAMES:
        raise InputError(
            f"--weights must be one of {', '.join(BASE_WEIGHT_FORMAT_NAMES)}, got {name!r}"
        )
    if block_size < 16 or block_size & (block_size - 1):
        raise InputError(
            f"--weight-block-size must be a power of two of at least 16 (MatMulNBits' "
            f"blocks), got {block_size}"
        )
    if accuracy_level is not None and accuracy_level not in ACCURACY_LEVELS:
        raise InputError(
            f"--accuracy-level must be 1 (float32) or 4 (int8 activations), got {accuracy_level}"
        )
    if name == FLOAT:
        return BaseWeights(None, accuracy_level)
    bits = 8 if name == "int8" else 4
    return BaseWeights(WeightFormat(name, bits=bits, block_size=block_size), accuracy_level)


def round_activations(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """x [..., K] with each block of `block_size` inputs rounded to int8 and back, as
    MatMulNBits does at accuracy level 4 before its integer products: scale = max |x| / 127
    per block, round half to even (0 stays 0)."""
    import torch

    shape = x.shape
    blocks = x.float().reshape(*shape[:-1], shape[-1] // block_size, block_size)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    rounded = torch.where(scale > 0, torch.round(blocks / safe) * scale, torch.zeros_like(blocks))
    return rounded.reshape(shape).to(x.dtype)


def base_weights_of(manifest: dict) -> BaseWeights:
    """The BaseWeights an artifact's manifest records (float for artifacts without the entry)."""
    entry = manifest.get("base_weights") or {"format": FLOAT}
    if entry.get("format", FLOAT) == FLOAT:
        return BaseWeights(None)
    name = entry["format"]
    if name not in BASE_WEIGHT_FORMAT_NAMES:
        raise InputError(
            f"the artifact's base weights are {name!r}, which this version does not know"
        )
    return parse_base_weights(name, int(entry["block_size"]), int(entry["accuracy_level"]))
