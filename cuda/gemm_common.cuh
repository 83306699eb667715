#pragma once
// Device pieces shared by the tensor-core GEMM kernels (cuda/gemm.cu for
// mma.sync, cuda/sm90/gemm_tma.cuh for TMA + wgmma): launch parameters, cp.async
// and ldmatrix wrappers, the activation type's numbers, the loads of a
// stage's code words and metadata, and the epilogue that stores the
// accumulators two outputs at a time. The in-register dequantization is
// cuda/dequant.hpp (host and device code).

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "dequant.hpp"
#include "fragment_pairs.hpp"
#include "row_consts.hpp"
#include "hqq/detail/gemm_layout.hpp"
#include "tile_walk.hpp"

namespace hqq::cuda::detail {

struct GemmParams {
  const std::uint32_t* codes;
  const unsigned char* meta;
  const float* bias;
  const void* x;
  void* y;
  float* partial;
  std::int64_t m, n, k, npad, groups;
  int kpad, group_size, kb_per_split;
  ElemType y_type;
  /// Stream-K (TMA kernels; tile_walk.hpp, StreamK): k tiles per block, 0
  /// for the grid of tiles and splits; the output's block tiles along N and
  /// in all. Partial slots: [blocks][2][BM][kBN] f32 in `partial`.
  int sk_per, sk_tiles_n, sk_tiles;
};

// ------------------------------------------------------------------ PTX
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = pred ? 16 : 0;  // 0: the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrix_x4(const void* smem, std::uint32_t& r0, std::uint32_t& r1,
                                            std::uint32_t& r2, std::uint32_t& r3) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(s));
}

/// The activation type's numbers: magic base, packing, mma.
template <typename T>
struct Num;

template <>
struct Num<__half> : Magic<__half> {
  __device__ __forceinline__ static std::uint32_t pack(float lo, float hi) { return pack_pair<__half>(lo, hi); }
  __device__ __forceinline__ static void mma(float (&c)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct Num<__nv_bfloat16> : Magic<__nv_bfloat16> {
  __device__ __forceinline__ static std::uint32_t pack(float lo, float hi) {
    return pack_pair<__nv_bfloat16>(lo, hi);
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <typename MetaT>
__device__ __forceinline__ MetaPair<MetaT> load_meta(const unsigned char* p) {
  return *reinterpret_cast<const MetaPair<MetaT>*>(p);
}

template <int NB>
__device__ __forceinline__ void load_words(const unsigned char* p, std::uint32_t (&w)[NB]) {
  if constexpr (NB == 8 || NB == 4) {
#pragma unroll
    for (int v = 0; v < NB / 4; ++v) {
      const uint4 u = reinterpret_cast<const uint4*>(p)[v];
      w[4 * v] = u.x;
      w[4 * v + 1] = u.y;
      w[4 * v + 2] = u.z;
      w[4 * v + 3] = u.w;
    }
  } else if constexpr (NB == 2) {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    w[0] = u.x;
    w[1] = u.y;
  } else {
#pragma unroll
    for (int v = 0; v < NB; ++v) w[v] = reinterpret_cast<const std::uint32_t*>(p)[v];
  }
}

/// The same loads by 32-bit shared-memory address (the TMA kernels keep their
/// stage addresses so, without the generic window's base); volatile, so that
/// they stay after the barrier wait that makes the data visible.
template <typename MetaT>
__device__ __forceinline__ MetaPair<MetaT> load_meta(unsigned a) {
  if constexpr (std::is_same_v<MetaT, __half>) {
    std::uint32_t w;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(w) : "r"(a));
    return w;
  } else {
    float2 f;
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(f.x), "=f"(f.y) : "r"(a));
    return f;
  }
}

template <int NB>
__device__ __forceinline__ void load_words(unsigned a, std::uint32_t (&w)[NB]) {
  if constexpr (NB == 8 || NB == 4) {
#pragma unroll
    for (int v = 0; v < NB / 4; ++v) {
      asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(w[4 * v]), "=r"(w[4 * v + 1]), "=r"(w[4 * v + 2]), "=r"(w[4 * v + 3])
                   : "r"(a + 16 * v));
    }
  } else if constexpr (NB == 2) {
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(w[0]), "=r"(w[1]) : "r"(a));
  } else {
#pragma unroll
    for (int v = 0; v < NB; ++v) asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(w[v]) : "r"(a + 4 * v));
  }
}

