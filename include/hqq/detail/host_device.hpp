#pragma once
/// \file host_device.hpp
/// HQQ_HOST_DEVICE marks the per-element math shared by CPU and CUDA code.

#if defined(__CUDACC__)
#define HQQ_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HQQ_HOST_DEVICE inline
#endif
