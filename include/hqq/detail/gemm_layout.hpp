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
/// x 64 columns, stored band by band: a band is kGemmPadN = 128 rows (a
/// GEMM block's rows), its tiles k tile by k tile, the 8 tiles of one k tile
/// one after the other ([Npad/128][Kpad/64][8], gemm_tile_index), so that a
/// block reads one contiguous run of 8 tiles per k tile (one bulk copy). In a tile,
/// lane l = 4g + t of a warp owns 32 codes, held in `nbits` consecutive
/// uint32 words ([32 lanes][nbits words]): for each of the 4 k-steps j of 16
/// columns, the 8 elements of its A fragment,
///   e = 0..7: row g + 8 * ((e >> 1) & 1), column 16j + 2t + (e & 1) + 8 * (e >> 2),
/// taken in pairs P = 4j + e/2 (the fragment's register e/2 of step j).
/// Pair P's two codes (low, high) sit where one shift and one mask bring them
/// to bits 0 and 16 of a register, ready to be OR-ed into two f16/bf16 magic
/// numbers. At 4/2/1 bits an odd pair (rows g + 8) sits b bits above the
/// even pair before it, and at 3 bits gemm3_slot puts it 3 bits above an
/// even pair, so that one shift serves both: the odd pair is read in place
/// (cuda/row_consts.hpp, kInPlaceShift):
///   4/2/1-bit: word P / (16/b); low code at bit b*(P % (16/b)), high code 16 bits above;
///   8-bit:     word P / 2; low code in byte 2*(P % 2), high code in the byte after;
///   3-bit:     gemm3_slot: each half of words 0-2 holds five 3-bit fields
///              (bits 0, 3, 6, 9, 12) of the low (high) codes of 15 pairs,
///              and bit 15 of word i is bit i of the low (high) code of pair 15.
/// Metadata: (scale, zero) pairs [ceil(Kpad/G)][Npad][2] (group-major, so the
/// rows of a block tile are contiguous), in the linear layout's meta dtype;
/// padding groups and rows are zero.
///
/// make_gemm_layout runs once per layer (in the CUDA QuantizedLinear's
/// constructor): it splits the fragment tiles and metadata rows over host
/// threads, each item written by one thread alone, so the result does not
/// depend on the thread count. It also measures whether the layer's values
/// fit the f16 GEMM (GemmLayout::fits_f16).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <system_error>
#include <thread>
#include <vector>

#include "hqq/detail/host_device.hpp"
#include "hqq/detail/linear_layout.hpp"
#include "hqq/dtype.hpp"
#include "hqq/error.hpp"

