// acceptance.cu: which packed tokens a step keeps and the base model's next token
// (ops/acceptance.py: greedy rows and Apple's speculative-sampling rule).
//
// Two kernels:
//   row_stats_kernel  one block per (packed position t, batch row b) whose logits some draft is
//                     tested against (t = paths[b, w, l] for l < C, deduplicated by
//                     construction): the argmax (greedy rows) or the softmax statistics of
//                     P = softmax(warp_top_k(logits) / temperature) (k-th largest logit, max and
//                     sum of exp) for sampling rows, into the workspace;
//   accept_kernel     one block per batch row: the pass test of every drafted token from those
//                     statistics, the first beam with the longest run of passes, the next token
//                     (argmax, or an inverse-CDF draw from P or from the residual max(P - Q, 0)
//                     at the first rejection), then every output.
// Integer results equal the reference's for greedy rows (argmax keeps the first maximum, as
// torch.argmax). Sampling rows use the same sequence of correctly rounded float operations as
// torch on CUDA (softmax as exp(x - max) / sum, log, exp), but sums run in a different order,
// so a uniform within a few ulps of a decision boundary can decide differently.
#include <climits>

#include "common.cuh"

namespace redcompile {
namespace {

using Params = redcompile_accept_params_t;

constexpr int kThreads = 256;

struct RowStats {
  float kth;  // k-th largest logit (-inf: no top-k warp)
  float max;  // max of the warped, temperature-scaled logits
  float sum;  // sum of exp(scaled - max)
  int64_t argmax;
};

struct Shared {
  ReduceScratch red;
  RadixScratch radix;
  float warp_totals[32];
  float last_cdf;
  int flag;
};

__device__ __forceinline__ int64_t clamp_index(int64_t i, int64_t n) {
  return i < 0 ? 0 : (i >= n ? n - 1 : i);
}

__device__ __forceinline__ bool warps_top_k(const Params& p) {
  return p.top_k > 0 && p.top_k < p.vocab;
}

// warp_top_k(x) * inv_t, rounded like the reference's separate torch ops.
__device__ __forceinline__ float scaled_logit(float x, bool warp, float kth, float inv_t) {
  return __fmul_rn((warp && x < kth) ? kLog0 : x, inv_t);
}

// P(v) = exp(scaled - max) / sum, as torch's CUDA softmax computes it.
__device__ __forceinline__ float softmax_prob(float scaled, float max, float sum) {
  return __fdiv_rn(expf(__fsub_rn(scaled, max)), sum);
}

__device__ __forceinline__ float inverse_temperature(float temperature) {
  return temperature <= 0.0f ? 1.0f : __fdiv_rn(1.0f, temperature);
}

template <typename T>
__device__ __forceinline__ const T* logits_row(const Params& p, int64_t b, int64_t t) {
  return static_cast<const T*>(p.logits) + b * p.logits_stride[0] + t * p.logits_stride[1];
}

// Softmax statistics of one row of logits for sampling (block-wide).
template <typename T>
__device__ void sampling_stats(const Params& p, const T* x, float inv_t, Shared& sh,
                               RowStats& out) {
  const int64_t V = p.vocab;
  const bool warp = warps_top_k(p);
  float kth = -INFINITY;
  if (warp) {
    kth = block_kth_largest(
        V, static_cast<unsigned>(p.top_k), [&](int64_t v) { return to_float(x[v]); }, sh.radix);
  }
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    m = fmaxf(m, scaled_logit(to_float(x[v]), warp, kth, inv_t));
  }
  m = block_max(m, sh.red);
  float s = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    s += expf(__fsub_rn(scaled_logit(to_float(x[v]), warp, kth, inv_t), m));
  }
  out.kth = kth;
  out.max = m;
  out.sum = block_sum(s, sh.red);
}

template <typename T>
__device__ int64_t row_argmax(const Params& p, const T* x, Shared& sh) {
  ArgMax best = argmax_identity();
  for (int64_t v = threadIdx.x; v < p.vocab; v += blockDim.x) argmax_update(best, to_float(x[v]), v);
  return block_argmax(best, sh.red).index;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) row_stats_kernel(const Params p, RowStats* stats) {
  __shared__ Shared sh;
  const int64_t t = blockIdx.x, b = blockIdx.y;
  const int64_t T_len = p.tokens_len;
  if (!(p.num_tokens[b] > p.forced[b])) return;  // no tree in this row: nothing is tested
  const int64_t C = p.length - 1;
  if (threadIdx.x == 0) sh.flag = 0;
  __syncthreads();
  for (int64_t e = threadIdx.x; e < p.beams * C; e += blockDim.x) {
    const int64_t w = e / C, l = e - w * C;
    const int64_t src =
        p.paths[b * p.paths_stride[0] + w * p.paths_stride[1] + l * p.paths_stride[2]];
    if (clamp_index(src, T_len) == t) sh.flag = 1;
  }
  __syncthreads();
  if (!sh.flag) return;  // no draft is tested against this position's logits

  const T* x = logits_row<T>(p, b, t);
  const float temperature = p.temperature[b];
  RowStats out{-INFINITY, -INFINITY, 0.0f, 0};
  if (temperature <= 0.0f) {
    out.argmax = row_argmax<T>(p, x, sh);
  } else {
    sampling_stats<T>(p, x, inverse_temperature(temperature), sh, out);
  }
  if (threadIdx.x == 0) stats[b * T_len + t] = out;
}

