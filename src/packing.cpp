// Multi-threaded interchange-layout packing (layout in packing.hpp).

#include "hqq/packing.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "3-bit words are stored little-endian; a big-endian host needs byte swaps");

namespace hqq {
namespace {

/// Shift of row chunk c in a packed element.
constexpr int chunk_shift(int nbits, int c) { return nbits == 3 ? 27 - 3 * c : 8 - nbits * (c + 1); }

template <int kBits>
void pack_bytes(const std::uint8_t* codes, std::int64_t rows, std::int64_t cols, std::uint8_t* out) {
  constexpr int r = pack_ratio(kBits);
  const std::int64_t prow = rows / r;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < prow; ++i) {
    std::uint8_t* dst = out + i * cols;
    for (std::int64_t j = 0; j < cols; ++j) dst[j] = 0;
    for (int c = 0; c < r; ++c) {
      const std::uint8_t* src = codes + (c * prow + i) * cols;
      for (std::int64_t j = 0; j < cols; ++j)
        dst[j] = static_cast<std::uint8_t>(dst[j] | (src[j] << chunk_shift(kBits, c)));
    }
  }
}

void pack_3bit(const std::uint8_t* codes, std::int64_t rows, std::int64_t cols, std::uint8_t* out) {
  const std::int64_t prow = packed_rows(3, rows);
#pragma omp parallel
  {
    std::vector<std::uint32_t> word(static_cast<std::size_t>(cols));
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < prow; ++i) {
      std::fill(word.begin(), word.end(), 0u);
      for (int c = 0; c < 10; ++c) {
        const std::int64_t row = c * prow + i;
        if (row >= rows) break;  // zero padding rows
        const std::uint8_t* src = codes + row * cols;
        for (std::int64_t j = 0; j < cols; ++j) word[j] |= static_cast<std::uint32_t>(src[j]) << chunk_shift(3, c);
      }
      std::memcpy(out + i * cols * 4, word.data(), static_cast<std::size_t>(cols) * 4);
    }
  }
}

/// Grouped-view row c * prow + i: bit field c of packed row i; no checks.
template <int kBits>
void unpack_row_unchecked(const std::uint8_t* packed, std::int64_t cols, std::int64_t i, int c,
                          std::uint8_t* out) {
  const int shift = chunk_shift(kBits, c);
  constexpr unsigned mask = (1u << kBits) - 1u;
  if constexpr (kBits == 3) {
    const std::uint8_t* src = packed + i * cols * 4;
    for (std::int64_t j = 0; j < cols; ++j) {
      std::uint32_t word;
      std::memcpy(&word, src + 4 * j, 4);
      out[j] = static_cast<std::uint8_t>((word >> shift) & mask);
    }
  } else {
    const std::uint8_t* src = packed + i * cols;
    for (std::int64_t j = 0; j < cols; ++j) out[j] = static_cast<std::uint8_t>((src[j] >> shift) & mask);
  }
}

/// Unpacks packed rows [i0, i1): every grouped-view row they hold.
template <int kBits>
void unpack_rows(const std::uint8_t* packed, std::int64_t rows, std::int64_t cols, std::int64_t i0,
                 std::int64_t i1, std::uint8_t* codes) {
  const std::int64_t prow = packed_rows(kBits, rows);
  for (std::int64_t i = i0; i < i1; ++i)
    for (int c = 0; c < pack_ratio(kBits) && c * prow + i < rows; ++c)
      unpack_row_unchecked<kBits>(packed, cols, i, c, codes + (c * prow + i) * cols);
}

/// unpack_rows for a run-time nbits (8-bit rows are plain copies).
void unpack_rows_any(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols,
                     std::int64_t i0, std::int64_t i1, std::uint8_t* codes) {
  switch (nbits) {
    case 8:
      std::memcpy(codes + i0 * cols, packed + i0 * cols, static_cast<std::size_t>((i1 - i0) * cols));
      return;
    case 4: return unpack_rows<4>(packed, rows, cols, i0, i1, codes);
    case 3: return unpack_rows<3>(packed, rows, cols, i0, i1, codes);
    case 2: return unpack_rows<2>(packed, rows, cols, i0, i1, codes);
    case 1: return unpack_rows<1>(packed, rows, cols, i0, i1, codes);
    default: break;
  }
}

}  // namespace

void pack(int nbits, const std::uint8_t* codes, std::int64_t rows, std::int64_t cols, std::uint8_t* out) {
  check_packable(nbits, rows);
  HQQ_EXPECTS(cols > 0, "cannot pack {} columns", cols);
  switch (nbits) {
    case 8: std::memcpy(out, codes, static_cast<std::size_t>(rows * cols)); return;
    case 4: return pack_bytes<4>(codes, rows, cols, out);
    case 2: return pack_bytes<2>(codes, rows, cols, out);
    case 1: return pack_bytes<1>(codes, rows, cols, out);
    case 3: return pack_3bit(codes, rows, cols, out);
    default: break;
  }
}

void unpack(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols, std::uint8_t* codes) {
  check_packable(nbits, rows);
  HQQ_EXPECTS(cols > 0, "cannot unpack {} columns", cols);
  const std::int64_t prow = packed_rows(nbits, rows);
  constexpr std::int64_t kBlock = 64;  // packed rows per task
#pragma omp parallel for schedule(static)
  for (std::int64_t i0 = 0; i0 < prow; i0 += kBlock)
    unpack_rows_any(nbits, packed, rows, cols, i0, std::min(prow, i0 + kBlock), codes);
}

void unpack_row(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols, std::int64_t r,
                std::uint8_t* out) {
  check_packable(nbits, rows);
  HQQ_EXPECTS(cols > 0, "cannot unpack {} columns", cols);
  HQQ_EXPECTS(r >= 0 && r < rows, "row {} is outside the {} grouped-view rows", r, rows);
  const std::int64_t prow = packed_rows(nbits, rows);
  const std::int64_t i = r % prow;
  const int c = static_cast<int>(r / prow);
  switch (nbits) {
    case 8: std::memcpy(out, packed + r * cols, static_cast<std::size_t>(cols)); return;
    case 4: return unpack_row_unchecked<4>(packed, cols, i, c, out);
    case 3: return unpack_row_unchecked<3>(packed, cols, i, c, out);
    case 2: return unpack_row_unchecked<2>(packed, cols, i, c, out);
    case 1: return unpack_row_unchecked<1>(packed, cols, i, c, out);
    default: break;
  }
}

}  // namespace hqq
