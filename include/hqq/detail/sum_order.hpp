#pragma once
/// \file detail/sum_order.hpp
/// The order in which a group's per-iteration sums (of |w - w_r| and of the
/// z terms) are added. Float addition is not associative, and the solver
/// compares these sums across iterations (a group keeps its lowest-error z;
/// the error is often flat for a few iterations, so the last bit decides),
/// so the CPU tile solver and the CUDA kernels add in this one order and
/// agree bit for bit:
///   element i of a group goes to part i / epl (epl > 0: contiguous chunks,
///   the lanes of a warp on the GPU) or i % parts (epl == 0: large groups,
///   the threads of a block); each part adds its elements in increasing i
///   from 0.0f; then parts combine by halving: for off = parts/2 ... 1,
///   part l += part l + off (l < off); part 0 is the sum.

#include <cstdint>

#include "hqq/detail/host_device.hpp"

namespace hqq::detail {

/// Largest group the CUDA kernels hold in registers (a warp at most).
constexpr std::int64_t kRegisterGroupMax = 1024;
/// Parts of a larger group's sums (the CUDA block size of that path).
constexpr int kLargeGroupParts = 256;

/// How the sums of a group of G elements are split.
struct SumOrder {
  int parts = 1;  ///< number of partial sums, a power of two
  int epl = 0;    ///< elements per part (contiguous); 0: strided by parts
};

/// The split for a group of G elements: up to 8 elements per part while
/// parts <= 32 (then 16 or 32), strided over 256 parts above 1024.
HQQ_HOST_DEVICE constexpr SumOrder sum_order(std::int64_t G) {
  if (G > kRegisterGroupMax) return SumOrder{kLargeGroupParts, 0};
  int parts = 1;
  while (parts < 32 && (G + parts - 1) / parts > 8) parts *= 2;
  const std::int64_t per = (G + parts - 1) / parts;
  return SumOrder{parts, per <= 8 ? 8 : per <= 16 ? 16 : 32};
}

}  // namespace hqq::detail
