#pragma once
/// \file packing.hpp
/// The interchange bit layout of DESIGN §2 (the reference package's layout).
/// Packing runs along dim 0 of the grouped view [R, C]: rows are split into
/// r equal chunks and chunk c goes into bit field c of packed row i.
///   8-bit: uint8 as is.   4-bit: q[i] << 4 | q[i + R/2].
///   2-bit: shifts 6/4/2/0 over row quarters.   1-bit: chunk c at bit 7 - c.
///   3-bit: int32, R zero-padded to a multiple of 10, chunk c at 27 - 3c.

#include <cstdint>
#include <vector>

#include "hqq/dtype.hpp"
#include "hqq/error.hpp"

namespace hqq {

/// Number of row chunks packed into one element (8/nbits; 10 for 3-bit).
constexpr int pack_ratio(int nbits) {
  return nbits == 8 ? 1 : nbits == 4 ? 2 : nbits == 2 ? 4 : nbits == 1 ? 8 : nbits == 3 ? 10 : 0;
}

/// Element type of the packed tensor: I32 for 3-bit, U8 otherwise.
constexpr DType packed_dtype(int nbits) { return nbits == 3 ? DType::kI32 : DType::kU8; }

/// Throws hqq::Error unless `rows` grouped-view rows can be packed at nbits.
inline void check_packable(int nbits, std::int64_t rows) {
  HQQ_EXPECTS(pack_ratio(nbits) != 0, "nbits={} has no packed layout", nbits);
  HQQ_EXPECTS(rows > 0, "cannot pack {} rows", rows);
  HQQ_EXPECTS(nbits == 3 || rows % pack_ratio(nbits) == 0,
              "{}-bit packing needs the grouped view's row count to be a multiple of {}, "
              "got {} rows (choose another group_size or axis)",
              nbits, pack_ratio(nbits), rows);
}

/// Rows of the packed tensor for R grouped-view rows.
constexpr std::int64_t packed_rows(int nbits, std::int64_t rows) {
  return nbits == 3 ? (rows + 9) / 10 : rows / (pack_ratio(nbits) ? pack_ratio(nbits) : 1);
}

/// Bytes of the packed tensor for a [rows, cols] code matrix.
constexpr std::int64_t packed_bytes(int nbits, std::int64_t rows, std::int64_t cols) {
  return packed_rows(nbits, rows) * cols * static_cast<std::int64_t>(dtype_size(packed_dtype(nbits)));
}

/// Packs codes [rows, cols] (row-major, values < 2^nbits) into `out`
/// (packed_bytes(nbits, rows, cols) bytes; 3-bit as little-endian int32).
/// Multi-threaded.
void pack(int nbits, const std::uint8_t* codes, std::int64_t rows, std::int64_t cols,
          std::uint8_t* out);

/// Inverse of pack(): writes rows*cols codes (3-bit padding rows dropped).
void unpack(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols,
            std::uint8_t* codes);

/// Row r (0 <= r < rows) of the codes, unpacked into cols bytes at `out`:
/// what dequantize streams through without unpacking the whole tensor.
void unpack_row(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols, std::int64_t r,
                std::uint8_t* out);

/// Plain scalar pack, the test oracle for pack().
inline void pack_ref(int nbits, const std::uint8_t* codes, std::int64_t rows, std::int64_t cols,
                     std::uint8_t* out) {
  check_packable(nbits, rows);
  const int r = pack_ratio(nbits);
  const std::int64_t prow = packed_rows(nbits, rows);
  for (std::int64_t i = 0; i < prow; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      std::uint32_t word = 0;
      for (int c = 0; c < r; ++c) {
        const std::int64_t src = c * prow + i;
        const std::uint32_t q = src < rows ? codes[src * cols + j] : 0u;
        const int shift = nbits == 3 ? 27 - 3 * c : 8 - nbits * (c + 1);
        word |= q << shift;
      }
      if (nbits == 3) {
        for (int b = 0; b < 4; ++b) out[(i * cols + j) * 4 + b] = static_cast<std::uint8_t>(word >> (8 * b));
      } else {
        out[i * cols + j] = static_cast<std::uint8_t>(word);
      }
    }
  }
}

/// Plain scalar unpack, the test oracle for unpack().
inline void unpack_ref(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols,
                       std::uint8_t* codes) {
  check_packable(nbits, rows);
  const int r = pack_ratio(nbits);
  const std::int64_t prow = packed_rows(nbits, rows);
  const std::uint32_t mask = (1u << nbits) - 1u;
  for (std::int64_t i = 0; i < prow; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      std::uint32_t word = 0;
      if (nbits == 3) {
        for (int b = 0; b < 4; ++b) word |= static_cast<std::uint32_t>(packed[(i * cols + j) * 4 + b]) << (8 * b);
      } else {
        word = packed[i * cols + j];
      }
      for (int c = 0; c < r; ++c) {
        const std::int64_t dst = c * prow + i;
        if (dst >= rows) break;
        const int shift = nbits == 3 ? 27 - 3 * c : 8 - nbits * (c + 1);
        codes[dst * cols + j] = static_cast<std::uint8_t>((word >> shift) & mask);
      }
    }
  }
}

}  // namespace hqq
