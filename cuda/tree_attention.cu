// tree_attention.cu: packed tree tokens attend to their row's cache and to their ancestors.
//
// Semantics: ops/tree_attention.py (the reference). One block owns one key/value head of one
// batch row, a tile of query rows and one split of the columns:
//   - query rows are the (g, t) pairs of the G = Hq / Hkv query heads that share the key/value
//     head (row = g * T + t), so GQA reads each key/value column once per tile;
//   - columns are virtual: 0 .. S-1 are cache slots (past_k/past_v, past_mask) and S .. S+T-1
//     are the step's own tokens (k/v, tree_mask), so the cache is never concatenated;
//   - the columns are cut into chunks; a chunk no row of the tile may see is skipped without
//     reading K/V, and columns no row may see are zero-filled instead of read;
//   - scores of a chunk are scaled, masked to -inf, and folded into a running (max, sum, output)
//     per row in fp32 (online softmax), so the result equals one softmax over all columns;
//   - long contexts are split along the columns across blocks (flash-decoding): each split
//     writes its unnormalised output and (max, sum) to the workspace, and a combine kernel
//     merges the splits. A row that may see nothing ends with sum 0 and is written as zeros.
// Two kernels share this structure: a tensor-core one (fp16/bf16, head_dim % 16 == 0; WMMA
// 16x16x16 products with fp32 accumulation, probabilities rounded to the input dtype for the
// P.V product as flash attention does) and a CUDA-core one in fp32 for float32 inputs and any
// other head_dim (<= 256).
#include <mma.h>

#include <algorithm>
#include <climits>
#include <map>
#include <mutex>
#include <tuple>

#include "common.cuh"

namespace redcompile {
namespace {

using Params = redcompile_tree_attention_params_t;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxHeadDim = 256;
constexpr int kMaxSplits = 64;
constexpr int kMinChunksPerSplit = 4;  // a split reads at least this many chunks

// Byte offsets of the shared-memory regions and their leading dimensions (in elements).
struct SmemLayout {
  int q, k, v, s, p, o, mask, colvalid, stats;
  int ldq, ldk, ldv, lds, ldp, ldo;
  int bytes;
};

// How one call is laid out on the device; computed on the host, passed by value to kernels.
struct Plan {
  bool tensor_cores;
  bool vec_loads;     // 16-byte global loads (tensor-core kernel only)
  int rows;           // query rows per block
  int chunk;          // columns per chunk
  int64_t q_rows;     // G * T
  int64_t columns;    // S + T
  int n_qtiles;       // ceil(q_rows / rows)
  int splits;         // column splits (1: no workspace, the main kernel writes y)
  int64_t cols_per_split;
  SmemLayout smem;
};

// ---------------------------------------------------------------------------------------------
// Device helpers shared by both kernels
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ bool column_visible(const Params& p, int64_t b, int t, int64_t col) {
  if (col < p.cache_len) {
    return p.past_mask[b * p.past_mask_stride[0] + t * p.past_mask_stride[1] +
                       col * p.past_mask_stride[2]] != 0;
  }
  const int64_t j = col - p.cache_len;
  return p.tree_mask[b * p.tree_mask_stride[0] + t * p.tree_mask_stride[1] +
                     j * p.tree_mask_stride[2]] != 0;
}

// Row `col` of the keys (or values) of key/value head `kvh`: a cache slot or a step token.
template <typename T>
__device__ __forceinline__ const T* kv_row(const void* past, const int64_t* past_stride,
                                           const void* cur, const int64_t* cur_stride,
                                           int64_t cache_len, int64_t b, int64_t kvh,
                                           int64_t col) {
  if (col < cache_len) {
    return static_cast<const T*>(past) + b * past_stride[0] + kvh * past_stride[1] +
           col * past_stride[2];
  }
  return static_cast<const T*>(cur) + b * cur_stride[0] + kvh * cur_stride[1] +
         (col - cache_len) * cur_stride[2];
}

// Copies `rows` rows of D elements into shared memory (leading dim ld); a null row pointer
// writes zeros. With `vec`, 16-byte loads (the caller checked alignment and D).
template <typename T, typename RowFn>
__device__ void copy_rows(T* dst, int ld, int rows, int D, bool vec, RowFn row_ptr) {
  if (vec) {
    constexpr int kVec = 16 / sizeof(T);
    const int per_row = D / kVec;
    for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
      const int r = e / per_row, c = (e - r * per_row) * kVec;
      const T* src = row_ptr(r);
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (src != nullptr) val = __ldg(reinterpret_cast<const uint4*>(src + c));
      *reinterpret_cast<uint4*>(dst + r * ld + c) = val;
    }
  } else {
    for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
      const int r = e / D, c = e - r * D;
      const T* src = row_ptr(r);
      dst[r * ld + c] = src != nullptr ? src[c] : from_float<T>(0.0f);
    }
  }
}

