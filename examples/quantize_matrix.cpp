// The smallest use of hqq-cpp: quantize a matrix to 4 bits, dequantize it and
// look at the error and the storage cost.

#include <cmath>
#include <cstdio>
#include <exception>
#include <random>
#include <vector>

#include <hqq/hqq.hpp>

int main() {
  try {
    // A row-major [out_features, in_features] weight.
    const std::int64_t rows = 1024, cols = 1024;
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::vector<float> w(static_cast<std::size_t>(rows * cols));
    for (float& x : w) x = normal(rng);

    hqq::QuantConfig config;  // 4-bit, groups of 64 along a row, proximal solver
    config.nbits = 4;
    config.group_size = 64;

    const hqq::QuantizedTensor q = hqq::quantize(w.data(), {rows, cols}, config);
    const std::vector<float> w_hat = hqq::dequantize(q);

    double err2 = 0, norm2 = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double d = static_cast<double>(w[i]) - w_hat[i];
      err2 += d * d;
      norm2 += static_cast<double>(w[i]) * w[i];
    }
    std::printf("%lldx%lld, %d-bit, group %lld: relative error %.4f, %.3f bits/weight\n",
                static_cast<long long>(rows), static_cast<long long>(cols), q.nbits,
                static_cast<long long>(q.group_size), std::sqrt(err2 / norm2),
                q.bits_per_weight());

    // The same numbers from the library, against the original weight.
    const hqq::ErrorStats e = hqq::measure_error(hqq::TensorView{w.data(), {rows, cols}}, q);
    std::printf("measure_error: rel %.4f, mean |err| %.3e, max |err| %.3e\n", e.rel_frobenius,
                e.mean_abs, e.max_abs);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "quantize_matrix: error: %s\n", e.what());
    return 1;
  }
}
