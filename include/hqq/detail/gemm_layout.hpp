#pragma once
/// \file detail/gemm_layout.hpp
/// The tensor-core layout of QuantizedLinear's GEMM (CUDA, M >= the
/// crossover): the packed weights pre-shuffled once into the order of the
/// A-operand fragments of `mma.m16n8k16` (and of `wgmma`'s register A, which
/// has the same per-warp layout), so that a thread's loads hold exactly the
/// codes its fragments need.
///
/// The GEMM computes Y^T = W X^T: W [N, K] is the A operand (16 weight rows
/// per tile), the activations are the B operand. The weight, padded to
/// Npad = N rounded up to kGemmPadN rows and Kpad = K rounded up to
/// kGemmTileK columns (zero codes, zero scale), is cut into tiles of 16 rows
/// x 64 columns, stored tile row by tile row ([Npad/16][Kpad/64]). In a tile,
/// lane l = 4g + t of a warp owns 32 codes, held in `nbits` consecutive
/// uint32 words ([32 lanes][nbits words]): for each of the 4 k-steps j of 16
/// columns, the 8 elements of its A fragment,
///   e = 0..7: row g + 8 * ((e >> 1) & 1), column 16j + 2t + (e & 1) + 8 * (e >> 2),
/// taken in pairs P = 4j + e/2 (the fragment's register e/2 of step j).
/// Pair P's two codes (low, high) sit where one shift and one mask bring them
/// to bits 0 and 16 of a register, ready
/// to be OR-ed into two f16/bf16 magic numbers:
///   4/2/1-bit: word P / (16/b); low code at bit b*(P % (16/b)), high code 16 bits above;
///   8-bit:     word P / 2; low code in byte 2*(P % 2), high code in the byte after;
///   3-bit:     the low two bits by the 2-bit rule in words 0-1, the high bit by
///              the 1-bit rule in word 2.
/// Metadata: (scale, zero) pairs [ceil(Kpad/G)][Npad][2] (group-major, so the
/// rows of a block tile are contiguous), in the linear layout's meta dtype;
/// padding groups and rows are zero.

#include <cstdint>
#include <cstring>
#include <vector>

#include "hqq/detail/host_device.hpp"
#include "hqq/detail/linear_layout.hpp"
#include "hqq/error.hpp"

namespace hqq::detail {

constexpr int kGemmTileN = 16;   ///< weight rows per fragment tile
constexpr int kGemmTileK = 64;   ///< columns per fragment tile (4 mma k-steps)
constexpr int kGemmPadN = 128;   ///< rows are padded to a multiple of this (the widest block tile)

/// Row (0..15) and column (0..63) inside a 16x64 tile of lane `lane`'s code c (0..31).
HQQ_HOST_DEVICE constexpr int gemm_code_row(int lane, int c) { return (lane >> 2) + 8 * ((c >> 1) & 1); }
HQQ_HOST_DEVICE constexpr int gemm_code_col(int lane, int c) {
  return 16 * (c >> 3) + 2 * (lane & 3) + (c & 1) + 8 * ((c >> 2) & 1);
}

/// The two codes of pair P (0..15) of a lane's words, at bits 0 and 16.
HQQ_HOST_DEVICE std::uint32_t gemm_pair(const std::uint32_t* w, int nbits, int P) {
  switch (nbits) {
    case 8: {
      const std::uint32_t v = w[P >> 1] >> (16 * (P & 1));
      return (v & 0xFFu) | ((v & 0xFF00u) << 8);
    }
    case 4: return (w[P >> 2] >> (4 * (P & 3))) & 0x000F000Fu;
    case 2: return (w[P >> 3] >> (2 * (P & 7))) & 0x00030003u;
    case 1: return (w[0] >> P) & 0x00010001u;
    default: {  // 3
      const std::uint32_t lo = (w[P >> 3] >> (2 * (P & 7))) & 0x00030003u;
      const std::uint32_t hi = (w[2] >> P) & 0x00010001u;
      return lo | (hi << 2);
    }
  }
}

/// Writes a lane's 32 codes (code c = element c & 7 of pair... in fragment
/// order: c = 8j + e) into its zeroed `nbits` words.
inline void gemm_encode_lane(const std::uint8_t* codes, int nbits, std::uint32_t* w) {
  for (int i = 0; i < nbits; ++i) w[i] = 0;
  for (int P = 0; P < 16; ++P) {
    const std::uint32_t lo = codes[2 * P], hi = codes[2 * P + 1];
    switch (nbits) {
      case 8: w[P >> 1] |= (lo | (hi << 8)) << (16 * (P & 1)); break;
      case 4: w[P >> 2] |= (lo | (hi << 16)) << (4 * (P & 3)); break;
      case 2: w[P >> 3] |= (lo | (hi << 16)) << (2 * (P & 7)); break;
      case 1: w[0] |= (lo | (hi << 16)) << P; break;
      default:  // 3
        w[P >> 3] |= ((lo & 3u) | ((hi & 3u) << 16)) << (2 * (P & 7));
        w[2] |= ((lo >> 2) | ((hi >> 2) << 16)) << P;
        break;
    }
  }
}

/// The device copy a GEMM reads (host side).
struct GemmLayout {
  std::int64_t n = 0, k = 0;        ///< N, K of the layer
  std::int64_t npad = 0, kpad = 0;  ///< padded to kGemmPadN, kGemmTileK
  std::int64_t group_size = 0;
  std::int64_t groups = 0;          ///< ceil(kpad / group_size)
  int nbits = 4;
  DType meta_dtype = DType::kF16;
  std::vector<std::uint32_t> codes;  ///< npad/16 * kpad/64 * 32 * nbits words
  std::vector<std::uint8_t> meta;    ///< groups * npad * 2 values of meta_dtype