// Same, converting to float (CUDA-core kernel).
template <typename T, typename RowFn>
__device__ void copy_rows_to_float(float* dst, int ld, int rows, int D, RowFn row_ptr) {
  for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
    const int r = e / D, c = e - r * D;
    const T* src = row_ptr(r);
    dst[r * ld + c] = src != nullptr ? to_float(src[c]) : 0.0f;
  }
}

// Per-row bookkeeping in shared memory.
struct RowState {
  int64_t* head;   // query head of each tile row
  int* token;      // token of each tile row, -1 for padding rows beyond G * T
  float* m;        // running max of the scaled, masked scores
  float* l;        // running sum of exp(score - m)
  float* alpha;    // this chunk's rescale factor exp(m_old - m_new)
};

__device__ __forceinline__ RowState carve_rows(unsigned char* smem, const SmemLayout& L,
                                               int rows) {
  RowState rs;
  rs.head = reinterpret_cast<int64_t*>(smem + L.stats);
  rs.m = reinterpret_cast<float*>(rs.head + rows);
  rs.l = rs.m + rows;
  rs.alpha = rs.l + rows;
  rs.token = reinterpret_cast<int*>(rs.alpha + rows);
  return rs;
}

__device__ void init_rows(const Params& p, const Plan& plan, int64_t kvh, int64_t row0,
                          RowState rs) {
  const int64_t group = p.q_heads / p.kv_heads;
  for (int r = threadIdx.x; r < plan.rows; r += blockDim.x) {
    const int64_t row = row0 + r;
    if (row < plan.q_rows) {
      rs.head[r] = kvh * group + row / p.tokens;
      rs.token[r] = static_cast<int>(row % p.tokens);
    } else {
      rs.head[r] = 0;
      rs.token[r] = -1;
    }
    rs.m[r] = -INFINITY;
    rs.l[r] = 0.0f;
    rs.alpha[r] = 1.0f;
  }
}

// Loads which (row, column) pairs of chunk [c0, c0 + chunk) are visible and which columns any
// row sees. Returns false, for the whole block, when no pair is visible (skip the chunk).
__device__ bool load_mask_chunk(const Params& p, const Plan& plan, int64_t b, int64_t c0,
                                int64_t col_end, const int* row_token, uint8_t* mask_s,
                                uint8_t* colvalid) {
  const int rows = plan.rows, chunk = plan.chunk;
  int any = 0;
  for (int e = threadIdx.x; e < rows * chunk; e += blockDim.x) {
    const int r = e / chunk, c = e - r * chunk;
    const int64_t col = c0 + c;
    const int t = row_token[r];
    const uint8_t visible = (t >= 0 && col < col_end && column_visible(p, b, t, col)) ? 1 : 0;
    mask_s[e] = visible;
    any |= visible;
  }
  if (!__syncthreads_or(any)) return false;
  for (int c = threadIdx.x; c < chunk; c += blockDim.x) {
    uint8_t seen = 0;
    for (int r = 0; r < rows; ++r) seen |= mask_s[r * chunk + c];
    colvalid[c] = seen;
  }
  __syncthreads();
  return true;
}

