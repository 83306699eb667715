#pragma once
// How the GEMM kernels' epilogue turns an accumulator fragment into stores of
// two adjacent outputs. Host and device code, so that the tests play a warp's
// exchange on the CPU.
//
// A 16 x 8 accumulator fragment of mma.m16n8k16 (and of wgmma, per warp and
// 8 activation rows) with the weight as operand A: lane (g = lane / 4,
// t = lane % 4) holds v[e] at weight row (output column) g + 8 (e >> 1) and
// activation row (output row) 2t + (e & 1). y is row-major [M, N], so no lane
// holds two outputs side by side in memory. Lanes g and g ^ 1 (lane ^ 4)
// swap two values: afterwards the even-g lane holds row 2t, columns g, g + 1
// and g + 8, g + 9; the odd-g lane row 2t + 1, columns g - 1, g and g + 7,
// g + 8. Each lane then stores two pairs (32-bit for f16/bf16 y, 64-bit for
// f32) instead of four single elements, with one row check per fragment.

#include "hqq/detail/host_device.hpp"

namespace hqq::cuda::detail {

/// Where a lane's pairs go in its fragment: out[0], out[1] at (row, col),
/// (row, col + 1); out[2], out[3] at (row, col + 8), (row, col + 9).
struct PairPlace {
  int row, col;
};

HQQ_HOST_DEVICE PairPlace pair_place(int lane) {
  const int g = lane >> 2, t = lane & 3;
  return {2 * t + (g & 1), g & ~1};
}

/// The value lane sends to lane ^ 4 in exchange k (0 or 1): the one of its
/// own row pair the partner keeps.
HQQ_HOST_DEVICE float pair_send(const float (&v)[4], int lane, int k) {
  const bool odd = (lane >> 2) & 1;
  return odd ? v[2 * k] : v[2 * k + 1];
}

/// The lane's pairs from its own values and the two it received.
HQQ_HOST_DEVICE void pair_keep(const float (&v)[4], float r0, float r1, int lane, float (&out)[4]) {
  if ((lane >> 2) & 1) {
    out[0] = r0, out[1] = v[1], out[2] = r1, out[3] = v[3];
  } else {
    out[0] = v[0], out[1] = r0, out[2] = v[2], out[3] = r1;
  }
}

}  // namespace hqq::cuda::detail
