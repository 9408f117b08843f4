"""pad-lone-token: a step of one row of one token multiplies two rows, so every MatMulNBits
computes the same way at any batch size and tree length.

Before (fuse-chain-attention with `pad_queries`, quantize-weights):

    input_ids ── Gather(embedding) ── x ── ... ── qkv ── Pad(+1) ── GQA ── Slice(:-1) ── ...
        ... ── h ── MatMulNBits(lm_head) ── logits ── Accept ...

After:

    e = (B * T == 1)                                  one int64, computed once per step
    x ── Pad(T -> T + e) ── x' ── ... ── qkv ── Pad(+1 - e) ── GQA ── Slice(:T + e) ── ...
        ... ── h' ── MatMulNBits(lm_head) ── Slice(:T) ── logits ── Accept ...
                h' ── Slice(:T) ── h                  (for any other reader, e.g. the drafter)

Why: ONNX Runtime's MatMulNBits at accuracy level 4 (int4 weights, activations rounded to int8)
multiplies a single row by another kernel than two rows or more on CPUs without AVX-512 VNNI
(measured on an AVX2 AMD EPYC: every output of a one-row product differs from the same row
computed among others, and products of 2-16 rows all agree; int8 weights agree at every row
count). An autoregressive step at batch 1 is a one-row product, the speculative step that
verifies a chain is not, and after the int8 rounding those last bits become other tokens
(4 of the fixture's 32 prompts). With the lone token padded, every product has two rows or
more, on every CPU. The pad token is the one attention already appends to each row
(fuse-chain-attention's `pad_queries`): when the stream carries it, attention adds none, so
the cache slot it writes and the queries attention counts are those of every other step. Steps
of two tokens or more (prefill, verification, any batch above 1) pad nothing; their Pad and
Slices copy the tensors as they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from redcompile.passes.base import GraphPass, Match, PassContext, attr, replace_input
from redcompile.passes.contrib import GROUP_QUERY_ATTENTION as GQA
from redcompile.passes.contrib import MATMUL_NBITS
from redcompile.passes.fuse_chain_attention import ONE_MORE_TOKEN


class PadLoneToken(GraphPass):
    """Pad the residual stream of a one-token, one-row step to two tokens (see module)."""

    name = "pad-lone-token"
    # not required: a step whose attention stayed TreeAttention is refused by the compiler
    # with its own message; `verify` fails any padded attention this pass could not reach

    def match(self, graph: gs.Graph, ctx: PassContext) -> Iterator[Match]:
        """The embedding Gather of `input_ids`, the vocabulary-wide MatMulNBits reading the
        stream (the lm_head), and every attention's one-token Pad and the Slice dropping it."""
        inputs = {t.name: t for t in graph.inputs}
        input_ids = inputs.get("input_ids")
        gathers = [
            n
            for n in graph.nodes
            if n.op == "Gather"
            and isinstance(n.inputs[0], gs.Constant)
            and input_ids is not None
            and n.inputs[1] is input_ids
        ]
        if len(gathers) != 1:
            return
        embedding = gathers[0]
        vocab = embedding.inputs[0].shape[0]
        heads = [n for n in graph.nodes if n.op == MATMUL_NBITS and attr(n, "N") == vocab]
        if len(heads) != 1:
            ctx.reject(embedding, f"{len(heads)} MatMulNBits of {vocab} outputs, not one lm_head")
            return
        attention = []
        for node in graph.nodes:
            if node.op != GQA:
                continue
            pad = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
            reads = node.outputs[0].outputs
            if (
                pad is None
                or pad.op != "Pad"
                or not isinstance(pad.inputs[1], gs.Constant)
                or tuple(pad.inputs[1].values.tolist()) != ONE_MORE_TOKEN
                or len(reads) != 1
                or reads[0].op != "Slice"
            ):
                ctx.reject(node, "its rows are not padded to two queries (pad_queries)")
                return
            attention.append((pad, reads[0]))
        if not attention:
            return
        yield Match(
            root=embedding,
            nodes=(heads[0],),
            bindings={"input_ids": input_ids, "attention": attention},
        )

    def rewrite(self, graph: gs.Graph, match: Match, ctx: PassContext) -> None:
        """Pad the stream by e, attention by 1 - e, slice the lm_head's output back to T."""
        prefix = self.name

        def node(op: str, name: str, *inputs: gs.Tensor, dtype=np.int64, **attrs) -> gs.Tensor:
            out = gs.Variable(f"{prefix}/{name}", dtype=dtype)
            return graph.layer(op=op, inputs=list(inputs), outputs=[out], attrs=attrs)[0]

        def const(name: str, values: list[int]) -> gs.Constant:
            return gs.Constant(f"{prefix}/{name}", np.array(values, dtype=np.int64))

        x = match.root.outputs[0]  # [B, T, H]
        readers = list(x.outputs)
        tokens_axis = const("tokens_axis", [1])
        # pads of the token axis, [0, e] and [0, 1 - e], from B * T in three kernels
        size = node("Size", "rows", match.bindings["input_ids"])
        lone = node("Less", "lone", size, const("lone_below", [0, 2]), dtype=np.bool_)
        stream_pads = node("Cast", "stream_pads", lone, to=onnx.TensorProto.INT64)
        attention_pads = node("Sub", "attention_pads", const("one_more", [0, 1]), stream_pads)
        padded = gs.Variable(f"{x.name}/lone_padded", dtype=x.dtype)
        graph.layer(
            op="Pad",
            inputs=[x, stream_pads, gs.Variable.empty(), tokens_axis],
            outputs=[padded],
        )
        for reader in readers:
            replace_input(reader, x, padded)
        streamed = node("Shape", "streamed_tokens", padded, start=1, end=2)  # T + e
        tokens = node("Shape", "tokens", match.bindings["input_ids"], start=1, end=2)  # T
        for pad, drop in match.bindings["attention"]:
            while len(pad.inputs) > 1:
                pad.inputs.pop()
            pad.inputs.extend([attention_pads, gs.Variable.empty(), tokens_axis])
            drop.inputs[2] = streamed
        head = match.nodes[0]
        start = const("from", [0])
        self._slice_other_readers(graph, head.inputs[0], head, start, tokens, tokens_axis)
        last = _logits_writer(head)
        logits = last.outputs[0]
        logits_padded = gs.Variable(f"{logits.name}/lone_padded", dtype=logits.dtype)
        last.outputs.clear()
        last.outputs.append(logits_padded)
        graph.layer(
            op="Slice",
            inputs=[logits_padded, start, tokens, tokens_axis],
            outputs=[logits],
        )
        _forget_shapes(graph, padded, tokens)

    @staticmethod
    def _slice_other_readers(
        graph: gs.Graph,
        h: gs.Tensor,
        head: gs.Node,
        start: gs.Tensor,
        tokens: gs.Tensor,
        axis: gs.Tensor,
    ) -> None:
        """Readers of the final hidden state other than the lm_head (a drafter) get it back at
        T tokens."""
        others = [n for n in h.outputs if n is not head]
        if not others:
            return
        sliced = gs.Variable(f"{h.name}/tokens", dtype=h.dtype)
        graph.layer(op="Slice", inputs=[h, start, tokens, axis], outputs=[sliced])
        for reader in others:
            replace_input(reader, h, sliced)

    def verify(self, graph: gs.Graph, ctx: PassContext) -> None:
        """No attention pads a constant token any more: the stream's pad decides."""
        for node in graph.nodes:
            if node.op == "Pad" and isinstance(node.inputs[1], gs.Constant):
                if tuple(node.inputs[1].values.tolist()) == ONE_MORE_TOKEN:
                    raise self.fail(f"{node.name} still pads attention by a constant token")


def _logits_writer(head: gs.Node) -> gs.Node:
    """The node writing the logits as [B, T, V]: the lm_head, or the Reshape after it where
    the product runs on [B * T, H] rows (share-weights' Gemm for a tied head)."""
    readers = head.outputs[0].outputs
    if len(readers) == 1 and readers[0].op == "Reshape":
        return readers[0]
    return head


def _forget_shapes(graph: gs.Graph, start: gs.Tensor, tokens: gs.Tensor) -> None:
    """Drop the recorded shapes of the stream from `start` to the lm_head's output: shape
    inference named their token axis after `input_ids`' (T), which it no longer is, and ONNX
    Runtime plans buffers by those names. What the Slices give back has T tokens again and
    keeps its shapes (ONNX Runtime folds shape arithmetic downstream by them)."""
    outputs = {id(t) for t in graph.outputs}  # the signature's: they keep theirs
    seen, todo = set(), [start]
    while todo:
        tensor = todo.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if isinstance(tensor, gs.Variable) and id(tensor) not in outputs:
            tensor.shape = None
        for reader in tensor.outputs:
            if reader.op == "Slice" and reader.inputs[2] is tokens:  # back at T tokens
                continue
            todo.extend(reader.outputs)
