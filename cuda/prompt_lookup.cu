// prompt_lookup.cu: lookup beams copied from each row's token history. Semantics:
// ops/prompt_lookup.py (the reference this kernel is held to in tests/cuda/).
//
// One block per row. For each n-gram size, longest first, the block scans candidate start
// positions p from the latest (m - 1 - k) down, blockDim at a time: every thread tests one p
// against the row's last k tokens, a block-wide ballot scan orders the matches (latest first),
// and the first K are kept; the scan stops once K are found. The longest size with a match
// wins. Each beam then copies x[q + (i mod d)] with q = p + k, d = m - q (the periodic
// extension where the continuation reaches the end); with no match every beam repeats the root.
// History reads go straight to global memory: a row is read about once per n-gram size.
#include <climits>

#include "common.cuh"

namespace redcompile {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBeams = 64;

using LookupParams = redcompile_prompt_lookup_params_t;

__global__ void __launch_bounds__(kThreads) prompt_lookup_kernel(const LookupParams p) {
  __shared__ int64_t starts[kMaxBeams];  // latest match positions of the current size
  __shared__ int warp_counts[kWarps];
  __shared__ int found;
  __shared__ int64_t chosen_k;
  const int64_t b = blockIdx.x;
  const int64_t S = p.capacity, K = p.num_beams, L = p.length;
  const int64_t* x = p.history + b * p.history_stride;
  const int64_t m = p.lengths[b] < 0 ? 0 : (p.lengths[b] > S ? S : p.lengths[b]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) chosen_k = 0;
  __syncthreads();

  // sizes longest first: pick the largest remaining each round (at most 8 sizes)
  int64_t previous = INT64_MAX;
  for (int64_t round = 0; round < p.num_ngrams; ++round) {
    int64_t k = 0;
    for (int64_t i = 0; i < p.num_ngrams; ++i) {
      if (p.ngrams[i] < previous && p.ngrams[i] > k) k = p.ngrams[i];
    }
    if (k == 0) break;
    previous = k;
    if (threadIdx.x == 0) found = 0;
    __syncthreads();
    for (int64_t hi = m - 1 - k; hi >= 0; hi -= kThreads) {
      const int64_t pos = hi - threadIdx.x;
      bool match = pos >= 0;
      for (int64_t j = 0; j < k && match; ++j) match = x[pos + j] == x[m - k + j];
      const unsigned ballot = __ballot_sync(kFullMask, match);
      if (lane == 0) warp_counts[warp] = __popc(ballot);
      __syncthreads();
      int before = found;
      for (int w = 0; w < warp; ++w) before += warp_counts[w];
      const int rank = before + __popc(ballot & ((1u << lane) - 1u));
      if (match && rank < K) starts[rank] = pos;
      __syncthreads();
      if (threadIdx.x == 0) {
        int total = found;
        for (int w = 0; w < kWarps; ++w) total += warp_counts[w];
        found = total;
      }
      __syncthreads();
      if (found >= K) break;
    }
    if (found > 0) {
      if (threadIdx.x == 0) chosen_k = k;
      __syncthreads();
      break;
    }
  }
  __syncthreads();

  const int64_t root = m > 0 ? x[m - 1] : 0;
  const int available = found < K ? found : static_cast<int>(K);
  int64_t* out = p.beams + b * K * L;
  for (int64_t e = threadIdx.x; e < K * L; e += blockDim.x) {
    const int64_t j = e / L, i = e - j * L;
    int64_t token = 0;
    if (m > 0) {
      if (i == 0 || chosen_k == 0) {
        token = root;
      } else {
        const int64_t start = starts[j < available ? j : 0] + chosen_k;
        const int64_t period = m - start;
        token = x[start + (i - 1) % period];
      }
    }
    out[e] = token;
  }
}

int validate(const LookupParams& p) {
  if (p.batch < 0 || p.capacity < 1 || p.num_beams < 1 || p.length < 1) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.num_ngrams < 1 || p.num_ngrams > REDCOMPILE_MAX_LOOKUP_NGRAMS) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  for (int64_t i = 0; i < p.num_ngrams; ++i) {
    if (p.ngrams[i] < 1) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.num_beams > kMaxBeams || p.batch > INT_MAX) return REDCOMPILE_ERR_UNSUPPORTED;
  if (p.batch == 0) return REDCOMPILE_OK;
  if (!p.history || !p.lengths || !p.beams) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  return REDCOMPILE_OK;
}

}  // namespace
}  // namespace redcompile

using namespace redcompile;

extern "C" size_t redcompile_prompt_lookup_workspace_size(const redcompile_prompt_lookup_params_t*) {
  return 0;
}

extern "C" int redcompile_prompt_lookup(const redcompile_prompt_lookup_params_t* p, void*, size_t,
                                        cudaStream_t stream) {
  if (p == nullptr) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  const int st = validate(*p);
  if (st != REDCOMPILE_OK || p->batch == 0) return st;
  prompt_lookup_kernel<<<static_cast<unsigned>(p->batch), kThreads, 0, stream>>>(*p);
  return detail::launch_status();
}
