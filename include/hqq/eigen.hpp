#pragma once
/// \file eigen.hpp
/// Eigen overloads of quantize()/dequantize() for 2-D weights [out, in].
///
/// \code
///   Eigen::MatrixXf w = Eigen::MatrixXf::Random(256, 512);
///   hqq::QuantizedTensor q = hqq::quantize(w, hqq::QuantConfig{});
///   hqq::RowMajorMatrixXf w_hat = hqq::dequantize_matrix(q);
/// \endcode

#include <type_traits>

#include <Eigen/Core>

#include "hqq/quantize.hpp"

namespace hqq {

/// Row-major float matrix: the memory order the library groups in.
using RowMajorMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Quantizes a float matrix of any storage order; element (i, j) is weight
/// (out i, in j), so groups run along rows for axis 1 whatever the storage.
template <typename Derived>
QuantizedTensor quantize(const Eigen::DenseBase<Derived>& w, const QuantConfig& config = {}) {
  static_assert(std::is_same<typename Derived::Scalar, float>::value,
                "hqq::quantize(Eigen) takes float matrices; use the pointer overloads for f16/bf16");
  const RowMajorMatrixXf m = w;  // no copy cost worth avoiding next to the solver
  return quantize(m.data(), {static_cast<std::int64_t>(m.rows()), static_cast<std::int64_t>(m.cols())},
                  config);
}

/// Dequantizes a 2-D quantized weight into a row-major matrix.
inline RowMajorMatrixXf dequantize_matrix(const QuantizedTensor& q) {
  HQQ_EXPECTS(q.shape.size() == 2, "dequantize_matrix needs a 2-D weight, got {} dimensions", q.shape.size());
  RowMajorMatrixXf m(q.shape[0], q.shape[1]);
  dequantize(q, MutableTensorView{m.data(), q.shape, DType::kF32});
  return m;
}

}  // namespace hqq
