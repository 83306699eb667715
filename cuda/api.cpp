// The device API of hqq/cuda.hpp: validation, host/device pointer staging,
// workspace handling, then the kernels of kernels.hpp.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "check.hpp"
#include "device_util.hpp"
#include "hqq/cuda.hpp"
#include "hqq/grouping.hpp"
#include "hqq/packing.hpp"
#include "kernels.hpp"

namespace hqq::cuda {

namespace detail {

/// Throws hqq::Error with available()'s reason unless a device is usable.
void require_device(const char* what) {
  const Support s = available();
  HQQ_EXPECTS(s.ok, "{}: {}", what, s.reason);
}

ElemType elem_type(DType t, const char* what) {
  switch (t) {
    case DType::kF32: return ElemType::kF32;
    case DType::kF16: return ElemType::kF16;
    case DType::kBF16: return ElemType::kBF16;
    default: ::hqq::detail::throw_error("{} has dtype {} (expected F32, F16 or BF16)", what, dtype_name(t));
  }
}

/// Whether the device can dereference p directly; host memory is staged.
bool on_device(const void* p, const char* what) {
  HQQ_EXPECTS(p != nullptr, "{} is null", what);
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, p);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    ::hqq::detail::throw_error("{} ({}) is not a pointer CUDA recognises: {}", what, p, cudaGetErrorString(e));
  }
  switch (attr.type) {
    case cudaMemoryTypeDevice: {
      int current = 0;
      HQQ_CUDA_CHECK(cudaGetDevice(&current));
      HQQ_EXPECTS(attr.device == current, "{} is memory of CUDA device {}, but the current device is {}", what,
                  attr.device, current);
      return true;
    }
    case cudaMemoryTypeManaged: return true;
    default: return false;  // pageable or pinned host memory: copied
  }
}

/// Throws unless p is aligned to `align` bytes (a misaligned access would
/// fault the device, breaking every later CUDA call of the process).
void check_aligned(const void* p, std::size_t align, const char* what) {
  HQQ_EXPECTS(reinterpret_cast<std::uintptr_t>(p) % align == 0, "{} ({}) is not aligned to {} bytes", what, p,
              align);
}

}  // namespace detail

namespace {

using detail::check_aligned;
using detail::elem_type;
using detail::ElemType;
using detail::on_device;
using detail::require_device;
using detail::StreamBuffer;

/// A caller buffer as the kernels see it: the pointer itself when the device
/// can reach it, else a device copy (uploaded for inputs, downloaded by
/// finish() for outputs).
class Staged {
 public:
  enum Kind { kIn, kOut };
  Staged(const void* p, std::size_t bytes, Kind kind, const char* what, cudaStream_t stream)
      : host_(const_cast<void*>(p)), bytes_(bytes), kind_(kind), stream_(stream) {
    if (on_device(p, what)) {
      dev_ = host_;
      host_ = nullptr;
      return;
    }
    copy_.emplace(bytes, stream);
    dev_ = copy_->get();
    if (kind == kIn && bytes > 0)
      HQQ_CUDA_CHECK(cudaMemcpyAsync(dev_, host_, bytes, cudaMemcpyHostToDevice, stream));
  }
  void* device() const { return dev_; }
  bool staged() const { return host_ != nullptr; }
  /// Queues the copy back of an output staged on the host.
  void finish() const {
    if (host_ && kind_ == kOut && bytes_ > 0)
      HQQ_CUDA_CHECK(cudaMemcpyAsync(host_, dev_, bytes_, cudaMemcpyDeviceToHost, stream_));
  }

