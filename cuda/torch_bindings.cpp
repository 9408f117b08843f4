// torch_bindings.cpp: CUDA implementations of redcompile's torch ops, over the C entry points.
//
// Each implementation checks its inputs (one clear TORCH_CHECK line per problem), allocates
// outputs and workspace with torch's caching allocator, fills the op's parameter struct and
// calls the entry point on the current CUDA stream. Signatures are checked at compile time
// against the schemas generated from the OpDefs (torch_ops_generated.h), and entry points are
// called through the generated REDCOMPILE_CUDA_ENTRY_<op> names.
//
// drafter_beam_search runs its matmuls with ATen (cuBLAS), step by step as the reference does,
// and its selection with redcompile_beam_select. Two helpers live in the `redcompile_cuda`
// namespace (not model ops, so not OpDefs): beam_select exposes the selection kernel alone, and
// set_tree_attention_splits forces the number of column splits of tree attention (tests).
#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "redcompile_kernels.h"
#include "torch_ops_generated.h"

namespace redcompile_torch {
namespace {

using at::Tensor;
using std::optional;

constexpr float kLog0 = -50000.0f;
constexpr int64_t kMaxSelectBeams = 64;  // redcompile_beam_select's limit

std::atomic<int> g_tree_attention_splits{0};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

void check_status(int status, const char* op) {
  if (status == REDCOMPILE_OK) return;
  if (status == REDCOMPILE_ERR_CUDA) {
    TORCH_CHECK(false, "redcompile::", op, ": CUDA error: ",
                cudaGetErrorString(static_cast<cudaError_t>(redcompile_last_cuda_error())));
  }
  TORCH_CHECK(false, "redcompile::", op, ": ", redcompile_status_string(status));
}

redcompile_dtype_t float_dtype(const Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return REDCOMPILE_FLOAT32;
    case at::kHalf:
      return REDCOMPILE_FLOAT16;
    case at::kBFloat16:
      return REDCOMPILE_BFLOAT16;
    default:
      break;
  }
  TORCH_CHECK(false, "redcompile::", op, ": ", name,
              " must be float32, float16 or bfloat16, got ", t.scalar_type());
  return REDCOMPILE_FLOAT32;  // not reached
}

void check_cuda(const Tensor& t, const Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), "redcompile::", op, ": ", name,
              " must be on ", like.device(), ", got ", t.device());
}

void check_dim(const Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == dim, "redcompile::", op, ": ", name, " must have ", dim,
              " dimensions, got shape ", t.sizes());
}

void check_shape(const Tensor& t, at::IntArrayRef shape, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == shape, "redcompile::", op, ": ", name, " must have shape ", shape,
              ", got ", t.sizes());
}

