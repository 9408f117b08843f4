// acceptance.cu: which packed tokens a step keeps and the tokens it emits
// (ops/acceptance.py and ops/sampling.py: every tree node picks a token, a draft passes when it
// equals its parent's pick, the first beam with the longest run of passes wins).
//
// Two kernels:
//   pick_kernel    one block per (beam w, depth l, batch row b): the token node paths[b, w, l]
//                  picks (the last forced token for rows without a tree), into the workspace:
//                  the argmax (greedy rows), or an inverse-CDF draw with sample_uniforms[b, l]
//                  from P = softmax(scaled logits) restricted by top-k (radix select of the
//                  k-th largest scaled logit) and top-p (bisection on the float bits of the
//                  smallest probability in the nucleus);
//   accept_kernel  one block per batch row: the leading passes of every beam, the winner, and
//                  every output.
// Integer results equal the reference's for greedy rows (argmax keeps the first maximum, as
// torch.argmax). Sampling rows use the same correctly rounded float operations as torch on CUDA
// (scaled = x * (1 / T), softmax as exp(x - max) / sum), but sums run in a different order, so
// a uniform (or top_p) within a few ulps of a decision boundary can decide differently.
#include <climits>

#include "common.cuh"

namespace redcompile {
namespace {

using Params = redcompile_accept_params_t;

constexpr int kThreads = 256;
constexpr float kGreedyBelow = 1e-5f;  // io_contract.GREEDY_BELOW

struct Shared {
  ReduceScratch red;
  RadixScratch radix;
  float warp_totals[32];
  float last_cdf;
};

__device__ __forceinline__ int64_t clamp_index(int64_t i, int64_t n) {
  return i < 0 ? 0 : (i >= n ? n - 1 : i);
}

__device__ __forceinline__ bool is_greedy(float temperature) { return temperature < kGreedyBelow; }

template <typename T>
__device__ __forceinline__ const T* logits_row(const Params& p, int64_t b, int64_t t) {
  return static_cast<const T*>(p.logits) + b * p.logits_stride[0] + t * p.logits_stride[1];
}

template <typename T>
__device__ int64_t row_argmax(const Params& p, const T* x, Shared& sh) {
  ArgMax best = argmax_identity();
  for (int64_t v = threadIdx.x; v < p.vocab; v += blockDim.x) argmax_update(best, to_float(x[v]), v);
  return block_argmax(best, sh.red).index;
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

// The row's distribution at one node, as ops/sampling.py defines it (block-wide).
template <typename T>
struct Distribution {
  const T* x;
  int64_t vocab;
  float inv_t;
  bool warp_k;
  float kth;       // k-th largest scaled logit (top-k rows)
  float max, sum;  // softmax statistics over the kept tokens
  float smallest;  // smallest probability in the nucleus (0: no top-p)

  __device__ float scaled(int64_t v) const { return __fmul_rn(to_float(x[v]), inv_t); }
  __device__ bool kept_by_k(float s) const { return !warp_k || s >= kth; }
  __device__ float prob(int64_t v) const {
    const float s = scaled(v);
    return kept_by_k(s) ? __fdiv_rn(expf(__fsub_rn(s, max)), sum) : 0.0f;
  }
  __device__ float weight(int64_t v) const {
    const float q = prob(v);
    return q >= smallest ? q : 0.0f;
  }
};

template <typename T>
__device__ Distribution<T> distribution_at(const Params& p, const T* x, float temperature,
                                           int64_t top_k, float top_p, Shared& sh) {
  const int64_t V = p.vocab;
  Distribution<T> d{x, V, __fdiv_rn(1.0f, temperature), top_k > 0 && top_k < V,
                    -INFINITY, -INFINITY, 0.0f, 0.0f};
  if (d.warp_k) {
    d.kth = block_kth_largest(
        V, static_cast<unsigned>(top_k), [&](int64_t v) { return d.scaled(v); }, sh.radix);
  }
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float s = d.scaled(v);
    if (d.kept_by_k(s)) m = fmaxf(m, s);
  }
  d.max = block_max(m, sh.red);
  float total = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float s = d.scaled(v);
    if (d.kept_by_k(s)) total += expf(__fsub_rn(s, d.max));
  }
  d.sum = block_sum(total, sh.red);
  if (top_p < 1.0f) {
    // The smallest nucleus probability is the smallest probability x with mass(P > x) < top_p:
    // bisect over the bits of non-negative floats (they order like the floats), from 0 to the
    // largest probability (mass above it is 0).
    uint32_t lo = 0, hi = __float_as_uint(__fdiv_rn(1.0f, d.sum));
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      const float x_mid = __uint_as_float(mid);
      float above = 0.0f;
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
        const float q = d.prob(v);
        if (q > x_mid) above += q;
      }
      if (block_sum(above, sh.red) < top_p) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    d.smallest = __uint_as_float(lo);
  }
  return d;
}

