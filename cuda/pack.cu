// Interchange-layout kernels (packing.hpp): pack, unpack and dequantize.
// A thread owns V consecutive packed elements of one packed row (16 bytes
// when the row length and the pointers allow, else one element) and every
// grouped-view row they hold; all loads and stores are then as wide as the
// layout allows. Memory bound; the arithmetic is the CPU's, so results are
// bit-identical.

#include <type_traits>

#include "common.cuh"
#include "hqq/packing.hpp"

namespace hqq::cuda::detail {
namespace {

constexpr int kThreads = 256;

/// Unsigned type of N bytes for one wide load or store.
template <int N> struct Wide;
template <> struct Wide<1> { using T = std::uint8_t; };
template <> struct Wide<2> { using T = std::uint16_t; };
template <> struct Wide<4> { using T = std::uint32_t; };
template <> struct Wide<8> { using T = uint2; };
template <> struct Wide<16> { using T = uint4; };

/// Copies N bytes between 16-byte-aligned registers and memory aligned to min(N, 16).
template <int N>
__device__ __forceinline__ void copy_bytes(void* dst, const void* src) {
  constexpr int kStep = N < 16 ? N : 16;
  using T = typename Wide<kStep>::T;
#pragma unroll
  for (int o = 0; o < N; o += kStep)
    *reinterpret_cast<T*>(static_cast<char*>(dst) + o) = *reinterpret_cast<const T*>(static_cast<const char*>(src) + o);
}

/// Packed element type: uint32 words for 3-bit, bytes otherwise.
template <bool kWord> using PackedT = typename std::conditional<kWord, std::uint32_t, std::uint8_t>::type;

template <class Out> __device__ __forceinline__ Out to_out(float v);
template <> __device__ __forceinline__ float to_out<float>(float v) { return v; }
template <> __device__ __forceinline__ __half to_out<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

struct Layout {
  int nbits, ratio;
  std::int64_t rows, cols, prow;
};

Layout layout_of(int nbits, std::int64_t rows, std::int64_t cols) {
  return {nbits, pack_ratio(nbits), rows, cols, packed_rows(nbits, rows)};
}

unsigned grid_for(std::int64_t items) {
  const std::int64_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);  // grid-stride beyond
}

/// Runs fn(i, j0) for every run of V packed elements [j0, j0 + V) of every
/// packed row i, over a grid-stride loop with 64-bit indices.
template <int V, class F>
__device__ __forceinline__ void for_each_run(const Layout& L, F fn) {
  const std::int64_t per_row = L.cols / V;
  const std::int64_t items = L.prow * per_row;
  for (std::int64_t w = global_thread(); w < items; w += grid_threads()) fn(w / per_row, (w % per_row) * V);
}

/// V packed elements per thread; kWord: 3-bit (uint32) elements.
template <bool kWord, int V>
__global__ void __launch_bounds__(kThreads) unpack_kernel(Layout L, const std::uint8_t* packed, std::uint8_t* codes) {
  using P = PackedT<kWord>;
  const unsigned mask = (1u << L.nbits) - 1u;
  for_each_run<V>(L, [&](std::int64_t i, std::int64_t j0) {
    alignas(16) P in[V];
    copy_bytes<V * sizeof(P)>(in, reinterpret_cast<const P*>(packed) + i * L.cols + j0);
    for (int c = 0; c < L.ratio; ++c) {
      const std::int64_t r = c * L.prow + i;
      if (r >= L.rows) break;
      const int shift = chunk_shift(L.nbits, c);
      alignas(16) std::uint8_t out[V];
#pragma unroll
      for (int v = 0; v < V; ++v) out[v] = static_cast<std::uint8_t>((static_cast<std::uint32_t>(in[v]) >> shift) & mask);
      copy_bytes<V>(codes + r * L.cols + j0, out);
    }
  });
}

template <bool kWord, int V>
__global__ void __launch_bounds__(kThreads) pack_kernel(Layout L, const std::uint8_t* codes, std::uint8_t* packed) {
  using P = PackedT<kWord>;
  for_each_run<V>(L, [&](std::int64_t i, std::int64_t j0) {
    alignas(16) P word[V];
#pragma unroll
    for (int v = 0; v < V; ++v) word[v] = 0;
    for (int c = 0; c < L.ratio; ++c) {
      const std::int64_t r = c * L.prow + i;
      if (r >= L.rows) break;  // 3-bit padding rows are zero
      alignas(16) std::uint8_t in[V];
      copy_bytes<V>(in, codes + r * L.cols + j0);
      const int shift = chunk_shift(L.nbits, c);
#pragma unroll
      for (int v = 0; v < V; ++v) word[v] = static_cast<P>(word[v] | (static_cast<std::uint32_t>(in[v]) << shift));
    }
    copy_bytes<V * sizeof(P)>(reinterpret_cast<P*>(packed) + i * L.cols + j0, word);
  });
}

template <class Out, bool kWord, int V>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(Layout L, int axis, const std::uint8_t* packed, const void* scale, const void* zero,
                      ElemType meta_type, Out* out) {
  using P = PackedT<kWord>;
  const unsigned mask = (1u << L.nbits) - 1u;
  for_each_run<V>(L, [&](std::int64_t i, std::int64_t j0) {
    alignas(16) P in[V];
    copy_bytes<V * sizeof(P)>(in, reinterpret_cast<const P*>(packed) + i * L.cols + j0);
    // axis 0: a column is a group, so its scale and zero serve every row.
    float sc[V], ze[V];
    if (axis == 0) {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        sc[v] = load_elem(scale, j0 + v, meta_type);
        ze[v] = load_elem(zero, j0 + v, meta_type);
      }
    }
    for (int c = 0; c < L.ratio; ++c) {
      const std::int64_t r = c * L.prow + i;
      if (r >= L.rows) break;
      if (axis == 1) {
        const float s = load_elem(scale, r, meta_type), z = load_elem(zero, r, meta_type);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          sc[v] = s;
          ze[v] = z;
        }
      }
      const int shift = chunk_shift(L.nbits, c);
      alignas(16) Out vals[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const float q = static_cast<float>((static_cast<std::uint32_t>(in[v]) >> shift) & mask);
        vals[v] = to_out<Out>(dequantize_value(q, sc[v], ze[v]));
      }
      copy_bytes<V * sizeof(Out)>(out + r * L.cols + j0, vals);
    }
  });
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

