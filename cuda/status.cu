// status.cu: status strings, the last CUDA error per host thread, and cached device attributes.
#include <atomic>

#include "common.cuh"

namespace {

thread_local int g_last_cuda_error = 0;

constexpr int kMaxDevices = 64;
std::atomic<int> g_sm_count[kMaxDevices];
std::atomic<int> g_smem_optin[kMaxDevices];
std::atomic<int> g_cc_major[kMaxDevices];

int cached_attribute(std::atomic<int>* cache, cudaDeviceAttr attr) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0) return 0;
  if (device < kMaxDevices) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int value = 0;
  if (cudaDeviceGetAttribute(&value, attr, device) != cudaSuccess) return 0;
  if (device < kMaxDevices) cache[device].store(value, std::memory_order_relaxed);
  return value;
}

}  // namespace

extern "C" const char* redcompile_status_string(int status) {
  switch (status) {
    case REDCOMPILE_OK:
      return "ok";
    case REDCOMPILE_ERR_INVALID_ARGUMENT:
      return "invalid argument (null pointer, negative size or inconsistent shapes)";
    case REDCOMPILE_ERR_UNSUPPORTED:
      return "unsupported dtype, size or layout";
    case REDCOMPILE_ERR_WORKSPACE:
      return "workspace too small";
    case REDCOMPILE_ERR_CUDA:
      return "CUDA error";
    default:
      return "unknown redcompile status";
  }
}

extern "C" int redcompile_last_cuda_error(void) { return g_last_cuda_error; }

namespace redcompile {
namespace detail {

int cuda_status(cudaError_t e) {
  if (e == cudaSuccess) return REDCOMPILE_OK;
  g_last_cuda_error = static_cast<int>(e);
  return REDCOMPILE_ERR_CUDA;
}

int launch_status() { return cuda_status(cudaGetLastError()); }

int device_sm_count() { return cached_attribute(g_sm_count, cudaDevAttrMultiProcessorCount); }

int device_max_smem_optin() {
  return cached_attribute(g_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin);
}

int device_cc_major() { return cached_attribute(g_cc_major, cudaDevAttrComputeCapabilityMajor); }

}  // namespace detail
}  // namespace redcompile