// Inverse CDF of the distribution's weights at u: the count of cdf[v] <= u * total that are
// also < total. Each thread owns a contiguous segment; cdf[v] = (exclusive scan of segment
// sums) + running sum.
template <typename T>
__device__ int64_t draw(const Distribution<T>& d, float u, Shared& sh) {
  const int64_t V = d.vocab;
  const int64_t seg = detail::ceil_div(V, static_cast<int64_t>(blockDim.x));
  const int64_t begin = threadIdx.x * seg;
  const int64_t end = begin + seg < V ? begin + seg : V;
  float local = 0.0f;
  for (int64_t v = begin; v < end; ++v) local += d.weight(v);
  const float prefix = block_exclusive_scan(local, sh);
  float acc = prefix;
  for (int64_t v = begin; v < end; ++v) acc += d.weight(v);
  if (begin < end && end == V) sh.last_cdf = acc;
  __syncthreads();
  const float total = sh.last_cdf;
  const float threshold = __fmul_rn(u, total);
  acc = prefix;
  unsigned count = 0;
  for (int64_t v = begin; v < end; ++v) {
    acc += d.weight(v);
    count += (acc <= threshold && acc < total) ? 1u : 0u;
  }
  return block_sum_u32(count, sh.red);
}

__device__ __forceinline__ bool row_has_tree(const Params& p, int64_t b) {
  return p.paths != nullptr && p.num_tokens[b] > p.forced[b];
}

// The packed index of node (w, l) of row b: the path entry, or the last forced token.
__device__ __forceinline__ int64_t node_at(const Params& p, int64_t b, int64_t w, int64_t l,
                                           bool has_tree) {
  if (!has_tree) {
    const int64_t last_forced = p.forced[b] - 1;
    return last_forced > 0 ? last_forced : 0;
  }
  return clamp_index(
      p.paths[b * p.paths_stride[0] + w * p.paths_stride[1] + l * p.paths_stride[2]],
      p.tokens_len);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pick_kernel(const Params p, int64_t* picks) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.y, entry = blockIdx.x;
  const int64_t L = p.paths != nullptr ? p.length : 1;
  const int64_t w = entry / L, l = entry - w * L;
  const bool has_tree = row_has_tree(p, b);
  if (p.num_tokens[b] <= 0 || (!has_tree && entry > 0)) return;  // not read
  const T* x = logits_row<T>(p, b, node_at(p, b, w, l, has_tree));
  const float temperature = p.temperature[b];
  int64_t pick;
  if (is_greedy(temperature)) {
    pick = row_argmax<T>(p, x, sh);
  } else {
    const Distribution<T> d = distribution_at<T>(p, x, temperature, p.top_k[b], p.top_p[b], sh);
    const float u = p.sample_uniforms[b * p.sample_uniforms_stride[0] +
                                      l * p.sample_uniforms_stride[1]];
    pick = draw<T>(d, u, sh);
  }
  if (threadIdx.x == 0) picks[(b * gridDim.x) + entry] = pick;
}

