#pragma once
// HQQ_CUDA_CHECK: every CUDA runtime call of the backend goes through it.

#include <cuda_runtime.h>

#include <cstdio>

#include "hqq/error.hpp"

namespace hqq::cuda::detail {

/// Throws hqq::Error naming the failed call and CUDA's reason.
inline void check_cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so later calls start clean
  ::hqq::detail::throw_error("CUDA call failed: {}: {} ({})", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

/// For destructors: reports to stderr instead of throwing.
inline void check_cuda_nothrow(cudaError_t e, const char* what) noexcept {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  std::fprintf(stderr, "hqq: CUDA call failed in cleanup: %s: %s\n", what, cudaGetErrorString(e));
}

}  // namespace hqq::cuda::detail

#define HQQ_CUDA_CHECK(expr) ::hqq::cuda::detail::check_cuda((expr), #expr)
#define HQQ_CUDA_CHECK_NOTHROW(expr) ::hqq::cuda::detail::check_cuda_nothrow((expr), #expr)
