// The CPU matmul kernels of QuantizedLinear: a fused dequantize-GEMV over the
// chunk layout (AVX2/FMA when the CPU has it, else portable C++), an Eigen
// product for the dense path, and the CPU backend's LinearKernel.
//
// y[m, n] = sum_g s_g * (sum_{k in g} (q[n, k] - zi_g) x[m, k] - (z_g - zi_g) * X_g[m]) + b[n],
// X_g[m] = sum_{k in g} x[m, k], zi_g the nearest integer to z_g: the float
// zero is applied exactly, once per group, and the codes are multiplied as
// exact small integers in f32.

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <Eigen/Core>

#include "hqq/linear.hpp"

#include "cpu_backend.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define HQQ_LINEAR_X86 1
#endif

namespace hqq::detail {
namespace {

/// Rows of x handled per pass over a row's codes (partial sums in registers).
constexpr int kRowsPerPass = 8;
/// Weight rows that share one K tile of x in L1 before the next tile.
constexpr std::int64_t kRowBlock = 8;

/// Per-group sums X_g[m] (computed in double, stored f32), [m][K/G].
std::vector<float> group_sums(const float* x, std::int64_t m, std::int64_t K, std::int64_t G) {
  const std::int64_t groups = K / G;
  std::vector<float> out(static_cast<std::size_t>(m * groups));
  for (std::int64_t r = 0; r < m; ++r) {
    for (std::int64_t g = 0; g < groups; ++g) {
      double s = 0;
      for (std::int64_t k = g * G; k < (g + 1) * G; ++k) s += x[r * K + k];
      out[r * groups + g] = static_cast<float>(s);
    }
  }
  return out;
}

/// (scale, zero) of group g of a row, widened to f32.
inline void meta_pair(const LinearLayout& L, std::int64_t index, float& s, float& z) {
  if (L.meta_dtype == DType::kF16) {
    std::uint16_t h[2];
    std::memcpy(h, L.meta.data() + index * 4, 4);
    s = half_bits_to_float(h[0]);
    z = half_bits_to_float(h[1]);
  } else {
    float f[2];
    std::memcpy(f, L.meta.data() + index * 8, 8);
    s = f[0];
    z = f[1];
  }
}

/// Accumulator state of one (weight row, x row) pair across K tiles: eight
/// f32 partial sums of s * sum q*x (one AVX2 register; the portable kernel
/// uses lane 0) and the zero term sum s * z * X_g.
struct Acc {
  alignas(32) float tot[8];
  float zt;
};

/// One call: weight row n, x rows [m0, m0 + mb), groups [g0, g1). `acc` is
/// the state of those mb pairs.
struct TileArgs {
  const LinearLayout* L;
  std::int64_t n, m0, g0, g1;
  int mb;
  const float* x;   // [M, K] f32
  const float* xg;  // [M, K/G] group sums
  Acc* acc;         // mb entries
};

/// Portable tile kernel (the fallback without AVX2).
void tile_portable(const TileArgs& a) {
  const LinearLayout& L = *a.L;
  const std::int64_t K = L.in_features, G = L.group_size, groups = L.row_groups();
  const std::uint32_t* row = L.codes.data() + a.n * L.row_words();
  for (std::int64_t g = a.g0; g < a.g1; ++g) {
    float s, z;
    meta_pair(L, a.n * groups + g, s, z);
    const float zi = zero_integer_part(z);
    float part[kRowsPerPass] = {};
    for (std::int64_t k = g * G; k < (g + 1) * G; k += kLinearChunk) {
      const std::uint32_t* chunk = row + (k / kLinearChunk) * L.nbits;
      for (int c = 0; c < kLinearChunk; ++c) {
        const float q = static_cast<float>(chunk_code(chunk, L.nbits, c)) - zi;
        for (int r = 0; r < a.mb; ++r) part[r] += q * a.x[(a.m0 + r) * K + k + c];
      }
    }
    for (int r = 0; r < a.mb; ++r) {
      a.acc[r].tot[0] += s * part[r];
      a.acc[r].zt += s * (z - zi) * a.xg[(a.m0 + r) * groups + g];
    }
  }
}

#ifdef HQQ_LINEAR_X86
#define HQQ_AVX2 __attribute__((target("avx2,fma,f16c")))

/// Codes 8*slice .. 8*slice+7 of a chunk as f32 lanes.
template <int B>
HQQ_AVX2 inline __m256 decode8(const std::uint32_t* chunk, int slice) {
  if constexpr (B == 8) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(chunk + 2 * slice));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
  } else if constexpr (B == 3) {
    const __m256i base = _mm256_setr_epi32(0, 8, 16, 24, 2, 10, 18, 26);
    const __m256i lo_shift = _mm256_add_epi32(base, _mm256_set1_epi32(4 * (slice % 2)));
    const __m256i lo = _mm256_and_si256(
        _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(chunk[slice / 2])), lo_shift), _mm256_set1_epi32(3));
    const __m256i hi_shift = _mm256_setr_epi32(0 + 2 * slice, 8 + 2 * slice, 16 + 2 * slice, 24 + 2 * slice,
                                               1 + 2 * slice, 9 + 2 * slice, 17 + 2 * slice, 25 + 2 * slice);
    const __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(chunk[2])), hi_shift),
                                        _mm256_set1_epi32(1));
    return _mm256_cvtepi32_ps(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 2)));
  } else {
    constexpr int kSlicesPerWord = 4 / B;
    const int off = 2 * B * (slice % kSlicesPerWord);
    const __m256i shift = _mm256_add_epi32(_mm256_setr_epi32(0, 8, 16, 24, B, 8 + B, 16 + B, 24 + B),
                                           _mm256_set1_epi32(off));
    const __m256i w = _mm256_set1_epi32(static_cast<int>(chunk[slice / kSlicesPerWord]));
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(w, shift), _mm256_set1_epi32((1 << B) - 1)));
  }
}