// Online-softmax step over one chunk of raw scores s_s (one warp per row): updates the running
// max and sum, writes the chunk's probabilities exp(score - m_new) to p_s (may alias s_s) and
// the factor that rescales the row's earlier output.
template <typename P>
__device__ void softmax_chunk(const float* s_s, int lds, const uint8_t* mask_s, int rows,
                              int chunk, float scale, P* p_s, int ldp, RowState rs) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int r = warp; r < rows; r += warps) {
    float chunk_max = -INFINITY;
    for (int c = lane; c < chunk; c += 32) {
      if (mask_s[r * chunk + c]) chunk_max = fmaxf(chunk_max, __fmul_rn(s_s[r * lds + c], scale));
    }
    chunk_max = warp_max(chunk_max);
    const float m_old = rs.m[r];
    const float m_new = fmaxf(m_old, chunk_max);
    // Nothing visible so far: keep alpha = 1 and p = 0 (avoids exp(-inf - -inf) = NaN).
    const bool none = (m_new == -INFINITY);
    const float alpha = none ? 1.0f : expf(m_old - m_new);
    float sum = 0.0f;
    for (int c = lane; c < chunk; c += 32) {
      float prob = 0.0f;
      if (!none && mask_s[r * chunk + c]) prob = expf(__fmul_rn(s_s[r * lds + c], scale) - m_new);
      p_s[r * ldp + c] = from_float<P>(prob);
      sum += prob;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      rs.m[r] = m_new;
      rs.l[r] = rs.l[r] * alpha + sum;
      rs.alpha[r] = alpha;
    }
  }
}

// Workspace of a split run: o [splits][R][D], m [splits][R], l [splits][R], R = B * Hq * T.
struct SplitWorkspace {
  float* o;
  float* m;
  float* l;
};

