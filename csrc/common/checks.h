// Input checks for the C++ side of every op (torch-using files only, never .cu files).
// Python validates first with friendlier messages; these guard direct torch.ops calls.
#pragma once
#include <ATen/ATen.h>

#define FFA_CHECK_CONTIG(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define FFA_CHECK_DTYPE(x, dt) \
  TORCH_CHECK((x).scalar_type() == (dt), #x " must have dtype ", (dt), ", got ", (x).scalar_type())
#define FFA_CHECK_DIM(x, d) TORCH_CHECK((x).dim() == (d), #x " must have ", (d), " dims, got shape ", (x).sizes())
#define FFA_CHECK_SAME_DEVICE(x, y) \
  TORCH_CHECK((x).device() == (y).device(), #x " is on ", (x).device(), " but " #y " is on ", (y).device())

#ifdef FFAVATAR_WITH_CUDA
#include <cuda_runtime.h>
// After a launcher from a .cu file returns: turn its cudaError_t into a clear exception.
#define FFA_CHECK_CUDA(expr, what)                                                        \
  do {                                                                                    \
    cudaError_t _ffa_err = (expr);                                                        \
    TORCH_CHECK(_ffa_err == cudaSuccess, what, " failed: ", cudaGetErrorString(_ffa_err)); \
  } while (0)
#endif