/// Bytes of one (scale, zero) pair in shared memory.
template <typename MetaT>
constexpr int kMetaPair = 2 * static_cast<int>(sizeof(MetaT));

/// The first word of a block's weight words for k tile kb: its kBN/16
/// fragment tiles (rows n0.., inside one 128-row band) lie one after the other
/// ([tile][32 lanes][NB words], gemm_layout.hpp), kBN * NB * 4 bytes.
template <int NB>
__device__ __forceinline__ const std::uint32_t* block_weight_words(const std::uint32_t* codes, std::int64_t n0,
                                                                   int kb_count, int kb) {
  return codes + ::hqq::detail::gemm_tile_index(n0 / 16, kb, kb_count) * (32 * NB);
}

/// cp.async of a block's weight words for k tile kb (16-byte chunks) into `dst`.
template <int NB, int kBN, int kThreads>
__device__ __forceinline__ void load_weight_tile(unsigned char* dst, const std::uint32_t* codes, std::int64_t n0,
                                                 int kb_count, int kb, int tid) {
  static_assert(::hqq::detail::kGemmPadN % kBN == 0, "a block's rows lie in one band");
  const std::uint32_t* src = block_weight_words<NB>(codes, n0, kb_count, kb);
#pragma unroll 1
  for (int c = tid; c < kBN * NB / 2; c += kThreads) cp_async16(dst + c * 16, src + c * 4, true);
}

/// cp.async of the (scale, zero) pairs of k tile kb's two groups for the
/// block's kBN rows ([2][kBN] pairs; zero past the last group).
template <typename MetaT, int kBN, int kThreads>
__device__ __forceinline__ void load_meta_tile(unsigned char* dst, const GemmParams& p, std::int64_t n0, int kb,
                                               int tid) {
  const std::int64_t ga = static_cast<std::int64_t>(kb) * 64 / p.group_size;
  constexpr int kPerGroup = kBN * kMetaPair<MetaT> / 16;
#pragma unroll 1
  for (int c = tid; c < 2 * kPerGroup; c += kThreads) {
    const int s = c / kPerGroup, within = c - s * kPerGroup;
    const bool ok = ga + s < p.groups;
    const unsigned char* src = ok ? p.meta + ((ga + s) * p.npad + n0) * kMetaPair<MetaT> + within * 16 : p.meta;
    cp_async16(dst + c * 16, src, ok);
  }
}

/// Sets the row constants of weight rows `row` and `row` + 8 (block-relative)
/// from group slot `slot` of a stage's metadata (a generic pointer or a
/// 32-bit shared-memory address).
template <int NB, typename T, typename MetaT, int kBN, typename Addr>
__device__ __forceinline__ void set_row_pair(RowConsts<NB, T> (&rc)[2], Addr meta, int slot, int row) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    rc[h].take(row_consts_of<NB, T, MetaT>(load_meta<MetaT>(meta + (slot * kBN + row + 8 * h) * kMetaPair<MetaT>)));
  }
}

