#pragma once
// Internal: construction of the built-in backends.

#include <memory>

#include "hqq/backend.hpp"

namespace hqq::detail {

/// The CPU backend (always present).
std::shared_ptr<Backend> make_cpu_backend();

}  // namespace hqq::detail
