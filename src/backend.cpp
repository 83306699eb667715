// The backend registry: built-in backends register on first use.

#include "hqq/backend.hpp"

#include <cstdlib>
#include <mutex>

#include <fmt/ranges.h>

#include "cpu_backend.hpp"

#ifdef HQQ_WITH_CUDA
namespace hqq::cuda::detail {
std::shared_ptr<Backend> make_cuda_backend();  // cuda/backend.cpp
}
#endif

namespace hqq {
namespace {

struct Registry {
  std::mutex mu;
  std::vector<std::shared_ptr<Backend>> backends;  // preferred first
};

Registry& registry() {
  static Registry* r = [] {
    auto* reg = new Registry;  // never destroyed: backends may be used from static destructors
#ifdef HQQ_WITH_CUDA
    reg->backends.push_back(cuda::detail::make_cuda_backend());
#endif
    reg->backends.push_back(detail::make_cpu_backend());
    return reg;
  }();
  return *r;
}

}  // namespace

void register_backend(std::shared_ptr<Backend> backend) {
  HQQ_EXPECTS(backend != nullptr, "register_backend: null backend");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (auto& b : r.backends) {
    if (b->name() == backend->name()) {
      b = std::move(backend);
      return;
    }
  }
  // A newly registered device backend is preferred over the CPU.
  r.backends.insert(r.backends.begin(), std::move(backend));
}

const Backend& get_backend(std::string_view name) {
  if (name == "auto") {
    const char* env = std::getenv("HQQ_BACKEND");
    if (env != nullptr && *env != '\0' && std::string_view(env) != "auto") return get_backend(env);
  }
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  if (name == "auto") {
    for (auto& b : r.backends)
      if (b->available()) return *b;
    return *r.backends.back();  // the CPU is always there
  }
  for (auto& b : r.backends)
    if (b->name() == name) return *b;
  std::vector<std::string> names;
  for (auto& b : r.backends) names.emplace_back(b->name());
  if (name == "cuda")
    detail::throw_error("no backend named 'cuda': this build of hqq has no CUDA backend (nvcc was not found "
                        "when it was configured; available: {})", fmt::join(names, ", "));
  detail::throw_error("no backend named '{}' (available: {})", name, fmt::join(names, ", "));
}

std::vector<std::string> backend_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> names;
  for (auto& b : r.backends) names.emplace_back(b->name());
  return names;
}

}  // namespace hqq