// The tensor itself when its last dimension is contiguous, else a contiguous copy.
Tensor inner_contiguous(const Tensor& t) {
  return (t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

// Element strides for the C interface: 0 for size-1 dimensions (never stepped over, and so
// never in the way of the vector-load alignment checks) and 1 for a size-1 last dimension.
template <size_t N>
void strides_of(const Tensor& t, int64_t (&out)[N]) {
  TORCH_INTERNAL_ASSERT(static_cast<size_t>(t.dim()) == N);
  for (size_t i = 0; i < N; ++i) out[i] = t.size(i) == 1 ? 0 : t.stride(i);
  if (t.size(N - 1) == 1) out[N - 1] = 1;
}

Tensor as_long(const Tensor& t) { return t.to(at::kLong).contiguous(); }
Tensor as_float(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

Tensor workspace(size_t bytes, const Tensor& like) {
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                   like.options().dtype(at::kByte));
}

cudaStream_t current_stream(const Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.numel() == 0 ? nullptr : static_cast<T*>(t.data_ptr());
}

// ---------------------------------------------------------------------------------------------
// tree_attention
// ---------------------------------------------------------------------------------------------

Tensor tree_attention_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                           const Tensor& past_k_in, const Tensor& past_v_in,
                           const Tensor& past_mask_in, const Tensor& tree_mask_in, double scale) {
  constexpr const char* op = "tree_attention";
  check_dim(q_in, 4, op, "q");
  check_dim(k_in, 4, op, "k");
  check_dim(past_k_in, 4, op, "past_k");
  check_dim(past_mask_in, 4, op, "past_mask");
  check_dim(tree_mask_in, 4, op, "tree_mask");
  const int64_t B = q_in.size(0), Hq = q_in.size(1), T = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_in.size(1), S = past_k_in.size(2);
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "redcompile::tree_attention: query heads (", Hq,
              ") must be a multiple of key/value heads (", Hkv, ")");
  check_shape(k_in, {B, Hkv, T, D}, op, "k");
  check_shape(v_in, {B, Hkv, T, D}, op, "v");
  check_shape(past_k_in, {B, Hkv, S, D}, op, "past_k");
  check_shape(past_v_in, {B, Hkv, S, D}, op, "past_v");
  const int64_t mask_rows = past_mask_in.size(2);
  TORCH_CHECK(mask_rows == 1 || mask_rows == T,
              "redcompile::tree_attention: past_mask must be [B, 1, T or 1, S], got ",
              past_mask_in.sizes());
  const Tensor past_mask = past_mask_in.expand({B, 1, mask_rows, S});
  const Tensor tree_mask = tree_mask_in.expand({B, 1, T, T});
  TORCH_CHECK(past_mask.scalar_type() == at::kBool && tree_mask.scalar_type() == at::kBool,
              "redcompile::tree_attention: masks must be bool");
  for (const Tensor* t : {&k_in, &v_in, &past_k_in, &past_v_in}) {
    TORCH_CHECK(t->scalar_type() == q_in.scalar_type(),
                "redcompile::tree_attention: q, k, v, past_k and past_v must share a dtype");
  }
  for (const Tensor* t : {&k_in, &v_in, &past_k_in, &past_v_in, &past_mask, &tree_mask}) {
    check_cuda(*t, q_in, op, "every input");
  }
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Tensor q = inner_contiguous(q_in), k = inner_contiguous(k_in), v = inner_contiguous(v_in);
  const Tensor past_k = inner_contiguous(past_k_in), past_v = inner_contiguous(past_v_in);
  // Laid out like q, as the op's fake (empty_like(q)) says; the kernel writes through strides.
  Tensor y = at::empty_like(q_in);
  if (y.dim() == 4 && y.size(3) > 1 && y.stride(3) != 1) y = at::empty({B, Hq, T, D}, q.options());
  if (y.numel() == 0) return y;

  redcompile_tree_attention_params_t p{};
  p.dtype = float_dtype(q, op, "q");
  p.batch = B;
  p.q_heads = Hq;
  p.kv_heads = Hkv;
  p.tokens = T;
  p.cache_len = S;
  p.head_dim = D;
  p.scale = static_cast<float>(scale);
  p.q = q.data_ptr();
  strides_of(q, p.q_stride);
  p.k = k.data_ptr();
  strides_of(k, p.k_stride);
  p.v = v.data_ptr();
  strides_of(v, p.v_stride);
  if (S > 0) {
    p.past_k = past_k.data_ptr();
    strides_of(past_k, p.past_k_stride);
    p.past_v = past_v.data_ptr();
    strides_of(past_v, p.past_v_stride);
    p.past_mask = static_cast<const uint8_t*>(past_mask.data_ptr());
    const Tensor pm = past_mask.select(1, 0);  // [B, T|1, S]
    strides_of(pm, p.past_mask_stride);
  }
  p.tree_mask = static_cast<const uint8_t*>(tree_mask.data_ptr());
  strides_of(tree_mask.select(1, 0), p.tree_mask_stride);
  p.y = y.data_ptr();
  strides_of(y, p.y_stride);
  p.num_splits = g_tree_attention_splits.load();

  const size_t bytes = redcompile_tree_attention_workspace_size(&p);
  const Tensor ws = workspace(bytes, q);
  check_status(REDCOMPILE_CUDA_ENTRY_tree_attention(&p, ws.data_ptr(), bytes, current_stream(q)),
               op);
  return y;
}

