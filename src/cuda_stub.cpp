// hqq/cuda.hpp in a build without CUDA: every entry point exists, available()
// says why no device can be used and the rest throw hqq::Error saying so.
// (A build with CUDA compiles cuda/ instead of this file.)

#include "hqq/cuda.hpp"

namespace hqq::cuda {
namespace {
constexpr const char* kNoCuda =
    "this build of hqq has no CUDA backend (nvcc was not found when it was configured; "
    "rebuild with the CUDA toolkit, or -DHQQ_CUDA=ON to require it)";
[[noreturn]] void no_cuda() { detail::throw_error("{}", kNoCuda); }
}  // namespace

Support available() { return {false, kNoCuda}; }
int device_count() { return 0; }
std::string device_description() { return "none (built without CUDA)"; }

DeviceBuffer::DeviceBuffer(std::size_t) { no_cuda(); }
DeviceBuffer::~DeviceBuffer() = default;
void DeviceBuffer::upload(const void*, std::size_t, std::size_t) { no_cuda(); }
void DeviceBuffer::download(void*, std::size_t, std::size_t) const { no_cuda(); }
void DeviceBuffer::fill(std::uint8_t) { no_cuda(); }

void DeviceQuantizedView::validate() const { no_cuda(); }
QuantizeSizes quantize_sizes(const std::vector<std::int64_t>&, const QuantConfig&) { no_cuda(); }
void quantize(const TensorView&, const QuantConfig&, const DeviceQuantizedView&, const Options&) { no_cuda(); }
void dequantize(const DeviceQuantizedView&, const MutableTensorView&, const Options&) { no_cuda(); }
void pack(int, const std::uint8_t*, std::int64_t, std::int64_t, std::uint8_t*, Stream) { no_cuda(); }
void unpack(int, const std::uint8_t*, std::int64_t, std::int64_t, std::uint8_t*, Stream) { no_cuda(); }

DeviceQuantized::DeviceQuantized(const TensorView&, const QuantConfig&, const Options&) { no_cuda(); }
DeviceQuantized::DeviceQuantized(const QuantizedTensor&) { no_cuda(); }
DeviceQuantizedView DeviceQuantized::view() const { no_cuda(); }
QuantizedTensor DeviceQuantized::to_host() const { no_cuda(); }

}  // namespace hqq::cuda
