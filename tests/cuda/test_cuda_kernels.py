"""Every CUDA kernel against its op's torch reference (GPU only; skipped cleanly without one).

Integer outputs must be equal; float outputs agree to a tolerance set by the dtype. Shapes are
randomised but seeded, and include ragged batches (different cache lengths, tree sizes and row
kinds), GQA/MQA ratios, head dims on and off the tensor-core path, and contexts of 4K+ tokens
that exercise the split-K (flash-decoding) path. Test ids containing "long" are the slow ones;
bench/gpu_suite.sh leaves them out of the compute-sanitizer runs.
"""

from __future__ import annotations

import pytest
import torch

from redcompile.ops.acceptance import accept_reference
from redcompile.ops.drafter_beam_search import (
    LOG_0,
    beam_select,
    drafter_beam_search_reference,
    warp_top_k,
)
from redcompile.ops.kv_compaction import kv_compaction_reference
from redcompile.ops.prompt_lookup import prompt_lookup_reference
from redcompile.ops.tree_attention import tree_attention_reference
from redcompile.ops.tree_building import ancestor_mask, build_tree_reference, lifting_steps

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]

DEVICE = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATTENTION_TOLERANCE = {  # (atol, rtol) against the fp32 reference cast to the dtype
    torch.float32: (2e-5, 1e-4),
    torch.float16: (3e-3, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}


def dtype_id(dtype):
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else None


def random_forest(g: torch.Generator, t: int, roots: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """parents/depths [T] of a random forest whose parents precede their children."""
    parents = torch.full((t,), -1, dtype=torch.int64)
    depths = torch.zeros(t, dtype=torch.int64)
    for i in range(roots, t):
        parents[i] = int(torch.randint(0, i, (1,), generator=g))
        depths[i] = depths[parents[i]] + 1
    return parents, depths


# ---------------------------------------------------------------------------------------------
# Tree attention
# ---------------------------------------------------------------------------------------------

# name, B, Hq, Hkv, T, S, D, cache lengths per row, past mask kind
ATTENTION_CASES = [
    ("tiny", 3, 4, 2, 6, 9, 8, [0, 4, 9], "rows"),
    ("gqa_ragged", 4, 8, 2, 17, 300, 64, [0, 5, 150, 300], "rows"),
    ("mqa_d96_one_row", 2, 6, 1, 9, 77, 96, [77, 12], "one_row"),
    ("d80", 2, 4, 4, 5, 40, 80, [40, 0], "rows"),
    ("d72_cuda_cores", 2, 4, 2, 7, 90, 72, [90, 33], "holes"),
    ("d256_holes", 1, 2, 1, 12, 130, 256, [100], "holes"),
    ("decode_t1", 3, 8, 8, 1, 513, 128, [1, 513, 200], "rows"),
    ("prefill_chain_no_cache", 2, 4, 4, 200, 0, 64, [0, 0], "rows"),
    ("long_gqa_4k", 2, 32, 8, 32, 4500, 128, [4500, 2999], "rows"),
    ("long_llama7b_4k", 1, 32, 32, 32, 4096, 128, [4096], "one_row"),
]


def attention_inputs(case, dtype, seed=0):
    name, b, hq, hkv, t, s, d, lengths, mask_kind = case
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    q, k, v = r(b, hq, t, d), r(b, hkv, t, d), r(b, hkv, t, d)
    past_k, past_v = r(b, hkv, s, d), r(b, hkv, s, d)
    lengths_t = torch.tensor(lengths)
    visible = torch.arange(s)[None] < lengths_t[:, None]  # [B, S]
    if mask_kind == "holes":
        visible &= torch.rand(b, s, generator=g) < 0.7
    if mask_kind == "one_row":
        past_mask = visible[:, None, None, :]
    else:
        past_mask = visible[:, None, None, :].expand(b, 1, t, s).clone()
        if mask_kind == "holes":
            past_mask &= torch.rand(b, 1, t, s, generator=g) < 0.9
    if name.startswith("prefill_chain"):
        parents = torch.arange(-1, t - 1)
        depths = torch.arange(t)
        parents, depths = parents.expand(b, t), depths.expand(b, t)
    else:
        forests = [random_forest(g, t, roots=1 + i % 2) for i in range(b)]
        parents = torch.stack([f[0] for f in forests])
        depths = torch.stack([f[1] for f in forests])
    tree_mask = ancestor_mask(parents, depths, lifting_steps(int(depths.max()) + 1))[:, None]
    return [q, k, v, past_k, past_v, past_mask, tree_mask], d**-0.5


def to_device(tensors):
    return [x.to(DEVICE) if isinstance(x, torch.Tensor) else x for x in tensors]


def assert_attention_close(got, want, dtype):
    atol, rtol = ATTENTION_TOLERANCE[dtype]
    torch.testing.assert_close(got.float().cpu(), want.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: c[0])
def test_tree_attention_matches_reference(cuda_ops, case, dtype):
    inputs, scale = attention_inputs(case, dtype)
    want = tree_attention_reference(*inputs, scale)
    got = cuda_ops.tree_attention(*to_device(inputs), scale)
    assert got.dtype == dtype and got.shape == want.shape
    assert_attention_close(got, want, dtype)


@pytest.mark.parametrize("splits", [1, 2, 5, 64])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_tree_attention_any_number_of_splits_gives_the_same_result(
    cuda_ops, tree_attention_splits, dtype, splits
):
    inputs, scale = attention_inputs(ATTENTION_CASES[1], dtype, seed=1)
    want = tree_attention_reference(*inputs, scale)
    tree_attention_splits(splits)
    got = cuda_ops.tree_attention(*to_device(inputs), scale)
    assert_attention_close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_tree_attention_rows_that_see_nothing_are_zero(cuda_ops, tree_attention_splits, dtype):
    inputs, scale = attention_inputs(ATTENTION_CASES[1], dtype, seed=2)
    past_mask, tree_mask = inputs[5], inputs[6].clone()
    past_mask[0] = False  # row 0 has no cache
    tree_mask[0, 0, 3, :] = False  # and its token 3 sees nothing at all
    inputs[6] = tree_mask
    want = tree_attention_reference(*inputs, scale)
    for splits in (1, 3):
        tree_attention_splits(splits)
        got = cuda_ops.tree_attention(*to_device(inputs), scale)
        assert torch.all(got[0, :, 3] == 0)
        assert_attention_close(got, want, dtype)


def device_view(x: torch.Tensor, make) -> torch.Tensor:
    """`make(buffer_on_device)` -> a view holding x's values (views do not survive .to())."""
    return make(x.to(DEVICE))


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_tree_attention_strided_inputs(cuda_ops, dtype, misaligned):
    """Views with non-contiguous strides, built on the device: heads-last q/k/v and a cache
    inside a bigger buffer; `misaligned` starts q 4 elements into its buffer (no 16-byte loads)."""
    g = torch.Generator().manual_seed(3)
    b, hq, hkv, t, s, d = 2, 8, 4, 11, 260, 128
    q_bthd = torch.randn(b, t, hq, d, generator=g).to(dtype)
    k_bthd = torch.randn(b, t, hkv, d, generator=g).to(dtype)
    v_bthd = torch.randn(b, t, hkv, d, generator=g).to(dtype)
    big_k = torch.randn(b, hkv, s + 40, d, generator=g).to(dtype)
    big_v = torch.randn(b, hkv, s + 40, d, generator=g).to(dtype)
    past_mask = (torch.arange(s)[None] < torch.tensor([[s], [17]]))[:, None, None, :]
    parents, depths = random_forest(g, t)
    tree_mask = ancestor_mask(parents[None], depths[None], 4)[:, None]
    cpu_inputs = [
        q_bthd.transpose(1, 2),
        k_bthd.transpose(1, 2),
        v_bthd.transpose(1, 2),
        big_k[:, :, 8 : 8 + s],
        big_v[:, :, 8 : 8 + s],
        past_mask,
        tree_mask.expand(b, 1, t, t),
    ]
    want = tree_attention_reference(*[x.contiguous() for x in cpu_inputs], d**-0.5)

    if misaligned:
        buffer = torch.empty(q_bthd.numel() + 4, dtype=dtype, device=DEVICE)
        q = buffer[4:].view(b, hq, t, d).copy_(q_bthd.transpose(1, 2))
        assert q.data_ptr() % 16 != 0
    else:
        q = device_view(q_bthd, lambda x: x.transpose(1, 2))
    inputs = [
        q,
        device_view(k_bthd, lambda x: x.transpose(1, 2)),
        device_view(v_bthd, lambda x: x.transpose(1, 2)),
        device_view(big_k, lambda x: x[:, :, 8 : 8 + s]),
        device_view(big_v, lambda x: x[:, :, 8 : 8 + s]),
        past_mask.to(DEVICE),
        device_view(tree_mask, lambda x: x.expand(b, 1, t, t)),
    ]
    assert not inputs[3].is_contiguous() and inputs[6].stride(0) == 0
    got = cuda_ops.tree_attention(*inputs, d**-0.5)
    assert_attention_close(got, want, dtype)


# ---------------------------------------------------------------------------------------------
# Beam selection and drafter beam search
# ---------------------------------------------------------------------------------------------


def distinct_pool(dtype: torch.dtype) -> torch.Tensor:
    """Every value of a 16-bit dtype with 0.5 <= |x| <= 16, as float32 (all distinct)."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype).float()
    keep = torch.isfinite(values) & (values.abs() >= 0.5) & (values.abs() <= 16)
    return values[keep]


def distinct_logits(g, b, w, v, dtype):
    """Logits [B, W, V] with distinct values in every row (so the selection has no ties)."""
    if dtype == torch.float32:
        return torch.randn(b, w, v, generator=g) * 3
    pool = distinct_pool(dtype)
    v = min(v, pool.numel())  # the test then runs on a smaller vocabulary
    rows = [pool[torch.randperm(pool.numel(), generator=g)[:v]] for _ in range(b * w)]
    return torch.stack(rows).view(b, w, v).to(dtype)  # exact: pool values are representable


def select_reference(logits, scores, top_k):
    x = logits.float()
    x = warp_top_k(x - x.amax(dim=-1, keepdim=True), top_k)
    logprobs = torch.log_softmax(x, dim=-1)
    new_scores, parent, token = beam_select(scores, logprobs)
    return logprobs, new_scores, parent, token


SELECT_CASES = [  # B, W, V, top_k  (top_k 0 or >= W keeps the selection free of ties)
    (1, 1, 50, 0),
    (3, 4, 1000, 10),
    (2, 8, 1000, 0),
    (2, 16, 4000, 50),
    (1, 33, 1000, 40),
    (2, 64, 3000, 64),
    (1, 8, 32000, 50),
    (1, 4, 151936, 0),
    (2, 65, 500, 0),  # beyond the kernel's 64 beams: the ATen fallback
]


@pytest.mark.parametrize("first_step", [True, False], ids=["first_step", "mid_search"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", SELECT_CASES, ids=lambda c: "b{}w{}v{}k{}".format(*c))
def test_beam_select_matches_reference(cuda_ops, case, dtype, first_step):
    b, w, v, top_k = case
    g = torch.Generator().manual_seed(b * 1000 + w * 10 + v)
    logits = distinct_logits(g, b, w, v, dtype)
    if first_step:
        scores = torch.full((b, w), LOG_0)
        scores[:, 0] = 0.0
    else:
        scores = (torch.randn(b, w, generator=g) * 4).sort(dim=-1, descending=True).values
    want = select_reference(logits, scores, top_k)
    got = torch.ops.redcompile_cuda.beam_select(logits.to(DEVICE), scores.to(DEVICE), top_k)
    got = [x.cpu() for x in got]
    assert torch.equal(got[2], want[2]), "parent"
    assert torch.equal(got[3], want[3]), "token"
    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-6)


def test_beam_select_tie_rule_is_score_then_lowest_flat_index(cuda_ops):
    """Exact ties: joint descending, then the smaller w * V + v (docs/cuda.md)."""
    b, w, v = 2, 6, 40
    logits = torch.zeros(b, w, v)
    logits[0, :, ::3] = 1.0  # many equal logits per row
    logits[1] = torch.randint(0, 3, (w, v), generator=torch.Generator().manual_seed(5)).float()
    scores = torch.tensor([[0.0, -1.0, -1.0, 0.0, LOG_0, -1.0], [0.0] * w])
    for top_k in (0, 2, 7):
        logprobs, new_scores, parent, token = (
            x.cpu()
            for x in torch.ops.redcompile_cuda.beam_select(
                logits.to(DEVICE), scores.to(DEVICE), top_k
            )
        )
        joint = (logprobs + scores[..., None]).reshape(b, w * v)  # the kernel's own values
        for row in range(b):
            order = sorted(range(w * v), key=lambda i: (-float(joint[row, i]), i))[:w]
            assert parent[row].tolist() == [i // v for i in order]
            assert token[row].tolist() == [i % v for i in order]
            assert new_scores[row].tolist() == [float(joint[row, i]) for i in order]


def drafter_inputs(g, b, h, v, rnn, proj, layers, draft_vocab=0):
    """The op's tensor inputs; `draft_vocab` > 0 drafts from that many random token ids."""
    e = 24 if proj else 2 * h
    rows = draft_vocab or v

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    return [
        r(b, h),
        torch.randint(0, v, (b,), generator=g),
        r(v, h, scale=0.5),
        r(h, h, scale=h**-0.5) if rnn else None,
        r(h, h, scale=h**-0.5) if rnn else None,
        r(h, scale=0.1) if rnn else None,
        r(e, 2 * h, scale=(2 * h) ** -0.5) if proj else None,
        r(e, scale=0.1) if proj else None,
        r(layers, e, e, scale=e**-0.5),
        r(layers, e, scale=0.1),
        r(rows, e, scale=3 * e**-0.5),
        torch.randperm(v, generator=g)[:draft_vocab] if draft_vocab else None,
    ]


@pytest.mark.parametrize(
    "rnn,proj,layers,width,length,top_k,draft_vocab",
    [
        (True, False, 2, 4, 4, 0, 0),
        (False, True, 1, 3, 3, 5, 0),
        (True, True, 0, 1, 5, 50, 0),
        (True, False, 1, 16, 5, 50, 0),
        (False, False, 2, 64, 3, 64, 0),
        (True, False, 2, 8, 5, 50, 200),  # a draft vocabulary of 200 of the 700 tokens
    ],
)
def test_drafter_beam_search_matches_reference(
    cuda_ops, rnn, proj, layers, width, length, top_k, draft_vocab
):
    g = torch.Generator().manual_seed(width * 7 + length)
    inputs = to_device(drafter_inputs(g, 3, 16, 700, rnn, proj, layers, draft_vocab))
    # The reference on the same device runs the same cuBLAS products, so logits are equal and
    # only the selection differs in implementation.
    want_beams, want_logprobs = drafter_beam_search_reference(*inputs, width, length, top_k)
    beams, logprobs = cuda_ops.drafter_beam_search(*inputs, width, length, top_k)
    assert torch.equal(beams, want_beams)
    torch.testing.assert_close(logprobs, want_logprobs, atol=1e-5, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Tree building and the ancestor mask
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "b,w,length,alphabet",
    [
        (2, 3, 4, 3),
        (1, 5, 2, 2),
        (3, 1, 5, 4),
        (4, 8, 5, 2),
        (2, 64, 8, 3),
        (1, 128, 32, 2),
        (2, 7, 1, 3),
    ],
)
def test_build_tree_matches_reference(cuda_ops, b, w, length, alphabet):
    g = torch.Generator().manual_seed(b + w + length)
    beams = torch.randint(0, alphabet, (b, w, length), generator=g)
    beams[:, :, 0] = 7
    want = build_tree_reference(beams)
    got = cuda_ops.build_tree(beams.to(DEVICE))
    for name, x, y in zip(("tokens", "parents", "depths", "num_tokens", "paths"), got, want):
        assert torch.equal(x.cpu(), y), name


def test_build_tree_of_a_strided_view(cuda_ops):
    g = torch.Generator().manual_seed(9)
    beams = torch.randint(0, 3, (3, 6, 4), generator=g)
    beams[:, :, 0] = 1
    view = beams.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    for x, y in zip(cuda_ops.build_tree(view.to(DEVICE)), build_tree_reference(beams)):
        assert torch.equal(x.cpu(), y)


@pytest.mark.parametrize(
    "b,s,beams,length,ngrams,alphabet",
    [
        (3, 12, 1, 5, [3, 2, 1], 3),
        (4, 40, 4, 4, [2], 2),
        (2, 700, 3, 6, [4, 1], 5),  # matches spread over several 256-position chunks
        (5, 9, 2, 3, [8], 2),  # n-grams longer than most histories
        (2, 3000, 64, 5, [1], 2),  # more matches than beams in one chunk, the most beams
    ],
)
def test_prompt_lookup_matches_reference(cuda_ops, b, s, beams, length, ngrams, alphabet):
    g = torch.Generator().manual_seed(b + s)
    history = torch.randint(0, alphabet, (b, s), generator=g)
    lengths = torch.randint(0, s + 3, (b,), generator=g)
    lengths[0] = 0  # an idle row
    want = prompt_lookup_reference(history, lengths, ngrams, beams, length)
    got = cuda_ops.prompt_lookup(history.to(DEVICE), lengths.to(DEVICE), ngrams, beams, length)
    assert torch.equal(got.cpu(), want)


def test_prompt_lookup_of_a_strided_history(cuda_ops):
    g = torch.Generator().manual_seed(3)
    history = torch.randint(0, 3, (3, 50), generator=g)
    wide = torch.zeros(3, 80, dtype=torch.int64)
    wide[:, :50] = history
    lengths = torch.tensor([50, 17, 2])
    want = prompt_lookup_reference(history, lengths, [2, 1], 2, 4)
    got = cuda_ops.prompt_lookup(wide.to(DEVICE)[:, :50], lengths.to(DEVICE), [2, 1], 2, 4)
    assert torch.equal(got.cpu(), want)


def ancestor_cases():
    g = torch.Generator().manual_seed(4)
    beams = torch.randint(0, 3, (3, 4, 4), generator=g)
    beams[:, :, 0] = 1
    _, parents, depths, _, _ = build_tree_reference(beams)
    yield "packed_trees", parents, depths, 4
    chain = torch.arange(-1, 299)[None]
    yield "chain300", chain, torch.arange(300)[None], 9
    yield "chain300_too_few_steps", chain, torch.arange(300)[None], 3
    forests = [random_forest(g, 90, roots=3) for _ in range(2)]
    yield "forests", torch.stack([f[0] for f in forests]), torch.stack([f[1] for f in forests]), 7
    yield "single", torch.tensor([[-1]]), torch.tensor([[0]]), 1
    yield "no_steps", parents, depths, 0


@pytest.mark.parametrize(
    "name,parents,depths,steps",
    list(ancestor_cases()),
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_ancestor_mask_matches_reference(cuda_ops, name, parents, depths, steps):
    want = ancestor_mask(parents, depths, steps)
    got = cuda_ops.ancestor_mask(parents.to(DEVICE), depths.to(DEVICE), steps)
    assert got.dtype == torch.bool and torch.equal(got.cpu(), want)


# ---------------------------------------------------------------------------------------------
# Acceptance
# ---------------------------------------------------------------------------------------------


def accept_inputs(g, v, dtype, temperatures, top_k, top_p=1.0, tree=True):
    """Five rows: trees (forced 1), the last one a prefill chain (forced 6); one idle row."""
    b, w, length = len(temperatures), 3, 4
    beams = torch.randint(0, 3, (b, w, length), generator=g)
    beams[:, :, 0] = 5
    tokens, _, _, num_tokens, paths = build_tree_reference(beams)
    t = tokens.shape[1]
    num_tokens = num_tokens.clone()
    forced = torch.ones(b, dtype=torch.int64)
    tokens[-1, :6] = torch.arange(1, 7)
    num_tokens[-1] = forced[-1] = 6
    num_tokens[-2] = 0  # idle row
    logits = torch.randn(b, t, v, generator=g) * 3
    for row in range(b):  # plant the drafts of beam `row % w` as the argmax for two steps
        for l in (1, 2):
            logits[row, paths[row, row % w, l - 1], beams[row, row % w, l]] += 20
    controls = [
        torch.tensor(temperatures),
        torch.full((b,), top_k),
        torch.full((b,), top_p),
        torch.rand(b, length if tree else 1, generator=g),
    ]
    return [logits.to(dtype), tokens, num_tokens, forced, *controls, paths if tree else None]


@pytest.mark.parametrize("tree", [True, False], ids=["tree", "no_tree"])
@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (100000, 1.0), (0, 0.9), (5, 0.5)])
@pytest.mark.parametrize("v", [100, 32000])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    "temperatures",
    [[0.0, 0.0, 0.0, 0.0, 0.0], [0.7, 1.0, 1.3, 0.9, 0.5], [0.0, 0.8, 1e-9, 1.2, 0.0]],
    ids=["greedy", "sampling", "mixed"],
)
def test_accept_matches_reference(cuda_ops, temperatures, dtype, v, top_k, top_p, tree):
    g = torch.Generator().manual_seed(v + top_k + len(temperatures))
    inputs = accept_inputs(g, v, dtype, temperatures, top_k, top_p, tree)
    # Reference on the GPU too: the same float operations (softmax as exp / sum), so sampling
    # decisions agree unless a uniform lands within rounding of a boundary.
    want = accept_reference(*to_device(inputs))
    got = cuda_ops.accept(*to_device(inputs))
    names = ("keep_idx", "keep_len", "last_idx", "new_tokens", "num_new")
    for name, x, y in zip(names, got, want):
        assert torch.equal(x, y), name
    if all(temp <= 0 for temp in temperatures):  # greedy is exact against the CPU reference too
        for name, x, y in zip(names, got, accept_reference(*inputs)):
            assert torch.equal(x.cpu(), y), name


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (7, 1.0), (0, 0.8), (7, 0.6)])
def test_accept_sampling_frequencies_follow_the_reference(cuda_ops, top_k, top_p):
    """Many uniforms through sampling rows: the kernel's draws equal the reference's."""
    g = torch.Generator().manual_seed(11)
    inputs = accept_inputs(g, 50, torch.float32, [0.9] * 5, top_k, top_p)
    draws_kernel, draws_reference = [], []
    for _ in range(40):
        inputs[7] = torch.rand(5, 4, generator=g)
        device_inputs = to_device(inputs)
        draws_kernel.append(cuda_ops.accept(*device_inputs)[3].cpu())
        draws_reference.append(accept_reference(*device_inputs)[3].cpu())
    assert torch.equal(torch.stack(draws_kernel), torch.stack(draws_reference))


