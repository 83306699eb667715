// The tensor-core GEMM with Hopper's warpgroup MMA (sm_90a): y = x W^T + b,
// the weight dequantized in registers straight into wgmma's register A
// operand, the activations read by the tensor cores from shared memory.
//
// Same fragment layout, dequantization and pipeline as cuda/gemm.cu (see its
// header): per warp, the A fragment of `wgmma.m64nNk16` is the A fragment of
// `mma.m16n8k16` for the warp's 16 rows of the warpgroup's 64, so the
// pre-shuffled weight serves both. Block: 2 warpgroups x 64 weight rows
// (BN = 128) and BM = 128 activation rows (wgmma N = 128), 4-stage cp.async
// pipeline over 64-column k tiles. The activation tile sits in shared memory
// in wgmma's canonical K-major layout without swizzle: 8x8 core matrices of
// 128 contiguous bytes (8 rows x 16 bytes), [k chunk of 8][row][16 bytes], so
// adjacent core matrices are BM * 16 bytes apart along K (leading byte
// offset) and 128 bytes apart along N (stride byte offset).
//
// Compiled only for sm_90a (CMake adds it when the architectures include 90);
// elsewhere the launcher reports cudaErrorNotSupported.

#include "../gemm_common.cuh"
#include "sm90.cuh"

namespace hqq::cuda::detail {
namespace {

using namespace sm90;

constexpr int kBN = 128, kBM = 128, kStages = 4, kThreads = 256;

template <int NB, typename MetaT>
struct Smem90 {
  static constexpr int kW = kBN * 8 * NB;
  static constexpr int kX = kBM * 128;
  static constexpr int kM = 2 * kBN * kMetaPair<MetaT>;
  static constexpr int kStage = kW + kX + kM;
  static constexpr int kBytes = kStages * kStage;
};

template <int NB, typename T, typename MetaT>
__global__ void __launch_bounds__(kThreads) gemm_wgmma_kernel(const GemmParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Smem90<NB, MetaT>;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const std::int64_t n0 = static_cast<std::int64_t>(blockIdx.x) * kBN;
  const std::int64_t m0 = static_cast<std::int64_t>(blockIdx.y) * kBM;
  const int KB = p.kpad / 64;
  const int kb_begin = static_cast<int>(blockIdx.z) * p.kb_per_split;
  const int nk = min(KB, kb_begin + p.kb_per_split) - kb_begin;
  const T* x = static_cast<const T*>(p.x);

  auto load_stage = [&](int slot, int kb) {
    unsigned char* base = smem + slot * S::kStage;
    load_weight_tile<NB, kBN, kThreads>(base, p.codes, n0, KB, kb, tid);
    // Activations in the K-major core-matrix layout: chunk kc of row r at (kc * BM + r) * 16.
    unsigned char* xs = base + S::kW;
#pragma unroll 1
    for (int c = tid; c < kBM * 8; c += kThreads) {
      const int row = c >> 3, kc = c & 7;
      const std::int64_t gm = m0 + row, gk = static_cast<std::int64_t>(kb) * 64 + kc * 8;
      const bool ok = gm < p.m && gk < p.k;
      cp_async16(xs + (kc * kBM + row) * 16, ok ? x + gm * p.k + gk : x, ok);
    }
    load_meta_tile<MetaT, kBN, kThreads>(xs + S::kX, p, n0, kb, tid);
  };

  float d[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) d[i] = 0.0f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nk) load_stage(s, kb_begin + s);
    cp_async_commit();
  }

  RowConsts<NB, T> rc[2];
  int cur_group = -1;
#pragma unroll 1
  for (int i = 0; i < nk; ++i) {
    cp_async_wait<kStages - 2>();
    fence_proxy_async();  // the tensor cores (async proxy) read what cp.async wrote
    __syncthreads();
    {
      const int next = i + kStages - 1;
      if (next < nk) load_stage(next % kStages, kb_begin + next);
      cp_async_commit();
    }
    const int kb = kb_begin + i;
    const unsigned char* base = smem + (i % kStages) * S::kStage;
    const unsigned char* xs = base + S::kW;
    const unsigned char* ms = xs + S::kX;
    std::uint32_t wq[NB];
    load_words<NB>(base + (warp * 32 + lane) * (NB * 4), wq);  // warp w: weight rows 16w .. 16w+15
    const GroupWindow win(kb, p.group_size);
    std::uint32_t a[2][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      follow_group<NB, T, MetaT, kBN>(rc, cur_group, win, kb, j, ms, 16 * warp + g);
      // a[j & 1] was last read by the wgmma of step j - 2: at most one group stays in flight.
      if (j >= 2) wgmma_wait<1>();
      dequant_fragment<NB, T>(a[j & 1], rc, wq, j);
      wgmma_fence();
      Wgmma<T, kBM>::run(d, a[j & 1], desc_no_swizzle(xs + 2 * j * kBM * 16, kBM * 16, 128));
      wgmma_commit();
    }
    wgmma_wait<0>();  // this stage's shared memory is refilled after the next barrier
  }
  cp_async_wait<0>();

  // Accumulators: d[4i + e] = (row 16 warp + g + 8 (e >> 1), column 8i + 2t + (e & 1)).
#pragma unroll
  for (int i = 0; i < 16; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      store_output(p, m0 + 8 * i + 2 * t + (e & 1), n0 + 16 * warp + g + 8 * (e >> 1), d[4 * i + e]);
    }
#endif
}

template <int NB, typename T, typename MetaT>
cudaError_t launch_typed(const GemmParams& p, int splits, cudaStream_t stream) {
  constexpr int bytes = Smem90<NB, MetaT>::kBytes;
  auto kernel = gemm_wgmma_kernel<NB, T, MetaT>;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>((p.n + kBN - 1) / kBN), static_cast<unsigned>((p.m + kBM - 1) / kBM),
                  static_cast<unsigned>(splits));
  kernel<<<grid, kThreads, bytes, stream>>>(p);
  return cudaGetLastError();
}

template <int NB>
cudaError_t launch_nb(ElemType x_type, ElemType meta_type, const GemmParams& p, int splits, cudaStream_t stream) {
  const bool meta16 = meta_type == ElemType::kF16;
  if (x_type == ElemType::kF16) {
    return meta16 ? launch_typed<NB, __half, __half>(p, splits, stream)
                  : launch_typed<NB, __half, float>(p, splits, stream);
  }
  return meta16 ? launch_typed<NB, __nv_bfloat16, __half>(p, splits, stream)
                : launch_typed<NB, __nv_bfloat16, float>(p, splits, stream);
}

}  // namespace

cudaError_t launch_gemm_wgmma(int nbits, ElemType x_type, ElemType meta_type, const GemmParams& p, int splits,
                              cudaStream_t stream) {
  switch (nbits) {
    case 8: return launch_nb<8>(x_type, meta_type, p, splits, stream);
    case 4: return launch_nb<4>(x_type, meta_type, p, splits, stream);
    case 3: return launch_nb<3>(x_type, meta_type, p, splits, stream);
    case 2: return launch_nb<2>(x_type, meta_type, p, splits, stream);
    case 1: return launch_nb<1>(x_type, meta_type, p, splits, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace hqq::cuda::detail