/// (scale, zero) of a group with the F16C conversion (meta_pair's fast twin).
HQQ_AVX2 inline void meta_pair_f16c(const LinearLayout& L, std::int64_t index, float& s, float& z) {
  if (L.meta_dtype != DType::kF16) {
    meta_pair(L, index, s, z);
    return;
  }
  std::int32_t bits;
  std::memcpy(&bits, L.meta.data() + index * 4, 4);
  const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
  s = _mm_cvtss_f32(f);
  z = _mm_cvtss_f32(_mm_movehdup_ps(f));
}


/// AVX2 tile kernel for MB rows of x.
template <int B, int MB>
HQQ_AVX2 void tile_avx2(const TileArgs& a) {
  const LinearLayout& L = *a.L;
  const std::int64_t K = L.in_features, G = L.group_size, groups = L.row_groups();
  const std::uint32_t* row = L.codes.data() + a.n * L.row_words();
  // Up to 4 x rows the running totals stay in registers; beyond, the 16 ymm
  // registers hold the group partials and the totals are updated in memory
  // once per group.
  constexpr bool kTotInRegisters = MB <= 4;
  const float* xr[MB];
  __m256 tot[kTotInRegisters ? MB : 1];
  float zt[MB];
  for (int r = 0; r < MB; ++r) {
    xr[r] = a.x + (a.m0 + r) * K;
    if constexpr (kTotInRegisters) tot[r] = _mm256_load_ps(a.acc[r].tot);
    zt[r] = a.acc[r].zt;
  }
  for (std::int64_t g = a.g0; g < a.g1; ++g) {
    float s, z;
    meta_pair_f16c(L, a.n * groups + g, s, z);
    const float zi = zero_integer_part(z);
    const __m256 ziv = _mm256_set1_ps(zi);
    // Independent FMA chains per x row: an FMA's latency is hidden only with
    // about four in flight, so few x rows get several partial sums.
    constexpr int kChains = MB == 1 ? 4 : MB == 2 ? 2 : 1;
    __m256 part[kChains][MB];
    for (int c = 0; c < kChains; ++c)
      for (int r = 0; r < MB; ++r) part[c][r] = _mm256_setzero_ps();
    for (std::int64_t k = g * G; k < (g + 1) * G; k += kLinearChunk) {
      const std::uint32_t* chunk = row + (k / kLinearChunk) * B;
      for (int slice = 0; slice < 4; ++slice) {
        const __m256 q = _mm256_sub_ps(decode8<B>(chunk, slice), ziv);
        for (int r = 0; r < MB; ++r) {
          part[slice % kChains][r] =
              _mm256_fmadd_ps(q, _mm256_loadu_ps(xr[r] + k + 8 * slice), part[slice % kChains][r]);
        }
      }
    }
    const __m256 sv = _mm256_set1_ps(s);
    for (int r = 0; r < MB; ++r) {
      for (int c = 1; c < kChains; ++c) part[0][r] = _mm256_add_ps(part[0][r], part[c][r]);
      if constexpr (kTotInRegisters) {
        tot[r] = _mm256_fmadd_ps(sv, part[0][r], tot[r]);
      } else {
        _mm256_store_ps(a.acc[r].tot, _mm256_fmadd_ps(sv, part[0][r], _mm256_load_ps(a.acc[r].tot)));
      }
      zt[r] += s * (z - zi) * a.xg[(a.m0 + r) * groups + g];
    }
  }
  for (int r = 0; r < MB; ++r) {
    if constexpr (kTotInRegisters) _mm256_store_ps(a.acc[r].tot, tot[r]);
    a.acc[r].zt = zt[r];
  }
}

