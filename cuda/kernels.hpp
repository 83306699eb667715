#pragma once
// The launchers of the CUDA kernels, as plain functions over raw device
// pointers. The host side (api.cpp) validates everything before calling them;
// they only check launches. Internal to the CUDA backend.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "hqq/config.hpp"

namespace hqq::cuda::detail {

/// Floating element types the kernels read and write.
enum class ElemType : std::uint8_t { kF32, kF16, kBF16 };

/// One quantization job (validated by the caller).
struct QuantizeJob {
  const void* weight = nullptr;  ///< device pointer, numel elements of in_type
  ElemType in_type = ElemType::kF32;
  std::int64_t numel = 0;
  std::int64_t group_size = 0;
  int axis = 1;
  int nbits = 4;
  Solver solver = Solver::kProximal;
  SolverParams params;
  bool round_zero = false;
  ElemType meta_type = ElemType::kF16;  ///< element type of scale and zero
  std::uint8_t* packed = nullptr;       ///< device, packed_bytes(...)
  void* scale = nullptr;                ///< device, num_groups values
  void* zero = nullptr;                 ///< device, num_groups values
  void* workspace = nullptr;            ///< device, quantize_workspace_bytes(...)
};

/// Device scratch a job needs (always > 0: it holds the non-finite flag).
std::size_t quantize_workspace_bytes(std::int64_t numel, std::int64_t group_size, int axis, int nbits,
                                     Solver solver, const SolverParams& params);

/// Queues the whole quantization on `stream`. The workspace's first int is
/// set to 1 when a weight is NaN or Inf (read it with nonfinite_flag_offset).
cudaError_t launch_quantize(const QuantizeJob& job, cudaStream_t stream);
/// Byte offset of the non-finite flag (an int) in the workspace.
constexpr std::size_t kNonfiniteFlagOffset = 0;

/// Sets *first (device; preset to UINT64_MAX by the caller) to the lowest
/// flat index of a NaN or Inf weight.
cudaError_t launch_find_nonfinite(const void* weight, ElemType type, std::int64_t numel,
                                  unsigned long long* first, cudaStream_t stream);

/// Dequantizes packed codes (grouped view [rows, cols]) into `out`.
cudaError_t launch_dequantize(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols,
                              int axis, const void* scale, const void* zero, ElemType meta_type, void* out,
                              ElemType out_type, cudaStream_t stream);

/// Packs codes [rows, cols] into the interchange layout.
cudaError_t launch_pack(int nbits, const std::uint8_t* codes, std::int64_t rows, std::int64_t cols,
                        std::uint8_t* packed, cudaStream_t stream);
/// Unpacks the interchange layout into codes [rows, cols].
cudaError_t launch_unpack(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols,
                          std::uint8_t* codes, cudaStream_t stream);

/// One QuantizedLinear forward on the packed (chunk) layout of
/// hqq/detail/linear_layout.hpp: y[m, N] = x[m, K] W^T + bias.
struct LinearJob {
  const std::uint32_t* codes = nullptr;  ///< device, N * K/32 * nbits words
  const void* meta = nullptr;            ///< device, (scale, zero) pairs [N][K/G]
  ElemType meta_type = ElemType::kF16;   ///< kF16 or kF32
  const float* bias = nullptr;           ///< device, N values or null
  const float* dense = nullptr;          ///< device, W [N, K] f32 (dense path; codes null)
  std::int64_t n = 0, k = 0, group_size = 0;
  int nbits = 4;
  const void* x = nullptr;  ///< device, [m, K] of x_type
  ElemType x_type = ElemType::kF32;
  std::int64_t m = 0;
  void* y = nullptr;  ///< device, [m, N] of y_type
  ElemType y_type = ElemType::kF32;
  int num_sms = 1;  ///< of the current device, for the split-K choice
};

/// Device scratch (bytes) a linear job needs for its split-K partial sums.
std::size_t linear_workspace_bytes(const LinearJob& job);
/// Queues the forward on `stream`; `workspace` holds linear_workspace_bytes(job).
cudaError_t launch_linear(const LinearJob& job, void* workspace, cudaStream_t stream);

/// One tensor-core GEMM forward (cuda/gemm.cu) over the fragment layout of
/// hqq/detail/gemm_layout.hpp: y[m, N] = x[m, K] W^T + bias, x f16 or bf16.
struct GemmJob {
  const std::uint32_t* codes = nullptr;  ///< device, npad/16 * kpad/64 * 32 * nbits words
  const void* meta = nullptr;            ///< device, (scale, zero) pairs [groups][npad]
  ElemType meta_type = ElemType::kF16;   ///< kF16 or kF32
  const float* bias = nullptr;           ///< device, N values or null
  std::int64_t n = 0, k = 0, npad = 0, kpad = 0, group_size = 0, groups = 0;
  int nbits = 4;
  const void* x = nullptr;  ///< device, [m, K] of x_type (16-byte aligned)
  ElemType x_type = ElemType::kF16;
  std::int64_t m = 0;
  void* y = nullptr;  ///< device, [m, N] of y_type
  ElemType y_type = ElemType::kF16;
  int num_sms = 1;   ///< of the current device, for the split-K choice
  bool wgmma = false;  ///< the sm_90a TMA + wgmma kernels run (built, the device is sm_90); false: mma.sync
  int config = -1;   ///< block tile (0..gemm_config_count()-1: 0-3 mma.sync, 4-8 TMA); -1 = by m
  int splits = 0;    ///< K splits; 0 = by the occupancy rule
  /// Stream-K (TMA kernels only; tile_walk.hpp): 1 on, 0 off, -1 as
  /// HQQ_GEMM_STREAMK says (off when unset). It replaces the splits.
  int stream_k = -1;
};

/// Number of block-tile configurations (GemmJob::config).
int gemm_config_count();
/// Whether this build holds the sm_90a wgmma kernel.
bool gemm_wgmma_built();
/// The plan launch_gemm follows for `job`: path, block tile, splits (for
/// HQQ_GEMM_PLAN=1 and the tests).
std::string gemm_plan_description(const GemmJob& job);
/// Device scratch (bytes) a GEMM job needs for its split-K partial sums.
std::size_t gemm_workspace_bytes(const GemmJob& job);
/// Queues the GEMM on `stream`; `workspace` holds gemm_workspace_bytes(job).
cudaError_t launch_gemm(const GemmJob& job, void* workspace, cudaStream_t stream);

}  // namespace hqq::cuda::detail
