"""The distribution a sampling row draws from, and the draw: defined once for every body.

Per row (temperature T, top_k k, top_p p; logits x over V tokens):

    greedy          T < GREEDY_BELOW (0 included): the argmax of x, first on ties.
    scaled          s = x * (1 / T), in float32.
    top-k           keep tokens with s >= the k-th largest s (ties with it kept); k = 0 or
                    k >= V keeps every token.
    P               softmax of s over the kept tokens, 0 elsewhere.
    top-p           sort P descending; the nucleus is every sorted position whose exclusive
                    cumulative mass is < p (the first always is); keep tokens with
                    P >= the smallest P in the nucleus (ties kept). p = 1 keeps every token.
    weights         P where kept by top-p, 0 elsewhere (unnormalised).
    draw(u)         inverse CDF: the number of tokens whose cumulative weight c is <= u * total
                    and < total, so a token of zero weight is never drawn, even when u * total
                    rounds up to the total.

Autoregressive sampling and every node of a draft tree use exactly this (ops/acceptance.py),
which is what makes speculative sampling emit the autoregressive distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from redcompile.io_contract import GREEDY_BELOW, SAMPLING_ROLE
from redcompile.ops.onnx_builder import BOOL, FLOAT, INT64, FunctionBuilder


def is_greedy(temperature: torch.Tensor) -> torch.Tensor:
    """Rows that decode greedily: temperature below GREEDY_BELOW (so 1 / T cannot overflow)."""
    return temperature < GREEDY_BELOW


def sampling_weights(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Unnormalised weights [..., V] of the distribution a row samples from (module doc);
    `temperature`, `top_k`, `top_p` have the logits' leading shape."""
    v = logits.shape[-1]
    safe_t = torch.where(is_greedy(temperature), torch.ones_like(temperature), temperature)
    scaled = logits.float() * torch.reciprocal(safe_t.float()).unsqueeze(-1)
    sorted_scaled, order = scaled.sort(dim=-1, descending=True, stable=True)
    k = torch.where((top_k > 0) & (top_k < v), top_k, torch.full_like(top_k, v))
    kth = sorted_scaled.gather(-1, (k - 1).unsqueeze(-1))
    masked = torch.where(scaled >= kth, scaled, torch.full_like(scaled, float("-inf")))
    probs = torch.softmax(masked, dim=-1)
    sorted_probs = probs.gather(-1, order)
    before = torch.cumsum(sorted_probs, dim=-1)
    before = torch.cat([torch.zeros_like(before[..., :1]), before[..., :-1]], dim=-1)
    in_nucleus = (before < top_p.float().unsqueeze(-1)).sum(dim=-1, keepdim=True)
    smallest = sorted_probs.gather(-1, in_nucleus.clamp(min=1) - 1)
    smallest = torch.where((top_p < 1).unsqueeze(-1), smallest, torch.zeros_like(smallest))
    return torch.where(probs >= smallest, probs, torch.zeros_like(probs))


