// The tensor-core layout of QuantizedLinear's GEMM (hqq/detail/gemm_layout.hpp),
// on the CPU: the per-lane code packing round-trips, the lane/code -> tile
// position map is a bijection that matches the A-fragment table of
// mma.m16n8k16 in the PTX ISA, and make_gemm_layout holds exactly the codes
// and (scale, zero) pairs of the interchange tensor, zero-padded.
//
// The oracle never uses the layout code: codes come from hqq::unpack_codes of
// the quantized tensor, metadata from its scale and zero vectors, fragment
// positions from the PTX table written out below. Seeds are fresh per test and
// printed with every failure; HQQ_TEST_SEED=<n> replays one.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "hqq/detail/gemm_layout.hpp"
#include "hqq/hqq.hpp"
#include "hqq/linear.hpp"
#include "test_helpers.hpp"

namespace hqq {
namespace {

using detail::GemmLayout;
using detail::gemm_code;
using detail::gemm_code_col;
using detail::gemm_code_row;
using detail::gemm_encode_lane;
using detail::gemm_pair;
using detail::kGemmPadN;
using detail::kGemmTileK;
using detail::kGemmTileN;
using detail::make_gemm_layout;
using test::fresh_seed;
using test::seed_note;

constexpr int kNbits[] = {8, 4, 3, 2, 1};

// ------------------------------------------------------------ PTX fragment table
//
// PTX ISA, "Matrix Fragments for mma.m16n8k16" with .f16/.bf16: a thread holds
// four .f16x2 registers of A, elements a0..a7 (register i/2 holds a_i, a_{i+1},
// the lower index in the low half), with groupID = laneid >> 2 and
// threadID_in_group = laneid % 4:
//   row = groupID      for a_i with i < 2 || 4 <= i < 6, else groupID + 8
//   col = threadID_in_group * 2 + (i & 1), plus 8 for i >= 4
int ptx_a_row(int lane, int i) { return (i < 2 || (i >= 4 && i < 6)) ? (lane >> 2) : (lane >> 2) + 8; }
int ptx_a_col(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }

// ------------------------------------------------------------ lane packing

// Random codes: gemm_encode_lane then gemm_pair gives back every pair, low
// code at bits 0.., high code at bits 16.., nothing else set; the encoder
// writes exactly nbits words.
TEST(GemmLayoutLane, EncodeThenPairRoundTrips) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  for (int nb : kNbits) {
    SCOPED_TRACE("nbits " + std::to_string(nb));
    std::uniform_int_distribution<int> code(0, (1 << nb) - 1);
    for (int trial = 0; trial < 2000; ++trial) {
      std::uint8_t codes[32];
      for (auto& c : codes) c = static_cast<std::uint8_t>(code(rng));
      std::uint32_t w[10];
      std::fill(std::begin(w), std::end(w), 0xDEADBEEFu);  // the encoder must zero its words itself
      gemm_encode_lane(codes, nb, w);
      for (int i = nb; i < 10; ++i) ASSERT_EQ(w[i], 0xDEADBEEFu) << "wrote word " << i << " of an " << nb << "-bit lane";
      for (int P = 0; P < 16; ++P) {
        const std::uint32_t want = codes[2 * P] | (static_cast<std::uint32_t>(codes[2 * P + 1]) << 16);
        ASSERT_EQ(gemm_pair(w, nb, P), want) << "pair " << P << ", trial " << trial;
      }
    }
  }
}

// One code at its largest value, every other code zero: only that code comes
// back (no bits shared between codes), and all codes at their largest value
// fill every bit of the nbits words (the packing is dense: 32 codes x nbits).
TEST(GemmLayoutLane, CodesOccupyDisjointBitsAndFillTheWords) {
  for (int nb : kNbits) {
    SCOPED_TRACE("nbits " + std::to_string(nb));
    const std::uint8_t top = static_cast<std::uint8_t>((1 << nb) - 1);
    std::uint32_t seen[8] = {};
    for (int c = 0; c < 32; ++c) {
      std::uint8_t codes[32] = {};
      codes[c] = top;
      std::uint32_t w[8] = {};
      gemm_encode_lane(codes, nb, w);
      int popcount = 0;
      for (int i = 0; i < nb; ++i) {
        EXPECT_EQ(seen[i] & w[i], 0u) << "code " << c << " shares bits of word " << i << " with an earlier code";
        seen[i] |= w[i];
        for (std::uint32_t v = w[i]; v != 0; v &= v - 1) ++popcount;
      }
      EXPECT_EQ(popcount, nb) << "code " << c;
      for (int P = 0; P < 16; ++P) {
        const std::uint32_t lo = P == c / 2 && c % 2 == 0 ? top : 0u;
        const std::uint32_t hi = P == c / 2 && c % 2 == 1 ? top : 0u;
        EXPECT_EQ(gemm_pair(w, nb, P), lo | (hi << 16)) << "code " << c << ", pair " << P;
      }
    }
    for (int i = 0; i < nb; ++i) EXPECT_EQ(seen[i], 0xFFFFFFFFu) << "word " << i;
    std::uint8_t all[32];
    std::fill(std::begin(all), std::end(all), top);
    std::uint32_t w[8] = {};
    gemm_encode_lane(all, nb, w);
    for (int i = 0; i < nb; ++i) EXPECT_EQ(w[i], 0xFFFFFFFFu) << "word " << i;
  }
}

// ------------------------------------------------------------ fragment positions

// 32 lanes x 32 codes cover the 16 x 64 tile exactly once.
TEST(GemmLayoutFragment, LaneCodesMapBijectivelyOntoTheTile) {
  std::vector<int> hits(kGemmTileN * kGemmTileK, 0);
  for (int lane = 0; lane < 32; ++lane) {
    for (int c = 0; c < 32; ++c) {
      const int r = gemm_code_row(lane, c), col = gemm_code_col(lane, c);
      ASSERT_GE(r, 0);
      ASSERT_LT(r, kGemmTileN);
      ASSERT_GE(col, 0);
      ASSERT_LT(col, kGemmTileK);
      ++hits[r * kGemmTileK + col];
    }
  }
  for (int r = 0; r < kGemmTileN; ++r) {
    for (int col = 0; col < kGemmTileK; ++col) {
      EXPECT_EQ(hits[r * kGemmTileK + col], 1) << "tile position (" << r << ", " << col << ")";
    }
  }
}

// Code c = 8j + i of a lane is element a_i of the A fragment of k-step j
// (columns 16j..16j+15), and pair P = 4j + r is register r of step j: what the
// kernel feeds to mma as a[r] = dequant(pair 4j + r).
TEST(GemmLayoutFragment, MatchesThePtxATableOfMmaM16n8k16) {
  for (int lane = 0; lane < 32; ++lane) {
    for (int j = 0; j < 4; ++j) {
      for (int i = 0; i < 8; ++i) {
        const int c = 8 * j + i;
        EXPECT_EQ(gemm_code_row(lane, c), ptx_a_row(lane, i)) << "lane " << lane << ", step " << j << ", a" << i;
        EXPECT_EQ(gemm_code_col(lane, c), 16 * j + ptx_a_col(lane, i)) << "lane " << lane << ", step " << j << ", a" << i;
      }
    }
  }
}

// The kernel keeps the (scale, zero) pairs of two groups per 64-column k tile
// (the tile's first group ga = 64 kb / G and the next): every 16-column k-step
// must fall in one of them, inside the layout's groups.
TEST(GemmLayoutFragment, EveryKStepFallsInTheTilesTwoGroupWindow) {
  for (std::int64_t G = 32; G <= 1024; G += 32) {
    for (std::int64_t K = G; K <= 4 * 1024; K += G) {
      const std::int64_t kpad = (K + kGemmTileK - 1) / kGemmTileK * kGemmTileK;
      const std::int64_t groups = (kpad + G - 1) / G;
      for (std::int64_t kb = 0; kb < kpad / kGemmTileK; ++kb) {
        const std::int64_t ga = kb * kGemmTileK / G;
        for (int j = 0; j < 4; ++j) {
          const std::int64_t k0 = kb * kGemmTileK + 16 * j;
          const std::int64_t grp = k0 / G;
          ASSERT_EQ((k0 + 15) / G, grp) << "a k-step crosses a group boundary, G = " << G;
          ASSERT_TRUE(grp == ga || grp == ga + 1) << "G = " << G << ", K = " << K << ", kb = " << kb << ", j = " << j;
          ASSERT_LT(grp, groups) << "G = " << G << ", K = " << K;
        }
      }
    }
  }
}

// ------------------------------------------------------------ make_gemm_layout

/// Whether an axis-1 [N, K] weight with group G can be packed at nbits.
bool packable(int nbits, std::int64_t N, std::int64_t K, std::int64_t G) {
  return nbits == 3 || (N * K / G) % pack_ratio(nbits) == 0;
}

QuantizedTensor quantized(std::int64_t N, std::int64_t K, int nbits, std::int64_t G, DType sdt, std::uint32_t seed) {
  const std::vector<float> w = test::heavy_tailed(static_cast<std::size_t>(N * K), seed);
  QuantConfig cfg;
  cfg.nbits = nbits;
  cfg.group_size = G;
  cfg.axis = 1;
  cfg.scale_dtype = sdt;
  cfg.params.iters = 4;  // the layout is exact whatever the codes: keep the solver short
  return quantize(TensorView{w.data(), {N, K}, DType::kF32}, cfg, "cpu");
}

/// Checks a GEMM layout against the interchange tensor it came from
/// (reporting the first few mismatches of each kind).
void expect_layout_matches(const GemmLayout& G, const QuantizedTensor& q, const std::string& what) {
  const std::int64_t N = q.shape[0], K = q.shape[1], gs = q.group_size, row_groups = K / gs;
  ASSERT_EQ(G.n, N) << what;
  ASSERT_EQ(G.k, K) << what;
  ASSERT_EQ(G.nbits, q.nbits) << what;
  ASSERT_EQ(G.group_size, gs) << what;
  ASSERT_EQ(G.npad % kGemmPadN, 0) << what;
  ASSERT_TRUE(G.npad >= N && G.npad < N + kGemmPadN) << what << ": npad " << G.npad;
  ASSERT_EQ(G.kpad % kGemmTileK, 0) << what;
  ASSERT_TRUE(G.kpad >= K && G.kpad < K + kGemmTileK) << what << ": kpad " << G.kpad;
  ASSERT_EQ(G.groups, (G.kpad + gs - 1) / gs) << what;
  ASSERT_EQ(G.meta_dtype, q.scale_dtype == DType::kF16 ? DType::kF16 : DType::kF32) << what;
  ASSERT_EQ(static_cast<std::int64_t>(G.codes.size()), G.npad / 16 * (G.kpad / 64) * 32 * q.nbits) << what;
  ASSERT_EQ(static_cast<std::int64_t>(G.meta.size()),
            G.groups * G.npad * 2 * static_cast<std::int64_t>(dtype_size(G.meta_dtype)))
      << what;

  // Codes: every (n, k) of the padded weight.
  const std::vector<std::uint8_t> codes = unpack_codes(q);  // axis 1: [N, K]
  int bad = 0;
  for (std::int64_t n = 0; n < G.npad; ++n) {
    for (std::int64_t k = 0; k < G.kpad; ++k) {
      const std::uint32_t want = n < N && k < K ? codes[static_cast<std::size_t>(n * K + k)] : 0u;
      const std::uint32_t got = gemm_code(G, n, k);
      if (got != want && ++bad <= 5) {
        ADD_FAILURE() << what << ": code (" << n << ", " << k << ") is " << got << ", want " << want
                      << (n >= N || k >= K ? " (padding)" : "");
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": wrong codes";

  // The same codes seen as the kernel reads them: per tile and lane, pair
  // 4j + r is register r of k-step j, its elements placed by the PTX table.
  bad = 0;
  const std::int64_t k_tiles = G.kpad / kGemmTileK;
  for (std::int64_t nt = 0; nt < G.npad / kGemmTileN; ++nt) {
    for (std::int64_t kt = 0; kt < k_tiles; ++kt) {
      for (int lane = 0; lane < 32; ++lane) {
        const std::uint32_t* w = G.codes.data() + ((nt * k_tiles + kt) * 32 + lane) * q.nbits;
        for (int j = 0; j < 4; ++j) {
          for (int r = 0; r < 4; ++r) {
            const std::uint32_t pair = gemm_pair(w, q.nbits, 4 * j + r);
            for (int h = 0; h < 2; ++h) {
              const int i = 2 * r + h;
              const std::int64_t n = nt * kGemmTileN + ptx_a_row(lane, i);
              const std::int64_t k = kt * kGemmTileK + 16 * j + ptx_a_col(lane, i);
              const std::uint32_t want = n < N && k < K ? codes[static_cast<std::size_t>(n * K + k)] : 0u;
              const std::uint32_t got = h ? pair >> 16 : pair & 0xFFFFu;
              if (got != want && ++bad <= 5) {
                ADD_FAILURE() << what << ": tile (" << nt << ", " << kt << ") lane " << lane << " step " << j << " a"
                              << i << " is " << got << ", want code (" << n << ", " << k << ") = " << want;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": wrong fragment codes";

  // Metadata: [groups][npad][2], exactly the tensor's values, zero in padding.
  const std::vector<float> meta =
      decode_floats(G.meta.data(), G.meta.size(), G.meta_dtype);  // f16 and f32 widen exactly
  bad = 0;
  for (std::int64_t g = 0; g < G.groups; ++g) {
    for (std::int64_t n = 0; n < G.npad; ++n) {
      const float s = meta[static_cast<std::size_t>((g * G.npad + n) * 2)];
      const float z = meta[static_cast<std::size_t>((g * G.npad + n) * 2 + 1)];
      const bool real = n < N && g < row_groups;
      const float ws = real ? q.scale[static_cast<std::size_t>(n * row_groups + g)] : 0.0f;
      const float wz = real ? q.zero[static_cast<std::size_t>(n * row_groups + g)] : 0.0f;
      if ((float_bits(s) != float_bits(ws) || float_bits(z) != float_bits(wz)) && ++bad <= 5) {
        ADD_FAILURE() << what << ": meta of group " << g << ", row " << n << " is (" << s << ", " << z << "), want ("
                      << ws << ", " << wz << ")" << (real ? "" : " (padding)");
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": wrong metadata";
}

/// Small tensors: one CPU thread is faster than waking a team for each (restored on exit).
struct OneThread {
  OneThread() { set_num_threads(1); }
  ~OneThread() { set_num_threads(0); }
};

struct LayoutShape {
  std::int64_t N, K;
};

// Odd N (1, 7, 129), K not a multiple of 64 (K % 64 == 32), group sizes 32 to
// 128 (and 96, whose groups straddle the 64-column tiles), every width, every
// scale dtype; shapes a width cannot pack (rows of the grouped view not a
// multiple of its pack ratio) are left to the others.
TEST(GemmLayoutBuild, HoldsTheInterchangeCodesAndMetaZeroPadded) {
  const OneThread one_thread;
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  const LayoutShape shapes[] = {{1, 96},   {7, 96},   {129, 96}, {8, 96},   {3, 160},  {40, 1056},
                                {1, 1024}, {7, 512},  {129, 256}, {8, 288}, {5, 288}, {130, 320}};
  const std::int64_t groups[] = {32, 64, 96, 128};
  // (nbits, group) pairs that saw K % 64 != 0 and odd N: every width must get both.
  std::set<std::tuple<int, std::int64_t>> unaligned_k, odd_n;
  int built = 0;
  for (const LayoutShape s : shapes) {
    for (std::int64_t G : groups) {
      if (s.K % G != 0) continue;
      for (int nb : kNbits) {
        if (!packable(nb, s.N, s.K, G)) continue;
        for (DType sdt : {DType::kF16, DType::kF32, DType::kBF16}) {
          // f32 / bf16 metadata on a subset (the same code path as f16 but for the pair width).
          if (sdt != DType::kF16 && (s.N * s.K > 40000 || G == 96)) continue;
          const std::string what = std::to_string(nb) + "-bit g" + std::to_string(G) + " N=" + std::to_string(s.N) +
                                   " K=" + std::to_string(s.K) + " scale " + std::string(dtype_name(sdt));
          const QuantizedTensor q = quantized(s.N, s.K, nb, G, sdt, seed + static_cast<std::uint32_t>(built));
          const detail::LinearLayout L = detail::make_linear_layout(q);
          ASSERT_EQ(L.path, detail::LinearPath::kPacked) << what;
          const GemmLayout gl = make_gemm_layout(L);
          expect_layout_matches(gl, q, what);
          if (HasFatalFailure()) return;
          ++built;
          if (s.K % kGemmTileK != 0) unaligned_k.insert({nb, G});
          if (s.N % 2 == 1) odd_n.insert({nb, G});
        }
      }
    }
  }
  for (int nb : kNbits) {
    EXPECT_TRUE(unaligned_k.count({nb, 32})) << nb << "-bit: no K % 64 == 32 case";
    for (std::int64_t G : {32, 64, 128}) EXPECT_TRUE(odd_n.count({nb, G})) << nb << "-bit g" << G << ": no odd N case";
  }
  EXPECT_GT(built, 100);
}

// bytes(): what one pass over the padded weight reads.
TEST(GemmLayoutBuild, BytesCountCodesAndMeta) {
  const QuantizedTensor q = quantized(7, 512, 4, 64, DType::kF16, 3);
  const GemmLayout gl = make_gemm_layout(detail::make_linear_layout(q));
  EXPECT_EQ(gl.bytes(), static_cast<std::int64_t>(gl.codes.size() * 4 + gl.meta.size()));
  // 7 rows pad to 128, K = 512 needs no padding: 128 x 512 codes at 4 bits, 128 x 8 f16 pairs.
  EXPECT_EQ(gl.bytes(), 128 * 512 / 2 + 128 * 8 * 4);
}

// Axis 0 and group sizes that are not a multiple of 32 take the dense path,
// which has no codes to reorder: make_gemm_layout refuses it, saying so.
TEST(GemmLayoutBuild, RefusesTheDensePath) {
  struct Case {
    int axis;
    std::int64_t group, N, K;
  };
  for (const Case c : {Case{0, 64, 37, 1024}, Case{1, 48, 37, 384}, Case{1, 16, 8, 256}}) {
    const std::vector<float> w = test::heavy_tailed(static_cast<std::size_t>(c.N * c.K), 9);
    QuantConfig cfg;
    cfg.nbits = 4;
    cfg.group_size = c.group;
    cfg.axis = c.axis;
    cfg.params.iters = 2;
    const QuantizedTensor q = quantize(TensorView{w.data(), {c.N, c.K}, DType::kF32}, cfg, "cpu");
    const detail::LinearLayout L = detail::make_linear_layout(q);
    ASSERT_EQ(L.path, detail::LinearPath::kDense) << "axis " << c.axis << " group " << c.group;
    EXPECT_THROW(make_gemm_layout(L), Error) << "axis " << c.axis << " group " << c.group;
    EXPECT_NE(test::error_of([&] { make_gemm_layout(L); }).find("packed"), std::string::npos)
        << test::error_of([&] { make_gemm_layout(L); });
  }
}

}  // namespace
}  // namespace hqq