namespace hqq::detail {

constexpr int kGemmTileN = 16;   ///< weight rows per fragment tile
constexpr int kGemmTileK = 64;   ///< columns per fragment tile (4 mma k-steps)
constexpr int kGemmPadN = 128;   ///< rows are padded to a multiple of this (the widest block tile)
constexpr int kGemmBandTiles = kGemmPadN / kGemmTileN;  ///< fragment tiles of one band per k tile

/// Position (in tiles) of fragment tile (nt, kt) (rows 16 nt.., columns 64 kt..)
/// in a layout of `k_tiles` k tiles: band nt / 8, then k tile kt, then nt % 8.
HQQ_HOST_DEVICE constexpr std::int64_t gemm_tile_index(std::int64_t nt, std::int64_t kt, std::int64_t k_tiles) {
  return ((nt / kGemmBandTiles) * k_tiles + kt) * kGemmBandTiles + nt % kGemmBandTiles;
}

/// Row (0..15) and column (0..63) inside a 16x64 tile of lane `lane`'s code c (0..31).
HQQ_HOST_DEVICE constexpr int gemm_code_row(int lane, int c) { return (lane >> 2) + 8 * ((c >> 1) & 1); }
HQQ_HOST_DEVICE constexpr int gemm_code_col(int lane, int c) {
  return 16 * (c >> 3) + 2 * (lane & 3) + (c & 1) + 8 * ((c >> 2) & 1);
}

/// Where 3-bit pair P (0..15) sits: word 0..2 and field 0..4 (bits 3 field
/// and 16 + 3 field), or field 5 for pair 15 (the words' bits 15 and 31).
/// Words 0 and 1 hold rows g in fields 0, 2, 4 and rows g + 8 in fields 1,
/// 3, so that shifts by 0, 6 and 12 bring the former to bit 0 and the latter
/// to bit 3; word 2 the other way round (shifts by -3, 3 and 9), which gives
/// each row eight pairs.
struct Gemm3Slot {
  int word, field;
};
HQQ_HOST_DEVICE constexpr Gemm3Slot gemm3_slot(int P) {
  switch (P) {
    case 0: return {0, 0};
    case 1: return {0, 1};
    case 2: return {0, 2};
    case 3: return {0, 3};
    case 4: return {0, 4};
    case 5: return {1, 1};
    case 6: return {1, 0};
    case 7: return {1, 3};
    case 8: return {1, 2};
    case 9: return {2, 0};
    case 10: return {1, 4};
    case 11: return {2, 2};
    case 12: return {2, 1};
    case 13: return {2, 4};
    case 14: return {2, 3};
    default: return {0, 5};
  }
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
      const Gemm3Slot slot = gemm3_slot(P);
      if (slot.field < 5) return (w[slot.word] >> (3 * slot.field)) & 0x00070007u;
      return ((w[0] >> 15) & 0x00010001u) | ((w[1] >> 14) & 0x00020002u) | ((w[2] >> 13) & 0x00040004u);
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
      default: {  // 3
        const Gemm3Slot slot = gemm3_slot(P);
        if (slot.field < 5) {
          w[slot.word] |= (lo | (hi << 16)) << (3 * slot.field);
        } else {
          for (int i = 0; i < 3; ++i) w[i] |= (((lo >> i) & 1u) | (((hi >> i) & 1u) << 16)) << 15;
        }
        break;
      }
    }
  }
}

/// f16 rounding to nearest turns every magnitude from 65520 on (65504, the
/// largest finite f16, plus half its last step of 32) into infinity.
constexpr double kF16Overflow = 65520.0;

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
  /// The largest gemm_f16_peak over the layer's groups: the largest magnitude
  /// the GEMM forms in f16 (scale, zero offset, dequantized weight) for f16
  /// activations.
  double f16_peak = 0;

  std::int64_t k_tiles() const { return kpad / kGemmTileK; }
  /// Whether the GEMM can take f16 activations: every scale, zero offset and
  /// dequantized weight it forms is finite in f16 (bf16 activations have
  /// f32's exponent range and need no such check).
  bool fits_f16() const { return f16_peak < kF16Overflow; }
  /// Bytes of codes and metadata (what one pass over the weight reads).
  std::int64_t bytes() const { return static_cast<std::int64_t>(codes.size() * 4 + meta.size()); }
};

/// Code (n, k) of a GEMM layout (n < npad, k < kpad): the scalar decoder the tests use.
inline std::uint32_t gemm_code(const GemmLayout& L, std::int64_t n, std::int64_t k) {
  const std::int64_t tile = gemm_tile_index(n / kGemmTileN, k / kGemmTileK, L.k_tiles());
  const int r = static_cast<int>(n % kGemmTileN), col = static_cast<int>(k % kGemmTileK);
  // Invert gemm_code_row/col: g = r & 7, t = (col & 7) >> 1.
  const int lane = 4 * (r & 7) + ((col & 7) >> 1);
  const int c = 8 * (col >> 4) + ((col >> 3) & 1) * 4 + (r >> 3) * 2 + (col & 1);
  const std::uint32_t* w = L.codes.data() + (tile * 32 + lane) * L.nbits;
  const std::uint32_t pair = gemm_pair(w, L.nbits, c >> 1);
  return (c & 1) ? (pair >> 16) : (pair & 0xFFFFu);
}

