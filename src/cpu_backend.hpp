#pragma once
// Internal: construction of the built-in backends.

#include <memory>

#include "hqq/backend.hpp"

namespace hqq::detail {

/// The CPU backend (always present).
std::shared_ptr<Backend> make_cpu_backend();

/// The CPU engine of a QuantizedLinear (src/linear_cpu.cpp).
std::unique_ptr<LinearKernel> make_cpu_linear(const LinearLayout& layout, const LinearOptions& options);

}  // namespace hqq::detail