// Writes the tile's rows: normalised into y (one split), or partial results (several).
template <typename T>
__device__ void write_rows(const Params& p, const Plan& plan, int64_t b, int split,
                           const float* o_s, int ldo, RowState rs, SplitWorkspace ws) {
  const int D = static_cast<int>(p.head_dim);
  if (plan.splits == 1) {
    T* y = static_cast<T*>(p.y);
    for (int e = threadIdx.x; e < plan.rows * D; e += blockDim.x) {
      const int r = e / D, d = e - r * D;
      const int t = rs.token[r];
      if (t < 0) continue;
      const float l = rs.l[r];
      const float out = l > 0.0f ? o_s[r * ldo + d] / l : 0.0f;
      y[b * p.y_stride[0] + rs.head[r] * p.y_stride[1] + t * p.y_stride[2] + d] =
          from_float<T>(out);
    }
    return;
  }
  const int64_t rows_total = p.batch * p.q_heads * p.tokens;
  for (int e = threadIdx.x; e < plan.rows * D; e += blockDim.x) {
    const int r = e / D, d = e - r * D;
    const int t = rs.token[r];
    if (t < 0) continue;
    const int64_t row = (b * p.q_heads + rs.head[r]) * p.tokens + t;
    ws.o[(split * rows_total + row) * D + d] = o_s[r * ldo + d];
  }
  for (int r = threadIdx.x; r < plan.rows; r += blockDim.x) {
    const int t = rs.token[r];
    if (t < 0) continue;
    const int64_t row = (b * p.q_heads + rs.head[r]) * p.tokens + t;
    ws.m[split * rows_total + row] = rs.m[r];
    ws.l[split * rows_total + row] = rs.l[r];
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

// Tensor-core kernel: fp16/bf16, head_dim a multiple of 16, 32 query rows per block.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    tree_attention_tc_kernel(const Params p, const Plan plan, SplitWorkspace ws) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 WMMA needs sm_80; make_plan never picks this kernel on older devices
#else
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char smem[];
  const SmemLayout& L = plan.smem;
  T* q_s = reinterpret_cast<T*>(smem + L.q);
  T* k_s = reinterpret_cast<T*>(smem + L.k);
  T* v_s = reinterpret_cast<T*>(smem + L.v);
  float* s_s = reinterpret_cast<float*>(smem + L.s);
  T* p_s = reinterpret_cast<T*>(smem + L.p);
  float* o_s = reinterpret_cast<float*>(smem + L.o);
  uint8_t* mask_s = smem + L.mask;
  uint8_t* colvalid = smem + L.colvalid;
  const RowState rs = carve_rows(smem, L, plan.rows);

  const int rows = plan.rows, chunk = plan.chunk, D = static_cast<int>(p.head_dim);
  const int warp = threadIdx.x >> 5;
  const int qtile = blockIdx.x % plan.n_qtiles, split = blockIdx.x / plan.n_qtiles;
  const int64_t kvh = blockIdx.y, b = blockIdx.z;
  const int64_t col_begin = split * plan.cols_per_split;
  const int64_t col_end = min(plan.columns, col_begin + plan.cols_per_split);

  init_rows(p, plan, kvh, static_cast<int64_t>(qtile) * rows, rs);
  for (int e = threadIdx.x; e < rows * L.ldo; e += blockDim.x) o_s[e] = 0.0f;
  __syncthreads();
  const T* q = static_cast<const T*>(p.q);
  copy_rows<T>(q_s, L.ldq, rows, D, plan.vec_loads, [&](int r) -> const T* {
    const int t = rs.token[r];
    if (t < 0) return nullptr;
    return q + b * p.q_stride[0] + rs.head[r] * p.q_stride[1] + t * p.q_stride[2];
  });

  for (int64_t c0 = col_begin; c0 < col_end; c0 += chunk) {
    if (!load_mask_chunk(p, plan, b, c0, col_end, rs.token, mask_s, colvalid)) continue;
    copy_rows<T>(k_s, L.ldk, chunk, D, plan.vec_loads, [&](int c) -> const T* {
      if (!colvalid[c]) return nullptr;
      return kv_row<T>(p.past_k, p.past_k_stride, p.k, p.k_stride, p.cache_len, b, kvh, c0 + c);
    });
    copy_rows<T>(v_s, L.ldv, chunk, D, plan.vec_loads, [&](int c) -> const T* {
      if (!colvalid[c]) return nullptr;
      return kv_row<T>(p.past_v, p.past_v_stride, p.v, p.v_stride, p.cache_len, b, kvh, c0 + c);
    });
    __syncthreads();

    // S[rows, chunk] = Q K^T (raw dot products, fp32).
    const int col_frags = chunk / 16;
    for (int f = warp; f < (rows / 16) * col_frags; f += kWarps) {
      const int fi = f / col_frags, fj = f - fi * col_frags;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < D; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;
        wmma::load_matrix_sync(a, q_s + fi * 16 * L.ldq + kk, L.ldq);
        wmma::load_matrix_sync(bt, k_s + fj * 16 * L.ldk + kk, L.ldk);
        wmma::mma_sync(acc, a, bt, acc);
      }
      wmma::store_matrix_sync(s_s + fi * 16 * L.lds + fj * 16, acc, L.lds, wmma::mem_row_major);
    }
    __syncthreads();

    softmax_chunk<T>(s_s, L.lds, mask_s, rows, chunk, p.scale, p_s, L.ldp, rs);
    __syncthreads();

    for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
      const int r = e / D, d = e - r * D;
      o_s[r * L.ldo + d] *= rs.alpha[r];
    }
    __syncthreads();

    // O[rows, D] += P V.
    const int d_frags = D / 16;
    for (int f = warp; f < (rows / 16) * d_frags; f += kWarps) {
      const int fi = f / d_frags, fj = f - fi * d_frags;
      float* o_tile = o_s + fi * 16 * L.ldo + fj * 16;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o_tile, L.ldo, wmma::mem_row_major);
      for (int kk = 0; kk < chunk; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bv;
        wmma::load_matrix_sync(a, p_s + fi * 16 * L.ldp + kk, L.ldp);
        wmma::load_matrix_sync(bv, v_s + kk * L.ldv + fj * 16, L.ldv);
        wmma::mma_sync(acc, a, bv, acc);
      }
      wmma::store_matrix_sync(o_tile, acc, L.ldo, wmma::mem_row_major);
    }
    // The next chunk's first barrier (in load_mask_chunk) orders these writes.
  }
  __syncthreads();
  write_rows<T>(p, plan, b, split, o_s, L.ldo, rs, ws);
#endif
}

