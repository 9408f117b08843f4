"""fuse-chain-attention: chain rows' attention, RoPE and cache write -> one GroupQueryAttention.

Before (per layer, after fuse-tree-attention):

    x ── MatMul(Wq) ── Reshape ── Transpose ── RotaryEmbedding(cos, sin) ─┐
    x ── MatMul(Wk) ── Reshape ── Transpose ── RotaryEmbedding(cos, sin) ─┼─ TreeAttention ─┐
    x ── MatMul(Wv) ── Reshape ── Transpose ──────────────────────────────┘                 │
                                                             y ── Reshape ── Transpose ──┘
    past_k, k_rot ── KVCompaction ── present.N.key     (likewise the values)

After:

    x ── MatMul([Wq | Wk | Wv]) ── com.microsoft::GroupQueryAttention(past_k, past_v,
             seqlens_k, total_sequence_length, cos_cache, sin_cache, query_seqlens) ── y,
                                                               present.N.key, present.N.value

Why: in an artifact whose every packed row is a chain (autoregressive, or single-beam ReDrafter:
prefill chunks and drafted chains alike) the tree mask is the causal mask, a token's position is
its row's cache length plus its index, and the accepted tokens are a prefix of the chain, so
they are already where GroupQueryAttention writes them: at the row's cache length, in place in
the shared past/present buffer. `query_seqlens` (the row's `num_tokens`) keeps right padding
out of the cache. One kernel then does what took the projections' split, two rotations, the
mask, the two-part softmax and two cache scatters, and the tree mask (AncestorMask), the cache
mask and KVCompaction disappear from the graph as dead code. Greedy decoding stays exact: the
same attention, the same rotation (cos/sin tables made by the model's own RoPE code).

Only for ONNX Runtime (GroupQueryAttention is its contrib op, >= 1.32 for `query_seqlens`), and
only where ONNX Runtime's CPU kernel takes the shape: head size a multiple of 16. Otherwise the
layer keeps TreeAttention, recorded as a rejection.

With `pad_queries` every row gets one more query: a zero token after its last, counted in
`query_seqlens`, its output dropped by a Slice:

    qkv ── Pad(T -> T + 1) ── GroupQueryAttention(query_seqlens = num_tokens + 1) ── Slice(:T) ── y

ONNX Runtime's CPU kernel computes a row of one query by another path than a row of two or
more (last-bit differences, measured: bench/studies/exact_int8_activations), and it does not
round the same way for a token verified alone (autoregressive) and one verified in a chain
(ReDrafter). With rounded activations (MatMulNBits at accuracy level 4, which rounds each
block to int8 and is otherwise the same for any number of rows) those last bits become
different tokens; with every row at two queries or more, a token's attention is the same
computation in both, so ReDrafter decodes exactly as autoregressive decoding. The pad writes
its key and value one slot past the row's tokens, a slot no query reads before the next step
overwrites it (the next step's tokens start at or before it), so a host sizes the cache for
it: `cache_lengths + T + 1 <= S` (docs/artifact.md, "Cache sizing").
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from redcompile.ops import DOMAIN, KV_COMPACTION, TREE_ATTENTION
from redcompile.passes.base import GraphPass, Match, PassContext, attr, constant_array, producer
from redcompile.passes.contrib import GROUP_QUERY_ATTENTION as GQA
from redcompile.passes.contrib import MS_DOMAIN

ONE_MORE_TOKEN = (0, 0, 0, 0, 1, 0)  # Pad's pads for [B, T, C]: one token after the last

HEAD_SIZE_MULTIPLE = 16  # ONNX Runtime's CPU GroupQueryAttention refuses other head sizes
TRANSPOSE_BHTD = [0, 2, 1, 3]


def _transposed_from(tensor: gs.Tensor) -> gs.Tensor | None:
    """x when `tensor` = Transpose(x, perm=[0, 2, 1, 3]), else None."""
    node = producer(tensor)
    if node is None or node.op != "Transpose" or list(attr(node, "perm", [])) != TRANSPOSE_BHTD:
        return None
    return node.inputs[0]


def _rotated(tensor: gs.Tensor) -> tuple[gs.Tensor, gs.Node] | None:
    """(x_bhtd, node) when `tensor` = RotaryEmbedding(x_bhtd, cos, sin), half-split, no ids."""
    node = producer(tensor)
    if node is None or node.op != "RotaryEmbedding" or node.domain not in ("", "ai.onnx", None):
        return None
    if attr(node, "interleaved", 0) != 0 or attr(node, "rotary_embedding_dim", 0) != 0:
        return None
    if len(node.inputs) > 3 and node.inputs[3].name:
        return None
    return node.inputs[0], node


def _unsplit(tensor_bthd: gs.Tensor) -> gs.Tensor | None:
    """The [B, T, H*D] tensor a Reshape made `tensor_bthd` from, else None."""
    node = producer(tensor_bthd)
    if node is None or node.op != "Reshape":
        return None
    source = node.inputs[0]
    if source.shape is not None and len(source.shape) != 3:
        return None
    return source


def _projection(tensor: gs.Tensor) -> tuple[gs.Tensor, gs.Constant] | None:
    """(x, W) when `tensor` = MatMul(x, W) with W an initializer [K, N]."""
    node = producer(tensor)
    if node is None or node.op != "MatMul" or not isinstance(node.inputs[1], gs.Constant):
        return None
    if len(node.inputs[1].shape) != 2 or len(tensor.outputs) != 1:
        return None
    return node.inputs[0], node.inputs[1]


def _compaction_of(rotated: gs.Tensor, past: gs.Tensor) -> gs.Node | None:
    """The KVCompaction that writes `rotated` into `past`, if it is the only other reader."""
    users = [n for n in rotated.outputs if n.op == KV_COMPACTION.onnx_name and n.domain == DOMAIN]
    if len(users) != 1 or users[0].inputs[0] is not past:
        return None
    return users[0]


def _merged_output(y_bhtd: gs.Tensor) -> gs.Tensor | None:
    """The [B, T, H*D] tensor the graph makes from attention's output by Transpose + Reshape."""
    if len(y_bhtd.outputs) != 1:
        return None
    transpose = y_bhtd.outputs[0]
    if transpose.op != "Transpose" or list(attr(transpose, "perm", [])) != TRANSPOSE_BHTD:
        return None
    if len(transpose.outputs[0].outputs) != 1:
        return None
    reshape = transpose.outputs[0].outputs[0]
    return reshape.outputs[0] if reshape.op == "Reshape" else None


