#pragma once
/// \file error.hpp
/// hqq::Error and the always-on input check HQQ_EXPECTS.

#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace hqq {

/// The one exception type the library throws for bad input or failed I/O.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Args>
[[noreturn]] void throw_error(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}
}  // namespace detail

}  // namespace hqq

/// Checks an input condition in every build; throws hqq::Error with the
/// formatted message when it does not hold.
#define HQQ_EXPECTS(cond, ...)                  \
  do {                                          \
    if (!(cond)) ::hqq::detail::throw_error(__VA_ARGS__); \
  } while (0)

/// Internal invariant: checked in debug builds only.
#ifdef NDEBUG
#define HQQ_ASSERT(cond) ((void)0)
#else
#include <cassert>
#define HQQ_ASSERT(cond) assert(cond)
#endif