/// The largest magnitude among the values the GEMM forms in f16 for a group
/// (scale s, zero z) of nbits codes with f16 activations, as
/// cuda/row_consts.hpp forms them: s and m = -(z - zi) * s (f32,
/// zi = rint(z) clamped to [-512, 512]), each rounded to f16 (s16, m16),
/// and the weight w = (q - zi) * s16 + m16 of one f16 fused multiply-add,
/// before its rounding. w is affine in the code q, so q = 0 and q = 2^nbits - 1
/// bound every code. All of them are finite in f16 iff the result is below
/// kF16Overflow. f32 metadata can go past (a scale of 1e5), and so can f16
/// metadata whose zero lies far from the codes (scale 64, zero 1100:
/// w = -70400 at q = 0). NaNs are passed over: a NaN scale or zero reaches y
/// through either kernel.
inline double gemm_f16_peak(float s, float z, int nbits) {
  const float zi = std::fmin(std::fmax(std::rint(z), -512.0f), 512.0f);
  const float m = -((z - zi) * s);
  double peak = 0;
  auto see = [&peak](double v) {
    if (std::fabs(v) > peak) peak = std::fabs(v);
  };
  see(s);
  see(m);
  const float s16 = half_bits_to_float(float_to_half_bits(s));
  const float m16 = half_bits_to_float(float_to_half_bits(m));
  if (std::isfinite(s16) && std::isfinite(m16)) {
    // Exact in double: |q - zi| <= 767 times an 11-bit significand, plus m16;
    // both terms are multiples of 2^-24 (the f16 subnormal step) below 2^27.
    see((0.0 - zi) * s16 + m16);
    see((static_cast<double>((1 << nbits) - 1) - zi) * s16 + m16);
  }
  return peak;
}

/// make_gemm_layout's work per thread at least: fragment tiles (64 K codes,
/// ~0.3 ms on one core) and metadata rows, so that starting a thread (tens
/// of microseconds) stays a small part of its work.
constexpr std::int64_t kGemmLayoutTileGrain = 64;
constexpr std::int64_t kGemmLayoutRowGrain = 64;

/// Host threads for `count` items: `threads` (0 = one per hardware thread),
/// at most one per `grain` items, at least 1.
inline int gemm_layout_threads(std::int64_t count, int threads, std::int64_t grain) {
  std::int64_t t = threads > 0 ? threads : static_cast<std::int64_t>(std::thread::hardware_concurrency());
  t = std::min(t, (count + grain - 1) / grain);
  return static_cast<int>(std::max<std::int64_t>(t, 1));
}

/// Runs fn(begin, end, t) over [0, count) cut into T contiguous ranges, range
/// t on thread t, range 0 on the calling thread. std::thread rather than the
/// core's OpenMP: this header is compiled into hqq::cuda, which links no
/// OpenMP (nor any compiled core symbol), and into programs built without
/// -fopenmp. A thread that cannot be started has its range run here. fn must
/// not throw.
template <class Fn>
void gemm_parallel_for(std::int64_t count, int T, Fn fn) {
  auto range = [&](int t) { fn(count * t / T, count * (t + 1) / T, t); };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(T - 1));
  for (int t = 1; t < T; ++t) {
    try {
      pool.emplace_back(range, t);
    } catch (const std::system_error&) {
      range(t);
    }
  }
  range(0);
  for (std::thread& th : pool) th.join();
}

/// Fills fragment tile (nt, kt) of G (32 lanes x nbits words) from L code by
/// code, each through the scalar decoders: the reference of gemm_fill_tile.
inline void gemm_fill_tile_ref(const LinearLayout& L, GemmLayout& G, std::int64_t nt, std::int64_t kt) {
  const int nb = G.nbits;
  const std::int64_t row_words = L.row_words();
  std::uint8_t codes[32];
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
    gemm_encode_lane(codes, nb, G.codes.data() + (gemm_tile_index(nt, kt, G.k_tiles()) * 32 + lane) * nb);
  }
}