__global__ void __launch_bounds__(kThreads) accept_kernel(const Params p, const int64_t* picks) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const int64_t T_len = p.tokens_len;
  const int64_t num = p.num_tokens[b], forced = p.forced[b];
  const bool active = num > 0;
  const bool tree = p.paths != nullptr;
  const int64_t W = tree ? p.beams : 1, L = tree ? p.length : 1;
  const bool has_tree = row_has_tree(p, b);
  const int64_t* row_picks = picks + b * W * L;
  auto token_at = [&](int64_t t) { return p.tokens[b * p.tokens_stride[0] + t * p.tokens_stride[1]]; };

  // 1. Leading passes per beam (a draft passes when it equals its parent's pick); the first
  //    beam with the most wins.
  int64_t n = 0, best = 0;
  if (has_tree) {
    ArgMax run = argmax_identity();
    for (int64_t w = threadIdx.x; w < W; w += blockDim.x) {
      int64_t count = 0;
      while (count < L - 1 &&
             row_picks[w * L + count] == token_at(node_at(p, b, w, count + 1, true))) {
        ++count;
      }
      argmax_update(run, static_cast<float>(count), w);
    }
    run = block_argmax(run, sh.red);
    best = run.index;
    n = static_cast<int64_t>(run.value);
  }

  // 2. Outputs.
  const int64_t keep_len = active ? forced + n : 0;
  for (int64_t t = threadIdx.x; t < T_len; t += blockDim.x) {
    int64_t idx = t;
    if (tree && t >= forced) idx = node_at(p, b, best, clamp_index(t - forced + 1, L), has_tree);
    p.keep_idx[b * T_len + t] = t < keep_len ? idx : 0;
  }
  for (int64_t s = threadIdx.x; s < L; s += blockDim.x) {
    p.new_tokens[b * L + s] = (active && s <= n) ? row_picks[best * L + s] : 0;
  }
  if (threadIdx.x == 0) {
    p.keep_len[b] = keep_len;
    p.last_idx[b] = active ? node_at(p, b, best, n, has_tree) : 0;
    p.num_new[b] = active ? n + 1 : 0;
  }
}

int validate(const Params& p) {
  if (!detail::dtype_valid(p.dtype)) return REDCOMPILE_ERR_UNSUPPORTED;
  if (p.batch < 0 || p.tokens_len < 1 || p.vocab < 1) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  if (p.batch > 65535 || p.vocab >= INT_MAX || p.tokens_len >= INT_MAX) {
    return REDCOMPILE_ERR_UNSUPPORTED;
  }
  if (p.paths != nullptr && (p.beams < 1 || p.length < 2)) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  if (p.paths != nullptr && p.beams * p.length > INT_MAX) return REDCOMPILE_ERR_UNSUPPORTED;
  if (p.batch == 0) return REDCOMPILE_OK;
  if (!p.logits || !p.tokens || !p.num_tokens || !p.forced || !p.temperature || !p.top_k ||
      !p.top_p || !p.sample_uniforms || !p.keep_idx || !p.keep_len || !p.last_idx ||
      !p.new_tokens || !p.num_new) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.logits_stride[2] != 1) return REDCOMPILE_ERR_UNSUPPORTED;
  return REDCOMPILE_OK;
}

// One pick per (row, beam, depth); one per row without paths.
int64_t nodes_per_row(const Params& p) { return p.paths != nullptr ? p.beams * p.length : 1; }

size_t picks_bytes(const Params& p) {
  return static_cast<size_t>(p.batch) * nodes_per_row(p) * sizeof(int64_t);
}

template <typename T>
int launch(const Params& p, int64_t* picks, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(nodes_per_row(p)), static_cast<unsigned>(p.batch));
  pick_kernel<T><<<grid, kThreads, 0, stream>>>(p, picks);
  const int st = detail::launch_status();
  if (st != REDCOMPILE_OK) return st;
  accept_kernel<<<static_cast<unsigned>(p.batch), kThreads, 0, stream>>>(p, picks);
  return detail::launch_status();
}

}  // namespace
}  // namespace redcompile

using namespace redcompile;

extern "C" size_t redcompile_accept_workspace_size(const redcompile_accept_params_t* p) {
  if (p == nullptr || validate(*p) != REDCOMPILE_OK) return 0;
  return picks_bytes(*p);
}

extern "C" int redcompile_accept(const redcompile_accept_params_t* p, void* workspace,
                                 size_t workspace_bytes, cudaStream_t stream) {
  if (p == nullptr) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  const int st = validate(*p);
  if (st != REDCOMPILE_OK || p->batch == 0) return st;
  const size_t need = picks_bytes(*p);
  if (workspace == nullptr || workspace_bytes < need) return REDCOMPILE_ERR_WORKSPACE;
  int64_t* picks = static_cast<int64_t*>(workspace);
  switch (p->dtype) {
    case REDCOMPILE_FLOAT16:
      return launch<__half>(*p, picks, stream);
    case REDCOMPILE_BFLOAT16:
      return launch<__nv_bfloat16>(*p, picks, stream);
    default:
      return launch<float>(*p, picks, stream);
  }
}
