#pragma once
/// \file grouping.hpp
/// The grouped view of DESIGN §1: axis 1 -> [numel/G, G] (a group is a row),
/// axis 0 -> [G, numel/G] (a group is a column). Codes, like the weights,
/// keep the flat order of the original tensor; only the view changes.

#include <cstdint>

#include "hqq/error.hpp"

namespace hqq {

/// Geometry of the grouped view of a tensor of `numel` elements.
struct GroupedView {
  std::int64_t numel = 0;
  std::int64_t group_size = 0;
  int axis = 1;

  /// Checks that group_size divides numel.
  GroupedView(std::int64_t numel_, std::int64_t group_size_, int axis_)
      : numel(numel_), group_size(group_size_), axis(axis_) {
    HQQ_EXPECTS(group_size > 0, "group_size={} must be positive", group_size);
    HQQ_EXPECTS(numel > 0, "cannot quantize an empty tensor");
    HQQ_EXPECTS(numel % group_size == 0,
                "group_size={} does not divide {} elements", group_size, numel);
    HQQ_EXPECTS(axis == 0 || axis == 1, "axis={} must be 0 or 1", axis);
  }

  /// Number of groups (numel / G).
  std::int64_t num_groups() const { return numel / group_size; }
  /// Rows of the grouped view (the dimension packing runs along).
  std::int64_t rows() const { return axis == 1 ? num_groups() : group_size; }
  /// Columns of the grouped view.
  std::int64_t cols() const { return axis == 1 ? group_size : num_groups(); }
  /// Flat index of element i (0 <= i < G) of group g.
  std::int64_t index(std::int64_t g, std::int64_t i) const {
    return axis == 1 ? g * group_size + i : i * num_groups() + g;
  }
};

}  // namespace hqq