template <int B>
void tile_avx2_dispatch(const TileArgs& a) {
  switch (a.mb) {
    case 1: tile_avx2<B, 1>(a); break;
    case 2: tile_avx2<B, 2>(a); break;
    case 3: tile_avx2<B, 3>(a); break;
    case 4: tile_avx2<B, 4>(a); break;
    case 5: tile_avx2<B, 5>(a); break;
    case 6: tile_avx2<B, 6>(a); break;
    case 7: tile_avx2<B, 7>(a); break;
    default: tile_avx2<B, 8>(a); break;
  }
}

using TileFn = void (*)(const TileArgs&);

TileFn avx2_tile_fn(int nbits) {
  switch (nbits) {
    case 8: return tile_avx2_dispatch<8>;
    case 4: return tile_avx2_dispatch<4>;
    case 3: return tile_avx2_dispatch<3>;
    case 2: return tile_avx2_dispatch<2>;
    default: return tile_avx2_dispatch<1>;
  }
}

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif  // HQQ_LINEAR_X86

int thread_count(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

void dense_forward(const LinearLayout& L, const float* x, std::int64_t m, float* y, int threads) {
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const RowMajor> W(L.dense.data(), L.out_features, L.in_features);
  const Eigen::Map<const RowMajor> X(x, m, L.in_features);
  Eigen::Map<RowMajor> Y(y, m, L.out_features);
  const std::int64_t N = L.out_features;
  // Split the output features over threads; each block is one Eigen product.
  const int t = static_cast<int>(std::min<std::int64_t>(thread_count(threads), std::max<std::int64_t>(1, N / 64)));
#pragma omp parallel num_threads(t)
  {
    const std::int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
    const std::int64_t n0 = N * id / nt, n1 = N * (id + 1) / nt;
    if (n1 > n0) {
      Y.middleCols(n0, n1 - n0).noalias() = X * W.middleRows(n0, n1 - n0).transpose();
      if (!L.bias.empty()) {
        for (std::int64_t r = 0; r < m; ++r) {
          for (std::int64_t n = n0; n < n1; ++n) Y(r, n) += L.bias[n];
        }
      }
    }
  }
}

}  // namespace

