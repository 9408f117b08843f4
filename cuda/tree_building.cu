// tree_building.cu: beams -> deduplicated packed tree (build_tree) and the ancestor mask of any
// packed forest (ancestor_mask). Semantics: ops/tree_building.py.
//
// build_tree: one block per batch row, the row's W x L beam tokens in shared memory.
//   first[i][j]  smallest beam k whose tokens 0..j equal beam i's (k <= i; k == i: new token)
//   slot         new positions numbered in row-major (i, j) order: a warp-wide ballot scan
//   paths[i][j]  slot of (first[i][j], j); parent of a new (i, j) = paths[i][j - 1]
// ancestor_mask: the reference's binary lifting, reproduced step for step so that results are
// equal even for inputs where `steps` does not cover the depths: a lifting table
// up[k][i] = (2**k)-th ancestor (roots are their own parents) is built per row in the
// workspace, then each (i, j) climbs depth[i] - depth[j] levels by the bits of that difference.
#include <climits>

#include "common.cuh"

namespace redcompile {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPositions = 4096;  // W * L per row
constexpr int kMaxLevels = 62;       // lifting levels beyond these never change a result

// ---------------------------------------------------------------------------------------------
// build_tree
// ---------------------------------------------------------------------------------------------

using TreeParams = redcompile_build_tree_params_t;

__global__ void __launch_bounds__(kThreads) build_tree_kernel(const TreeParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int W = static_cast<int>(p.beams), L = static_cast<int>(p.length);
  const int n = W * L;
  const int64_t N = static_cast<int64_t>(W) * (L - 1) + 1;
  int64_t* tok = reinterpret_cast<int64_t*>(smem);  // [W][L]
  int* first = reinterpret_cast<int*>(tok + n);     // [W][L]
  int* slot = first + n;                            // [W][L], valid where new
  __shared__ int new_count;
  const int64_t b = blockIdx.x;

  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int i = e / L, j = e - i * L;
    tok[e] = p.beams_data[b * p.beams_stride[0] + i * p.beams_stride[1] + j * p.beams_stride[2]];
  }
  __syncthreads();

  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int i = e / L, j = e - i * L;
    int f = i;
    for (int k = 0; k < i; ++k) {
      bool equal = true;
      for (int jj = 0; jj <= j && equal; ++jj) equal = tok[k * L + jj] == tok[i * L + jj];
      if (equal) {
        f = k;
        break;
      }
    }
    first[e] = f;
  }
  __syncthreads();

  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int running = 0;
    for (int base = 0; base < n; base += 32) {
      const int e = base + lane;
      const bool is_new = e < n && first[e] == e / L;
      const unsigned ballot = __ballot_sync(kFullMask, is_new);
      if (is_new) slot[e] = running + __popc(ballot & ((1u << lane) - 1u));
      running += __popc(ballot);
    }
    if (lane == 0) {
      new_count = running;
      p.num_tokens[b] = running;
    }
  }
  __syncthreads();

  int64_t* tokens = p.tokens + b * N;
  int64_t* parents = p.parents + b * N;
  int64_t* depths = p.depths + b * N;
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const int i = e / L, j = e - i * L;
    p.paths[b * n + e] = slot[first[e] * L + j];
    if (first[e] == i) {
      const int s = slot[e];
      if (s < N) {  // beams that do not share their root could overflow N: not written
        tokens[s] = tok[e];
        parents[s] = j == 0 ? -1 : slot[first[i * L + j - 1] * L + j - 1];
        depths[s] = j;
      }
    }
  }
  for (int64_t s = new_count + threadIdx.x; s < N; s += blockDim.x) {
    tokens[s] = 0;
    parents[s] = -1;
    depths[s] = 0;
  }
}

int validate_tree(const TreeParams& p) {
  if (p.batch < 0 || p.beams < 1 || p.length < 1) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  if (p.beams * p.length > kMaxPositions || p.batch > INT_MAX) return REDCOMPILE_ERR_UNSUPPORTED;
  if (p.batch == 0) return REDCOMPILE_OK;
  if (!p.beams_data || !p.tokens || !p.parents || !p.depths || !p.num_tokens || !p.paths) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  return REDCOMPILE_OK;
}

// ---------------------------------------------------------------------------------------------
// ancestor_mask
// ---------------------------------------------------------------------------------------------

using MaskParams = redcompile_ancestor_mask_params_t;

int lifting_levels(const MaskParams& p) {
  return static_cast<int>(p.steps <= 0 ? 0 : (p.steps < kMaxLevels ? p.steps : kMaxLevels));
}