// CUDA-core kernel: any dtype, any head_dim <= 256, everything in fp32, 16 query rows.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    tree_attention_generic_kernel(const Params p, const Plan plan, SplitWorkspace ws) {
  extern __shared__ __align__(128) unsigned char smem[];
  const SmemLayout& L = plan.smem;
  float* q_s = reinterpret_cast<float*>(smem + L.q);
  float* k_s = reinterpret_cast<float*>(smem + L.k);
  float* v_s = reinterpret_cast<float*>(smem + L.v);
  float* s_s = reinterpret_cast<float*>(smem + L.s);  // scores, then probabilities in place
  float* o_s = reinterpret_cast<float*>(smem + L.o);
  uint8_t* mask_s = smem + L.mask;
  uint8_t* colvalid = smem + L.colvalid;
  const RowState rs = carve_rows(smem, L, plan.rows);

  const int rows = plan.rows, chunk = plan.chunk, D = static_cast<int>(p.head_dim);
  const int qtile = blockIdx.x % plan.n_qtiles, split = blockIdx.x / plan.n_qtiles;
  const int64_t kvh = blockIdx.y, b = blockIdx.z;
  const int64_t col_begin = split * plan.cols_per_split;
  const int64_t col_end = min(plan.columns, col_begin + plan.cols_per_split);

  init_rows(p, plan, kvh, static_cast<int64_t>(qtile) * rows, rs);
  for (int e = threadIdx.x; e < rows * L.ldo; e += blockDim.x) o_s[e] = 0.0f;
  __syncthreads();
  const T* q = static_cast<const T*>(p.q);
  copy_rows_to_float<T>(q_s, L.ldq, rows, D, [&](int r) -> const T* {
    const int t = rs.token[r];
    if (t < 0) return nullptr;
    return q + b * p.q_stride[0] + rs.head[r] * p.q_stride[1] + t * p.q_stride[2];
  });

  for (int64_t c0 = col_begin; c0 < col_end; c0 += chunk) {
    if (!load_mask_chunk(p, plan, b, c0, col_end, rs.token, mask_s, colvalid)) continue;
    copy_rows_to_float<T>(k_s, L.ldk, chunk, D, [&](int c) -> const T* {
      if (!colvalid[c]) return nullptr;
      return kv_row<T>(p.past_k, p.past_k_stride, p.k, p.k_stride, p.cache_len, b, kvh, c0 + c);
    });
    copy_rows_to_float<T>(v_s, L.ldv, chunk, D, [&](int c) -> const T* {
      if (!colvalid[c]) return nullptr;
      return kv_row<T>(p.past_v, p.past_v_stride, p.v, p.v_stride, p.cache_len, b, kvh, c0 + c);
    });
    __syncthreads();

    // S = Q K^T: one dot product per (row, column); k_s rows are padded (D + 1) so a warp's
    // 32 columns fall in 32 different banks.
    for (int e = threadIdx.x; e < rows * chunk; e += blockDim.x) {
      const int r = e / chunk, c = e - r * chunk;
      const float* qr = q_s + r * L.ldq;
      const float* kr = k_s + c * L.ldk;
      float dot = 0.0f;
      for (int d = 0; d < D; ++d) dot = fmaf(qr[d], kr[d], dot);
      s_s[r * L.lds + c] = dot;
    }
    __syncthreads();

    softmax_chunk<float>(s_s, L.lds, mask_s, rows, chunk, p.scale, s_s, L.lds, rs);
    __syncthreads();

    // O = O * alpha + P V; each thread owns whole output elements.
    for (int e = threadIdx.x; e < rows * D; e += blockDim.x) {
      const int r = e / D, d = e - r * D;
      const float* pr = s_s + r * L.lds;
      float acc = o_s[r * L.ldo + d] * rs.alpha[r];
      for (int c = 0; c < chunk; ++c) acc = fmaf(pr[c], v_s[c * L.ldv + d], acc);
      o_s[r * L.ldo + d] = acc;
    }
  }
  __syncthreads();
  write_rows<T>(p, plan, b, split, o_s, L.ldo, rs, ws);
}

// Merges the splits of one output row (b, h, t): y = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    combine_splits_kernel(const Params p, int splits, SplitWorkspace ws) {
  __shared__ float weight[kMaxSplits];
  __shared__ float total;
  const int64_t rows_total = p.batch * p.q_heads * p.tokens;
  const int64_t row = blockIdx.x;
  const int D = static_cast<int>(p.head_dim);
  if (threadIdx.x == 0) {
    float m = -INFINITY;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, ws.m[s * rows_total + row]);
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ms = ws.m[s * rows_total + row];
      const float w = (ms == -INFINITY) ? 0.0f : expf(ms - m);  // empty splits weigh nothing
      weight[s] = w;
      sum += ws.l[s * rows_total + row] * w;
    }
    total = sum;
  }
  __syncthreads();
  const int64_t t = row % p.tokens;
  const int64_t h = (row / p.tokens) % p.q_heads;
  const int64_t b = row / (p.tokens * p.q_heads);
  T* y = static_cast<T*>(p.y) + b * p.y_stride[0] + h * p.y_stride[1] + t * p.y_stride[2];
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
      if (weight[s] != 0.0f) acc += ws.o[(s * rows_total + row) * D + d] * weight[s];
    }
    y[d] = from_float<T>(total > 0.0f ? acc / total : 0.0f);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

