// common.cuh: device helpers shared by redcompile's kernels (dtype conversion, block reductions,
// exact k-th largest selection) and host helpers for the C entry points.
//
// Everything here is plain CUDA C++ (no torch), so the kernels serve the torch bindings and
// TensorRT plugins alike. Reductions assume blockDim.x is a multiple of 32 (every launcher in
// this directory launches 128 or 256 threads).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "redcompile_kernels.h"

namespace redcompile {

// Apple's LOG_0: the logit a top-k warp gives to every token outside the top k.
constexpr float kLog0 = -50000.0f;
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round-to-nearest-even casts, as torch's `.to(dtype)` does.
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// One element of a tensor whose dtype is only known at run time (used for small reads).
__device__ __forceinline__ float load_as_float(const void* base, int64_t offset,
                                               redcompile_dtype_t dtype) {
  switch (dtype) {
    case REDCOMPILE_FLOAT16:
      return __half2float(static_cast<const __half*>(base)[offset]);
    case REDCOMPILE_BFLOAT16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[offset]);
    default:
      return static_cast<const float*>(base)[offset];
  }
}

// ---------------------------------------------------------------------------------------------
// Warp and block reductions (every thread of the block gets the result)
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ unsigned warp_sum_u32(unsigned v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Scratch for the block reductions: one slot per warp. The leading __syncthreads in each
// reduction lets the same scratch serve back-to-back reductions safely.
struct ReduceScratch {
  float value[32];
  int64_t index[32];
  unsigned count[32];
};

__device__ __forceinline__ float block_max(float v, ReduceScratch& s) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) s.value[warp] = v;
  __syncthreads();
  float r = s.value[0];
  for (int i = 1; i < warps; ++i) r = fmaxf(r, s.value[i]);
  return r;
}

__device__ __forceinline__ float block_sum(float v, ReduceScratch& s) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) s.value[warp] = v;
  __syncthreads();
  float r = s.value[0];
  for (int i = 1; i < warps; ++i) r += s.value[i];
  return r;
}

__device__ __forceinline__ unsigned block_sum_u32(unsigned v, ReduceScratch& s) {
  v = warp_sum_u32(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) s.count[warp] = v;
  __syncthreads();
  unsigned r = 0;
  for (int i = 0; i < warps; ++i) r += s.count[i];
  return r;
}

// torch.argmax's order: NaN above everything, then larger values, then the smaller index.
__device__ __forceinline__ bool argmax_prefers(float v1, int64_t i1, float v2, int64_t i2) {
  const bool nan1 = isnan(v1), nan2 = isnan(v2);
  if (nan1 != nan2) return nan1;
  if (!nan1 && v1 != v2) return v1 > v2;
  return i1 < i2;
}

struct ArgMax {
  float value;
  int64_t index;
};

__device__ __forceinline__ ArgMax argmax_identity() { return {-INFINITY, INT64_MAX}; }

__device__ __forceinline__ void argmax_update(ArgMax& best, float v, int64_t i) {
  if (argmax_prefers(v, i, best.value, best.index)) best = {v, i};
}

__device__ __forceinline__ ArgMax warp_argmax(ArgMax a) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float v = __shfl_xor_sync(kFullMask, a.value, offset);
    const int64_t i = __shfl_xor_sync(kFullMask, a.index, offset);
    argmax_update(a, v, i);
  }
  return a;
}

__device__ __forceinline__ ArgMax block_argmax(ArgMax a, ReduceScratch& s) {
  a = warp_argmax(a);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    s.value[warp] = a.value;
    s.index[warp] = a.index;
  }
  __syncthreads();
  ArgMax r = {s.value[0], s.index[0]};
  for (int i = 1; i < warps; ++i) argmax_update(r, s.value[i], s.index[i]);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Exact k-th largest value of a row: MSB-first radix select over order-preserving float keys
// ---------------------------------------------------------------------------------------------

// Unsigned keys that sort like the floats (NaN above +inf, -0 just below +0).
__device__ __forceinline__ uint32_t float_key(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_to_float(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

struct RadixScratch {
  unsigned hist[256];
  unsigned digit;
  unsigned remaining;
};

// The k-th largest (1-based, duplicates counted) of value(i) for i in [0, n), as torch.topk's
// values[k - 1]. Needs 1 <= k <= n < 2**32. Four passes of 8 bits over the row: each pass
// histograms the keys that share the prefix found so far and picks the digit holding the k-th.
// `value` must return the same float for the same i on every pass. Called by the whole block.
template <typename ValueFn>
__device__ float block_kth_largest(int64_t n, unsigned k, ValueFn value, RadixScratch& s) {
  uint32_t prefix = 0, prefix_mask = 0;
  unsigned remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) s.hist[i] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const uint32_t key = float_key(value(i));
      if ((key & prefix_mask) == prefix) atomicAdd(&s.hist[(key >> shift) & 0xffu], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l owns digits 255 - 8l down to 248 - 8l, so lanes run from the largest keys down.
      const int lane = threadIdx.x;
      unsigned counts[8], total = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        counts[j] = s.hist[255 - 8 * lane - j];
        total += counts[j];
      }
      unsigned inclusive = total;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned up = __shfl_up_sync(kFullMask, inclusive, offset);
        if (lane >= offset) inclusive += up;
      }
      const unsigned owner = __ffs(__ballot_sync(kFullMask, inclusive >= remaining)) - 1;
      if (static_cast<unsigned>(lane) == owner) {
        unsigned above = inclusive - total;  // keys in larger digits
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (above + counts[j] >= remaining) {
            s.digit = 255u - 8u * lane - j;
            s.remaining = remaining - above;
            break;
          }
          above += counts[j];
        }
      }
    }
    __syncthreads();
    prefix |= s.digit << shift;
    prefix_mask |= 0xffu << shift;
    remaining = s.remaining;
  }
  __syncthreads();  // everyone has read s.digit before the caller reuses the scratch
  return key_to_float(prefix);
}

// ---------------------------------------------------------------------------------------------
// Host helpers (defined in status.cu)
// ---------------------------------------------------------------------------------------------

namespace detail {

// Records a failed CUDA call for redcompile_last_cuda_error; REDCOMPILE_OK when e == cudaSuccess.
int cuda_status(cudaError_t e);
// Status of the kernels just launched (consumes cudaGetLastError).
int launch_status();
// Multiprocessor count and opt-in shared memory per block of the current device (cached).
int device_sm_count();
int device_max_smem_optin();
int device_cc_major();

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

inline int dtype_size(redcompile_dtype_t dtype) { return dtype == REDCOMPILE_FLOAT32 ? 4 : 2; }
inline bool dtype_valid(redcompile_dtype_t dtype) {
  return dtype == REDCOMPILE_FLOAT32 || dtype == REDCOMPILE_FLOAT16 ||
         dtype == REDCOMPILE_BFLOAT16;
}

}  // namespace detail
}  // namespace redcompile
