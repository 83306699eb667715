#pragma once
// Hopper (sm_90a) PTX wrappers of the TMA + wgmma GEMM kernels in this
// directory: warpgroup MMA with the A operand in registers, shared-memory
// matrix descriptors, mbarriers, TMA and bulk copies, register reallocation.
// Everything here is only defined where the sm_90a features are (the device
// pass of the sm_90a object); the kernels guard their bodies the same way.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace hqq::cuda::detail::sm90 {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

/// `v`, computed once: ptxas cannot see through the empty asm, so it keeps the
/// value in a register instead of recomputing it from the thread index and
/// the shared window's base inside a loop (what it does with loop-invariant
/// addresses otherwise, a dozen instructions per k tile).
__device__ __forceinline__ unsigned opaque(unsigned v) {
  asm volatile("" : "+r"(v));
  return v;
}

// ------------------------------------------------------------ descriptors
/// K-major operand in the 128-byte swizzle (what TMA's SWIZZLE_128B writes):
/// rows of 64 16-bit values (128 bytes), 16-byte chunk c of row r at chunk
/// c ^ (r % 8), 8-row atoms of 1024 bytes one after the other (stride byte
/// offset 1024; the leading offset is unused). The atom must be 1024-byte
/// aligned; `addr` (a shared-memory address) may be 32 * j bytes into it to
/// start at k-step j. The high word is constant, the low word the address
/// field (14 bits) and the unused leading offset (1).
__device__ __forceinline__ std::uint64_t desc_sw128(unsigned addr) {
  constexpr std::uint32_t kHigh = (1024u >> 4) | (1u << 30);  // stride byte offset; 128-byte swizzle (bits 62-63)
  const std::uint32_t low = ((addr >> 4) & 0x3FFFu) | (1u << 16);
  return (static_cast<std::uint64_t>(kHigh) << 32) | low;
}
/// The descriptor of the operand `bytes` further on (a multiple of 16; the
/// address field has room: shared memory ends below 2^18 bytes).
__device__ __forceinline__ std::uint64_t desc_advance(std::uint64_t desc, unsigned bytes) {
  const std::uint32_t low = static_cast<std::uint32_t>(desc) + (bytes >> 4);  // no carry out of the address field
  return (desc & 0xFFFFFFFF00000000ull) | low;
}

// ------------------------------------------------------------ wgmma
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/// Orders generic-proxy shared-memory writes (cp.async, st.shared) before
/// async-proxy reads (wgmma, TMA).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/// d[N/2] += A (64 x 16, four f16x2/bf16x2 registers per thread, the A
/// fragment of mma.m16n8k16 per warp) x B (16 x N, K-major, descriptor),
/// f32 accumulation: wgmma.mma_async.m64nNk16 with A in registers.
template <typename T, int N>
struct Wgmma;

#include "wgmma_ops.inc"

// ------------------------------------------------------------ mbarrier
__device__ __forceinline__ void mbar_init(std::uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
/// Makes the initialised barriers visible to the async proxy (TMA).
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
/// One arrival that also announces `bytes` of asynchronous copies to come.
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
/// How long a waiting thread may sleep in one try_wait before it looks again
/// (a hint: it wakes when the phase completes). Without it a waiting warp
/// spins through the retry loop, taking issue slots from the warps that work.
constexpr unsigned kMbarSuspendNs = 10'000'000u;
__device__ __forceinline__ bool mbar_try_wait(unsigned bar, unsigned parity) {
  unsigned done = 0;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2, %3;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity), "r"(kMbarSuspendNs)
      : "memory");
  return done != 0;
}
__device__ __forceinline__ std::uint64_t global_ns() {
  std::uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
/// Waits until the barrier's phase of parity `parity` has completed. With
/// kWatchdog, a wait of more than kMbarTimeoutNs on one phase, which can only
/// be a protocol error (a count or byte total that never completes), traps,
/// failing the launch with an error rather than hanging the process. A
/// sleeping try_wait wakes at every byte count a copy completes, so a wait
/// for a stage tries a few times: the clock is read every kMbarClockEvery
/// tries only, which keeps the retry loop a handful of instructions.
constexpr std::uint64_t kMbarTimeoutNs = 10'000'000'000ull;
constexpr unsigned kMbarClockEvery = 64;
template <bool kWatchdog = true>
__device__ __forceinline__ void mbar_wait(unsigned a, unsigned parity) {
  if constexpr (kWatchdog) {
    std::uint64_t start = 0;
    unsigned tries = 0;
    while (!mbar_try_wait(a, parity)) {
      if (++tries % kMbarClockEvery != 0) continue;
      const std::uint64_t now = global_ns();
      if (start == 0) {
        start = now;
      } else if (now - start > kMbarTimeoutNs) {
        __trap();
      }
    }
  } else {
    while (!mbar_try_wait(a, parity)) {
    }
  }
}
template <bool kWatchdog = true>
__device__ __forceinline__ void mbar_wait(std::uint64_t* bar, unsigned parity) {
  mbar_wait<kWatchdog>(smem_addr(bar), parity);
}

// ------------------------------------------------------------ TMA and bulk copies
/// A 2-D tile of the tensor map at (c0 innermost, c1) into shared memory,
/// completing `bar`'s transaction bytes; out-of-bounds elements are zero.
__device__ __forceinline__ void tma_load_2d(void* dst, const void* tmap, int c0, int c1, std::uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_addr(dst)),
      "l"(tmap), "r"(c0), "r"(c1), "r"(smem_addr(bar))
      : "memory");
}
/// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to
/// shared memory, completing `bar`'s transaction bytes.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, unsigned bytes, std::uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
__device__ __forceinline__ void prefetch_tensormap(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(tmap) : "memory");
}

// ------------------------------------------------------------ registers
/// Warpgroup-wide register reallocation (every warp of the warpgroup runs it).
template <int R>
__device__ __forceinline__ void regs_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void regs_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace hqq::cuda::detail::sm90