 private:
  void* host_;
  void* dev_ = nullptr;
  std::size_t bytes_;
  Kind kind_;
  cudaStream_t stream_;
  std::optional<StreamBuffer> copy_;
};

/// Validates weight + config; returns the grouped view.
GroupedView check_job(const std::vector<std::int64_t>& shape, const QuantConfig& config) {
  config.validate();
  HQQ_EXPECTS(!shape.empty(), "weight has no dimensions (a scalar cannot be grouped)");
  const std::int64_t n = shape_numel(shape);
  HQQ_EXPECTS(n > 0, "weight of shape {} is empty", shape);
  HQQ_EXPECTS(n % config.group_size == 0, "group_size={} does not divide the {} elements of shape {}",
              config.group_size, n, shape);
  const GroupedView v(n, config.group_size, config.axis);
  check_packable(config.nbits, v.rows());
  return v;
}

std::size_t meta_bytes(std::int64_t groups, DType t) { return static_cast<std::size_t>(groups) * dtype_size(t); }

bool uses_host(std::initializer_list<const Staged*> list) {
  for (const Staged* s : list)
    if (s->staged()) return true;
  return false;
}

}  // namespace

// ------------------------------------------------------------------ device

Support available() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return {false, fmt::format("no usable CUDA device ({}: {})", cudaGetErrorName(e), cudaGetErrorString(e))};
  }
  if (n == 0) return {false, "no CUDA device found"};
  return {};
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_description() {
  const Support s = available();
  if (!s.ok) return "none (" + s.reason + ")";
  int dev = 0;
  HQQ_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  HQQ_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  return fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB)", p.name, p.major, p.minor, p.multiProcessorCount,
                     static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
}

// ------------------------------------------------------------------ DeviceBuffer

DeviceBuffer::DeviceBuffer(std::size_t bytes) {
  require_device("cannot allocate CUDA device memory");
  if (bytes == 0) return;
  const cudaError_t e = cudaMalloc(&ptr_, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    ptr_ = nullptr;
    ::hqq::detail::throw_error("cannot allocate {} bytes of CUDA device memory: {}", bytes, cudaGetErrorString(e));
  }
  bytes_ = bytes;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) HQQ_CUDA_CHECK_NOTHROW(cudaFree(ptr_));
}