  std::int64_t k_tiles() const { return kpad / kGemmTileK; }
  /// Bytes of codes and metadata (what one pass over the weight reads).
  std::int64_t bytes() const { return static_cast<std::int64_t>(codes.size() * 4 + meta.size()); }
};

/// Code (n, k) of a GEMM layout (n < npad, k < kpad): the scalar decoder the tests use.
inline std::uint32_t gemm_code(const GemmLayout& L, std::int64_t n, std::int64_t k) {
  const std::int64_t tile = (n / kGemmTileN) * L.k_tiles() + k / kGemmTileK;
  const int r = static_cast<int>(n % kGemmTileN), col = static_cast<int>(k % kGemmTileK);
  // Invert gemm_code_row/col: g = r & 7, t = (col & 7) >> 1.
  const int lane = 4 * (r & 7) + ((col & 7) >> 1);
  const int c = 8 * (col >> 4) + ((col >> 3) & 1) * 4 + (r >> 3) * 2 + (col & 1);
  const std::uint32_t* w = L.codes.data() + (tile * 32 + lane) * L.nbits;
  const std::uint32_t pair = gemm_pair(w, L.nbits, c >> 1);
  return (c & 1) ? (pair >> 16) : (pair & 0xFFFFu);
}

/// Builds the GEMM layout from a packed linear layout (exact; same codes and
/// metadata, reordered and padded).
inline GemmLayout make_gemm_layout(const LinearLayout& L) {
  HQQ_EXPECTS(L.path == LinearPath::kPacked, "the tensor-core layout needs the packed linear layout");
  GemmLayout G;
  G.n = L.out_features;
  G.k = L.in_features;
  G.nbits = L.nbits;
  G.group_size = L.group_size;
  G.meta_dtype = L.meta_dtype;
  G.npad = (G.n + kGemmPadN - 1) / kGemmPadN * kGemmPadN;
  G.kpad = (G.k + kGemmTileK - 1) / kGemmTileK * kGemmTileK;
  G.groups = (G.kpad + G.group_size - 1) / G.group_size;
  const int nb = G.nbits;
  G.codes.assign(static_cast<std::size_t>(G.npad / kGemmTileN * G.k_tiles() * 32 * nb), 0u);
  const std::int64_t row_words = L.row_words();
  std::uint8_t codes[32];
  for (std::int64_t nt = 0; nt < G.npad / kGemmTileN; ++nt) {
    for (std::int64_t kt = 0; kt < G.k_tiles(); ++kt) {
      for (int lane = 0; lane < 32; ++lane) {
        for (int c = 0; c < 32; ++c) {
          const std::int64_t n = nt * kGemmTileN + gemm_code_row(lane, c);
          const std::int64_t k = kt * kGemmTileK + gemm_code_col(lane, c);
          codes[c] = 0;
          if (n < G.n && k < G.k) {
            const std::uint32_t* chunk = L.codes.data() + n * row_words + (k / kLinearChunk) * nb;
            codes[c] = static_cast<std::uint8_t>(chunk_code(chunk, nb, static_cast<int>(k % kLinearChunk)));
          }
        }
        gemm_encode_lane(codes, nb, G.codes.data() + ((nt * G.k_tiles() + kt) * 32 + lane) * nb);
      }
    }
  }
  const std::size_t es = dtype_size(G.meta_dtype);
  G.meta.assign(static_cast<std::size_t>(G.groups * G.npad * 2) * es, 0);
  const std::int64_t row_groups = L.row_groups();
  for (std::int64_t n = 0; n < G.n; ++n) {
    for (std::int64_t g = 0; g < row_groups; ++g) {
      std::memcpy(G.meta.data() + static_cast<std::size_t>((g * G.npad + n) * 2) * es,
                  L.meta.data() + static_cast<std::size_t>((n * row_groups + g) * 2) * es, 2 * es);
    }
  }
  return G;
}

}  // namespace hqq::detail
