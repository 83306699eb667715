#pragma once
// Host-side helpers of the CUDA backend shared by api.cpp and linear_api.cpp:
// device checks, pointer classification, stream-ordered scratch memory.

#include <cuda_runtime.h>

#include <cstddef>

#include "check.hpp"
#include "hqq/backend.hpp"
#include "hqq/dtype.hpp"
#include "kernels.hpp"

namespace hqq::cuda::detail {

/// Throws hqq::Error with available()'s reason unless a device is usable.
void require_device(const char* what);
/// The kernels' element type of a float dtype; throws for any other dtype.
ElemType elem_type(DType t, const char* what);
/// Whether the device can dereference p directly (device or managed memory
/// of the current device); false for host memory. Throws for null, foreign
/// devices and pointers CUDA does not recognise.
bool on_device(const void* p, const char* what);
/// Throws unless p is aligned to `align` bytes (a misaligned access would
/// fault the device, breaking every later CUDA call of the process).
void check_aligned(const void* p, std::size_t align, const char* what);

/// Device memory freed on the given stream when the scope ends.
class StreamBuffer {
 public:
  StreamBuffer(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes == 0) return;
    const cudaError_t e = cudaMallocAsync(&ptr_, bytes, stream);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      ::hqq::detail::throw_error("cannot allocate {} bytes of CUDA device memory: {}", bytes, cudaGetErrorString(e));
    }
  }
  ~StreamBuffer() {
    if (ptr_) HQQ_CUDA_CHECK_NOTHROW(cudaFreeAsync(ptr_, stream_));
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace hqq::cuda::detail
