// Programmatic dependent launch (Hopper, sm_90+): a kernel launched with launch_pdl(true, ...) may start while
// the previous kernel of the stream is still running; it must call pdl_wait() before it reads
// anything that kernel writes, and before it writes any global memory (the wait returns once the
// previous grid has completed and its writes are visible). A kernel that calls pdl_trigger() lets
// the next PDL launch start early. Both are no-ops below sm_90 and when the launch was a plain
// one; launch_pdl falls back to a plain launch on devices below compute capability 9.0 and when
// FFAVATAR_NO_PDL is set (non-empty, not "0"; common/env.h), which is read at every launch so a
// benchmark can compare both in one process. Stream capture (CUDA graphs) records the programmatic
// edges.
#pragma once
#include <cuda_runtime.h>
#include <stdlib.h>

#include "common/env.h"
#include "common/macros.h"

#include <utility>

namespace ffa {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

inline bool pdl_enabled() {
  if (env::no_pdl()) return false;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  return major >= 9;
}

// use == false (or pdl_enabled() false): an ordinary launch.
template <typename... KArgs, typename... Args>
cudaError_t launch_pdl(bool use, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = use && pdl_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace ffa
