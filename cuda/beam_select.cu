// beam_select.cu: one selection step of the drafter's beam search (ops/drafter_beam_search.py).
//
// For logits [B, W, V] and beam scores [B, W] this computes, exactly as the reference's loop
// body does after the vocabulary projection:
//   x = float(logits) - rowmax;  warped = x < kth_largest(x, top_k) ? LOG_0 : x;
//   logprobs = log_softmax(warped);  joint = logprobs + beam_scores;
//   the W best (w, v) of joint per batch row, best first.
// Two kernels:
//   beam_row_kernel   one block per (b, w) row: row max, exact top-k threshold (radix select),
//                     log-sum-exp, the log-probs, and the row's own W best candidates (a sorted
//                     register list per thread, merged per warp, then across warps);
//   beam_merge_kernel one block per batch row: a W-way merge of the W sorted row lists.
// The global top W of the W*V joint values is the top W of the union of each row's top W,
// because every row contributes at most W winners. Order (the tie rule): joint descending,
// then the smaller flat index w * V + v; NaN ranks above everything, as in torch.topk.
// Arithmetic uses explicitly rounded intrinsics (__fsub_rn, __fadd_rn) so that no multiply-add
// contraction changes a value the reference computes as separate torch ops.
#include <climits>

#include "common.cuh"

namespace redcompile {
namespace {

using Params = redcompile_beam_select_params_t;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBeams = 64;
constexpr int kNoToken = INT_MAX;  // sentinel of an empty list slot

// A sorted (best first) list of the K best (value, token) pairs one thread has seen.
template <int K>
struct TopList {
  float value[K];
  int token[K];

  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int j = 0; j < K; ++j) {
      value[j] = -INFINITY;
      token[j] = kNoToken;
    }
  }

  // Bubble the new pair up from the last slot; unrolled so the list stays in registers.
  __device__ __forceinline__ void insert(float v, int t) {
    if (!argmax_prefers(v, t, value[K - 1], token[K - 1])) return;
    value[K - 1] = v;
    token[K - 1] = t;
#pragma unroll
    for (int j = K - 1; j > 0; --j) {
      if (argmax_prefers(value[j], token[j], value[j - 1], token[j - 1])) {
        const float tv = value[j];
        value[j] = value[j - 1];
        value[j - 1] = tv;
        const int tt = token[j];
        token[j] = token[j - 1];
        token[j - 1] = tt;
      }
    }
  }

  __device__ __forceinline__ void pop_front() {
#pragma unroll
    for (int j = 0; j + 1 < K; ++j) {
      value[j] = value[j + 1];
      token[j] = token[j + 1];
    }
    value[K - 1] = -INFINITY;
    token[K - 1] = kNoToken;
  }
};

