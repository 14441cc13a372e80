// Bulk global -> shared copies on Hopper (sm_90+): cp.async.bulk completing on a shared-memory
// mbarrier. The copy engine (TMA) moves the bytes, so a block can have all of its input in flight
// at once without holding registers or L1 miss slots per load. Addresses and sizes must be
// multiples of 16 bytes. Below sm_90 these compile to nothing and callers must not launch the
// kernels that use them (bulk_copy_supported() on the host).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace ffa {

inline bool bulk_copy_supported() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  return major >= 9;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FFA_HAS_BULK_COPY 1

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One thread initializes; the fence makes the initialization visible to the copy engine.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(arrivals) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// Arrive (the barrier's one arrival) and announce `bytes` of copies that complete on it, then
// copy `bytes` from global `src` to shared `dst`.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}

// Wait until the barrier's phase `parity` has completed (all announced bytes landed).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
  } while (!done);
}

// Order this thread's earlier generic-proxy accesses of shared memory before later bulk copies
// into it (a buffer is refilled after it was read).
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
#endif

}  // namespace ffa