# ---------------------------------------------------------------------------------------------
# KV compaction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [6, 8, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_kv_compaction_matches_reference(cuda_ops, dtype, d):
    g = torch.Generator().manual_seed(d)
    b, h, s, t = 4, 3, 64, 7
    past = torch.randn(b, h, s, d, generator=g).to(dtype)
    new = torch.randn(b, t, h, d, generator=g).to(dtype).transpose(1, 2)  # strided
    cache_lengths = torch.tensor([0, 10, 57, 30])
    keep_len = torch.tensor([1, 0, 7, 4])
    # A permutation per row; the slots past keep_len are not used.
    keep_idx = torch.stack([torch.randperm(t, generator=g) for _ in range(b)])
    inputs = [past, new, cache_lengths, keep_idx, keep_len]
    want = kv_compaction_reference(*inputs)
    device_inputs = to_device(inputs)
    past_before = device_inputs[0].clone()
    got = cuda_ops.kv_compaction(*device_inputs)
    assert torch.equal(got.cpu(), want)
    assert torch.equal(device_inputs[0], past_before), "the op is functional: past is unchanged"


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def test_every_op_passes_opcheck_on_cuda(cuda_ops):
    """Schemas, CUDA kernels and the Python fakes agree (torch.library.opcheck on CUDA)."""
    g = torch.Generator().manual_seed(12)
    inputs, scale = attention_inputs(ATTENTION_CASES[0], torch.float16)
    beams = torch.randint(0, 3, (2, 4, 4), generator=g)
    beams[:, :, 0] = 1
    _, parents, depths, _, _ = build_tree_reference(beams)
    samples = {
        "tree_attention": [*to_device(inputs), scale],
        "drafter_beam_search": [*to_device(drafter_inputs(g, 2, 8, 60, True, False, 1)), 3, 3, 5],
        "build_tree": to_device([beams]),
        "ancestor_mask": [*to_device([parents, depths]), 4],
        "accept": to_device(accept_inputs(g, 30, torch.float32, [0.0, 0.7, 0.0, 1.0, 0.0], 5)),
        "kv_compaction": to_device(
            [
                torch.randn(2, 2, 12, 8),
                torch.randn(2, 2, 5, 8),
                torch.tensor([2, 7]),
                torch.tensor([[0, 1, 3, 0, 0], [0, 1, 2, 3, 4]]),
                torch.tensor([3, 5]),
            ]
        ),
    }
    from redcompile.ops import OPS

    assert {op.name for op in OPS} == set(samples)
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.qualname, "CUDA"), op.name
        torch.library.opcheck(
            getattr(cuda_ops, op.name),
            samples[op.name],
            test_utils=("test_schema", "test_faketensor"),
        )
