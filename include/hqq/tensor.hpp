#pragma once
/// \file tensor.hpp
/// Non-owning tensor views over f32/f16/bf16 data.

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "hqq/dtype.hpp"
#include "hqq/error.hpp"

namespace hqq {

/// Number of elements of a shape; throws on negative dims or overflow.
inline std::int64_t shape_numel(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) {
    HQQ_EXPECTS(d >= 0, "shape {} has a negative dimension", shape);
    HQQ_EXPECTS(d == 0 || n <= std::numeric_limits<std::int64_t>::max() / d,
                "shape {} overflows 64-bit element count", shape);
    n *= d;
  }
  return n;
}

/// A read-only view: pointer, shape and element type. Row-major, contiguous.
struct TensorView {
  const void* data = nullptr;
  std::vector<std::int64_t> shape;
  DType dtype = DType::kF32;

  std::int64_t numel() const { return shape_numel(shape); }
};

/// A writable view.
struct MutableTensorView {
  void* data = nullptr;
  std::vector<std::int64_t> shape;
  DType dtype = DType::kF32;

  std::int64_t numel() const { return shape_numel(shape); }
};

}  // namespace hqq
