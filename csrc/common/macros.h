// Macros shared by the CPU (C++) and CUDA builds. No torch header here: .cu files include this.
#pragma once

#include <cstdlib>

// Environment switches (FFAVATAR_NO_PDL, FFAVATAR_BIN_SYNC, ...): common/env.h.

#if defined(__CUDACC__)
#define HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HOST_DEVICE inline
#endif

#if defined(__CUDACC__)
#include <cuda_runtime.h>
// Kernel launchers in .cu files return the launch error instead of throwing (no torch there);
// the *_cuda.cpp glue turns it into a TORCH_CHECK naming the kernel.
#define FFA_RETURN_IF_CUDA_ERROR(expr)          \
  do {                                          \
    cudaError_t _ffa_err = (expr);              \
    if (_ffa_err != cudaSuccess) return _ffa_err; \
  } while (0)
#endif
