// The CPU matmul kernels of QuantizedLinear: a fused dequantize-GEMV over the
// chunk layout (AVX2/FMA when the CPU has it, else portable C++), an Eigen
// product for the dense path, and the CPU backend's LinearKernel.
//
// y[m, n] = sum_g s_g * (sum_{k in g} q[n, k] x[m, k] - z_g * X_g[m]) + b[n],
// X_g[m] = sum_{k in g} x[m, k]: the float zero is applied exactly, once per
// group, and the codes are multiplied as exact small integers in f32.

#include <omp.h>

#include <algorithm>
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

/// Rows of x handled per pass over a row's codes (accumulators in registers).
constexpr int kRowsPerPass = 4;

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

/// Portable row kernel: rows [m0, m0 + mb) of x against weight row n.
void row_portable(const LinearLayout& L, std::int64_t n, const float* x, std::int64_t m0, int mb,
                  const float* xg, float* y) {
  const std::int64_t K = L.in_features, G = L.group_size, groups = L.row_groups();
  const std::uint32_t* row = L.codes.data() + n * L.row_words();
  float tot[kRowsPerPass] = {}, zt[kRowsPerPass] = {};
  for (std::int64_t g = 0; g < groups; ++g) {
    float s, z;
    meta_pair(L, n * groups + g, s, z);
    float acc[kRowsPerPass] = {};
    for (std::int64_t k = g * G; k < (g + 1) * G; k += kLinearChunk) {
      const std::uint32_t* chunk = row + (k / kLinearChunk) * L.nbits;
      for (int c = 0; c < kLinearChunk; ++c) {
        const float q = static_cast<float>(chunk_code(chunk, L.nbits, c));
        for (int r = 0; r < mb; ++r) acc[r] += q * x[(m0 + r) * K + k + c];
      }
    }
    for (int r = 0; r < mb; ++r) {
      tot[r] += s * acc[r];
      zt[r] += s * z * xg[(m0 + r) * groups + g];
    }
  }
  const float b = L.bias.empty() ? 0.0f : L.bias[n];
  for (int r = 0; r < mb; ++r) y[(m0 + r) * L.out_features + n] = tot[r] - zt[r] + b;
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

HQQ_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/// AVX2 row kernel: MB rows of x against weight row n.
template <int B, int MB>
HQQ_AVX2 void row_avx2(const LinearLayout& L, std::int64_t n, const float* x, std::int64_t m0, const float* xg,
                       float* y) {
  const std::int64_t K = L.in_features, G = L.group_size, groups = L.row_groups();
  const std::uint32_t* row = L.codes.data() + n * L.row_words();
  const float* xr[MB];
  for (int r = 0; r < MB; ++r) xr[r] = x + (m0 + r) * K;
  __m256 tot[MB];
  float zt[MB];
  for (int r = 0; r < MB; ++r) {
    tot[r] = _mm256_setzero_ps();
    zt[r] = 0.0f;
  }
  for (std::int64_t g = 0; g < groups; ++g) {
    float s, z;
    meta_pair(L, n * groups + g, s, z);
    __m256 acc[MB];
    for (int r = 0; r < MB; ++r) acc[r] = _mm256_setzero_ps();
    for (std::int64_t k = g * G; k < (g + 1) * G; k += kLinearChunk) {
      const std::uint32_t* chunk = row + (k / kLinearChunk) * B;
      for (int slice = 0; slice < 4; ++slice) {
        const __m256 q = decode8<B>(chunk, slice);
        for (int r = 0; r < MB; ++r) acc[r] = _mm256_fmadd_ps(q, _mm256_loadu_ps(xr[r] + k + 8 * slice), acc[r]);
      }
    }
    const __m256 sv = _mm256_set1_ps(s);
    for (int r = 0; r < MB; ++r) {
      tot[r] = _mm256_fmadd_ps(sv, acc[r], tot[r]);
      zt[r] += s * z * xg[(m0 + r) * groups + g];
    }
  }
  const float b = L.bias.empty() ? 0.0f : L.bias[n];
  for (int r = 0; r < MB; ++r) y[(m0 + r) * L.out_features + n] = hsum(tot[r]) - zt[r] + b;
}

template <int B>
void row_avx2_dispatch(const LinearLayout& L, std::int64_t n, const float* x, std::int64_t m0, int mb,
                       const float* xg, float* y) {
  switch (mb) {
    case 1: row_avx2<B, 1>(L, n, x, m0, xg, y); break;
    case 2: row_avx2<B, 2>(L, n, x, m0, xg, y); break;
    case 3: row_avx2<B, 3>(L, n, x, m0, xg, y); break;
    default: row_avx2<B, 4>(L, n, x, m0, xg, y); break;
  }
}

using RowFn = void (*)(const LinearLayout&, std::int64_t, const float*, std::int64_t, int, const float*, float*);

RowFn avx2_row_fn(int nbits) {
  switch (nbits) {
    case 8: return row_avx2_dispatch<8>;
    case 4: return row_avx2_dispatch<4>;
    case 3: return row_avx2_dispatch<3>;
    case 2: return row_avx2_dispatch<2>;
    default: return row_avx2_dispatch<1>;
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
  const std::vector<float> xg = group_sums(x, m, L.in_features, L.group_size);
  RowFn fn = row_portable;
#ifdef HQQ_LINEAR_X86
  if (cpu_has_avx2()) fn = avx2_row_fn(L.nbits);
#endif
  const std::int64_t N = L.out_features;
#pragma omp parallel for num_threads(thread_count(threads)) schedule(static)
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t m0 = 0; m0 < m; m0 += kRowsPerPass) {
      fn(L, n, x, m0, static_cast<int>(std::min<std::int64_t>(kRowsPerPass, m - m0)), xg.data(), y);
    }
  }
}

namespace {

/// The CPU backend's engine: activations to f32, the fused kernel, y back.
class CpuLinear final : public LinearKernel {
 public:
  CpuLinear(const LinearLayout& layout, int threads) : layout_(layout), threads_(threads) {}

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