int validate(const Params& p) {
  if (!detail::dtype_valid(p.dtype)) return REDCOMPILE_ERR_UNSUPPORTED;
  if (p.batch < 0 || p.q_heads < 0 || p.kv_heads <= 0 || p.tokens < 0 || p.cache_len < 0 ||
      p.head_dim < 0 || p.q_heads % p.kv_heads != 0) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.head_dim > kMaxHeadDim) return REDCOMPILE_ERR_UNSUPPORTED;
  const bool work = p.batch > 0 && p.q_heads > 0 && p.tokens > 0 && p.head_dim > 0;
  if (!work) return REDCOMPILE_OK;
  if (!p.q || !p.k || !p.v || !p.y || !p.tree_mask) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  if (p.cache_len > 0 && (!p.past_k || !p.past_v || !p.past_mask)) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.q_stride[3] != 1 || p.k_stride[3] != 1 || p.v_stride[3] != 1 || p.y_stride[3] != 1 ||
      (p.cache_len > 0 && (p.past_k_stride[3] != 1 || p.past_v_stride[3] != 1))) {
    return REDCOMPILE_ERR_UNSUPPORTED;
  }
  if (p.batch > 65535 || p.kv_heads > 65535 || p.tokens > INT_MAX / 2 ||
      p.batch * p.q_heads * p.tokens > INT_MAX) {
    return REDCOMPILE_ERR_UNSUPPORTED;  // grid limits, int token indices
  }
  return REDCOMPILE_OK;
}

bool aligned16(const void* ptr, const int64_t* stride, int n_strides, int vec) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  for (int i = 0; i < n_strides; ++i) {
    if (stride[i] % vec != 0) return false;
  }
  return true;
}

SmemLayout layout_for(bool tensor_cores, int rows, int chunk, int D, int elem) {
  SmemLayout L{};
  size_t off = 0;
  auto region = [&off](size_t bytes) {
    const size_t at = off;
    off = detail::align_up(off + bytes, 128);
    return static_cast<int>(at);
  };
  if (tensor_cores) {
    // WMMA: 16-bit leading dims multiple of 8 elements, fp32 ones multiple of 4; the
    // padding also staggers rows across shared-memory banks.
    L.ldq = L.ldk = L.ldv = D + 8;
    L.lds = chunk + 4;
    L.ldp = chunk + 8;
    L.ldo = D + 4;
    L.q = region(static_cast<size_t>(rows) * L.ldq * elem);
    L.k = region(static_cast<size_t>(chunk) * L.ldk * elem);
    L.v = region(static_cast<size_t>(chunk) * L.ldv * elem);
    L.s = region(static_cast<size_t>(rows) * L.lds * 4);
    L.p = region(static_cast<size_t>(rows) * L.ldp * elem);
  } else {
    L.ldq = D;
    L.ldk = D + 1;
    L.ldv = D;
    L.lds = L.ldp = chunk + 1;
    L.ldo = D;
    L.q = region(static_cast<size_t>(rows) * L.ldq * 4);
    L.k = region(static_cast<size_t>(chunk) * L.ldk * 4);
    L.v = region(static_cast<size_t>(chunk) * L.ldv * 4);
    L.s = region(static_cast<size_t>(rows) * L.lds * 4);
    L.p = L.s;
  }
  L.o = region(static_cast<size_t>(rows) * L.ldo * 4);
  L.mask = region(static_cast<size_t>(rows) * chunk);
  L.colvalid = region(static_cast<size_t>(chunk));
  L.stats = region(static_cast<size_t>(rows) * (8 + 3 * 4 + 4));
  L.bytes = static_cast<int>(off);
  return L;
}

size_t split_workspace_bytes(const Params& p, int splits) {
  const size_t rows = static_cast<size_t>(p.batch) * p.q_heads * p.tokens;
  const size_t o = detail::align_up(static_cast<size_t>(splits) * rows * p.head_dim * 4, 256);
  const size_t ml = detail::align_up(static_cast<size_t>(splits) * rows * 4, 256);
  return o + 2 * ml;
}

