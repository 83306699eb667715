#pragma once
// Device helpers shared by the CUDA kernels: element conversions, the solver
// ops policy, warp reductions. Only cuda/*.cu include this file.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "hqq/solver.hpp"
#include "kernels.hpp"

namespace hqq::cuda::detail {

/// Solver policy for solver.hpp on the device: the CPU lanes' operations,
/// pow included (pow_portable), so both backends round alike.
struct DeviceOps {
  using V = float;
  __device__ __forceinline__ static float rint(float x) { return ::rintf(x); }
  __device__ __forceinline__ static float clamp(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }
  __device__ __forceinline__ static float abs(float x) { return ::fabsf(x); }
  __device__ __forceinline__ static float max0(float x) { return fmaxf(x, 0.0f); }
  __device__ __forceinline__ static float pow(float x, float e) { return ::hqq::detail::pow_portable(x, e); }
  __device__ __forceinline__ static float with_sign_of(float t, float x) { return x < 0.0f ? -t : t; }
};

/// Element type codes shared with the host side (kernels.hpp's ElemType).
__device__ __forceinline__ float load_elem(const void* p, std::int64_t i, ElemType t) {
  switch (t) {
    case ElemType::kF16: return __half2float(static_cast<const __half*>(p)[i]);
    case ElemType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

/// Stores v rounded to nearest-even in the element type (the CPU's round_to).
__device__ __forceinline__ void store_elem(void* p, std::int64_t i, ElemType t, float v) {
  switch (t) {
    case ElemType::kF16: static_cast<__half*>(p)[i] = __float2half_rn(v); return;
    case ElemType::kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); return;
    default: static_cast<float*>(p)[i] = v; return;
  }
}

/// v rounded to the element type and back (round_to of dtype.hpp).
__device__ __forceinline__ float round_elem(ElemType t, float v) {
  switch (t) {
    case ElemType::kF16: return __half2float(__float2half_rn(v));
    case ElemType::kBF16: return __bfloat162float(__float2bfloat16_rn(v));
    default: return v;
  }
}

/// Shift of row chunk c in a packed element (packing.hpp).
__host__ __device__ __forceinline__ int chunk_shift(int nbits, int c) {
  return nbits == 3 ? 27 - 3 * c : 8 - nbits * (c + 1);
}

/// Sum over the `kWidth` lanes of an aligned lane group (kWidth a power of two <= 32).
template <int kWidth>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int off = kWidth / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

/// Grid-stride loop bounds over n items with 64-bit indices.
__device__ __forceinline__ std::int64_t global_thread() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_threads() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

}  // namespace hqq::cuda::detail
