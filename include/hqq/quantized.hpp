#pragma once
/// \file quantized.hpp
/// QuantizedTensor: packed codes in the interchange layout, scale, zero and
/// the metadata needed to dequantize.

#include <cstdint>
#include <utility>
#include <vector>

#include "hqq/config.hpp"
#include "hqq/dtype.hpp"
#include "hqq/grouping.hpp"
#include "hqq/packing.hpp"
#include "hqq/tensor.hpp"

namespace hqq {

/// A quantized weight. Dequantize: W ~= (code - zero[g]) * scale[g].
struct QuantizedTensor {
  std::vector<std::int64_t> shape;  ///< shape of the original weight
  int nbits = 4;                    ///< bits per code
  std::int64_t group_size = 64;     ///< elements per group
  int axis = 1;                     ///< grouping axis (see grouping.hpp)
  bool round_zero = false;          ///< whether the initial zero was rounded
  Solver solver = Solver::kProximal;///< solver that produced it
  DType scale_dtype = DType::kF16;  ///< storage dtype of scale and zero
  /// Packed codes, interchange layout: packed_shape() elements of packed_dtype()
  /// (3-bit: little-endian int32).
  std::vector<std::uint8_t> packed;
  /// Per-group step (1/s), num_groups() values, exactly representable in scale_dtype.
  std::vector<float> scale;
  /// Per-group float zero-point, num_groups() values, representable in scale_dtype.
  std::vector<float> zero;

  /// The metadata of `config` applied to a weight of `shape`, with packed,
  /// scale and zero still empty (what a backend fills in).
  static QuantizedTensor with_metadata(std::vector<std::int64_t> shape, const QuantConfig& config) {
    QuantizedTensor q;
    q.shape = std::move(shape);
    q.nbits = config.nbits;
    q.group_size = config.group_size;
    q.axis = config.axis;
    q.round_zero = config.effective_round_zero();
    q.solver = config.solver;
    q.scale_dtype = config.scale_dtype;
    return q;
  }

  /// Number of weights.
  std::int64_t numel() const { return shape_numel(shape); }
  /// The grouped view geometry.
  GroupedView view() const { return GroupedView(numel(), group_size, axis); }
  /// Number of groups (= scale.size()).
  std::int64_t num_groups() const { return numel() / group_size; }
  /// Element type of the packed codes.
  DType packed_dtype() const { return hqq::packed_dtype(nbits); }
  /// Shape of the packed tensor, [packed rows, grouped-view cols].
  std::vector<std::int64_t> packed_shape() const {
    const auto v = view();
    return {packed_rows(nbits, v.rows()), v.cols()};
  }
  /// Shape of scale and zero as the reference stores them: [G', 1] (axis 1) or [1, G'] (axis 0).
  std::vector<std::int64_t> meta_shape() const {
    return axis == 1 ? std::vector<std::int64_t>{num_groups(), 1}
                     : std::vector<std::int64_t>{1, num_groups()};
  }
  /// Storage bits per weight, codes plus scale and zero.
  double bits_per_weight() const {
    const double meta = 2.0 * static_cast<double>(num_groups()) * dtype_size(scale_dtype);
    return 8.0 * (static_cast<double>(packed.size()) + meta) / static_cast<double>(numel());
  }
  /// Throws hqq::Error if sizes and fields are inconsistent (e.g. after loading a file).
  void validate() const {
    HQQ_EXPECTS(nbits == 8 || nbits == 4 || nbits == 3 || nbits == 2 || nbits == 1,
                "quantized tensor has nbits={} (expected 8, 4, 3, 2 or 1)", nbits);
    HQQ_EXPECTS(!shape.empty(), "quantized tensor has an empty shape");
    const auto v = view();
    check_packable(nbits, v.rows());
    const auto want = packed_bytes(nbits, v.rows(), v.cols());
    HQQ_EXPECTS(static_cast<std::int64_t>(packed.size()) == want,
                "quantized tensor holds {} packed bytes, expected {} for shape {} at {} bits",
                packed.size(), want, shape, nbits);
    HQQ_EXPECTS(static_cast<std::int64_t>(scale.size()) == v.num_groups() &&
                    static_cast<std::int64_t>(zero.size()) == v.num_groups(),
                "quantized tensor has {} scales and {} zeros, expected {} groups",
                scale.size(), zero.size(), v.num_groups());
  }
};

}  // namespace hqq
