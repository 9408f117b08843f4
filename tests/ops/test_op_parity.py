"""Every implementation of every op is held to its torch reference.

Parametrised over `OPS`, so a new op without sample inputs here fails the meta-test.
Implementations: the registered torch op (torch.library.opcheck), the fake (shapes/dtypes), and
the ONNX function body run by stock ONNX Runtime. CUDA kernels are compared in tests/cuda/.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from redcompile.ops import (
    ACCEPT,
    ANCESTOR_MASK,
    BUILD_TREE,
    DRAFTER_BEAM_SEARCH,
    KV_COMPACTION,
    OPS,
    PROMPT_LOOKUP,
    TREE_ATTENTION,
)
from redcompile.ops.tree_building import ancestor_mask, build_tree_reference
from support import run_op_body, single_op_model


def tree_attention_samples(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    b, hq, hkv, t, s, d = 3, 4, 2, 6, 9, 8
    r = lambda *shape: torch.randn(*shape, generator=g).to(dtype)  # noqa: E731
    lengths = torch.tensor([0, 4, 9])
    past_mask = (torch.arange(s)[None] < lengths[:, None])[:, None, None, :]
    parents = torch.tensor([[-1, 0, 1, 1, 0, 4]] * 2 + [[-1, 0, 1, 2, 3, 4]])
    depths = torch.tensor([[0, 1, 2, 2, 1, 2]] * 2 + [[0, 1, 2, 3, 4, 5]])
    tree_mask = ancestor_mask(parents, depths, 3)[:, None]
    yield (
        [
            r(b, hq, t, d),
            r(b, hkv, t, d),
            r(b, hkv, t, d),
            r(b, hkv, s, d),
            r(b, hkv, s, d),
            past_mask,
            tree_mask,
        ],
        {"scale": d**-0.5},
    )


def beam_search_samples():
    from redcompile.models.drafter import Drafter, DrafterConfig

    for rnn, exit_dim, layers, (w, length, top_k), draft_vocab in [
        (True, 24, 2, (4, 4, 0), None),
        (False, 16, 1, (3, 3, 5), None),
        (True, 20, 0, (1, 5, 50), None),
        (True, 24, 1, (3, 4, 5), [39, 3, 17, 0, 8, 21, 30, 11, 5, 2]),  # a draft vocabulary
        (False, 24, 2, (1, 4, 5), [39, 3, 17, 0, 8, 21, 30, 11, 5, 2]),  # one beam, draft vocab
    ]:
        torch.manual_seed(layers)
        drafter = Drafter(DrafterConfig(12, 40, exit_dim, layers, rnn))
        if draft_vocab is not None:
            drafter.restrict_vocabulary(torch.tensor(draft_vocab))
        weights = [p.detach() if p is not None else None for p in drafter.op_weights()]
        yield (
            [torch.randn(2, 12), torch.tensor([3, 17]), torch.randn(40, 12), *weights],
            {"beam_width": w, "beam_length": length, "top_k": top_k},
        )


def build_tree_samples():
    g = torch.Generator().manual_seed(1)
    for b, w, length in [(2, 3, 4), (1, 5, 2), (3, 1, 5)]:
        beams = torch.randint(0, 3, (b, w, length), generator=g)
        beams[:, :, 0] = 7
        yield [beams], {}


def ancestor_mask_samples():
    g = torch.Generator().manual_seed(4)
    beams = torch.randint(0, 3, (3, 4, 4), generator=g)
    beams[:, :, 0] = 1
    _, parents, depths, _, _ = build_tree_reference(beams)
    yield [parents, depths], {"steps": 4}
    # Compiled for deep chains: a shallow tree takes the body's short branch, a chain of 38
    # tokens the full one.
    yield [parents, depths], {"steps": 10}
    chain = torch.arange(-1, 37).unsqueeze(0)  # a prompt chain of 38 tokens
    yield [chain, torch.arange(38).unsqueeze(0)], {"steps": 6}


def sampling_controls(temperature, top_k, top_p):
    """The per-row sampling inputs of Accept."""
    return [torch.tensor(temperature), torch.tensor(top_k), torch.tensor(top_p)]


def accept_samples():
    """Several beams (the tree body) and no tree (autoregressive): greedy, mixed and sampling
    batches; top-k and top-p per row; a temperature too small to divide by (greedy)."""
    g = torch.Generator().manual_seed(2)
    beams = torch.randint(0, 3, (4, 3, 4), generator=g)
    beams[:, :, 0] = 5
    tokens, _, _, num_tokens, paths = build_tree_reference(beams)
    t = tokens.shape[1]
    tokens[3, :6] = torch.tensor([1, 2, 3, 4, 5, 6])
    num_tokens = num_tokens.clone()
    num_tokens[3] = 6
    forced = torch.tensor([1, 1, 1, 6])
    logits = torch.randn(4, t, 12, generator=g) * 3
    logits[0, 0, beams[0, 0, 1]] += 20  # row 0 accepts some drafts greedily
    logits[1, :, :3] += 4  # sampling rows often pick a drafted token (0, 1 or 2)
    logits[2, :, :3] += 4
    head = [logits, tokens, num_tokens, forced]
    controls = [
        ([0.0, 0.8, 1.2, 0.0], [0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0]),
        ([0.0, 0.8, 1.2, 0.0], [5, 1, 5, 0], [1.0, 1.0, 1.0, 1.0]),
        ([1e-9, 0.8, 1.2, 0.5], [0, 4, 0, 0], [1.0, 0.6, 0.3, 0.9]),
        ([0.0] * 4, [5] * 4, [1.0] * 4),
        ([0.9] * 4, [5, 0, 3, 12], [0.5, 0.95, 1.0, 0.2]),
    ]
    for temperature, top_k, top_p in controls:
        sampling = sampling_controls(temperature, top_k, top_p)
        yield head + sampling + [torch.rand(4, 4, generator=g), paths], {}
        yield head + sampling + [torch.rand(4, 1, generator=g), None], {}
    yield from accept_chain_samples()


def accept_chain_samples():
    """One beam (the chain body): rows accepting 0, 2 and all 4 drafts greedily, a prefill
    row, an idle row; greedy, sampling and mixed batches."""
    g = torch.Generator().manual_seed(6)
    beams = torch.randint(0, 12, (5, 1, 5), generator=g)
    tokens, _, _, num_tokens, paths = build_tree_reference(beams)
    num_tokens, tokens = num_tokens.clone(), tokens.clone()
    logits = torch.randn(5, tokens.shape[1], 12, generator=g) * 2
    for row, accepted in ((1, 2), (2, 4)):
        for i in range(accepted):  # the argmax at slot i is the draft at slot i + 1
            logits[row, i, beams[row, 0, i + 1]] += 30
    tokens[3, :5] = torch.tensor([4, 9, 1, 7, 3])  # a prompt chunk of 5 tokens
    forced = torch.tensor([1, 1, 1, 5, 0])
    num_tokens[4] = 0  # idle
    for temperature, top_k, top_p in (
        ([0.0] * 5, [0] * 5, [1.0] * 5),
        ([0.7, 0.0, 1.3, 0.9, 0.0], [0, 5, 0, 2, 0], [1.0, 1.0, 0.8, 1.0, 1.0]),
        ([1.0] * 5, [5] * 5, [0.9] * 5),
    ):
        sampling = sampling_controls(temperature, top_k, top_p)
        uniforms = torch.rand(5, 5, generator=g)
        yield [logits, tokens, num_tokens, forced, *sampling, uniforms, paths], {}


def kv_compaction_samples():
    g = torch.Generator().manual_seed(3)
    past, new = torch.randn(2, 2, 12, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g)
    yield (
        [
            past,
            new,
            torch.tensor([2, 7]),
            torch.tensor([[0, 1, 3, 0, 0], [0, 1, 2, 3, 4]]),
            torch.tensor([3, 5]),
        ],
        {},
    )


def prompt_lookup_samples():
    g = torch.Generator().manual_seed(5)
    history = torch.randint(0, 3, (4, 14), generator=g)
    # an idle row, a row shorter than the n-grams, a full row, and one past the capacity
    lengths = torch.tensor([0, 2, 14, 20])
    yield [history, lengths], {"ngrams": [3, 1], "num_beams": 3, "beam_length": 5}
    yield [history, torch.tensor([9, 11, 1, 13])], {"ngrams": [2], "num_beams": 1, "beam_length": 4}


SAMPLES = {
    TREE_ATTENTION: tree_attention_samples,
    DRAFTER_BEAM_SEARCH: beam_search_samples,
    BUILD_TREE: build_tree_samples,
    ANCESTOR_MASK: ancestor_mask_samples,
    ACCEPT: accept_samples,
    KV_COMPACTION: kv_compaction_samples,
    PROMPT_LOOKUP: prompt_lookup_samples,
}
CASES = [(op, i, case) for op in OPS for i, case in enumerate(SAMPLES.get(op, list)())]


def case_id(value):
    return value.onnx_name if hasattr(value, "onnx_name") else None


def test_every_op_has_samples():
    assert {op.name for op in OPS} == {op.name for op in SAMPLES}


def as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def layout(t):
    """Strides of the dimensions that have more than one element (others are arbitrary)."""
    return [stride for size, stride in zip(t.shape, t.stride()) if size > 1]


def call_args(op, inputs, attrs):
    return [*inputs, *(attrs[name] for name in op.attribute_names)]


@pytest.mark.parametrize("op,index,case", CASES, ids=case_id)
def test_registered_op_passes_opcheck(op, index, case):
    inputs, attrs = case
    torch.library.opcheck(
        getattr(torch.ops.redcompile, op.name),
        call_args(op, inputs, attrs),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("op,index,case", CASES, ids=case_id)
def test_fake_matches_reference_shapes_and_dtypes(op, index, case):
    inputs, attrs = case
    args = call_args(op, inputs, attrs)
    real, fake = as_tuple(op.reference(*args)), as_tuple(op.fake(*args))
    assert [(t.shape, t.dtype) for t in real] == [(t.shape, t.dtype) for t in fake]
    strided = [
        a.transpose(-1, -2).contiguous().transpose(-1, -2)
        if torch.is_tensor(a) and a.dim() >= 2
        else a
        for a in args
    ]  # same values, non-contiguous layout
    registered = getattr(torch.ops.redcompile, op.name)
    real, fake = as_tuple(registered(*strided)), as_tuple(op.fake(*strided))
    # compilers lay outputs out as the fake says: the strides must be the op's
    assert [layout(t) for t in real] == [layout(t) for t in fake]


def assert_body_matches_reference(op, inputs, attrs, static_dims=True):
    expected = as_tuple(op.reference(*call_args(op, inputs, attrs)))
    actual = run_op_body(op, inputs, attrs, static_dims)
    for name, want, got in zip(op.output_names, expected, actual):
        want = want.numpy()
        assert got.shape == want.shape, name
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("op,index,case", CASES, ids=case_id)
def test_onnx_function_body_matches_reference(op, index, case):
    assert_body_matches_reference(op, *case)


@pytest.mark.parametrize("op,index,case", [c for c in CASES if c[0].static_dims], ids=case_id)
def test_body_reading_its_static_dims_from_shapes_matches_reference(op, index, case):
    """A graph that does not know a size statically gets the body that reads it at run time."""
    assert_body_matches_reference(op, *case, static_dims=False)


def test_tree_attention_equals_one_attention_over_concatenated_cache():
    ((inputs, attrs),) = tree_attention_samples()
    q, k, v, pk, pv, pm, tm = inputs
    b, _, t, _ = q.shape
    mask = torch.cat([pm.expand(b, 1, t, pk.shape[2]), tm], -1)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q,
        torch.cat([pk, k], 2),
        torch.cat([pv, v], 2),
        attn_mask=mask,
        scale=attrs["scale"],
        enable_gqa=True,
    )
    got = TREE_ATTENTION.reference(*inputs, attrs["scale"])
    assert (got - expected).abs().max() < 1e-5


def test_tree_attention_body_in_float16_is_within_half_precision():
    ((inputs, attrs),) = tree_attention_samples(torch.float16)
    expected = TREE_ATTENTION.reference(*inputs, attrs["scale"]).float().numpy()
    got = run_op_body(TREE_ATTENTION, inputs, attrs)[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expected, atol=1e-2, rtol=1e-2)


def test_kv_compaction_writes_only_the_kept_path():
    ((inputs, _),) = kv_compaction_samples()
    past, new, lengths, keep_idx, keep_len = inputs
    out = KV_COMPACTION.reference(*inputs)
    expected = past.clone()
    for b in range(2):
        for j in range(int(keep_len[b])):
            expected[b, :, int(lengths[b]) + j] = new[b, :, int(keep_idx[b, j])]
    assert torch.equal(out, expected)


def test_tree_attention_body_reads_shapes_only_from_the_masks_every_layer_shares():
    """With the head counts and head size known, nothing in a layer's inlined attention body
    computes a shape from that layer's own tensors (ONNX Runtime then shares the rest)."""
    ((inputs, attrs),) = tree_attention_samples()
    body = single_op_model(TREE_ATTENTION, inputs, attrs).functions[0]
    assert {n.input[0] for n in body.node if n.op_type == "Shape"} <= {"past_mask", "tree_mask"}
    assert "CastLike" not in {n.op_type for n in body.node}  # float32: constants written as such


