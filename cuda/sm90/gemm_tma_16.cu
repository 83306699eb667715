// The TMA + wgmma GEMM kernels (gemm_tma.cuh) with 16-row activation tiles.
#include "gemm_tma.cuh"

namespace hqq::cuda::detail {
template cudaError_t launch_gemm_tma_bm<16>(int, ElemType, ElemType, const GemmParams&, int, cudaStream_t);
template int gemm_tma_blocks_per_sm<16>(int, ElemType, ElemType, bool);
}  // namespace hqq::cuda::detail