int64_t set_tree_attention_splits(int64_t num_splits) {
  TORCH_CHECK(num_splits >= 0, "set_tree_attention_splits: need >= 0 (0 = automatic)");
  return g_tree_attention_splits.exchange(static_cast<int>(num_splits));
}

// ---------------------------------------------------------------------------------------------
// Beam selection and drafter_beam_search
// ---------------------------------------------------------------------------------------------

// The reference's selection in ATen ops: for widths beyond the kernel's limit.
std::tuple<Tensor, Tensor, Tensor, Tensor> beam_select_aten(const Tensor& logits,
                                                            const Tensor& beam_scores,
                                                            int64_t top_k) {
  Tensor x = logits.to(at::kFloat);
  x = x - std::get<0>(x.max(-1, true));
  const int64_t V = x.size(-1);
  if (top_k > 0 && top_k < V) {
    const Tensor kth = std::get<0>(x.topk(top_k, -1)).narrow(-1, top_k - 1, 1);
    x = at::where(x < kth, at::full_like(x, kLog0), x);
  }
  const Tensor logprobs = at::log_softmax(x, -1);
  const int64_t B = logprobs.size(0), W = logprobs.size(1);
  const Tensor joint = (logprobs + beam_scores.unsqueeze(-1)).reshape({B, W * V});
  auto [scores, flat] = joint.topk(W, -1);
  return {logprobs, scores, at::floor_divide(flat, V), at::remainder(flat, V)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> beam_select_cuda(const Tensor& logits_in,
                                                            const Tensor& beam_scores_in,
                                                            int64_t top_k) {
  constexpr const char* op = "beam_select";
  check_dim(logits_in, 3, op, "logits");
  const int64_t B = logits_in.size(0), W = logits_in.size(1), V = logits_in.size(2);
  check_shape(beam_scores_in, {B, W}, op, "beam_scores");
  check_cuda(beam_scores_in, logits_in, op, "beam_scores");
  TORCH_CHECK(W >= 1 && V >= 1, "redcompile::beam_select: need at least one beam and token");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const Tensor beam_scores = as_float(beam_scores_in);
  if (W > kMaxSelectBeams) return beam_select_aten(logits_in, beam_scores, top_k);
  const Tensor logits = inner_contiguous(logits_in);
  const auto f32 = logits.options().dtype(at::kFloat);
  Tensor logprobs = at::empty({B, W, V}, f32);
  Tensor scores = at::empty({B, W}, f32);
  Tensor parent = at::empty({B, W}, logits.options().dtype(at::kLong));
  Tensor token = at::empty({B, W}, logits.options().dtype(at::kLong));
  if (B == 0) return {logprobs, scores, parent, token};

  redcompile_beam_select_params_t p{};
  p.dtype = float_dtype(logits, op, "logits");
  p.batch = B;
  p.beams = W;
  p.vocab = V;
  p.top_k = top_k;
  p.logits = logits.data_ptr();
  strides_of(logits, p.logits_stride);
  p.beam_scores = beam_scores.data_ptr<float>();
  strides_of(beam_scores, p.beam_scores_stride);
  p.logprobs = logprobs.data_ptr<float>();
  p.scores = scores.data_ptr<float>();
  p.parent = parent.data_ptr<int64_t>();
  p.token = token.data_ptr<int64_t>();
  const size_t bytes = redcompile_beam_select_workspace_size(&p);
  const Tensor ws = workspace(bytes, logits);
  check_status(
      REDCOMPILE_CUDA_ENTRY_drafter_beam_search(&p, ws.data_ptr(), bytes, current_stream(logits)),
      op);
  return {logprobs, scores, parent, token};
}

// x[b, parent[b, w], ...] for every w (the reference's _gather_beams).
Tensor gather_beams(const Tensor& x, const Tensor& parent) {
  std::vector<int64_t> view(parent.sizes().begin(), parent.sizes().end());
  view.resize(x.dim(), 1);
  std::vector<int64_t> expanded(parent.sizes().begin(), parent.sizes().end());
  expanded.insert(expanded.end(), x.sizes().begin() + 2, x.sizes().end());
  return x.gather(1, parent.view(view).expand(expanded));
}

std::tuple<Tensor, Tensor> drafter_beam_search_cuda(
    const Tensor& hidden, const Tensor& root, const Tensor& embedding,
    const optional<Tensor>& rnn_w, const optional<Tensor>& rnn_u_w,
    const optional<Tensor>& rnn_u_b, const optional<Tensor>& input_proj_w,
    const optional<Tensor>& input_proj_b, const Tensor& res_w, const Tensor& res_b,
    const Tensor& vocab_w, const optional<Tensor>& draft_vocab, int64_t beam_width,
    int64_t beam_length, int64_t top_k) {
  TORCH_CHECK(beam_length >= 2 && beam_width >= 1,
              "beam search needs beam_length >= 2 and beam_width >= 1, got ", beam_length,
              " and ", beam_width);
  check_dim(hidden, 2, "drafter_beam_search", "hidden");
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t B = hidden.size(0), H = hidden.size(1), W = beam_width;
  const Tensor context = hidden.unsqueeze(1).expand({B, W, H});
  Tensor beams = root.to(at::kLong).reshape({B, 1, 1}).expand({B, W, 1});
  Tensor scores = at::full({B, W}, kLog0, hidden.options().dtype(at::kFloat));
  scores.select(1, 0).fill_(0.0);
  Tensor state = at::zeros({B, W, H}, hidden.options());
  Tensor history;
  for (int64_t step = 0; step + 1 < beam_length; ++step) {
    const Tensor last = beams.select(2, beams.size(2) - 1);
    const Tensor token_embedding = embedding.index_select(0, last.reshape({-1})).view({B, W, H});
    if (rnn_w.has_value()) {
      state = at::silu(at::linear(token_embedding, *rnn_w) +
                       at::linear(state, rnn_u_w.value(), rnn_u_b));
    } else {
      state = state + token_embedding;
    }
    Tensor x = at::cat({context, state}, -1);
    if (input_proj_w.has_value()) x = at::linear(x, *input_proj_w, input_proj_b);
    for (int64_t i = 0; i < res_w.size(0); ++i) {
      x = x + at::silu(at::linear(x, res_w.select(0, i), res_b.select(0, i)));
    }
    const Tensor logits = at::linear(x, vocab_w);  // cast to float inside the kernel
    auto [logprobs, new_scores, parent, token] = beam_select_cuda(logits, scores, top_k);
    // A draft vocabulary: selection ran over its rows; map the rows back to token ids.
    if (draft_vocab.has_value()) {
      token = draft_vocab->index_select(0, token.reshape({-1})).view_as(token);
    }
    beams = at::cat({gather_beams(beams, parent), token.unsqueeze(-1)}, -1);
    state = gather_beams(state, parent);
    const Tensor chosen = gather_beams(logprobs, parent).unsqueeze(2);
    history = history.defined() ? at::cat({gather_beams(history, parent), chosen}, 2) : chosen;
    scores = new_scores;
  }
  if (draft_vocab.has_value()) {  // [B, W, C, V'] -> [B, W, C, V], LOG_0 outside the subset
    std::vector<int64_t> full(history.sizes().begin(), history.sizes().end());
    full.back() = embedding.size(0);
    history = at::full(full, kLog0, history.options())
                  .scatter(-1, draft_vocab->expand(history.sizes()), history);
  }
  return {beams.contiguous(), history.contiguous()};
}

// ---------------------------------------------------------------------------------------------
// build_tree and ancestor_mask
// ---------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> build_tree_cuda(const Tensor& beams_in) {
  constexpr const char* op = "build_tree";
  check_dim(beams_in, 3, op, "beams");
  TORCH_CHECK(beams_in.scalar_type() == at::kLong, "redcompile::build_tree: beams must be int64");
  const int64_t B = beams_in.size(0), W = beams_in.size(1), L = beams_in.size(2);
  TORCH_CHECK(W >= 1 && L >= 1, "redcompile::build_tree: need at least one beam position");
  const c10::cuda::CUDAGuard guard(beams_in.device());
  const Tensor beams = beams_in;
  const int64_t N = W * (L - 1) + 1;
  const auto opts = beams.options();
  Tensor tokens = at::empty({B, N}, opts), parents = at::empty({B, N}, opts);
  Tensor depths = at::empty({B, N}, opts), num_tokens = at::empty({B}, opts);
  Tensor paths = at::empty({B, W, L}, opts);
  if (B == 0) return {tokens, parents, depths, num_tokens, paths};

  redcompile_build_tree_params_t p{};
  p.batch = B;
  p.beams = W;
  p.length = L;
  p.beams_data = beams.data_ptr<int64_t>();
  for (int i = 0; i < 3; ++i) p.beams_stride[i] = beams.stride(i);
  p.tokens = tokens.data_ptr<int64_t>();
  p.parents = parents.data_ptr<int64_t>();
  p.depths = depths.data_ptr<int64_t>();
  p.num_tokens = num_tokens.data_ptr<int64_t>();
  p.paths = paths.data_ptr<int64_t>();
  check_status(REDCOMPILE_CUDA_ENTRY_build_tree(&p, nullptr, 0, current_stream(beams)), op);
  return {tokens, parents, depths, num_tokens, paths};
}

Tensor ancestor_mask_cuda(const Tensor& parents_in, const Tensor& depths_in, int64_t steps) {
  constexpr const char* op = "ancestor_mask";
  check_dim(parents_in, 2, op, "parents");
  check_shape(depths_in, parents_in.sizes(), op, "depths");
  check_cuda(depths_in, parents_in, op, "depths");
  const c10::cuda::CUDAGuard guard(parents_in.device());
  const Tensor parents = as_long(parents_in), depths = as_long(depths_in);
  const int64_t B = parents.size(0), T = parents.size(1);
  Tensor mask = at::empty({B, T, T}, parents.options().dtype(at::kBool));
  if (mask.numel() == 0) return mask;

  redcompile_ancestor_mask_params_t p{};
  p.batch = B;
  p.tokens = T;
  p.steps = steps;
  p.parents = parents.data_ptr<int64_t>();
  p.parents_stride[0] = parents.stride(0);
  p.parents_stride[1] = parents.stride(1);
  p.depths = depths.data_ptr<int64_t>();
  p.depths_stride[0] = depths.stride(0);
  p.depths_stride[1] = depths.stride(1);
  p.mask = static_cast<uint8_t*>(mask.data_ptr());
  const size_t bytes = redcompile_ancestor_mask_workspace_size(&p);
  const Tensor ws = workspace(bytes, parents);
  check_status(
      REDCOMPILE_CUDA_ENTRY_ancestor_mask(&p, ws.data_ptr(), bytes, current_stream(parents)), op);
  return mask;
}

// ---------------------------------------------------------------------------------------------
// accept
// ---------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> accept_cuda(
    const Tensor& logits_in, const Tensor& tokens_in, const Tensor& num_tokens_in,
    const Tensor& forced_in, const Tensor& temperature_in, const Tensor& top_k_in,
    const Tensor& top_p_in, const Tensor& sample_uniforms_in, const optional<Tensor>& paths_in) {
  constexpr const char* op = "accept";
  check_dim(logits_in, 3, op, "logits");
  const int64_t B = logits_in.size(0), T = logits_in.size(1), V = logits_in.size(2);
  const bool tree = paths_in.has_value();
  int64_t W = 0, L = 1;
  if (tree) {
    check_dim(*paths_in, 3, op, "paths");
    W = paths_in->size(1);
    L = paths_in->size(2);
    TORCH_CHECK(paths_in->size(0) == B && W >= 1 && L >= 2,
                "redcompile::accept: paths must be [B, W, L] with L >= 2, got ",
                paths_in->sizes());
    check_cuda(*paths_in, logits_in, op, "paths");
  }
  check_shape(tokens_in, {B, T}, op, "tokens");
  check_shape(num_tokens_in, {B}, op, "num_tokens");
  check_shape(forced_in, {B}, op, "forced");
  check_shape(temperature_in, {B}, op, "temperature");
  check_shape(top_k_in, {B}, op, "top_k");
  check_shape(top_p_in, {B}, op, "top_p");
  check_shape(sample_uniforms_in, {B, L}, op, "sample_uniforms");
  TORCH_CHECK(T >= 1 && V >= 1, "redcompile::accept: need at least one token and one logit");
  for (const Tensor* t : {&tokens_in, &num_tokens_in, &forced_in, &temperature_in, &top_k_in,
                          &top_p_in, &sample_uniforms_in}) {
    check_cuda(*t, logits_in, op, "every input");
  }
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const Tensor logits = inner_contiguous(logits_in);
  const Tensor tokens = as_long(tokens_in), num_tokens = as_long(num_tokens_in);
  const Tensor forced = as_long(forced_in), top_k = as_long(top_k_in);
  const Tensor temperature = as_float(temperature_in), top_p = as_float(top_p_in);
  const Tensor sample_uniforms = as_float(sample_uniforms_in);
  const Tensor paths = tree ? as_long(*paths_in) : Tensor();
  const auto opts = tokens.options();
  Tensor keep_idx = at::empty({B, T}, opts), keep_len = at::empty({B}, opts);
  Tensor last_idx = at::empty({B}, opts), new_tokens = at::empty({B, L}, opts);
  Tensor num_new = at::empty({B}, opts);
  if (B == 0) return {keep_idx, keep_len, last_idx, new_tokens, num_new};

  redcompile_accept_params_t p{};
  p.dtype = float_dtype(logits, op, "logits");
  p.batch = B;
  p.tokens_len = T;
  p.vocab = V;
  p.beams = W;
  p.length = tree ? L : 0;
  p.logits = logits.data_ptr();
  strides_of(logits, p.logits_stride);
  p.tokens = tokens.data_ptr<int64_t>();
  p.tokens_stride[0] = tokens.stride(0);
  p.tokens_stride[1] = tokens.stride(1);
  p.num_tokens = num_tokens.data_ptr<int64_t>();
  p.forced = forced.data_ptr<int64_t>();
  p.temperature = temperature.data_ptr<float>();
  p.top_k = top_k.data_ptr<int64_t>();
  p.top_p = top_p.data_ptr<float>();
  p.sample_uniforms = sample_uniforms.data_ptr<float>();
  p.sample_uniforms_stride[0] = sample_uniforms.stride(0);
  p.sample_uniforms_stride[1] = sample_uniforms.stride(1);
  if (tree) {
    p.paths = paths.data_ptr<int64_t>();
    for (int i = 0; i < 3; ++i) p.paths_stride[i] = paths.stride(i);
  }
  p.keep_idx = keep_idx.data_ptr<int64_t>();
  p.keep_len = keep_len.data_ptr<int64_t>();
  p.last_idx = last_idx.data_ptr<int64_t>();
  p.new_tokens = new_tokens.data_ptr<int64_t>();
  p.num_new = num_new.data_ptr<int64_t>();
  const size_t bytes = redcompile_accept_workspace_size(&p);
  const Tensor ws = workspace(bytes, logits);
  check_status(REDCOMPILE_CUDA_ENTRY_accept(&p, ws.data_ptr(), bytes, current_stream(logits)),
               op);
  return {keep_idx, keep_len, last_idx, new_tokens, num_new};
}