void linear_forward_cpu(const LinearLayout& L, const float* x, std::int64_t m, float* y, int threads) {
  if (L.path == LinearPath::kDense) {
    dense_forward(L, x, m, y, threads);
    return;
  }
  const std::int64_t N = L.out_features, K = L.in_features, G = L.group_size;
  const std::vector<float> xg = group_sums(x, m, K, G);
  TileFn fn = tile_portable;
#ifdef HQQ_LINEAR_X86
  if (cpu_has_avx2()) fn = avx2_tile_fn(L.nbits);
#endif
  // K tiles small enough that the x rows of a tile (all m) stay in L1 while
  // a block of weight rows streams past them: 16 KB of x, at least one group.
  const std::int64_t tile_groups = std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(1, m) / G);
  const std::int64_t groups = L.row_groups();
  const std::int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  const std::int64_t mm = m;
#pragma omp parallel num_threads(thread_count(threads))
  {
    std::vector<Acc> acc(static_cast<std::size_t>(kRowBlock * mm));
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t n0 = b * kRowBlock, n1 = std::min(N, n0 + kRowBlock);
      for (Acc& a : acc) {
        std::fill(std::begin(a.tot), std::end(a.tot), 0.0f);
        a.zt = 0.0f;
      }
      for (std::int64_t g0 = 0; g0 < groups; g0 += tile_groups) {
        const std::int64_t g1 = std::min(groups, g0 + tile_groups);
        for (std::int64_t n = n0; n < n1; ++n) {
          for (std::int64_t m0 = 0; m0 < mm; m0 += kRowsPerPass) {
            const int mb = static_cast<int>(std::min<std::int64_t>(kRowsPerPass, mm - m0));
            fn(TileArgs{&L, n, m0, g0, g1, mb, x, xg.data(), &acc[static_cast<std::size_t>((n - n0) * mm + m0)]});
          }
        }
      }
      const float* bias = L.bias.empty() ? nullptr : L.bias.data();
      for (std::int64_t n = n0; n < n1; ++n) {
        for (std::int64_t r = 0; r < mm; ++r) {
          const Acc& a = acc[static_cast<std::size_t>((n - n0) * mm + r)];
          float t = 0.0f;
          for (float v : a.tot) t += v;
          y[r * N + n] = t - a.zt + (bias ? bias[n] : 0.0f);
        }
      }
    }
  }
}

namespace {

/// The CPU backend's engine: activations to f32, the fused kernel, y back.
class CpuLinear final : public LinearKernel {
 public:
  CpuLinear(const LinearLayout& layout, int threads) : layout_(layout), threads_(threads) {}

  /// One kernel; the choice is ignored.
  bool supports(LinearKernelChoice) const override { return true; }

  void forward(const TensorView& x, const MutableTensorView& y, std::int64_t m,
               const ForwardOptions&) const override {
    const std::int64_t K = layout_.in_features, N = layout_.out_features;
    std::vector<float> xbuf, ybuf;
    const float* xf = static_cast<const float*>(x.data);
    if (x.dtype != DType::kF32) {
      xbuf = decode_floats(static_cast<const std::uint8_t*>(x.data),
                           static_cast<std::size_t>(m * K) * dtype_size(x.dtype), x.dtype);
      xf = xbuf.data();
    }
    float* yf = static_cast<float*>(y.data);
    if (y.dtype != DType::kF32) {
      ybuf.resize(static_cast<std::size_t>(m * N));
      yf = ybuf.data();
    }
    linear_forward_cpu(layout_, xf, m, yf, threads_);
    if (y.dtype != DType::kF32) {
      const auto bytes = encode_floats(ybuf, y.dtype);
      std::memcpy(y.data, bytes.data(), bytes.size());
    }
  }

 private:
  const LinearLayout& layout_;
  int threads_;
};

}  // namespace

std::unique_ptr<LinearKernel> make_cpu_linear(const LinearLayout& layout, const LinearOptions& options) {
  return std::make_unique<CpuLinear>(layout, options.threads);
}

}  // namespace hqq::detail