// up[b][k][i]: level 0 = parent (a root, or a parent outside [0, T), points at itself), level
// k = level k-1 applied twice, exactly the reference's `up = gather(up, up)`.
__global__ void __launch_bounds__(kThreads)
    lifting_table_kernel(const MaskParams p, int levels, int* up) {
  const int64_t b = blockIdx.x;
  const int64_t T = p.tokens;
  int* row = up + b * levels * T;
  for (int64_t i = threadIdx.x; i < T; i += blockDim.x) {
    const int64_t parent = p.parents[b * p.parents_stride[0] + i * p.parents_stride[1]];
    row[i] = static_cast<int>((parent < 0 || parent >= T) ? i : parent);
  }
  for (int k = 1; k < levels; ++k) {
    __syncthreads();  // level k-1 is complete (global writes are visible within the block)
    const int* prev = row + (k - 1) * T;
    for (int64_t i = threadIdx.x; i < T; i += blockDim.x) row[k * T + i] = prev[prev[i]];
  }
}

// One block per (i, b): the row mask[b, i, :].
__global__ void __launch_bounds__(kThreads)
    ancestor_mask_kernel(const MaskParams p, int levels, const int* up) {
  const int64_t i = blockIdx.x, b = blockIdx.y;
  const int64_t T = p.tokens;
  const int* table = up + b * levels * T;
  const int64_t depth_i = p.depths[b * p.depths_stride[0] + i * p.depths_stride[1]];
  uint8_t* out = p.mask + (b * T + i) * T;
  for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
    const int64_t climb = depth_i - p.depths[b * p.depths_stride[0] + j * p.depths_stride[1]];
    bool visible = false;
    if (climb >= 0) {
      int64_t node = i;
      for (int k = 0; k < levels; ++k) {
        if ((climb >> k) & 1) node = table[k * T + node];
      }
      visible = node == j;
    }
    out[j] = visible ? 1 : 0;
  }
}

int validate_mask(const MaskParams& p) {
  if (p.batch < 0 || p.tokens < 0) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  if (p.batch > 65535 || p.tokens >= INT_MAX) return REDCOMPILE_ERR_UNSUPPORTED;
  if (p.batch == 0 || p.tokens == 0) return REDCOMPILE_OK;
  if (!p.parents || !p.depths || !p.mask) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  return REDCOMPILE_OK;
}

size_t table_bytes(const MaskParams& p) {
  return static_cast<size_t>(p.batch) * lifting_levels(p) * p.tokens * sizeof(int);
}

}  // namespace
}  // namespace redcompile

using namespace redcompile;

extern "C" size_t redcompile_build_tree_workspace_size(const redcompile_build_tree_params_t*) {
  return 0;
}

extern "C" int redcompile_build_tree(const redcompile_build_tree_params_t* p, void*, size_t,
                                     cudaStream_t stream) {
  if (p == nullptr) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  int st = validate_tree(*p);
  if (st != REDCOMPILE_OK || p->batch == 0) return st;
  const int n = static_cast<int>(p->beams * p->length);
  const int smem = n * static_cast<int>(sizeof(int64_t) + 2 * sizeof(int));
  if (smem > 48 * 1024) {
    if (smem > detail::device_max_smem_optin()) return REDCOMPILE_ERR_UNSUPPORTED;
    st = detail::cuda_status(cudaFuncSetAttribute(
        build_tree_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    if (st != REDCOMPILE_OK) return st;
  }
  build_tree_kernel<<<static_cast<unsigned>(p->batch), kThreads, smem, stream>>>(*p);
  return detail::launch_status();
}

extern "C" size_t redcompile_ancestor_mask_workspace_size(
    const redcompile_ancestor_mask_params_t* p) {
  if (p == nullptr || validate_mask(*p) != REDCOMPILE_OK) return 0;
  return table_bytes(*p);
}

extern "C" int redcompile_ancestor_mask(const redcompile_ancestor_mask_params_t* p,
                                        void* workspace, size_t workspace_bytes,
                                        cudaStream_t stream) {
  if (p == nullptr) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  int st = validate_mask(*p);
  if (st != REDCOMPILE_OK || p->batch == 0 || p->tokens == 0) return st;
  const int levels = lifting_levels(*p);
  int* up = static_cast<int*>(workspace);
  if (levels > 0) {
    if (workspace == nullptr || workspace_bytes < table_bytes(*p)) {
      return REDCOMPILE_ERR_WORKSPACE;
    }
    lifting_table_kernel<<<static_cast<unsigned>(p->batch), kThreads, 0, stream>>>(*p, levels,
                                                                                   up);
    st = detail::launch_status();
    if (st != REDCOMPILE_OK) return st;
  }
  const dim3 grid(static_cast<unsigned>(p->tokens), static_cast<unsigned>(p->batch));
  ancestor_mask_kernel<<<grid, kThreads, 0, stream>>>(*p, levels, up);
  return detail::launch_status();
}