// ---------------------------------------------------------------------------------------------
// kv_compaction
// ---------------------------------------------------------------------------------------------

Tensor kv_compaction_cuda(const Tensor& past, const Tensor& new_in, const Tensor& cache_lengths_in,
                          const Tensor& keep_idx_in, const Tensor& keep_len_in) {
  constexpr const char* op = "kv_compaction";
  check_dim(past, 4, op, "past");
  check_dim(new_in, 4, op, "new");
  const int64_t B = past.size(0), H = past.size(1), S = past.size(2), D = past.size(3);
  const int64_t T = new_in.size(2);
  check_shape(new_in, {B, H, T, D}, op, "new");
  check_shape(cache_lengths_in, {B}, op, "cache_lengths");
  check_shape(keep_idx_in, {B, T}, op, "keep_idx");
  check_shape(keep_len_in, {B}, op, "keep_len");
  TORCH_CHECK(new_in.scalar_type() == past.scalar_type(),
              "redcompile::kv_compaction: past and new must share a dtype");
  for (const Tensor* t : {&new_in, &cache_lengths_in, &keep_idx_in, &keep_len_in}) {
    check_cuda(*t, past, op, "every input");
  }
  const c10::cuda::CUDAGuard guard(past.device());
  // The op is functional: the update goes into a copy (the C entry point itself works in
  // place, which an output bound to the input's buffer can use).
  // Laid out like past, as the op's fake (empty_like(past)) says.
  Tensor present = past.clone();
  if (present.size(3) > 1 && present.stride(3) != 1) present = present.contiguous();
  const Tensor fresh = inner_contiguous(new_in);
  const Tensor cache_lengths = as_long(cache_lengths_in), keep_idx = as_long(keep_idx_in);
  const Tensor keep_len = as_long(keep_len_in);
  if (B * H * T * D == 0 || S == 0) return present;

  redcompile_kv_compaction_params_t p{};
  p.dtype = float_dtype(past, op, "past");
  p.batch = B;
  p.heads = H;
  p.capacity = S;
  p.tokens = T;
  p.head_dim = D;
  p.cache = present.data_ptr();
  strides_of(present, p.cache_stride);
  p.new_kv = fresh.data_ptr();
  strides_of(fresh, p.new_stride);
  p.cache_lengths = cache_lengths.data_ptr<int64_t>();
  p.keep_idx = keep_idx.data_ptr<int64_t>();
  p.keep_idx_stride[0] = keep_idx.stride(0);
  p.keep_idx_stride[1] = keep_idx.stride(1);
  p.keep_len = keep_len.data_ptr<int64_t>();
  check_status(REDCOMPILE_CUDA_ENTRY_kv_compaction(&p, nullptr, 0, current_stream(past)), op);
  return present;
}

