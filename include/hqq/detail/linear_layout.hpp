#pragma once
/// \file detail/linear_layout.hpp
/// The kernel layout of QuantizedLinear (DESIGN §2 "kernel layouts"), one
/// definition for the CPU and CUDA matmul kernels.
///
/// A weight W[N, K] quantized along axis 1 with a group size G that is a
/// multiple of 32 is held as:
///   * codes: row n is K/32 *chunks* of 32 consecutive codes (k = 32c..32c+31);
///     a chunk is `chunk_words(nbits)` little-endian uint32 words:
///       8/4/2/1-bit: word w holds the 32/b codes 32w/b .. 32(w+1)/b - 1 of the
///       chunk; code 4j + i of a word sits in byte i at bit b*j. So
///       (word >> b*j) & mask-per-byte gives codes 4j..4j+3 in bytes 0..3,
///       which is one shift and one AND per four codes on either device.
///       3-bit: words 0-1 hold the low two bits of the 32 codes by the 2-bit
///       rule, word 2 the high bit by the 1-bit rule.
///     Rows are contiguous: row n starts at word n * K/32 * chunk_words.
///   * meta: per row and group, the pair (scale, zero) next to each other,
///     [N][K/G][2] in f16 when the quantized tensor stores f16 metadata (exact),
///     else f32 (f32 and bf16 metadata; bf16 widens exactly).
/// Everything else (axis 0, G not a multiple of 32, G not dividing K: groups
/// that run across rows) takes the dense path:
/// the weight dequantized once to f32 [N, K]. Slower and 8x the memory of
/// 4-bit codes, but exact; QuantizedLinear::layout() says which one is used.

#include <cmath>
#include <cstdint>
#include <vector>

#include "hqq/dtype.hpp"
#include "hqq/detail/host_device.hpp"

namespace hqq::detail {

/// Codes per chunk: the unit a kernel decodes and multiplies at once.
constexpr int kLinearChunk = 32;

/// uint32 words per 32-code chunk (= nbits).
HQQ_HOST_DEVICE constexpr int chunk_words(int nbits) { return nbits; }

/// Byte mask that keeps one b-bit code per byte.
HQQ_HOST_DEVICE constexpr std::uint32_t byte_code_mask(int nbits) {
  return nbits == 8 ? 0xFFFFFFFFu : nbits == 4 ? 0x0F0F0F0Fu : nbits == 2 ? 0x03030303u : 0x01010101u;
}

/// Where code `c` (0..31) of a chunk lives for a pure width b (8/4/2/1):
/// word index and bit offset inside that word.
HQQ_HOST_DEVICE constexpr int chunk_code_word(int b, int c) { return c / (32 / b); }
HQQ_HOST_DEVICE constexpr int chunk_code_shift(int b, int c) {
  return 8 * ((c % (32 / b)) % 4) + b * ((c % (32 / b)) / 4);
}

/// Reads code c (0..31) from a chunk (scalar reference decoder).
HQQ_HOST_DEVICE std::uint32_t chunk_code(const std::uint32_t* chunk, int nbits, int c) {
  if (nbits == 3) {
    const std::uint32_t lo = (chunk[chunk_code_word(2, c)] >> chunk_code_shift(2, c)) & 3u;
    const std::uint32_t hi = (chunk[2] >> chunk_code_shift(1, c)) & 1u;
    return lo | (hi << 2);
  }
  const std::uint32_t mask = (nbits == 8) ? 0xFFu : ((1u << nbits) - 1u);
  return (chunk[chunk_code_word(nbits, c)] >> chunk_code_shift(nbits, c)) & mask;
}

/// Writes 32 codes (each < 2^nbits) into a zeroed chunk.
inline void encode_chunk(const std::uint8_t* codes, int nbits, std::uint32_t* chunk) {
  for (int w = 0; w < chunk_words(nbits); ++w) chunk[w] = 0;
  for (int c = 0; c < kLinearChunk; ++c) {
    const std::uint32_t q = codes[c];
    if (nbits == 3) {
      chunk[chunk_code_word(2, c)] |= (q & 3u) << chunk_code_shift(2, c);
      chunk[2] |= (q >> 2) << chunk_code_shift(1, c);
    } else {
      chunk[chunk_code_word(nbits, c)] |= q << chunk_code_shift(nbits, c);
    }
  }
}

/// The integer nearest a zero-point z (0 when |z| >= 2^22), which the matmul
/// kernels subtract from the codes: they form sum (q - zi) * x, exact small
/// integers times x, and subtract (z - zi) * sum x (z - zi is exact). The
/// same value as sum q*x - z * sum x, without cancelling two large sums when
/// a group's codes sit near a large z (a group with an outlier).
HQQ_HOST_DEVICE float zero_integer_part(float z) { return fabsf(z) < 4194304.0f ? rintf(z) : 0.0f; }

/// Which representation a QuantizedLinear holds.
enum class LinearPath {
  kPacked,  ///< codes in the chunk layout above, fused dequantize-matmul
  kDense,   ///< the weight dequantized to f32 (axis 0 or group size not a multiple of 32)
};

/// The host copy of a linear layer's weights in kernel layout; backends build
/// their device copies from it.
struct LinearLayout {
  std::int64_t out_features = 0;  ///< N
  std::int64_t in_features = 0;   ///< K
  int nbits = 4;
  std::int64_t group_size = 64;
  LinearPath path = LinearPath::kPacked;
  DType meta_dtype = DType::kF16;     ///< kF16 or kF32 (packed path)
  std::vector<std::uint32_t> codes;   ///< packed path: N * K/32 * nbits words
  std::vector<std::uint8_t> meta;     ///< packed path: N * K/G * 2 values of meta_dtype
  std::vector<float> dense;           ///< dense path: N * K dequantized weights
  std::vector<float> bias;            ///< N values or empty

  /// Words per row of codes.
  std::int64_t row_words() const { return in_features / kLinearChunk * nbits; }
  /// Groups per row.
  std::int64_t row_groups() const { return in_features / group_size; }
  /// Bytes a forward pass streams for the weights (codes or dense, meta, bias).
  std::int64_t weight_bytes() const {
    return static_cast<std::int64_t>(codes.size() * 4 + meta.size() + dense.size() * 4 + bias.size() * 4);
  }
};

}  // namespace hqq::detail