SplitWorkspace carve_workspace(const Params& p, int splits, void* base) {
  const size_t rows = static_cast<size_t>(p.batch) * p.q_heads * p.tokens;
  unsigned char* bytes = static_cast<unsigned char*>(base);
  const size_t o = detail::align_up(static_cast<size_t>(splits) * rows * p.head_dim * 4, 256);
  const size_t ml = detail::align_up(static_cast<size_t>(splits) * rows * 4, 256);
  return {reinterpret_cast<float*>(bytes), reinterpret_cast<float*>(bytes + o),
          reinterpret_cast<float*>(bytes + o + ml)};
}

template <typename T>
const void* kernel_for(bool tensor_cores) {
  if (tensor_cores) return reinterpret_cast<const void*>(&tree_attention_tc_kernel<T>);
  return reinterpret_cast<const void*>(&tree_attention_generic_kernel<T>);
}

const void* main_kernel(const Params& p, bool tensor_cores) {
  switch (p.dtype) {
    case REDCOMPILE_FLOAT16:
      return kernel_for<__half>(tensor_cores);
    case REDCOMPILE_BFLOAT16:
      return kernel_for<__nv_bfloat16>(tensor_cores);
    default:
      return reinterpret_cast<const void*>(&tree_attention_generic_kernel<float>);
  }
}

// Opts `kernel` into `smem` bytes of dynamic shared memory and reports how many of its blocks
// fit on one multiprocessor. Both are per device and cheap to cache but not to ask for on every
// launch (a decoding step launches this once per layer), hence the table.
int prepare_kernel(const void* kernel, int smem, int* blocks_per_sm) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int>, int> prepared;
  int device = 0;
  int st = detail::cuda_status(cudaGetDevice(&device));
  if (st != REDCOMPILE_OK) return st;
  const auto key = std::make_tuple(device, kernel, smem);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = prepared.find(key);
  if (found != prepared.end()) {
    *blocks_per_sm = found->second;
    return REDCOMPILE_OK;
  }
  st = detail::cuda_status(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  if (st != REDCOMPILE_OK) return st;
  st = detail::cuda_status(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, kThreads, smem));
  if (st != REDCOMPILE_OK) return st;
  prepared.emplace(key, *blocks_per_sm);
  return REDCOMPILE_OK;
}

// Chooses kernel, tiles and splits. `workspace_limit` caps the split workspace (SIZE_MAX when
// asked for the workspace size): with less, fewer splits are used, down to none.
int make_plan(const Params& p, size_t workspace_limit, Plan* out) {
  Plan plan{};
  const int D = static_cast<int>(p.head_dim);
  plan.tensor_cores = p.dtype != REDCOMPILE_FLOAT32 && D % 16 == 0 && D > 0 &&
                      detail::device_cc_major() >= 8;
  plan.rows = plan.tensor_cores ? 32 : 16;
  plan.chunk = plan.tensor_cores ? (D <= 128 ? 64 : 32) : (D <= 128 ? 32 : 16);
  if (plan.tensor_cores) {
    const int vec = 8;  // 16 bytes of fp16/bf16
    plan.vec_loads = aligned16(p.q, p.q_stride, 3, vec) && aligned16(p.k, p.k_stride, 3, vec) &&
                     aligned16(p.v, p.v_stride, 3, vec) &&
                     (p.cache_len == 0 || (aligned16(p.past_k, p.past_k_stride, 3, vec) &&
                                           aligned16(p.past_v, p.past_v_stride, 3, vec)));
  }
  plan.q_rows = (p.q_heads / p.kv_heads) * p.tokens;
  plan.columns = p.cache_len + p.tokens;
  const int64_t n_qtiles = detail::ceil_div(plan.q_rows, plan.rows);
  if (n_qtiles > INT_MAX / kMaxSplits) return REDCOMPILE_ERR_UNSUPPORTED;
  plan.n_qtiles = static_cast<int>(n_qtiles);
  plan.smem = layout_for(plan.tensor_cores, plan.rows, plan.chunk, D,
                         detail::dtype_size(p.dtype));
  if (plan.smem.bytes > detail::device_max_smem_optin()) return REDCOMPILE_ERR_UNSUPPORTED;
  int per_sm = 0;
  int st = prepare_kernel(main_kernel(p, plan.tensor_cores), plan.smem.bytes, &per_sm);
  if (st != REDCOMPILE_OK) return st;

  // Splits: enough blocks for one full wave of resident blocks, each split reading at least
  // kMinChunksPerSplit chunks; or what the caller asked for.
  const int64_t n_chunks = detail::ceil_div(plan.columns, plan.chunk);
  const int64_t base_blocks = p.batch * p.kv_heads * n_qtiles;
  int64_t want = 1;
  if (p.num_splits > 0) {
    want = p.num_splits;
  } else {
    const int64_t resident = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) *
                             detail::device_sm_count();
    if (base_blocks < resident) {
      want = detail::ceil_div(resident, base_blocks);
      want = std::min<int64_t>(want, n_chunks / kMinChunksPerSplit);
    }
  }
  want = std::max<int64_t>(1, std::min<int64_t>({want, kMaxSplits, n_chunks}));
  const size_t per_split = split_workspace_bytes(p, 1);
  if (want > 1 && split_workspace_bytes(p, static_cast<int>(want)) > workspace_limit) {
    want = static_cast<int64_t>(workspace_limit / (per_split + 3 * 256));
    while (want > 1 && split_workspace_bytes(p, static_cast<int>(want)) > workspace_limit) --want;
    want = std::max<int64_t>(1, want);
  }
  const int64_t chunks_per_split = detail::ceil_div(n_chunks, want);
  plan.splits = static_cast<int>(detail::ceil_div(n_chunks, chunks_per_split));  // none empty
  plan.cols_per_split = chunks_per_split * plan.chunk;
  *out = plan;
  return REDCOMPILE_OK;
}