// ---------------------------------------------------------------------------------------------
// prompt_lookup
// ---------------------------------------------------------------------------------------------

Tensor prompt_lookup_cuda(const Tensor& history_in, const Tensor& lengths_in,
                          at::IntArrayRef ngrams, int64_t num_beams, int64_t beam_length) {
  constexpr const char* op = "prompt_lookup";
  check_dim(history_in, 2, op, "history");
  check_dim(lengths_in, 1, op, "lengths");
  TORCH_CHECK(history_in.scalar_type() == at::kLong && lengths_in.scalar_type() == at::kLong,
              "redcompile::prompt_lookup: history and lengths must be int64");
  check_cuda(lengths_in, history_in, op, "lengths");
  const int64_t B = history_in.size(0), S = history_in.size(1);
  check_shape(lengths_in, {B}, op, "lengths");
  TORCH_CHECK(S >= 1, "redcompile::prompt_lookup: history needs at least one slot");
  TORCH_CHECK(num_beams >= 1 && beam_length >= 1,
              "redcompile::prompt_lookup: num_beams and beam_length must be at least 1");
  TORCH_CHECK(!ngrams.empty() &&
                  static_cast<int64_t>(ngrams.size()) <= REDCOMPILE_MAX_LOOKUP_NGRAMS,
              "redcompile::prompt_lookup: between 1 and ", REDCOMPILE_MAX_LOOKUP_NGRAMS,
              " n-gram sizes, got ", ngrams.size());
  const c10::cuda::CUDAGuard guard(history_in.device());
  const Tensor history = history_in.stride(1) == 1 ? history_in : history_in.contiguous();
  const Tensor lengths = lengths_in.contiguous();
  Tensor beams = at::empty({B, num_beams, beam_length}, history.options());
  if (B == 0) return beams;

  redcompile_prompt_lookup_params_t p{};
  p.batch = B;
  p.capacity = S;
  p.num_beams = num_beams;
  p.length = beam_length;
  p.num_ngrams = static_cast<int64_t>(ngrams.size());
  for (size_t i = 0; i < ngrams.size(); ++i) p.ngrams[i] = ngrams[i];
  p.history = history.data_ptr<int64_t>();
  p.history_stride = history.stride(0);
  p.lengths = lengths.data_ptr<int64_t>();
  p.beams = beams.data_ptr<int64_t>();
  check_status(REDCOMPILE_CUDA_ENTRY_prompt_lookup(&p, nullptr, 0, current_stream(history)), op);
  return beams;
}

