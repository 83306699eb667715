#pragma once
/// \file quantize.hpp
/// The main entry points: quantize() and dequantize().
///
/// \code
///   std::vector<float> w(4096 * 4096);  // row-major [out, in]
///   hqq::QuantConfig cfg;                // 4-bit, group 64, axis 1
///   hqq::QuantizedTensor q = hqq::quantize(w.data(), {4096, 4096}, cfg);
///   std::vector<float> w_hat = hqq::dequantize(q);
/// \endcode

#include <cstdint>
#include <string_view>
#include <vector>

#include "hqq/backend.hpp"
#include "hqq/config.hpp"
#include "hqq/quantized.hpp"
#include "hqq/tensor.hpp"

namespace hqq {

/// Quantizes a row-major weight of any shape (numel divisible by group_size).
/// Validates the config, the shape and the values (NaN/Inf are rejected).
QuantizedTensor quantize(const TensorView& weight, const QuantConfig& config = {},
                         std::string_view backend = "auto");
/// f32 input.
QuantizedTensor quantize(const float* data, std::vector<std::int64_t> shape,
                         const QuantConfig& config = {});
/// f16 input (computed in f32).
QuantizedTensor quantize(const half* data, std::vector<std::int64_t> shape,
                         const QuantConfig& config = {});
/// bf16 input (computed in f32).
QuantizedTensor quantize(const bfloat16* data, std::vector<std::int64_t> shape,
                         const QuantConfig& config = {});

/// Dequantizes to f32, in the original shape.
std::vector<float> dequantize(const QuantizedTensor& q);
/// Dequantizes into a caller buffer of dtype f32, f16 or bf16.
void dequantize(const QuantizedTensor& q, const MutableTensorView& out,
                std::string_view backend = "auto");

/// Unpacked codes in grouped-view order [rows, cols] (= the weight's flat order).
std::vector<std::uint8_t> unpack_codes(const QuantizedTensor& q);

/// Reconstruction error of q against the original weight.
struct ErrorStats {
  double rel_frobenius = 0;  ///< ||W - W_hat||_F / ||W||_F
  double mean_abs = 0;       ///< mean |W - W_hat|
  double max_abs = 0;        ///< max |W - W_hat|
};
/// Measures q against the weight it came from (same numel).
ErrorStats measure_error(const TensorView& original, const QuantizedTensor& q);

/// Threads used by the CPU backend (OpenMP); n <= 0 restores the default.
void set_num_threads(int n);
/// Threads the CPU backend will use.
int num_threads();

}  // namespace hqq