// Best (value, index) across the warp; every lane gets it.
__device__ __forceinline__ void warp_best(float& v, int64_t& i) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, v, offset);
    const int64_t oi = __shfl_xor_sync(kFullMask, i, offset);
    if (argmax_prefers(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

template <typename T, int K>
__global__ void __launch_bounds__(kThreads)
    beam_row_kernel(const Params p, float* cand_value, int* cand_token) {
  __shared__ ReduceScratch red;
  __shared__ RadixScratch radix;
  __shared__ float warp_value[kWarps][K];
  __shared__ int warp_token[kWarps][K];

  const int64_t row = blockIdx.x;  // b * W + w
  const int64_t b = row / p.beams, w = row - b * p.beams;
  const int W = static_cast<int>(p.beams);
  const int64_t V = p.vocab;
  const T* x = static_cast<const T*>(p.logits) + b * p.logits_stride[0] + w * p.logits_stride[1];

  // Row max, then x - max as the reference's `logits - logits.amax(-1)`.
  float row_max = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) row_max = fmaxf(row_max, to_float(x[v]));
  row_max = block_max(row_max, red);
  auto shifted = [&](int64_t v) { return __fsub_rn(to_float(x[v]), row_max); };

  // Top-k warp: entries below the k-th largest shifted logit become LOG_0 (ties are kept).
  const bool warp_top_k = p.top_k > 0 && p.top_k < V;
  float kth = -INFINITY;
  if (warp_top_k) kth = block_kth_largest(V, static_cast<unsigned>(p.top_k), shifted, radix);
  auto warped = [&](int64_t v) {
    const float s = shifted(v);
    return (warp_top_k && s < kth) ? kLog0 : s;
  };

  // log_softmax(warped) = warped - max - log(sum(exp(warped - max))) with max exactly 0: the
  // row max minus itself is 0 and the warp keeps it (it is >= the k-th largest).
  float sum = 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) sum += expf(warped(v));
  const float logsum = logf(block_sum(sum, red));
  const float score = p.beam_scores[b * p.beam_scores_stride[0] + w * p.beam_scores_stride[1]];

  TopList<K> list;
  list.clear();
  float* out = p.logprobs + row * V;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float lp = __fsub_rn(warped(v), logsum);
    out[v] = lp;
    list.insert(__fadd_rn(lp, score), static_cast<int>(v));
  }

  // Each warp's W best, by W rounds of "best head of the 32 lane lists, owner pops".
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  for (int r = 0; r < W; ++r) {
    float bv = list.value[0];
    int64_t bi = list.token[0];
    warp_best(bv, bi);
    if (lane == 0) {
      warp_value[wid][r] = bv;
      warp_token[wid][r] = static_cast<int>(bi);
    }
    if (bi != kNoToken && list.token[0] == bi) list.pop_front();  // tokens are unique per row
  }
  __syncthreads();

  // Warp 0 merges the kWarps sorted lists into the row's W best.
  if (wid == 0) {
    int next = 0;  // lane l < kWarps walks warp l's list
    for (int r = 0; r < W; ++r) {
      float hv = -INFINITY;
      int64_t hi = kNoToken;
      if (lane < kWarps && next < W) {
        hv = warp_value[lane][next];
        hi = warp_token[lane][next];
      }
      float bv = hv;
      int64_t bi = hi;
      warp_best(bv, bi);
      if (lane == 0) {
        cand_value[row * W + r] = bv;
        cand_token[row * W + r] = static_cast<int>(bi);
      }
      if (bi != kNoToken && lane < kWarps && next < W && hi == bi) ++next;
    }
  }
}

// Merges the W sorted candidate lists of one batch row (one per beam) into the W best.
__global__ void __launch_bounds__(128)
    beam_merge_kernel(const Params p, const float* cand_value, const int* cand_token) {
  __shared__ float value_s[kMaxBeams * kMaxBeams];
  __shared__ int token_s[kMaxBeams * kMaxBeams];
  const int64_t b = blockIdx.x;
  const int W = static_cast<int>(p.beams);
  const int64_t V = p.vocab;
  for (int e = threadIdx.x; e < W * W; e += blockDim.x) {
    value_s[e] = cand_value[b * W * W + e];
    token_s[e] = cand_token[b * W * W + e];
  }
  __syncthreads();
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  // Lane l walks the lists of beams l and l + 32.
  int next0 = 0, next1 = 0;
  const int w0 = lane, w1 = lane + 32;
  auto head = [&](int w, int next, float& v, int64_t& flat) {
    v = -INFINITY;
    flat = INT64_MAX;
    if (w < W && next < W) {
      const int t = token_s[w * W + next];
      if (t != kNoToken) {
        v = value_s[w * W + next];
        flat = static_cast<int64_t>(w) * V + t;
      }
    }
  };
  for (int r = 0; r < W; ++r) {
    float v0, v1;
    int64_t f0, f1;
    head(w0, next0, v0, f0);
    head(w1, next1, v1, f1);
    float bv = v0;
    int64_t bf = f0;
    if (argmax_prefers(v1, f1, bv, bf)) {
      bv = v1;
      bf = f1;
    }
    warp_best(bv, bf);
    if (lane == 0) {
      const bool found = bf != INT64_MAX;  // always, since W <= W * V candidates exist
      p.scores[b * W + r] = bv;
      p.parent[b * W + r] = found ? bf / V : 0;
      p.token[b * W + r] = found ? bf % V : 0;
    }
    if (bf != INT64_MAX) {
      if (f0 == bf) ++next0;
      if (f1 == bf) ++next1;
    }
  }
}

