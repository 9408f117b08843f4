// prompt_lookup.cu: lookup beams copied from each row's token history. Semantics:
// ops/prompt_lookup.py (the reference this kernel is held to in tests/cuda/).
//
// One block per row. A candidate is an end position q <= m - 2 whose tokens going back match
// the row's last tokens; its level is how many of the n-gram sizes fit in that match. The
// block ranks candidates by level, then latest: for each level, highest first, it scans q from
// m - 2 down, blockDim at a time (each thread measures the match length at its q), ranks that
// level's matches latest first with a block-wide ballot scan and keeps them until K are found.
// Each beam then copies x[s + (i mod d)] with s = q + 1, d = m - s (the periodic extension
// where the continuation reaches the end); with no candidate every beam repeats the root.
// History reads go straight to global memory.
#include <climits>

#include "common.cuh"

namespace redcompile {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBeams = 64;

using LookupParams = redcompile_prompt_lookup_params_t;

// Sizes sorted ascending without repeats; returns how many.
__device__ int sorted_sizes(const LookupParams& p, int64_t* sizes) {
  int count = 0;
  int64_t previous = 0;
  for (int64_t round = 0; round < p.num_ngrams; ++round) {
    int64_t next = INT64_MAX;
    for (int64_t i = 0; i < p.num_ngrams; ++i) {
      if (p.ngrams[i] > previous && p.ngrams[i] < next) next = p.ngrams[i];
    }
    if (next == INT64_MAX) break;
    sizes[count++] = next;
    previous = next;
  }
  return count;
}

__global__ void __launch_bounds__(kThreads) prompt_lookup_kernel(const LookupParams p) {
  __shared__ int64_t starts[kMaxBeams];  // ranked candidate end positions
  __shared__ int warp_counts[kWarps];
  __shared__ int found;
  __shared__ int64_t sizes[REDCOMPILE_MAX_LOOKUP_NGRAMS];
  __shared__ int size_count;
  if (threadIdx.x == 0) {
    size_count = sorted_sizes(p, sizes);
    found = 0;
  }
  __syncthreads();
  const int num_sizes = size_count;
  const int64_t b = blockIdx.x;
  const int64_t S = p.capacity, K = p.num_beams, L = p.length;
  const int64_t* x = p.history + b * p.history_stride;
  const int64_t m = p.lengths[b] < 0 ? 0 : (p.lengths[b] > S ? S : p.lengths[b]);
  const int64_t depth = num_sizes > 0 ? sizes[num_sizes - 1] : 0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  for (int level = num_sizes; level >= 1 && found < K; --level) {
    for (int64_t hi = m - 2; hi >= 0; hi -= kThreads) {
      const int64_t q = hi - threadIdx.x;
      int my_level = 0;
      if (q >= 0) {
        int64_t run = 0;  // tokens back from q that equal the row's last tokens
        while (run < depth && run <= q && x[q - run] == x[m - 1 - run]) ++run;
        while (my_level < num_sizes && sizes[my_level] <= run) ++my_level;
      }
      const bool match = my_level == level;
      const unsigned ballot = __ballot_sync(kFullMask, match);
      if (lane == 0) warp_counts[warp] = __popc(ballot);
      __syncthreads();
      int before = found;
      for (int w = 0; w < warp; ++w) before += warp_counts[w];
      const int rank = before + __popc(ballot & ((1u << lane) - 1u));
      if (match && rank < K) starts[rank] = q;
      __syncthreads();
      if (threadIdx.x == 0) {
        int total = found;
        for (int w = 0; w < kWarps; ++w) total += warp_counts[w];
        found = total;
      }
      __syncthreads();
      if (found >= K) break;
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
      if (i == 0 || available == 0) {
        token = root;
      } else {
        const int64_t start = starts[j < available ? j : 0] + 1;
        token = x[start + (i - 1) % (m - start)];
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