/// Fills fragment tile (nt, kt) of G from L as gemm_fill_tile_ref does, with
/// less index arithmetic per code: the tile's 16 x 64 codes decoded row by
/// row (zero past N and K), then gathered lane by lane in fragment order; the
/// width a template parameter, so that the decoding folds into shifts and
/// masks (1.2-1.4x faster at 8/4/2 bits, as fast at 3, 0.8x at 1).
template <int NB>
void gemm_fill_tile(const LinearLayout& L, GemmLayout& G, std::int64_t nt, std::int64_t kt) {
  std::uint8_t tile[kGemmTileN][kGemmTileK] = {};
  const std::int64_t n0 = nt * kGemmTileN, k0 = kt * kGemmTileK;
  // Rows and columns that hold codes: rows <= 0 in the padding, cols 32 or 64 (K % 32 == 0).
  const std::int64_t rows = std::min<std::int64_t>(kGemmTileN, G.n - n0);
  const int cols = static_cast<int>(std::min<std::int64_t>(kGemmTileK, G.k - k0));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::uint32_t* chunks = L.codes.data() + (n0 + r) * L.row_words() + k0 / kLinearChunk * NB;
    for (int i = 0; i < cols; ++i) {
      tile[r][i] = static_cast<std::uint8_t>(chunk_code(chunks + i / kLinearChunk * NB, NB, i % kLinearChunk));
    }
  }
  std::uint8_t codes[32];
  for (int lane = 0; lane < 32; ++lane) {
    for (int c = 0; c < 32; ++c) codes[c] = tile[gemm_code_row(lane, c)][gemm_code_col(lane, c)];
    gemm_encode_lane(codes, NB, G.codes.data() + (gemm_tile_index(nt, kt, G.k_tiles()) * 32 + lane) * NB);
  }
}

/// Builds the GEMM layout from a packed linear layout (exact; same codes and
/// metadata, reordered and padded) and its f16_peak, on `threads` host
/// threads (0 = one per hardware thread; 1 = on the calling thread alone).
/// The result is the same, bit for bit, whatever the thread count.
inline GemmLayout make_gemm_layout(const LinearLayout& L, int threads = 0) {
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
  const std::int64_t k_tiles = G.k_tiles(), tiles = G.npad / kGemmTileN * k_tiles;
  G.codes.assign(static_cast<std::size_t>(tiles * 32 * nb), 0u);
  // Codes: every fragment tile on its own (work item t is tile (t / k_tiles, t % k_tiles)).
  const int tile_threads = gemm_layout_threads(tiles, threads, kGemmLayoutTileGrain);
  gemm_parallel_for(tiles, tile_threads, [&](std::int64_t t0, std::int64_t t1, int) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t nt = t / k_tiles, kt = t % k_tiles;
      switch (nb) {
        case 8: gemm_fill_tile<8>(L, G, nt, kt); break;
        case 4: gemm_fill_tile<4>(L, G, nt, kt); break;
        case 3: gemm_fill_tile<3>(L, G, nt, kt); break;
        case 2: gemm_fill_tile<2>(L, G, nt, kt); break;
        default: gemm_fill_tile<1>(L, G, nt, kt); break;
      }
    }
  });
  // Metadata: row n's pairs into the group-major layout, and the largest f16
  // magnitude of its groups (one slot per thread, the largest taken after:
  // the same whatever the split).
  const std::size_t es = dtype_size(G.meta_dtype);
  G.meta.assign(static_cast<std::size_t>(G.groups * G.npad * 2) * es, 0);
  const std::int64_t row_groups = L.row_groups();
  const int row_threads = gemm_layout_threads(G.n, threads, kGemmLayoutRowGrain);
  std::vector<double> peaks(static_cast<std::size_t>(row_threads), 0.0);
  gemm_parallel_for(G.n, row_threads, [&](std::int64_t n0, std::int64_t n1, int t) {
    double peak = 0;
    for (std::int64_t n = n0; n < n1; ++n) {
      for (std::int64_t g = 0; g < row_groups; ++g) {
        const std::uint8_t* src = L.meta.data() + static_cast<std::size_t>((n * row_groups + g) * 2) * es;
        std::memcpy(G.meta.data() + static_cast<std::size_t>((g * G.npad + n) * 2) * es, src, 2 * es);
        float sz[2];
        if (G.meta_dtype == DType::kF16) {
          std::uint16_t h[2];
          std::memcpy(h, src, sizeof h);
          sz[0] = half_bits_to_float(h[0]);
          sz[1] = half_bits_to_float(h[1]);
        } else {
          std::memcpy(sz, src, sizeof sz);
        }
        peak = std::max(peak, gemm_f16_peak(sz[0], sz[1], nb));
      }
    }
    peaks[static_cast<std::size_t>(t)] = peak;
  });
  G.f16_peak = *std::max_element(peaks.begin(), peaks.end());
  return G;
}

}  // namespace hqq::detail