class FuseChainAttention(GraphPass):
    """TreeAttention of chain-only artifacts -> GroupQueryAttention with RoPE and cache write."""

    name = "fuse-chain-attention"

    def __init__(self, cos_pd: np.ndarray, sin_pd: np.ndarray, pad_queries: bool = False) -> None:
        """`cos_pd`/`sin_pd` [positions, head_dim / 2]: the model's RoPE at every position;
        `pad_queries`: one more (discarded) query per row, so that no row has one query."""
        self.cos_pd, self.sin_pd = cos_pd, sin_pd
        self.pad_queries = pad_queries
        self._shared: dict[str, gs.Tensor] = {}
        self._shared_graph: int | None = None  # id() of the graph `_shared` was made in

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """Each TreeAttention whose q/k are rotated projections and whose k/v cache writes are
        its own layer's KVCompactions."""
        inputs = {t.name: t for t in graph.inputs}
        for node in graph.nodes:
            if node.domain != DOMAIN or node.op != TREE_ATTENTION.onnx_name:
                continue
            q_rot, k_rot, v_bhtd, past_k, past_v = node.inputs[:5]
            q, k = _rotated(q_rot), _rotated(k_rot)
            if q is None or k is None:
                ctx.reject(node, "q or k is not a half-split RotaryEmbedding of the projection")
                continue
            q_bthd, k_bthd, v_bthd = (_transposed_from(t) for t in (q[0], k[0], v_bhtd))
            if q_bthd is None or k_bthd is None or v_bthd is None:
                ctx.reject(node, "q, k or v is not a [B, T, H, D] -> [B, H, T, D] transpose")
                continue
            head_dim = past_k.shape[-1] if past_k.shape else None
            if not isinstance(head_dim, int) or head_dim % HEAD_SIZE_MULTIPLE:
                ctx.reject(node, f"head size {head_dim} is not a multiple of {HEAD_SIZE_MULTIPLE}")
                continue
            if head_dim // 2 != self.cos_pd.shape[1]:
                ctx.reject(node, f"head size {head_dim} does not fit the RoPE tables")
                continue
            write_k, write_v = _compaction_of(k_rot, past_k), _compaction_of(v_bhtd, past_v)
            if write_k is None or write_v is None:
                ctx.reject(node, "its keys or values are not written by one KVCompaction each")
                continue
            if any(p.name not in inputs for p in (past_k, past_v)):
                ctx.reject(node, "its cache is not a graph input")
                continue
            merged = _merged_output(node.outputs[0])
            if merged is None:
                ctx.reject(node, "its output is not merged back to [B, T, H*D] by one reshape")
                continue
            yield Match(
                root=node,
                nodes=(q[1], k[1], write_k, write_v),
                bindings={
                    "q": q_bthd,
                    "k": k_bthd,
                    "v": v_bthd,
                    "past_k": past_k,
                    "past_v": past_v,
                    "present_k": write_k.outputs[0],
                    "present_v": write_v.outputs[0],
                    "y": merged,
                    "num_heads": int(attr(q[1], "num_heads")),
                    "kv_heads": int(attr(k[1], "num_heads")),
                    "scale": float(attr(node, "scale")),
                    "input_ids": inputs["input_ids"],
                    "num_tokens": inputs["num_tokens"],
                    "cache_lengths": inputs["cache_lengths"],
                },
            )

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Write y and both presents from one GroupQueryAttention; the rest becomes dead."""
        b = match.bindings
        shared = self._shared_inputs(graph, b["num_tokens"], b["cache_lengths"], b["input_ids"])
        qkv = self._packed_qkv(graph, b["q"], b["k"], b["v"], ctx)
        for node in match.nodes[2:]:  # the KVCompactions: GQA writes their outputs now
            node.outputs.clear()
        y = b["y"]
        y.inputs.clear()
        if self.pad_queries:
            qkv = [self._padded(graph, t) if t.name else t for t in qkv]
            y_padded = gs.Variable(f"{y.name}/padded", dtype=y.dtype)
            ends = gs.Constant(f"{y.name}/drop_pad", np.array([-1], dtype=np.int64))
            starts = gs.Constant(f"{y.name}/from", np.array([0], dtype=np.int64))
            axes = gs.Constant(f"{y.name}/tokens", np.array([1], dtype=np.int64))
            graph.layer(op="Slice", inputs=[y_padded, starts, ends, axes], outputs=[y])
            y = y_padded
        graph.layer(
            op=GQA,
            domain=MS_DOMAIN,
            name=f"{match.root.name or 'attention'}/{GQA}",
            inputs=[
                *qkv,
                b["past_k"],
                b["past_v"],
                shared["seqlens_k"],
                shared["total"],
                shared["cos"],
                shared["sin"],
                *[gs.Variable.empty()] * 7,  # position_ids .. k_norm_weight: unused
                shared["query_seqlens"],
            ],
            outputs=[y, b["present_k"], b["present_v"]],
            attrs={
                "num_heads": b["num_heads"],
                "kv_num_heads": b["kv_heads"],
                "scale": b["scale"],
                "do_rotary": 1,
                "rotary_interleaved": 0,
            },
        )

    @staticmethod
    def _padded(graph: gs.Graph, x_btc: gs.Tensor) -> gs.Tensor:
        """x [B, T, C] with one zero token appended: [B, T + 1, C]."""
        pads = gs.Constant(f"{x_btc.name}/pad_one", np.array(ONE_MORE_TOKEN, dtype=np.int64))
        out = gs.Variable(f"{x_btc.name}/padded", dtype=x_btc.dtype)
        graph.layer(op="Pad", inputs=[x_btc, pads], outputs=[out])
        return out

    def _packed_qkv(
        self, graph: gs.Graph, q: gs.Tensor, k: gs.Tensor, v: gs.Tensor, ctx: PassContext
    ) -> list[gs.Tensor]:
        """(qkv, -, -) from one MatMul over the concatenated weights when all three are
        projections of one input; else (q, k, v) as [B, T, H*D] (reshaped back where needed)."""
        flat = [_unsplit(t) for t in (q, k, v)]
        projections = [_projection(t) if t is not None else None for t in flat]
        if all(projections) and len({id(p[0]) for p in projections}) == 1:
            x = projections[0][0]
            weights = [constant_array(p[1], ctx) for p in projections]
            if len({w.dtype for w in weights}) == 1:
                w_qkv = gs.Constant(f"{projections[0][1].name}.qkv", np.concatenate(weights, 1))
                out = gs.Variable(f"{w_qkv.name}/out", dtype=weights[0].dtype)
                graph.layer(
                    op="MatMul", name=f"{w_qkv.name}/MatMul", inputs=[x, w_qkv], outputs=[out]
                )
                return [out, gs.Variable.empty(), gs.Variable.empty()]
        merged = []
        for original, source in zip((q, k, v), flat):
            if source is not None:
                merged.append(source)
                continue
            shape = gs.Constant(f"{original.name}/bt_hd", np.array([0, 0, -1], dtype=np.int64))
            out = gs.Variable(f"{original.name}/merged", dtype=original.dtype)
            graph.layer(op="Reshape", inputs=[original, shape], outputs=[out])
            merged.append(out)
        return merged

    def _shared_inputs(
        self,
        graph: gs.Graph,
        num_tokens: gs.Tensor,
        cache_lengths: gs.Tensor,
        input_ids: gs.Tensor,
    ) -> dict[str, gs.Tensor]:
        """The inputs every layer's GroupQueryAttention shares, made once per graph:
        seqlens_k = max(cache_lengths + num_tokens - 1, 0), query_seqlens = num_tokens and
        total_sequence_length = max(max(cache_lengths + num_tokens), T) as int32, the tables.
        With `pad_queries` each row has one more query: seqlens_k = cache_lengths + num_tokens,
        query_seqlens = num_tokens + 1, total_sequence_length = max(...) + 1."""
        if self._shared_graph == id(graph):
            return self._shared
        prefix = f"{GQA}.shared"

        def node(op: str, name: str, *inputs: gs.Tensor, dtype: type = np.int64, **attrs):
            out = gs.Variable(f"{prefix}/{name}", dtype=dtype)
            return graph.layer(op=op, inputs=list(inputs), outputs=[out], attrs=attrs)[0]

        def const(name: str, value: np.ndarray) -> gs.Constant:
            return gs.Constant(f"{prefix}/{name}", value)

        def int32(tensor: gs.Tensor, name: str) -> gs.Tensor:
            return node("Cast", name, tensor, dtype=np.int32, to=onnx.TensorProto.INT32)

        one = const("one", np.array(1, dtype=np.int64))
        zero = const("zero", np.array(0, dtype=np.int64))
        total_b = node("Add", "total_b", cache_lengths, num_tokens)
        # [1]: GroupQueryAttention takes a one-element total_sequence_length as a scalar
        widest = node("ReduceMax", "widest", total_b, keepdims=1)
        total = node("Max", "total64", widest, node("Shape", "tokens", input_ids, start=1, end=2))
        if self.pad_queries:  # the pad is the row's last token: one more of everything
            seqlens, queries = total_b, node("Add", "queries_b", num_tokens, one)
            total = node("Add", "total64_padded", total, one)
        else:
            seqlens = node("Max", "seqlens_b", node("Sub", "last_b", total_b, one), zero)
            queries = num_tokens
        self._shared_graph = id(graph)
        self._shared = {
            "seqlens_k": int32(seqlens, "seqlens_k"),
            "query_seqlens": int32(queries, "query_seqlens"),
            "total": int32(total, "total_sequence_length"),
            "cos": const("cos_cache", np.ascontiguousarray(self.cos_pd)),
            "sin": const("sin_cache", np.ascontiguousarray(self.sin_pd)),
        }
        return self._shared

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """No TreeAttention that could have been fused is left, and no KVCompaction writes a
        cache that a GroupQueryAttention also writes."""
        left = list(self.match(graph, PassContext()))
        if left:
            raise self.fail(f"{left[0].root.name} still attends with TreeAttention")
        fused_caches = {id(n.inputs[3]) for n in graph.nodes if n.op == GQA}
        for node in graph.nodes:
            if node.op == KV_COMPACTION.onnx_name and id(node.inputs[0]) in fused_caches:
                raise self.fail(f"{node.name} writes a cache GroupQueryAttention writes")
