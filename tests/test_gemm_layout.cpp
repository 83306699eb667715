// The tensor-core layout of QuantizedLinear's GEMM (hqq/detail/gemm_layout.hpp),
// on the CPU: the per-lane code packing round-trips, the lane/code -> tile
// position map is a bijection that matches the A-fragment table of
// mma.m16n8k16 in the PTX ISA, and make_gemm_layout holds exactly the codes
// and (scale, zero) pairs of the interchange tensor, zero-padded, whatever
// its thread count; its f16_peak follows the f16 GEMM's arithmetic on every
// code of every group (overflow of f32 and f16 metadata in f16).
//
// The oracle never uses the layout code: codes come from hqq::unpack_codes of
// the quantized tensor, metadata from its scale and zero vectors, fragment
// positions from the PTX table written out below. Seeds are fresh per test and
// printed with every failure; HQQ_TEST_SEED=<n> replays one.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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
using detail::gemm_f16_peak;
using detail::gemm_layout_threads;
using detail::gemm_pair;
using detail::kF16Overflow;
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
  // 4j + r is register r of k-step j, its elements placed by the PTX table;
  // the tiles in bands of 128 rows, k tile by k tile, the band's 8 tiles of
  // one k tile side by side (what a block reads with one bulk copy).
  bad = 0;
  const std::int64_t k_tiles = G.kpad / kGemmTileK;
  for (std::int64_t nt = 0; nt < G.npad / kGemmTileN; ++nt) {
    for (std::int64_t kt = 0; kt < k_tiles; ++kt) {
      const std::int64_t at = ((nt / 8) * k_tiles + kt) * 8 + nt % 8;
      for (int lane = 0; lane < 32; ++lane) {
        const std::uint32_t* w = G.codes.data() + (at * 32 + lane) * q.nbits;
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

// A layout built on several threads is the one built on the calling thread
// alone, bit for bit (codes, metadata, f16_peak), for every width and both
// metadata dtypes, on a shape whose tiles and rows every thread count here
// splits unevenly (odd N, K % 64 == 32, some groups past f16's range so the
// peak comes from one thread's slot); its tiles are those of the code-by-code
// reference, gemm_fill_tile_ref.
TEST(GemmLayoutBuild, ThreadCountDoesNotChangeTheLayout) {
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937 rng(seed);
  const std::int64_t N = 999, K = 2080, G = 32;
  for (int nb : kNbits) {
    for (DType md : {DType::kF16, DType::kF32}) {
      const std::string what = std::to_string(nb) + "-bit meta " + std::string(dtype_name(md));
      // Random words are valid codes at every width (3-bit uses every bit of its 3 words).
      detail::LinearLayout L;
      L.out_features = N;
      L.in_features = K;
      L.nbits = nb;
      L.group_size = G;
      L.path = detail::LinearPath::kPacked;
      L.meta_dtype = md;
      L.codes.resize(static_cast<std::size_t>(N * L.row_words()));
      for (auto& w : L.codes) w = static_cast<std::uint32_t>(rng());
      std::uniform_real_distribution<float> scale(1e-3f, 4e-2f), zero(-0.5f, (1 << nb) - 0.5f);
      std::vector<float> pairs;
      for (std::int64_t g = 0; g < N * L.row_groups(); ++g) {
        const float s = scale(rng), z = zero(rng);
        // Outliers that grow along the rows, so that the largest sits in the last thread's range:
        // f32 scales from 1e5, f16 scale 64 with zeros from 1000 (fits) to 2008 (w(0) = -128512).
        const bool outlier = g % 1009 == 500;
        pairs.push_back(outlier ? (md == DType::kF32 ? 1e5f + static_cast<float>(g) : 64.0f) : s);
        pairs.push_back(outlier && md == DType::kF16 ? 1000.0f + 16.0f * static_cast<float>(g / 1009) : z);
      }
      L.meta = encode_floats(pairs, md);
      const GemmLayout one = make_gemm_layout(L, 1);
      EXPECT_FALSE(one.fits_f16()) << what << ": the outlier groups should not fit f16 (peak " << one.f16_peak << ")";
      GemmLayout ref = one;
      std::fill(ref.codes.begin(), ref.codes.end(), 0xA5A5A5A5u);  // every word must be written again
      for (std::int64_t nt = 0; nt < ref.npad / kGemmTileN; ++nt) {
        for (std::int64_t kt = 0; kt < ref.k_tiles(); ++kt) detail::gemm_fill_tile_ref(L, ref, nt, kt);
      }
      EXPECT_TRUE(ref.codes == one.codes) << what << ": the tiles differ from gemm_fill_tile_ref's";
      for (int threads : {2, 3, 7}) {
        // Every thread gets work in both passes.
        ASSERT_EQ(gemm_layout_threads(one.npad / kGemmTileN * one.k_tiles(), threads, detail::kGemmLayoutTileGrain),
                  threads);
        ASSERT_EQ(gemm_layout_threads(N, threads, detail::kGemmLayoutRowGrain), threads);
        const GemmLayout many = make_gemm_layout(L, threads);
        EXPECT_TRUE(many.codes == one.codes) << what << ", " << threads << " threads: codes differ";
        EXPECT_TRUE(many.meta == one.meta) << what << ", " << threads << " threads: metadata differs";
        EXPECT_EQ(many.f16_peak, one.f16_peak) << what << ", " << threads << " threads";
        EXPECT_EQ(many.npad, one.npad);
        EXPECT_EQ(many.kpad, one.kpad);
        EXPECT_EQ(many.groups, one.groups);
      }
    }
  }
  EXPECT_EQ(gemm_layout_threads(5, 8, 16), 1) << "a few items stay on the calling thread";
  EXPECT_EQ(gemm_layout_threads(100, 8, 16), 7);
  EXPECT_GE(gemm_layout_threads(1 << 20, 0, 16), 1) << "0: the hardware's threads, at least one";
}

// ------------------------------------------------------------ f16 range
//
// With f16 activations the GEMM forms every scale s, offset m and weight w in
// f16 (cuda/row_consts.hpp): zi = rint(z) clamped to
// [-512, 512], m = -(z - zi) * s in f32, s and m rounded to f16, then
// w = (q - zi) * s16 + m16 by one f16 fused multiply-add. f16 rounding sends
// |v| >= 65520 to inf.

/// f16 rounding of an f32 value (exact).
double f16(float v) { return static_cast<double>(round_to(DType::kF16, v)); }

/// The oracle of gemm_f16_peak: the kernel's values for every code of a group
/// (not only the two ends), and whether each is finite in f16.
struct F16Group {
  double peak = 0;
  bool finite = true;
};
F16Group f16_oracle(float s, float z, int nbits) {
  const float zi = std::fmin(std::fmax(std::rint(z), -512.0f), 512.0f);  // fminf/fmaxf: a NaN z gives -512
  const float m = -((z - zi) * s);
  F16Group r;
  auto see = [&r](double v, double rounded) {
    if (std::isnan(v)) return;
    r.peak = std::max(r.peak, std::fabs(v));
    if (std::isinf(rounded)) r.finite = false;
  };
  see(s, f16(s));
  see(m, f16(m));
  if (std::isfinite(f16(s)) && std::isfinite(f16(m))) {
    for (int q = 0; q < (1 << nbits); ++q) {
      const double w = (q - static_cast<double>(zi)) * f16(s) + f16(m);  // exact: f16 values, |q - zi| < 2^11
      see(w, std::fabs(w) >= 65520.0 ? std::numeric_limits<double>::infinity() : w);
    }
  }
  return r;
}

// Values worked out by hand at the edges of the range, through
// gemm_f16_peak and the code-by-code oracle.
TEST(GemmLayoutF16Range, PeakFollowsTheKernelsF16Arithmetic) {
  struct Case {
    float s, z;
    int nbits;
    double peak;
    bool fits;
    const char* why;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Case cases[] = {
      {0.02f, 7.3f, 4, -1, true, "an ordinary group"},
      {65504.0f, 0.0f, 1, 65504.0, true, "the largest finite f16 scale, w = 65504 at q = 1"},
      {65519.0f, 0.0f, 1, 65519.0, true, "a scale that rounds down to 65504"},
      {65520.0f, 0.0f, 1, 65520.0, false, "a scale that rounds to inf"},
      {1e5f, 7.0f, 4, 1e5, false, "scale 1e5 (inf in f16: no weight is formed)"},
      // zi = 512: m = -(9488 * 0.02) = -189.76..., w = (q - 512) 0.02 + m stays near -200.
      {0.02f, 1e4f, 4, -1, true, "a zero far out with a small scale (the clamped zi absorbs it)"},
      // zi = 512: m = -(4488 * 20) = -89760, past the f16 range by itself.
      {20.0f, 5000.0f, 4, 89760.0, false, "a zero far out: m overflows"},
      // zi = -512: m = 2488 * 21 = 52248 -> 52256 in f16; w(0) = 512 * 21 + 52256 = 63008,
      // w(15) = 63323, w(255) = 767 * 21 + 52256 = 68363: only the top of the 8-bit range overflows.
      {21.0f, -3000.0f, 4, 63323.0, true, "4-bit: every code fits"},
      {21.0f, -3000.0f, 8, 68363.0, false, "8-bit: the top code overflows"},
      // f16 metadata (both exact in f16) can overflow too: zi = 512, m = -588 * 64 = -37632 fits,
      // w(0) = -512 * 64 - 37632 = -70400.
      {64.0f, 1100.0f, 4, 70400.0, false, "f16-exact scale 64 and zero 1100"},
      {0.02f, nan, 4, 0.02f, true, "a NaN zero is passed over (it reaches y through either kernel)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.why) + ": s = " + std::to_string(c.s) + ", z = " + std::to_string(c.z) + ", " +
                 std::to_string(c.nbits) + "-bit");
    const double peak = gemm_f16_peak(c.s, c.z, c.nbits);
    const F16Group o = f16_oracle(c.s, c.z, c.nbits);
    EXPECT_EQ(peak, o.peak) << "the oracle runs every code";
    EXPECT_EQ(peak < kF16Overflow, o.finite);
    EXPECT_EQ(peak < kF16Overflow, c.fits) << "peak " << peak;
    if (c.peak >= 0) {
      EXPECT_NEAR(peak, c.peak, c.peak * 1e-6) << "by hand";
    }
  }
}

// A layout's f16_peak is the largest over its groups (padding aside) and
// fits_f16() says whether it is below the overflow: quantized layers with
// f16, f32 and bf16 metadata fit; one group anywhere with a scale of 1e5, a
// zero far out with a large scale, an 8-bit top code past the range, or f16
// metadata whose weights reach 70400 makes the layer not fit; a zero far out
// with a small scale does not.
TEST(GemmLayoutF16Range, LayoutPeakIsTheLargestOverItsGroups) {
  const OneThread one_thread;
  const std::uint32_t seed = fresh_seed();
  SCOPED_TRACE(seed_note(seed));
  struct Edit {
    float s, z;
    bool fits;
    const char* what;
  };
  const Edit edits[] = {{0, 0, true, "as quantized"},
                        {1e5f, 3.0f, false, "scale 1e5"},
                        {20.0f, 5000.0f, false, "zero 5000, scale 20"},
                        {0.02f, 1e4f, true, "zero 1e4, scale 0.02"},
                        {21.0f, -3000.0f, false, "zero -3000, scale 21 (8-bit only)"},
                        {64.0f, 1100.0f, false, "zero 1100, scale 64"}};
  const std::int64_t N = 130, K = 480, G = 32, row_groups = K / G;  // K % 64 == 32; packs at 4 bits
  int built = 0;
  for (int nb : {8, 4}) {
    for (DType sdt : {DType::kF32, DType::kBF16, DType::kF16}) {
      QuantizedTensor base = quantized(N, K, nb, G, sdt, seed + static_cast<std::uint32_t>(built++));
      for (const Edit& e : edits) {
        if (sdt == DType::kF16 && e.s > 65504) continue;  // not an f16 value
        QuantizedTensor q = base;
        // The edited group: the last row's last group, one row tile from the padding.
        const std::size_t at = static_cast<std::size_t>(N * row_groups - 1);
        if (e.s != 0) {
          q.scale[at] = round_to(sdt, e.s);
          q.zero[at] = round_to(sdt, e.z);
        }
        const bool fits = e.fits || (nb == 4 && e.s == 21.0f);  // the 4-bit codes of that group stay in range
        const std::string what =
            std::string(e.what) + ", " + std::to_string(nb) + "-bit, scale " + std::string(dtype_name(sdt));
        const GemmLayout gl = make_gemm_layout(detail::make_linear_layout(q));
        double want = 0;
        bool finite = true;
        for (std::size_t g = 0; g < q.scale.size(); ++g) {
          const F16Group o = f16_oracle(q.scale[g], q.zero[g], nb);
          want = std::max(want, o.peak);
          finite = finite && o.finite;
        }
        EXPECT_EQ(gl.f16_peak, want) << what;
        EXPECT_EQ(gl.fits_f16(), finite) << what << ": peak " << gl.f16_peak;
        EXPECT_EQ(gl.fits_f16(), fits) << what << ": peak " << gl.f16_peak;
        EXPECT_GT(gl.f16_peak, 0) << what;
      }
    }
  }
}

}  // namespace
}  // namespace hqq