template <typename T>
int launch(const Params& p, const Plan& plan, SplitWorkspace ws, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.n_qtiles * plan.splits),
                  static_cast<unsigned>(p.kv_heads), static_cast<unsigned>(p.batch));
  if (plan.tensor_cores) {
    if constexpr (sizeof(T) == 2) {
      tree_attention_tc_kernel<T><<<grid, kThreads, plan.smem.bytes, stream>>>(p, plan, ws);
    }
  } else {
    tree_attention_generic_kernel<T><<<grid, kThreads, plan.smem.bytes, stream>>>(p, plan, ws);
  }
  int st = detail::launch_status();
  if (st != REDCOMPILE_OK || plan.splits == 1) return st;
  const int64_t rows_total = p.batch * p.q_heads * p.tokens;
  combine_splits_kernel<T>
      <<<static_cast<unsigned>(rows_total), kThreads, 0, stream>>>(p, plan.splits, ws);
  return detail::launch_status();
}

}  // namespace
}  // namespace redcompile

using namespace redcompile;

extern "C" size_t redcompile_tree_attention_workspace_size(
    const redcompile_tree_attention_params_t* p) {
  if (p == nullptr || validate(*p) != REDCOMPILE_OK) return 0;
  if (p->batch == 0 || p->q_heads == 0 || p->tokens == 0 || p->head_dim == 0) return 0;
  Plan plan;
  if (make_plan(*p, SIZE_MAX, &plan) != REDCOMPILE_OK) return 0;
  return plan.splits > 1 ? split_workspace_bytes(*p, plan.splits) : 0;
}

extern "C" int redcompile_tree_attention(const redcompile_tree_attention_params_t* p,
                                         void* workspace, size_t workspace_bytes,
                                         cudaStream_t stream) {
  if (p == nullptr) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  int st = validate(*p);
  if (st != REDCOMPILE_OK) return st;
  if (p->batch == 0 || p->q_heads == 0 || p->tokens == 0 || p->head_dim == 0) {
    return REDCOMPILE_OK;  // nothing to write
  }
  Plan plan;
  st = make_plan(*p, workspace != nullptr ? workspace_bytes : 0, &plan);
  if (st != REDCOMPILE_OK) return st;
  const SplitWorkspace ws = plan.splits > 1 ? carve_workspace(*p, plan.splits, workspace)
                                            : SplitWorkspace{nullptr, nullptr, nullptr};
  switch (p->dtype) {
    case REDCOMPILE_FLOAT16:
      return launch<__half>(*p, plan, ws, stream);
    case REDCOMPILE_BFLOAT16:
      return launch<__nv_bfloat16>(*p, plan, ws, stream);
    default:
      return launch<float>(*p, plan, ws, stream);
  }
}