def test_beam_search_body_skips_the_draft_distributions_nothing_reads():
    """A step graph never reads DrafterBeamSearch's logprobs: its body then gathers no
    per-position distributions, and the beams stay the reference's."""

    from redcompile.ops.onnx_builder import spec_from_node
    from support import ONNX_TYPES

    op = DRAFTER_BEAM_SEARCH
    for inputs, attrs in beam_search_samples():
        types = {
            n: (ONNX_TYPES[t.dtype] if t is not None else None)
            for n, t in zip(op.input_names, inputs)
        }
        shapes = {n: tuple(t.shape) for n, t in zip(op.input_names, inputs) if t is not None}
        full = op.build_body(spec_from_node(op, attrs, types, shapes))
        lean = op.build_body(
            spec_from_node(op, attrs, types, shapes, unused_outputs=frozenset({"logprobs"}))
        )
        assert len(lean.node) < len(full.node)
        model = single_op_model(op, inputs, attrs)
        del model.functions[:]
        model.functions.append(lean)
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        feeds = {n: t.numpy() for n, t in zip(op.input_names, inputs) if t is not None}
        beams = session.run(["beams"], feeds)[0]
        want = op.reference(*inputs, *(attrs[name] for name in op.attribute_names))[0]
        np.testing.assert_array_equal(beams, want.numpy())
