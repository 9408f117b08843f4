"""Llama-family decoder (llama, mistral, qwen2, qwen3) that verifies packed token trees.

One forward pass takes the packed tokens of a step, their positions and their tree mask, and
attends to an explicit KV cache buffer:

    input_ids      [B, T]         packed tokens
    positions      [B, T]         cache length + depth in the tree
    tree_mask      [B, T, T]      bool, ancestor-or-self relation inside the packed row
    cache_lengths  [B]            valid entries of each row's cache
    past           n_layers x (k, v), each [B, Hkv, S, D]
    ->  logits [B, T, V], hidden [B, T, H] (final-normed: what the drafter reads),
        new_kv n_layers x (k, v) [B, Hkv, T, D] for the packed tokens (not yet in the cache)

Writing the cache is left to the caller, because only the accepted path is kept. Parameter names
mirror Hugging Face's, so checkpoints load by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from redcompile.models.config import DecoderConfig
from redcompile.models.rope import apply_rotary, inverse_frequencies, rotary_cos_sin
from redcompile.models.weight_quant import WeightFormat, fake_quantize, round_activations
from redcompile.ops import TREE_ATTENTION, call

# "op": the redcompile TreeAttention op (reference on CPU, CUDA kernel on GPU).
# "sdpa": one standard attention over concat(cache, new), what the ONNX exporter turns into the
# standard Attention node that the fuse-tree-attention pass then replaces. Both are exact.
# "causal": whole sequences without a cache, for training.
ATTENTION_IMPLS = ("op", "sdpa", "causal")


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as Hugging Face's Llama does."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension."""
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, optional q/k norm, over cache + tree."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        self.scale = cfg.head_dim**-0.5
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=cfg.qkv_bias)
        kv_width = cfg.num_kv_heads * cfg.head_dim
        self.k_proj = nn.Linear(cfg.hidden_size, kv_width, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_width, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_proj_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        past_mask: torch.Tensor,
        tree_mask: torch.Tensor,
        impl: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, C] -> (out [B, T, C], k [B, Hkv, T, D], v [B, Hkv, T, D])."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q.transpose(1, 2), cos, sin)
        k = apply_rotary(k.transpose(1, 2), cos, sin)
        if impl == "causal":  # whole sequences, no cache (training)
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.scale, enable_gqa=True
            )
        elif impl == "sdpa":
            s = past_k.shape[2]
            mask = torch.cat([past_mask.expand(b, 1, t, s), tree_mask], dim=-1)
            y = F.scaled_dot_product_attention(
                q,
                torch.cat([past_k, k], dim=2),
                torch.cat([past_v, v], dim=2),
                attn_mask=mask,
                scale=self.scale,
                enable_gqa=True,
            )
        else:
            y = call(TREE_ATTENTION, q, k, v, past_k, past_v, past_mask, tree_mask, self.scale)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1)), k, v


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate(x)) * up(x) projected back down."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, past_k, past_v, past_mask, tree_mask, impl):
        """Residual attention then residual MLP; returns (x, k_new, v_new)."""
        attn, k, v = self.self_attn(
            self.input_layernorm(x), cos, sin, past_k, past_v, past_mask, tree_mask, impl
        )
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Model(nn.Module):
    """Embedding, blocks and final norm (Hugging Face's `model.*` prefix)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Decoder(nn.Module):
    """The causal LM: `model` plus `lm_head`, with the tree-verification forward pass."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv_freq, rope_scale = inverse_frequencies(cfg.rope, cfg.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rope_scale = rope_scale
        self.attention_impl = "op"

    def quantize_weights(self, fmt: WeightFormat, int8_activations: bool = False) -> None:
        """Replace every matrix product's weight (attention and MLP projections, lm_head) by
        the values an artifact compiled with `convert --weights fmt.name` holds
        (models/weight_quant.py), so this module decodes exactly as that artifact's weights do;
        with `int8_activations` each product's input is also rounded to int8 per block, as
        ONNX Runtime's MatMulNBits does at accuracy level 4. The embedding table stays float;
        a tied lm_head gets its own quantized copy."""

        def round_input(_module: nn.Module, args: tuple) -> tuple:
            return (round_activations(args[0], fmt.block_size), *args[1:])

        with torch.no_grad():
            if self.lm_head.weight is self.model.embed_tokens.weight:
                self.lm_head.weight = nn.Parameter(self.lm_head.weight.detach().clone())
            for module in [*self.model.layers.modules(), self.lm_head]:
                if isinstance(module, nn.Linear):
                    module.weight.copy_(fake_quantize(module.weight, fmt))
                    if int8_activations:
                        module.register_forward_pre_hook(round_input)

    @property
    def embedding(self) -> torch.Tensor:
        """The input embedding table [V, H] (the drafter borrows it)."""
        return self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        tree_mask: torch.Tensor,
        cache_lengths: torch.Tensor,
        past: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits, final-normed hidden states and new K/V of the packed tokens (see module doc)."""
        s = past[0][0].shape[2]
        slots = torch.arange(s, device=input_ids.device)
        past_mask = (slots.unsqueeze(0) < cache_lengths.unsqueeze(1))[:, None, None, :]
        tree_mask = tree_mask.unsqueeze(1)  # [B, 1, T, T]
        x = self.model.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(positions, self.inv_freq, self.rope_scale, x.dtype)
        new_kv = []
        for layer, (past_k, past_v) in zip(self.model.layers, past):
            x, k, v = layer(x, cos, sin, past_k, past_v, past_mask, tree_mask, self.attention_impl)
            new_kv.append((k, v))
        hidden = self.model.norm(x)
        return self.lm_head(hidden), hidden, new_kv

    def causal_hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states [B, T, H] of whole sequences, no cache (for training)."""
        b, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device).expand(b, t)
        x = self.model.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(positions, self.inv_freq, self.rope_scale, x.dtype)
        for layer in self.model.layers:
            x, _, _ = layer(x, cos, sin, None, None, None, None, "causal")
        return self.model.norm(x)

    def empty_cache(
        self, batch_size: int, capacity: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Zeroed cache buffers [B, Hkv, capacity, D] per layer, in the model's dtype and device."""
        cfg = self.config
        shape = (batch_size, cfg.num_kv_heads, capacity, cfg.head_dim)
        ref = self.model.embed_tokens.weight
        return [(ref.new_zeros(shape), ref.new_zeros(shape)) for _ in range(cfg.num_layers)]