// Each implementation has exactly the C++ type its generated schema calls for.
static_assert(std::is_same_v<decltype(tree_attention_cuda), redcompile_generated::tree_attention_fn>);
static_assert(
    std::is_same_v<decltype(drafter_beam_search_cuda), redcompile_generated::drafter_beam_search_fn>);
static_assert(std::is_same_v<decltype(build_tree_cuda), redcompile_generated::build_tree_fn>);
static_assert(std::is_same_v<decltype(ancestor_mask_cuda), redcompile_generated::ancestor_mask_fn>);
static_assert(std::is_same_v<decltype(accept_cuda), redcompile_generated::accept_fn>);
static_assert(std::is_same_v<decltype(kv_compaction_cuda), redcompile_generated::kv_compaction_fn>);
static_assert(std::is_same_v<decltype(prompt_lookup_cuda), redcompile_generated::prompt_lookup_fn>);

}  // namespace
}  // namespace redcompile_torch

TORCH_LIBRARY_IMPL(redcompile, CUDA, m) {
  using namespace redcompile_torch;
  m.impl("tree_attention", &tree_attention_cuda);
  m.impl("drafter_beam_search", &drafter_beam_search_cuda);
  m.impl("build_tree", &build_tree_cuda);
  m.impl("ancestor_mask", &ancestor_mask_cuda);
  m.impl("accept", &accept_cuda);
  m.impl("kv_compaction", &kv_compaction_cuda);
  m.impl("prompt_lookup", &prompt_lookup_cuda);
}

// Helpers outside the model's ops: the selection kernel alone, and a test knob.
TORCH_LIBRARY(redcompile_cuda, m) {
  m.def("beam_select(Tensor logits, Tensor beam_scores, int top_k) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  m.def("set_tree_attention_splits(int num_splits) -> int",
        &redcompile_torch::set_tree_attention_splits);
}

TORCH_LIBRARY_IMPL(redcompile_cuda, CUDA, m) {
  m.impl("beam_select", &redcompile_torch::beam_select_cuda);
}