template <int V> using Width = std::integral_constant<int, V>;

/// Calls run(kWord, Width<V>) with the packed element type of the layout and
/// V = 16 bytes of packed elements per thread when every row holds whole
/// vectors and both streamed pointers are 16-byte aligned (rows then start
/// aligned too), else V = 1.
template <class Run>
cudaError_t dispatch(const Layout& L, const void* a, const void* b, Run run) {
  const bool aligned = aligned16(a) && aligned16(b);
  if (L.nbits == 3) return aligned && L.cols % 4 == 0 ? run(std::true_type{}, Width<4>{}) : run(std::true_type{}, Width<1>{});
  return aligned && L.cols % 16 == 0 ? run(std::false_type{}, Width<16>{}) : run(std::false_type{}, Width<1>{});
}

/// Grid for one thread per run of V packed elements.
template <int V>
unsigned grid_of(const Layout& L) {
  return grid_for(L.prow * (L.cols / V));
}

template <class Out>
cudaError_t dequantize_as(const Layout& L, int axis, const std::uint8_t* packed, const void* scale,
                          const void* zero, ElemType meta_type, void* out, cudaStream_t stream) {
  return dispatch(L, packed, out, [&](auto word, auto width) {
    dequantize_kernel<Out, decltype(word)::value, decltype(width)::value>
        <<<grid_of<decltype(width)::value>(L), kThreads, 0, stream>>>(L, axis, packed, scale, zero, meta_type,
                                                                       static_cast<Out*>(out));
    return cudaGetLastError();
  });
}

}  // namespace

cudaError_t launch_unpack(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols,
                          std::uint8_t* codes, cudaStream_t stream) {
  const Layout L = layout_of(nbits, rows, cols);
  return dispatch(L, packed, codes, [&](auto word, auto width) {
    unpack_kernel<decltype(word)::value, decltype(width)::value>
        <<<grid_of<decltype(width)::value>(L), kThreads, 0, stream>>>(L, packed, codes);
    return cudaGetLastError();
  });
}

cudaError_t launch_pack(int nbits, const std::uint8_t* codes, std::int64_t rows, std::int64_t cols,
                        std::uint8_t* packed, cudaStream_t stream) {
  const Layout L = layout_of(nbits, rows, cols);
  return dispatch(L, codes, packed, [&](auto word, auto width) {
    pack_kernel<decltype(word)::value, decltype(width)::value>
        <<<grid_of<decltype(width)::value>(L), kThreads, 0, stream>>>(L, codes, packed);
    return cudaGetLastError();
  });
}

cudaError_t launch_dequantize(int nbits, const std::uint8_t* packed, std::int64_t rows, std::int64_t cols, int axis,
                              const void* scale, const void* zero, ElemType meta_type, void* out, ElemType out_type,
                              cudaStream_t stream) {
  const Layout L = layout_of(nbits, rows, cols);
  switch (out_type) {
    case ElemType::kF16: return dequantize_as<__half>(L, axis, packed, scale, zero, meta_type, out, stream);
    case ElemType::kBF16: return dequantize_as<__nv_bfloat16>(L, axis, packed, scale, zero, meta_type, out, stream);
    default: return dequantize_as<float>(L, axis, packed, scale, zero, meta_type, out, stream);
  }
}

}  // namespace hqq::cuda::detail
