// Multi-threaded interchange-layout packing (layout in packing.hpp).

#include "hqq/packing.hpp"

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

template <int kBits>
void unpack_bytes(const std::uint8_t* packed, std::int64_t rows, std::int64_t cols, std::uint8_t* codes) {
  constexpr int r = pack_ratio(kBits);
  constexpr unsigned mask = (1u << kBits) - 1u;
  const std::int64_t prow = rows / r;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < prow; ++i) {
    const std::uint8_t* src = packed + i * cols;
    for (int c = 0; c < r; ++c) {
      std::uint8_t* dst = codes + (c * prow + i) * cols;
      for (std::int64_t j = 0; j < cols; ++j)
        dst[j] = static_cast<std::uint8_t>((src[j] >> chunk_shift(kBits, c)) & mask);
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

void unpack_3bit(const std::uint8_t* packed, std::int64_t rows, std::int64_t cols, std::uint8_t* codes) {
  const std::int64_t prow = packed_rows(3, rows);
#pragma omp parallel
  {
    std::vector<std::uint32_t> word(static_cast<std::size_t>(cols));
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < prow; ++i) {
      std::memcpy(word.data(), packed + i * cols * 4, static_cast<std::size_t>(cols) * 4);
      for (int c = 0; c < 10; ++c) {
        const std::int64_t row = c * prow + i;
        if (row >= rows) break;
        std::uint8_t* dst = codes + row * cols;
        for (std::int64_t j = 0; j < cols; ++j) dst[j] = static_cast<std::uint8_t>((word[j] >> chunk_shift(3, c)) & 7u);
      }
    }
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
  switch (nbits) {
    case 8: std::memcpy(codes, packed, static_cast<std::size_t>(rows * cols)); return;
    case 4: return unpack_bytes<4>(packed, rows, cols, codes);
    case 2: return unpack_bytes<2>(packed, rows, cols, codes);
    case 1: return unpack_bytes<1>(packed, rows, cols, codes);
    case 3: return unpack_3bit(packed, rows, cols, codes);
    default: break;
  }
}

}  // namespace hqq