/// Two adjacent outputs of one row at y[0], y[1], converted to Y
/// (nearest-even, Num<Y>::pack for f16/bf16): one 32-bit (f16/bf16) or 64-bit
/// (f32) store where `vec` (N even and the row aligned, so that ok0 implies
/// ok1), else each where its column is inside N (ok0, ok1).
template <typename Y>
__device__ __forceinline__ void store_pair(Y* y, bool vec, bool ok0, bool ok1, float a, float b) {
  if constexpr (std::is_same_v<Y, float>) {
    if (vec) {
      if (ok0) *reinterpret_cast<float2*>(y) = make_float2(a, b);
      return;
    }
    if (ok0) y[0] = a;
    if (ok1) y[1] = b;
  } else {
    const std::uint32_t two = Num<Y>::pack(a, b);
    if (vec) {
      if (ok0) *reinterpret_cast<std::uint32_t*>(y) = two;
      return;
    }
    auto* half = reinterpret_cast<std::uint16_t*>(y);
    if (ok0) half[0] = static_cast<std::uint16_t>(two);
    if (ok1) half[1] = static_cast<std::uint16_t>(two >> 16);
  }
}

/// A warp's accumulator fragments into out ([m, n] of Y, bias added where
/// not null) through the pair exchange of fragment_pairs.hpp: kCols x kRows
/// fragments of 16 weight rows (y's columns) x 8 activation rows (y's rows),
/// fragment (ci, ri) at y rows m_first + 8 ri .., columns n_first + 16 ci ..;
/// frag(ci, ri, v) puts the lane's 4 values of it in v. Every lane of the
/// warp calls it (shuffles). Columns are checked once per lane, rows once per
/// fragment.
template <typename Y, int kCols, int kRows, class Frag>
__device__ __forceinline__ void store_tile_as(Y* out, const float* bias, std::int64_t m, std::int64_t n,
                                              std::int64_t m_first, std::int64_t n_first, Frag&& frag) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const PairPlace at = pair_place(lane);
  const std::int64_t row0 = m_first + at.row;
  // Fragment ri's row (row0 + 8 ri) is inside M where 8 ri < rows_left.
  const std::int64_t left = m - row0;
  const int rows_left = left <= 0 ? 0 : left < 8 * kRows ? static_cast<int>(left) : 8 * kRows;
  const bool vec = (n & 1) == 0 && reinterpret_cast<std::uintptr_t>(out) % (2 * sizeof(Y)) == 0;
#pragma unroll
  for (int ci = 0; ci < kCols; ++ci) {
    const std::int64_t col = n_first + 16 * ci + at.col;
    // Columns col, col + 1, col + 8, col + 9 inside N, as the bits of `ok`
    // (n - col: one 64-bit difference; ptxas kept bools as bytes).
    const std::int64_t cols_left = n - col;
    const unsigned ok = (cols_left > 0 ? 1u : 0u) | (cols_left > 1 ? 2u : 0u) | (cols_left > 8 ? 4u : 0u) |
                        (cols_left > 9 ? 8u : 0u);
    // -0 adds nothing, not even to -0: without a bias y holds the accumulators.
    float b[4] = {-0.0f, -0.0f, -0.0f, -0.0f};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (bias != nullptr && (ok >> q & 1u)) b[q] = bias[col + (q & 1) + 8 * (q >> 1)];
    }
    Y* y = out + (rows_left > 0 ? row0 * n + col : 0);
#pragma unroll
    for (int ri = 0; ri < kRows; ++ri, y += 8 * n) {
      float v[4];
      frag(ci, ri, v);
      const float r0 = __shfl_xor_sync(0xffffffffu, pair_send(v, lane, 0), 4);
      const float r1 = __shfl_xor_sync(0xffffffffu, pair_send(v, lane, 1), 4);
      float o[4];
      pair_keep(v, r0, r1, lane, o);
      if (8 * ri >= rows_left) continue;
      store_pair<Y>(y, vec, ok & 1u, ok & 2u, o[0] + b[0], o[1] + b[1]);
      store_pair<Y>(y + 8, vec, ok & 4u, ok & 8u, o[2] + b[2], o[3] + b[3]);
    }
  }
}