// Exclusive prefix sum of one float per thread, in thread order (block-wide).
__device__ float block_exclusive_scan(float v, Shared& sh) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const float up = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  float exclusive = __shfl_up_sync(kFullMask, inclusive, 1);
  if (lane == 0) exclusive = 0.0f;
  __syncthreads();
  if (lane == 31) sh.warp_totals[wid] = inclusive;
  __syncthreads();
  float offset = 0.0f;
  for (int i = 0; i < wid && i < warps; ++i) offset += sh.warp_totals[i];
  return offset + exclusive;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    accept_kernel(const Params p, const RowStats* stats) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const int64_t T_len = p.tokens_len, V = p.vocab;
  const int64_t num = p.num_tokens[b], forced = p.forced[b];
  const float temperature = p.temperature[b];
  const bool greedy = temperature <= 0.0f;
  const float inv_t = inverse_temperature(temperature);
  const bool active = num > 0;
  const int64_t last_forced = forced - 1 > 0 ? forced - 1 : 0;
  const bool tree = p.paths != nullptr;
  const int64_t C = tree ? p.length - 1 : 0;
  const bool has_tree = tree && num > forced;

  auto path = [&](int64_t w, int64_t l) {
    return clamp_index(
        p.paths[b * p.paths_stride[0] + w * p.paths_stride[1] + l * p.paths_stride[2]], T_len);
  };
  auto token_at = [&](int64_t t) { return p.tokens[b * p.tokens_stride[0] + t * p.tokens_stride[1]]; };

  // 1. Leading passes per beam; the first beam with the most wins.
  int64_t n = 0, best = 0, last_idx = last_forced;
  if (tree) {
    ArgMax run = argmax_identity();
    for (int64_t w = threadIdx.x; w < p.beams; w += blockDim.x) {
      int64_t count = 0;
      for (int64_t l = 1; has_tree && l <= C; ++l) {
        const int64_t src = path(w, l - 1);
        const int64_t draft = token_at(path(w, l));
        const RowStats st = stats[b * T_len + src];
        bool pass;
        if (greedy) {
          pass = st.argmax == draft;
        } else if (draft < 0 || draft >= V) {
          pass = false;  // the reference would fail to index Q; such a draft never passes here
        } else {
          const float x = to_float(logits_row<T>(p, b, src)[draft]);
          const float log_p =
              logf(softmax_prob(scaled_logit(x, warps_top_k(p), st.kth, inv_t), st.max, st.sum));
          const float q = load_as_float(
              p.draft_logprobs,
              b * p.draft_logprobs_stride[0] + w * p.draft_logprobs_stride[1] +
                  (l - 1) * p.draft_logprobs_stride[2] + draft * p.draft_logprobs_stride[3],
              p.draft_dtype);
          const float u = p.accept_uniforms[b * p.accept_uniforms_stride[0] +
                                            w * p.accept_uniforms_stride[1] +
                                            (l - 1) * p.accept_uniforms_stride[2]];
          pass = u < expf(__fsub_rn(log_p, q));
        }
        if (!pass) break;
        ++count;
      }
      argmax_update(run, static_cast<float>(count), w);
    }
    run = block_argmax(run, sh.red);
    best = run.index;
    n = static_cast<int64_t>(run.value);
    last_idx = has_tree ? path(best, n) : last_forced;
  }

  // 2. The next token at the last kept position.
  const T* x = logits_row<T>(p, b, last_idx);
  int64_t next;
  if (greedy) {
    next = row_argmax<T>(p, x, sh);
  } else {
    RowStats st;
    sampling_stats<T>(p, x, inv_t, sh, st);
    const bool warp = warps_top_k(p);
    const bool rejected = has_tree && n < C;
    const int64_t at = n < C - 1 ? n : C - 1;
    const int64_t q_row = tree ? b * p.draft_logprobs_stride[0] + best * p.draft_logprobs_stride[1] +
                                     at * p.draft_logprobs_stride[2]
                               : 0;
    auto prob = [&](int64_t v) {
      return softmax_prob(scaled_logit(to_float(x[v]), warp, st.kth, inv_t), st.max, st.sum);
    };
    auto residual = [&](int64_t v) {
      const float q = expf(load_as_float(p.draft_logprobs, q_row + v * p.draft_logprobs_stride[3],
                                         p.draft_dtype));
      return fmaxf(__fsub_rn(prob(v), q), 0.0f);
    };
    bool use_residual = false;
    if (rejected) {
      float r = 0.0f;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) r += residual(v);
      use_residual = block_sum(r, sh.red) > 0.0f;  // a sum of non-negatives is > 0 iff any is
    }
    auto weight = [&](int64_t v) { return use_residual ? residual(v) : prob(v); };

    // Inverse CDF like the reference: count of cdf[v] <= u * cdf[V - 1]. Each thread owns a
    // contiguous segment; cdf[v] = (exclusive scan of segment sums) + running sum.
    const int64_t seg = detail::ceil_div(V, static_cast<int64_t>(blockDim.x));
    const int64_t begin = threadIdx.x * seg;
    const int64_t end = begin + seg < V ? begin + seg : V;
    float local = 0.0f;
    for (int64_t v = begin; v < end; ++v) local += weight(v);
    const float prefix = block_exclusive_scan(local, sh);
    float acc = prefix;
    for (int64_t v = begin; v < end; ++v) acc += weight(v);
    if (begin < end && end == V) sh.last_cdf = acc;
    __syncthreads();
    const float threshold = __fmul_rn(p.sample_uniforms[b], sh.last_cdf);
    acc = prefix;
    unsigned count = 0;
    for (int64_t v = begin; v < end; ++v) {
      acc += weight(v);
      count += acc <= threshold ? 1u : 0u;
    }
    const int64_t drawn = block_sum_u32(count, sh.red);
    next = drawn < V - 1 ? drawn : V - 1;
  }

  // 3. Outputs.
  const int64_t keep_len = active ? forced + n : 0;
  for (int64_t t = threadIdx.x; t < T_len; t += blockDim.x) {
    int64_t idx = t;
    if (tree && t >= forced) idx = path(best, clamp_index(t - forced + 1, p.length));
    p.keep_idx[b * T_len + t] = t < keep_len ? idx : 0;
  }
  const int64_t width = tree ? p.length : 1;
  for (int64_t s = threadIdx.x; s < width; s += blockDim.x) {
    int64_t value = 0;
    if (active && s < n) value = token_at(path(best, s + 1));
    if (active && s == n) value = next;
    p.new_tokens[b * width + s] = value;
  }
  if (threadIdx.x == 0) {
    p.keep_len[b] = keep_len;
    p.last_idx[b] = active ? last_idx : 0;
    p.num_new[b] = active ? n + 1 : 0;
  }
}