size_t candidates_bytes(const Params& p) {
  return detail::align_up(static_cast<size_t>(p.batch) * p.beams * p.beams * 4, 256);
}

int validate(const Params& p) {
  if (!detail::dtype_valid(p.dtype)) return REDCOMPILE_ERR_UNSUPPORTED;
  if (p.batch < 0 || p.beams < 1 || p.vocab < 1) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  if (p.beams > kMaxBeams || p.vocab >= INT_MAX || p.batch * p.beams > INT_MAX) {
    return REDCOMPILE_ERR_UNSUPPORTED;
  }
  if (p.batch == 0) return REDCOMPILE_OK;
  if (!p.logits || !p.beam_scores || !p.logprobs || !p.scores || !p.parent || !p.token) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.logits_stride[2] != 1) return REDCOMPILE_ERR_UNSUPPORTED;
  return REDCOMPILE_OK;
}

template <typename T, int K>
int launch_rows(const Params& p, float* cand_value, int* cand_token, cudaStream_t stream) {
  beam_row_kernel<T, K><<<static_cast<unsigned>(p.batch * p.beams), kThreads, 0, stream>>>(
      p, cand_value, cand_token);
  return detail::launch_status();
}

template <typename T>
int launch_rows_for_width(const Params& p, float* cand_value, int* cand_token,
                          cudaStream_t stream) {
  if (p.beams <= 8) return launch_rows<T, 8>(p, cand_value, cand_token, stream);
  if (p.beams <= 16) return launch_rows<T, 16>(p, cand_value, cand_token, stream);
  if (p.beams <= 32) return launch_rows<T, 32>(p, cand_value, cand_token, stream);
  return launch_rows<T, 64>(p, cand_value, cand_token, stream);
}

}  // namespace
}  // namespace redcompile

using namespace redcompile;

extern "C" size_t redcompile_beam_select_workspace_size(const redcompile_beam_select_params_t* p) {
  if (p == nullptr || validate(*p) != REDCOMPILE_OK) return 0;
  return 2 * candidates_bytes(*p);
}

extern "C" int redcompile_beam_select(const redcompile_beam_select_params_t* p, void* workspace,
                                      size_t workspace_bytes, cudaStream_t stream) {
  if (p == nullptr) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  int st = validate(*p);
  if (st != REDCOMPILE_OK || p->batch == 0) return st;
  const size_t cand = candidates_bytes(*p);
  if (workspace == nullptr || workspace_bytes < 2 * cand) return REDCOMPILE_ERR_WORKSPACE;
  float* cand_value = static_cast<float*>(workspace);
  int* cand_token = reinterpret_cast<int*>(static_cast<unsigned char*>(workspace) + cand);
  switch (p->dtype) {
    case REDCOMPILE_FLOAT16:
      st = launch_rows_for_width<__half>(*p, cand_value, cand_token, stream);
      break;
    case REDCOMPILE_BFLOAT16:
      st = launch_rows_for_width<__nv_bfloat16>(*p, cand_value, cand_token, stream);
      break;
    default:
      st = launch_rows_for_width<float>(*p, cand_value, cand_token, stream);
      break;
  }
  if (st != REDCOMPILE_OK) return st;
  beam_merge_kernel<<<static_cast<unsigned>(p->batch), 128, 0, stream>>>(*p, cand_value,
                                                                          cand_token);
  return detail::launch_status();
}