/// The outputs of a warp's fragments (store_tile_as): its split's partial
/// sums (f32, no bias) when K is split, else y (+ bias) in y's type. Split
/// and type are decided once, not per output.
template <int kCols, int kRows, class Frag>
__device__ __forceinline__ void store_tile(const GemmParams& p, std::int64_t m_first, std::int64_t n_first,
                                           Frag&& frag) {
  if (gridDim.z > 1) {
    float* part = p.partial + static_cast<std::int64_t>(blockIdx.z) * p.m * p.n;
    store_tile_as<float, kCols, kRows>(part, nullptr, p.m, p.n, m_first, n_first, frag);
    return;
  }
  switch (p.y_type) {
    case ElemType::kF16:
      store_tile_as<__half, kCols, kRows>(static_cast<__half*>(p.y), p.bias, p.m, p.n, m_first, n_first, frag);
      return;
    case ElemType::kBF16:
      store_tile_as<__nv_bfloat16, kCols, kRows>(static_cast<__nv_bfloat16*>(p.y), p.bias, p.m, p.n, m_first,
                                                 n_first, frag);
      return;
    default:
      store_tile_as<float, kCols, kRows>(static_cast<float*>(p.y), p.bias, p.m, p.n, m_first, n_first, frag);
      return;
  }
}

/// A type as a value (for the generic lambdas of with_gemm_instance).
template <typename T>
struct TypeTag {
  using type = T;
};

/// Calls f(std::integral_constant<int, NB>{}, TypeTag<T>{}, TypeTag<MetaT>{})
/// for the kernel instance of (nbits, x_type, meta_type): NB in 8, 4, 3, 2, 1,
/// T the activation type (f16 or bf16), MetaT the metadata type (f16 or f32);
/// `other` for any other nbits.
template <typename R, typename F>
R with_gemm_instance(int nbits, ElemType x_type, ElemType meta_type, R other, F&& f) {
  auto types = [&](auto nb) -> R {
    const bool meta16 = meta_type == ElemType::kF16;
    if (x_type == ElemType::kF16) {
      return meta16 ? f(nb, TypeTag<__half>{}, TypeTag<__half>{}) : f(nb, TypeTag<__half>{}, TypeTag<float>{});
    }
    return meta16 ? f(nb, TypeTag<__nv_bfloat16>{}, TypeTag<__half>{})
                  : f(nb, TypeTag<__nv_bfloat16>{}, TypeTag<float>{});
  };
  switch (nbits) {
    case 8: return types(std::integral_constant<int, 8>{});
    case 4: return types(std::integral_constant<int, 4>{});
    case 3: return types(std::integral_constant<int, 3>{});
    case 2: return types(std::integral_constant<int, 2>{});
    case 1: return types(std::integral_constant<int, 1>{});
    default: return other;
  }
}

/// y = sum of the split partials in split order (+ bias).
__global__ void gemm_reduce(const GemmParams p, int splits);
/// The stream-K fixup: each block tile (bm x bn) that no block held whole is
/// y = the sum of its parts in block order (+ bias); one block per tile.
__global__ void gemm_streamk_fixup(const GemmParams p, int bm, int bn);

/// The warp-specialised TMA + wgmma kernels (sm_90a; cuda/sm90/gemm_tma.cuh):
/// block tile 128 weight rows x BM activation rows, BM in 16, 32, 64, 128, 256
/// (instantiated in cuda/sm90/gemm_tma_<BM>.cu).
template <int BM>
cudaError_t launch_gemm_tma_bm(int nbits, ElemType x_type, ElemType meta_type, const GemmParams& p, int splits,
                               cudaStream_t stream);
/// Blocks of that kernel (its stream-K instance if stream_k) that fit one SM
/// of the current device (0: unknown).
template <int BM>
int gemm_tma_blocks_per_sm(int nbits, ElemType x_type, ElemType meta_type, bool stream_k);

}  // namespace hqq::cuda::detail