int validate(const Params& p) {
  if (!detail::dtype_valid(p.dtype)) return REDCOMPILE_ERR_UNSUPPORTED;
  if (p.batch < 0 || p.tokens_len < 1 || p.vocab < 1) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  if (p.batch > 65535 || p.vocab >= INT_MAX || p.tokens_len >= INT_MAX) {
    return REDCOMPILE_ERR_UNSUPPORTED;
  }
  const bool tree = p.paths != nullptr;
  if (tree != (p.draft_logprobs != nullptr) || tree != (p.accept_uniforms != nullptr)) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;  // the three tree inputs come together
  }
  if (tree) {
    if (!detail::dtype_valid(p.draft_dtype)) return REDCOMPILE_ERR_UNSUPPORTED;
    if (p.beams < 1 || p.length < 2) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.batch == 0) return REDCOMPILE_OK;
  if (!p.logits || !p.tokens || !p.num_tokens || !p.forced || !p.temperature ||
      !p.sample_uniforms || !p.keep_idx || !p.keep_len || !p.last_idx || !p.new_tokens ||
      !p.num_new) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.logits_stride[2] != 1) return REDCOMPILE_ERR_UNSUPPORTED;
  return REDCOMPILE_OK;
}

size_t stats_bytes(const Params& p) {
  if (p.paths == nullptr) return 0;
  return static_cast<size_t>(p.batch) * p.tokens_len * sizeof(RowStats);
}

template <typename T>
int launch(const Params& p, RowStats* stats, cudaStream_t stream) {
  if (p.paths != nullptr) {
    const dim3 grid(static_cast<unsigned>(p.tokens_len), static_cast<unsigned>(p.batch));
    row_stats_kernel<T><<<grid, kThreads, 0, stream>>>(p, stats);
    const int st = detail::launch_status();
    if (st != REDCOMPILE_OK) return st;
  }
  accept_kernel<T><<<static_cast<unsigned>(p.batch), kThreads, 0, stream>>>(p, stats);
  return detail::launch_status();
}

}  // namespace
}  // namespace redcompile

using namespace redcompile;

extern "C" size_t redcompile_accept_workspace_size(const redcompile_accept_params_t* p) {
  if (p == nullptr || validate(*p) != REDCOMPILE_OK) return 0;
  return stats_bytes(*p);
}

extern "C" int redcompile_accept(const redcompile_accept_params_t* p, void* workspace,
                                 size_t workspace_bytes, cudaStream_t stream) {
  if (p == nullptr) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  const int st = validate(*p);
  if (st != REDCOMPILE_OK || p->batch == 0) return st;
  const size_t need = stats_bytes(*p);
  if (need > 0 && (workspace == nullptr || workspace_bytes < need)) {
    return REDCOMPILE_ERR_WORKSPACE;
  }
  RowStats* stats = static_cast<RowStats*>(workspace);
  switch (p->dtype) {
    case REDCOMPILE_FLOAT16:
      return launch<__half>(*p, stats, stream);
    case REDCOMPILE_BFLOAT16:
      return launch<__nv_bfloat16>(*p, stats, stream);
    default:
      return launch<float>(*p, stats, stream);
  }
}
