// kv_compaction.cu: write the accepted path's keys (or values) after each row's cached tokens,
// in place (ops/kv_compaction.py):
//   cache[b, h, cache_lengths[b] + j, :] = new[b, h, keep_idx[b, j], :]   for j < keep_len[b]
// One thread copies one 16-, 4- or 2-byte piece of one kept row; the widest piece that the
// row size, the base pointers and the strides allow is used. Rejected and padding slots are
// never touched, so the work is proportional to B * H * T * D, independent of the capacity S.
#include <algorithm>
#include <climits>

#include "common.cuh"

namespace redcompile {
namespace {

using Params = redcompile_kv_compaction_params_t;

constexpr int kThreads = 256;

template <typename U>
__global__ void __launch_bounds__(kThreads) kv_compaction_kernel(const Params p, int elem) {
  const int64_t pieces_per_row = p.head_dim * elem / static_cast<int64_t>(sizeof(U));
  const int64_t total = p.batch * p.heads * p.tokens * pieces_per_row;
  const int64_t elems_per_piece = sizeof(U) / elem;
  for (int64_t unit = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; unit < total;
       unit += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rest = unit;
    const int64_t piece = rest % pieces_per_row;
    rest /= pieces_per_row;
    const int64_t j = rest % p.tokens;
    rest /= p.tokens;
    const int64_t h = rest % p.heads;
    const int64_t b = rest / p.heads;
    if (j >= p.keep_len[b]) continue;
    const int64_t src = p.keep_idx[b * p.keep_idx_stride[0] + j * p.keep_idx_stride[1]];
    const int64_t dst = p.cache_lengths[b] + j;
    if (src < 0 || src >= p.tokens || dst < 0 || dst >= p.capacity) continue;  // out of contract
    const int64_t d = piece * elems_per_piece;
    const unsigned char* from = static_cast<const unsigned char*>(p.new_kv) +
                                (b * p.new_stride[0] + h * p.new_stride[1] + src * p.new_stride[2] +
                                 d) * elem;
    unsigned char* to = static_cast<unsigned char*>(p.cache) +
                        (b * p.cache_stride[0] + h * p.cache_stride[1] + dst * p.cache_stride[2] +
                         d) * elem;
    *reinterpret_cast<U*>(to) = *reinterpret_cast<const U*>(from);
  }
}

int validate(const Params& p) {
  if (!detail::dtype_valid(p.dtype)) return REDCOMPILE_ERR_UNSUPPORTED;
  if (p.batch < 0 || p.heads < 0 || p.capacity < 0 || p.tokens < 0 || p.head_dim < 0) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.batch * p.heads * p.tokens == 0 || p.head_dim == 0) return REDCOMPILE_OK;
  if (!p.cache || !p.new_kv || !p.cache_lengths || !p.keep_idx || !p.keep_len) {
    return REDCOMPILE_ERR_INVALID_ARGUMENT;
  }
  if (p.cache_stride[3] != 1 || p.new_stride[3] != 1) return REDCOMPILE_ERR_UNSUPPORTED;
  return REDCOMPILE_OK;
}

// Whether pieces of `bytes` bytes can copy every row: row size, pointers and strides align.
bool fits(const Params& p, int elem, int bytes) {
  if ((p.head_dim * elem) % bytes != 0) return false;
  if (reinterpret_cast<uintptr_t>(p.cache) % bytes || reinterpret_cast<uintptr_t>(p.new_kv) % bytes) {
    return false;
  }
  for (int i = 0; i < 3; ++i) {
    if ((p.cache_stride[i] * elem) % bytes || (p.new_stride[i] * elem) % bytes) return false;
  }
  return true;
}

template <typename U>
int launch(const Params& p, int elem, cudaStream_t stream) {
  const int64_t pieces = p.batch * p.heads * p.tokens * (p.head_dim * elem / sizeof(U));
  const int64_t blocks = std::min<int64_t>(detail::ceil_div(pieces, kThreads), 65535);
  kv_compaction_kernel<U><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p, elem);
  return detail::launch_status();
}

}  // namespace
}  // namespace redcompile

using namespace redcompile;

extern "C" size_t redcompile_kv_compaction_workspace_size(const redcompile_kv_compaction_params_t*) {
  return 0;
}

extern "C" int redcompile_kv_compaction(const redcompile_kv_compaction_params_t* p, void*, size_t,
                                        cudaStream_t stream) {
  if (p == nullptr) return REDCOMPILE_ERR_INVALID_ARGUMENT;
  const int st = validate(*p);
  if (st != REDCOMPILE_OK || p->batch * p->heads * p->tokens == 0 || p->head_dim == 0) return st;
  const int elem = detail::dtype_size(p->dtype);
  if (fits(*p, elem, 16)) return launch<uint4>(*p, elem, stream);
  if (fits(*p, elem, 4)) return launch<uint32_t>(*p, elem, stream);
  return launch<uint16_t>(*p, elem, stream);  // 2-byte pieces always fit fp16/bf16/fp32 rows
}