void DeviceBuffer::upload(const void* host, std::size_t bytes, std::size_t offset) {
  HQQ_EXPECTS(offset <= bytes_ && bytes <= bytes_ - offset,
              "upload of {} bytes at offset {} does not fit a device buffer of {} bytes", bytes, offset, bytes_);
  if (bytes == 0) return;
  HQQ_EXPECTS(host != nullptr, "upload from a null host pointer");
  HQQ_CUDA_CHECK(cudaMemcpy(static_cast<char*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::download(void* host, std::size_t bytes, std::size_t offset) const {
  HQQ_EXPECTS(offset <= bytes_ && bytes <= bytes_ - offset,
              "download of {} bytes at offset {} does not fit a device buffer of {} bytes", bytes, offset, bytes_);
  if (bytes == 0) return;
  HQQ_EXPECTS(host != nullptr, "download into a null host pointer");
  HQQ_CUDA_CHECK(cudaMemcpy(host, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

void DeviceBuffer::fill(std::uint8_t value) {
  if (bytes_ == 0) return;
  HQQ_CUDA_CHECK(cudaMemsetAsync(ptr_, value, bytes_, nullptr));
  HQQ_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

// ------------------------------------------------------------------ quantize

void DeviceQuantizedView::validate() const {
  HQQ_EXPECTS(nbits == 8 || nbits == 4 || nbits == 3 || nbits == 2 || nbits == 1,
              "quantized view has nbits={} (expected 8, 4, 3, 2 or 1)", nbits);
  HQQ_EXPECTS(!shape.empty(), "quantized view has an empty shape");
  HQQ_EXPECTS(scale_dtype == DType::kF16 || scale_dtype == DType::kBF16 || scale_dtype == DType::kF32,
              "quantized view has scale_dtype={} (expected F16, BF16 or F32)", dtype_name(scale_dtype));
  const GroupedView v(numel(), group_size, axis);
  check_packable(nbits, v.rows());
  HQQ_EXPECTS(packed != nullptr, "quantized view: packed is null");
  HQQ_EXPECTS(scale != nullptr, "quantized view: scale is null");
  HQQ_EXPECTS(zero != nullptr, "quantized view: zero is null");
  HQQ_EXPECTS(nbits != 3 || reinterpret_cast<std::uintptr_t>(packed) % 4 == 0,
              "quantized view: 3-bit packed codes must be 4-byte aligned (int32 words)");
}

QuantizeSizes quantize_sizes(const std::vector<std::int64_t>& shape, const QuantConfig& config) {
  const GroupedView v = check_job(shape, config);
  QuantizeSizes s;
  s.packed_bytes = packed_bytes(config.nbits, v.rows(), v.cols());
  s.num_groups = v.num_groups();
  s.meta_bytes = static_cast<std::int64_t>(meta_bytes(v.num_groups(), config.scale_dtype));
  s.workspace_bytes = detail::quantize_workspace_bytes(v.numel, config.group_size, config.axis, config.nbits,
                                                       config.solver, config.params);
  return s;
}

void quantize(const TensorView& weight, const QuantConfig& config, const DeviceQuantizedView& out,
              const Options& options) {
  require_device("cannot quantize on CUDA");
  HQQ_EXPECTS(weight.data != nullptr, "weight data is null");
  const ElemType in_type = elem_type(weight.dtype, "weight");
  const QuantizeSizes sizes = quantize_sizes(weight.shape, config);
  out.validate();
  HQQ_EXPECTS(out.numel() == shape_numel(weight.shape),
              "output view is for shape {} ({} elements), the weight {} has {}", out.shape, out.numel(),
              weight.shape, shape_numel(weight.shape));
  HQQ_EXPECTS(out.nbits == config.nbits && out.group_size == config.group_size && out.axis == config.axis &&
                  out.scale_dtype == config.scale_dtype,
              "output view (nbits={}, group_size={}, axis={}, scale_dtype={}) does not match the config "
              "(nbits={}, group_size={}, axis={}, scale_dtype={})",
              out.nbits, out.group_size, out.axis, dtype_name(out.scale_dtype), config.nbits, config.group_size,
              config.axis, dtype_name(config.scale_dtype));
  HQQ_EXPECTS(options.workspace == nullptr || options.workspace_bytes >= sizes.workspace_bytes,
              "workspace of {} bytes is too small: this job needs {} (quantize_sizes().workspace_bytes)",
              options.workspace_bytes, sizes.workspace_bytes);

  cudaStream_t stream = options.stream;
  const std::size_t in_bytes = static_cast<std::size_t>(shape_numel(weight.shape)) * dtype_size(weight.dtype);
  const Staged w(weight.data, in_bytes, Staged::kIn, "weight data", stream);
  const Staged packed(out.packed, static_cast<std::size_t>(sizes.packed_bytes), Staged::kOut, "packed", stream);
  const Staged scale(out.scale, static_cast<std::size_t>(sizes.meta_bytes), Staged::kOut, "scale", stream);
  const Staged zero(out.zero, static_cast<std::size_t>(sizes.meta_bytes), Staged::kOut, "zero", stream);
  std::optional<StreamBuffer> own_ws;
  void* ws = options.workspace;
  if (ws == nullptr) {
    own_ws.emplace(sizes.workspace_bytes, stream);
    ws = own_ws->get();
  } else {
    HQQ_EXPECTS(on_device(ws, "workspace"), "workspace must be device memory");
    check_aligned(ws, 16, "workspace");
  }
  check_aligned(w.device(), dtype_size(weight.dtype), "weight data");
  check_aligned(scale.device(), dtype_size(config.scale_dtype), "scale");
  check_aligned(zero.device(), dtype_size(config.scale_dtype), "zero");

  detail::QuantizeJob job;
  job.weight = w.device();
  job.in_type = in_type;
  job.numel = shape_numel(weight.shape);
  job.group_size = config.group_size;
  job.axis = config.axis;
  job.nbits = config.nbits;
  job.solver = config.solver;
  job.params = config.params;
  job.round_zero = config.effective_round_zero();
  job.meta_type = elem_type(config.scale_dtype, "scale_dtype");
  job.packed = static_cast<std::uint8_t*>(packed.device());
  job.scale = scale.device();
  job.zero = zero.device();
  job.workspace = ws;
  HQQ_CUDA_CHECK(detail::launch_quantize(job, stream));
  packed.finish();
  scale.finish();
  zero.finish();

  if (options.check_finite) {
    int flag = 0;
    HQQ_CUDA_CHECK(cudaMemcpyAsync(&flag, static_cast<char*>(ws) + detail::kNonfiniteFlagOffset, sizeof(int),
                                   cudaMemcpyDeviceToHost, stream));
    HQQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (flag != 0) {
      StreamBuffer first(sizeof(unsigned long long), stream);
      HQQ_CUDA_CHECK(cudaMemsetAsync(first.get(), 0xFF, sizeof(unsigned long long), stream));
      HQQ_CUDA_CHECK(detail::launch_find_nonfinite(w.device(), in_type, job.numel,
                                                   static_cast<unsigned long long*>(first.get()), stream));
      unsigned long long index = 0;
      HQQ_CUDA_CHECK(cudaMemcpyAsync(&index, first.get(), sizeof(index), cudaMemcpyDeviceToHost, stream));
      HQQ_CUDA_CHECK(cudaStreamSynchronize(stream));
      ::hqq::detail::throw_error("weight has a non-finite value (NaN or Inf) at flat index {}", index);
    }
  } else if (uses_host({&w, &packed, &scale, &zero})) {
    HQQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  HQQ_CUDA_CHECK(cudaGetLastError());
}

// ------------------------------------------------------------------ dequantize, pack

void dequantize(const DeviceQuantizedView& q, const MutableTensorView& out, const Options& options) {
  require_device("cannot dequantize on CUDA");
  q.validate();
  HQQ_EXPECTS(out.data != nullptr, "dequantize: output data is null");
  const ElemType out_type = elem_type(out.dtype, "dequantize output");
  HQQ_EXPECTS(out.numel() == q.numel(), "dequantize: output of shape {} has {} elements, the weight {} has {}",
              out.shape, out.numel(), q.shape, q.numel());
  const GroupedView v(q.numel(), q.group_size, q.axis);
  cudaStream_t stream = options.stream;
  const std::size_t mbytes = meta_bytes(v.num_groups(), q.scale_dtype);
  const Staged packed(q.packed, static_cast<std::size_t>(packed_bytes(q.nbits, v.rows(), v.cols())), Staged::kIn,
                      "packed", stream);
  const Staged scale(q.scale, mbytes, Staged::kIn, "scale", stream);
  const Staged zero(q.zero, mbytes, Staged::kIn, "zero", stream);
  const Staged dst(out.data, static_cast<std::size_t>(v.numel) * dtype_size(out.dtype), Staged::kOut,
                   "dequantize output", stream);
  check_aligned(scale.device(), dtype_size(q.scale_dtype), "scale");
  check_aligned(zero.device(), dtype_size(q.scale_dtype), "zero");
  check_aligned(dst.device(), dtype_size(out.dtype), "dequantize output");
  HQQ_CUDA_CHECK(detail::launch_dequantize(q.nbits, static_cast<const std::uint8_t*>(packed.device()), v.rows(),
                                           v.cols(), q.axis, scale.device(), zero.device(),
                                           elem_type(q.scale_dtype, "scale_dtype"), dst.device(), out_type, stream));
  dst.finish();
  if (uses_host({&packed, &scale, &zero, &dst})) HQQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

namespace {
void check_codes_job(int nbits, std::int64_t rows, std::int64_t cols, const char* what) {
  HQQ_EXPECTS(nbits == 8 || nbits == 4 || nbits == 3 || nbits == 2 || nbits == 1,
              "{}: nbits={} is not supported (expected 8, 4, 3, 2 or 1)", what, nbits);
  check_packable(nbits, rows);
  HQQ_EXPECTS(cols > 0, "{}: cannot handle {} columns", what, cols);
  HQQ_EXPECTS(rows <= std::numeric_limits<std::int64_t>::max() / cols, "{}: {} x {} codes overflow", what, rows,
              cols);
}
}  // namespace

void pack(int nbits, const std::uint8_t* codes, std::int64_t rows, std::int64_t cols, std::uint8_t* packed,
          Stream stream) {
  require_device("cannot pack on CUDA");
  check_codes_job(nbits, rows, cols, "pack");
  const Staged in(codes, static_cast<std::size_t>(rows * cols), Staged::kIn, "codes", stream);
  const Staged out(packed, static_cast<std::size_t>(packed_bytes(nbits, rows, cols)), Staged::kOut, "packed",
                   stream);
  HQQ_EXPECTS(nbits != 3 || reinterpret_cast<std::uintptr_t>(out.device()) % 4 == 0,
              "pack: 3-bit packed codes must be 4-byte aligned (int32 words)");
  HQQ_CUDA_CHECK(detail::launch_pack(nbits, static_cast<const std::uint8_t*>(in.device()), rows, cols,
                                     static_cast<std::uint8_t*>(out.device()), stream));
  out.finish();
  if (uses_host({&in, &out})) HQQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

void unpack(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols, std::uint8_t* codes,
            Stream stream) {
  require_device("cannot unpack on CUDA");
  check_codes_job(nbits, rows, cols, "unpack");
  const Staged in(packed, static_cast<std::size_t>(packed_bytes(nbits, rows, cols)), Staged::kIn, "packed", stream);
  const Staged out(codes, static_cast<std::size_t>(rows * cols), Staged::kOut, "codes", stream);
  HQQ_EXPECTS(nbits != 3 || reinterpret_cast<std::uintptr_t>(in.device()) % 4 == 0,
              "unpack: 3-bit packed codes must be 4-byte aligned (int32 words)");
  HQQ_CUDA_CHECK(detail::launch_unpack(nbits, static_cast<const std::uint8_t*>(in.device()), rows, cols,
                                       static_cast<std::uint8_t*>(out.device()), stream));
  out.finish();
  if (uses_host({&in, &out})) HQQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

// ------------------------------------------------------------------ DeviceQuantized

DeviceQuantized::DeviceQuantized(const TensorView& weight, const QuantConfig& config, const Options& options) {
  const QuantizeSizes sizes = quantize_sizes(weight.shape, config);
  meta_ = QuantizedTensor::with_metadata(weight.shape, config);
  packed_ = DeviceBuffer(static_cast<std::size_t>(sizes.packed_bytes));
  scale_ = DeviceBuffer(static_cast<std::size_t>(sizes.meta_bytes));
  zero_ = DeviceBuffer(static_cast<std::size_t>(sizes.meta_bytes));
  stream_ = options.stream;
  quantize(weight, config, view(), options);
}

DeviceQuantized::DeviceQuantized(const QuantizedTensor& q) {
  q.validate();
  meta_ = q;
  meta_.packed.clear();
  meta_.scale.clear();
  meta_.zero.clear();
  packed_ = DeviceBuffer::from(q.packed);
  scale_ = DeviceBuffer::from(encode_floats(q.scale, q.scale_dtype));
  zero_ = DeviceBuffer::from(encode_floats(q.zero, q.scale_dtype));
}

DeviceQuantizedView DeviceQuantized::view() const {
  DeviceQuantizedView v;
  v.shape = meta_.shape;
  v.nbits = meta_.nbits;
  v.group_size = meta_.group_size;
  v.axis = meta_.axis;
  v.scale_dtype = meta_.scale_dtype;
  v.packed = const_cast<void*>(packed_.data());
  v.scale = const_cast<void*>(scale_.data());
  v.zero = const_cast<void*>(zero_.data());
  return v;
}

QuantizedTensor DeviceQuantized::to_host() const {
  HQQ_EXPECTS(!meta_.shape.empty(), "to_host: this DeviceQuantized holds no weight");
  HQQ_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the quantization may still run there
  QuantizedTensor q = meta_;
  q.packed = packed_.to_vector<std::uint8_t>();
  const std::vector<std::uint8_t> scale = scale_.to_vector<std::uint8_t>(), zero = zero_.to_vector<std::uint8_t>();
  q.scale = decode_floats(scale.data(), scale.size(), meta_.scale_dtype);
  q.zero = decode_floats(zero.data(), zero.size(), meta_.scale_dtype);
  return q;
}

}  // namespace hqq::cuda