def draw(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row of unnormalised `weights` [..., V] by inverse CDF at `uniforms` [...]."""
    cdf = torch.cumsum(weights, dim=-1)
    total = cdf[..., -1:]
    threshold = uniforms.float().unsqueeze(-1) * total
    return ((cdf <= threshold) & (cdf < total)).sum(dim=-1)


def node_tokens(
    logits_btv: torch.Tensor,
    nodes_bn: torch.Tensor,
    temperature_b: torch.Tensor,
    top_k_b: torch.Tensor,
    top_p_b: torch.Tensor,
    uniforms_bn: torch.Tensor,
) -> torch.Tensor:
    """The token each node picks [B, N]: at packed position nodes[b, n], the argmax (greedy
    rows) or a draw from the row's distribution there with uniforms[b, n]."""
    b, n = nodes_bn.shape
    logits_bnv = torch.gather(
        logits_btv.float(), 1, nodes_bn.unsqueeze(-1).expand(b, n, logits_btv.shape[-1])
    )
    per_node = lambda x: x.unsqueeze(1).expand(b, n)  # noqa: E731
    weights = sampling_weights(
        logits_bnv, per_node(temperature_b), per_node(top_k_b), per_node(top_p_b)
    )
    drawn = draw(weights, uniforms_bn)
    return torch.where(per_node(is_greedy(temperature_b)), logits_bnv.argmax(dim=-1), drawn)


class OnnxSampler:
    """The same definitions in standard ONNX ops, for rows [B] of one function body; the
    sorting for top-k/top-p runs only when some sampling row warps (an If)."""

    def __init__(self, b: FunctionBuilder, temperature: str, top_k: str, top_p: str) -> None:
        self.b = b
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        # Some row samples (0-d; the host refuses NaN temperatures). Everything else the
        # sampler needs is made inside the If this guards, so a greedy step runs only these two
        # nodes, the argmax and its gather.
        self.any_sampling = b.GreaterOrEqual(
            b.ReduceMax(temperature, keepdims=0), b.const(GREEDY_BELOW, "float32")
        )

    def _greedy_rows(self) -> str:
        """[B] bool: the rows that decode greedily (made where it is read, inside the If)."""
        return self.b.Less(self.temperature, self.b.const(GREEDY_BELOW, "float32"))

    def _col(self, x: str) -> str:
        """[B] -> [B, 1, 1]."""
        return self.b.Unsqueeze(x, self.b.const([1, 2]))

    def weights(self, logits_bnv: str, greedy_b: str) -> str:
        """Unnormalised weights [B, N, V] of each row's distribution at each of its nodes
        (`greedy_b`: the rows that decode greedily)."""
        b = self.b
        safe_t = b.Where(greedy_b, b.const(1.0, "float32"), self.temperature)
        scaled = b.Mul(logits_bnv, self._col(b.Reciprocal(safe_t)))
        v0 = b.Squeeze(b.dim(logits_bnv, 2), b.const([0]))  # 0-d: V
        k_on = b.And(b.Greater(self.top_k, b.const(0)), b.Less(self.top_k, v0))  # [B]
        p_on = b.Less(self.top_p, b.const(1.0, "float32"))  # [B]
        warps = b.And(b.Not(greedy_b), b.Or(k_on, p_on))  # [B]
        any_warp = b.Cast(b.ReduceMax(b.Cast(warps, to=INT64), keepdims=0), to=BOOL)  # 0-d bool

        def warped() -> list[str]:
            # Sort only as far as some row needs: its top_k, or everything for top-p alone.
            need = b.Where(k_on, self.top_k, b.Where(p_on, v0, b.const(1)))
            kmax = b.ReduceMax(b.Where(warps, need, b.const(1)), keepdims=1)  # [1]
            values, order = b.TopK(scaled, kmax, axis=-1, outputs=2)  # [B, N, kmax]
            kth_at = b.Expand(
                self._col(b.Sub(b.Min(b.Where(k_on, self.top_k, b.const(1)), kmax), b.const(1))),
                b.Concat(b.Shape(scaled, end=2), b.const([1]), axis=0),
            )
            kth = b.Where(
                self._col(k_on),
                b.GatherElements(values, kth_at, axis=2),
                b.const(float("-inf"), "float32"),
            )
            masked = b.Where(b.Less(scaled, kth), b.const(float("-inf"), "float32"), scaled)
            probs = b.Softmax(masked, axis=-1)
            sorted_probs = b.GatherElements(probs, order, axis=2)
            before = b.CumSum(sorted_probs, b.const(2), exclusive=1)
            in_nucleus = b.ReduceSum(
                b.Cast(b.Less(before, self._col(self.top_p)), to=INT64),
                b.const([-1]),
                keepdims=1,
            )
            smallest = b.GatherElements(
                sorted_probs, b.Sub(b.Max(in_nucleus, b.const(1)), b.const(1)), axis=2
            )
            smallest = b.Where(self._col(p_on), smallest, b.const(0.0, "float32"))
            return [b.Where(b.Less(probs, smallest), b.const(0.0, "float32"), probs)]

        return b.If(any_warp, warped, lambda: [b.Softmax(scaled, axis=-1)], [FLOAT])

    def draw(self, weights_bnv: str, uniforms_bn: str) -> str:
        """One index per node [B, N] by inverse CDF at `uniforms_bn` (module doc)."""
        b = self.b
        cdf = b.CumSum(weights_bnv, b.const(-1))
        total = b.Slice(cdf, b.const([-1]), b.const([2**62]), b.const([-1]))
        threshold = b.Mul(b.Unsqueeze(uniforms_bn, b.const([-1])), total)
        below = b.And(b.LessOrEqual(cdf, threshold), b.Less(cdf, total))
        return b.ReduceSum(b.Cast(below, to=INT64), b.const([-1]), keepdims=0)

    def node_tokens(self, logits_btv: str, nodes_bn: str, uniforms_bn: Callable[[], str]) -> str:
        """The token each node picks [B, N] (argmax for greedy rows, else a draw); the
        sampling work, and `uniforms_bn()` that makes the nodes' uniforms [B, N], runs only
        when some row samples."""
        b = self.b

        def argmax_bn() -> str:  # made in each branch, so neither ends in an Identity
            return b.GatherElements(b.ArgMax(logits_btv, axis=-1, keepdims=0), nodes_bn, axis=1)

        def sampled() -> list[str]:
            greedy_b, greedy_bn = self._greedy_rows(), argmax_bn()
            logits_bnv = b.GatherND(logits_btv, b.Unsqueeze(nodes_bn, b.const([-1])), batch_dims=1)
            drawn = self.draw(self.weights(logits_bnv, greedy_b), uniforms_bn())
            return [b.Where(b.Unsqueeze(greedy_b, b.const([1])), greedy_bn, drawn)]

        return b.If(self.any_sampling, sampled, lambda: [argmax_bn()], [INT64], role=SAMPLING_ROLE)
