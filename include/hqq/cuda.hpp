#pragma once
/// \file cuda.hpp
/// The device-side API of the CUDA backend, for engines that keep weights on
/// the GPU: quantize from a device pointer into device buffers, dequantize
/// into a device buffer, pack and unpack, all on a caller-given stream.
/// Host pointers work too (they are copied, and the call synchronises).
///
/// This header includes no CUDA header: `Stream` is the same type as
/// `cudaStream_t`, so a stream from the runtime API passes straight in. In a
/// build without CUDA (hqq::kCudaEnabled is false) every function here
/// exists; available() says why no device can be used and the others throw
/// hqq::Error saying so.
///
/// \code
///   // d_w: device pointer to a [4096, 4096] f16 weight
///   hqq::QuantConfig cfg;                                   // 4-bit, g64
///   hqq::cuda::DeviceQuantized q(TensorView{d_w, {4096, 4096}, DType::kF16}, cfg, {stream});
///   hqq::cuda::dequantize(q.view(), MutableTensorView{d_out, {4096, 4096}, DType::kF16}, {stream});
/// \endcode

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "hqq/backend.hpp"
#include "hqq/build_config.hpp"
#include "hqq/config.hpp"
#include "hqq/quantized.hpp"
#include "hqq/tensor.hpp"

struct CUstream_st;

namespace hqq::cuda {

/// A CUDA stream (the type behind cudaStream_t); nullptr is the legacy default stream.
using Stream = CUstream_st*;

/// Whether this build has CUDA and a device is usable; `reason` says why not.
Support available();
/// Number of CUDA devices (0 without CUDA or a driver).
int device_count();
/// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" for the current device.
std::string device_description();

/// Owning device memory (cudaMalloc on the current device).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  /// Allocates `bytes` bytes (contents undefined).
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
    other.ptr_ = nullptr;
    other.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() { return ptr_; }
  const void* data() const { return ptr_; }
  std::size_t size() const { return bytes_; }

  /// Copies `bytes` bytes from host memory to offset `offset` (synchronous).
  void upload(const void* host, std::size_t bytes, std::size_t offset = 0);
  /// Copies `bytes` bytes at offset `offset` to host memory (synchronous).
  void download(void* host, std::size_t bytes, std::size_t offset = 0) const;
  /// Sets every byte to `value` (synchronous); tests poison outputs with it.
  void fill(std::uint8_t value);

  /// A buffer holding a copy of a host vector.
  template <class T>
  static DeviceBuffer from(const std::vector<T>& v) {
    DeviceBuffer b(v.size() * sizeof(T));
    if (!v.empty()) b.upload(v.data(), v.size() * sizeof(T));
    return b;
  }
  /// The contents as a host vector of T (size() / sizeof(T) elements).
  template <class T>
  std::vector<T> to_vector() const {
    std::vector<T> v(bytes_ / sizeof(T));
    if (!v.empty()) download(v.data(), v.size() * sizeof(T));
    return v;
  }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

/// A quantized weight whose codes, scale and zero live in device (or host)
/// memory, in the interchange layout of packing.hpp. Non-owning. Pointers
/// must be aligned to their element size (3-bit codes: 4 bytes).
struct DeviceQuantizedView {
  std::vector<std::int64_t> shape;  ///< shape of the original weight
  int nbits = 4;
  std::int64_t group_size = 64;
  int axis = 1;
  DType scale_dtype = DType::kF16;  ///< element type of scale and zero (F16, BF16, F32)
  void* packed = nullptr;           ///< packed_bytes(nbits, rows, cols) bytes
  void* scale = nullptr;            ///< num_groups values of scale_dtype (the step 1/s)
  void* zero = nullptr;             ///< num_groups values of scale_dtype

  /// Number of weights.
  std::int64_t numel() const { return shape_numel(shape); }
  /// Number of groups.
  std::int64_t num_groups() const { return numel() / group_size; }
  /// Throws hqq::Error naming the first inconsistent field.
  void validate() const;
};

/// Buffer sizes for quantizing a weight of `shape` with `config`.
struct QuantizeSizes {
  std::int64_t packed_bytes = 0;       ///< bytes of packed codes
  std::int64_t num_groups = 0;         ///< values in scale and in zero
  std::int64_t meta_bytes = 0;         ///< bytes of scale (= bytes of zero)
  std::size_t workspace_bytes = 0;     ///< scratch quantize() needs (see Options)
};
/// Validates shape and config, and says how large the buffers must be.
QuantizeSizes quantize_sizes(const std::vector<std::int64_t>& shape, const QuantConfig& config);

/// How a device call runs.
struct Options {
  Stream stream = nullptr;  ///< stream the work is queued on
  /// Device scratch of at least QuantizeSizes::workspace_bytes, or null to
  /// allocate it stream-ordered (cudaMallocAsync) for the call.
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  /// quantize(): check the weight for NaN/Inf and throw hqq::Error naming it.
  /// The check synchronises the stream once at the end of the call; pass
  /// false to stay fully asynchronous. Without the check a NaN/Inf weight
  /// gives codes in range but meaningless scale and zero for its group (and,
  /// with the legacy solver, whose stopping rule uses the tensor-wide error,
  /// for every group).
  bool check_finite = true;
};

/// Quantizes `weight` (f32/f16/bf16; device, managed or host memory) into
/// the buffers of `out` (device or host memory), whose geometry fields must
/// match `config` and the weight's shape. Asynchronous on options.stream
/// unless a host pointer is involved or check_finite is set.
void quantize(const TensorView& weight, const QuantConfig& config, const DeviceQuantizedView& out,
              const Options& options = {});

/// Dequantizes `q` into `out` (f32/f16/bf16, numel matching; device or host).
/// Bit-identical to the CPU backend (NaN payloads aside: an infinite scale
/// times a zero difference gives a NaN on both, with different bits).
/// Asynchronous for device pointers.
void dequantize(const DeviceQuantizedView& q, const MutableTensorView& out, const Options& options = {});

/// Packs codes [rows, cols] (values < 2^nbits) into the interchange layout
/// at `packed` (packed_bytes() bytes). Device memory, or host memory (copied;
/// the call then synchronises).
void pack(int nbits, const std::uint8_t* codes, std::int64_t rows, std::int64_t cols,
          std::uint8_t* packed, Stream stream = nullptr);
/// Inverse of pack() (3-bit padding rows dropped); device or host memory.
void unpack(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols,
            std::uint8_t* codes, Stream stream = nullptr);

/// An owning quantized weight on the device.
class DeviceQuantized {
 public:
  DeviceQuantized() = default;
  /// Quantizes `weight` (device or host memory) on the device.
  DeviceQuantized(const TensorView& weight, const QuantConfig& config, const Options& options = {});
  /// Uploads a host QuantizedTensor.
  explicit DeviceQuantized(const QuantizedTensor& q);

  /// The non-owning view for quantize/dequantize.
  DeviceQuantizedView view() const;
  /// Downloads into a host QuantizedTensor (waits for the quantizing stream).
  QuantizedTensor to_host() const;

 private:
  QuantizedTensor meta_;  // metadata only; packed/scale/zero stay empty
  DeviceBuffer packed_, scale_, zero_;
  Stream stream_ = nullptr;  // where the buffers were written
};

}  // namespace hqq::cuda
