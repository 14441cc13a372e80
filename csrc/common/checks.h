// Input checks for the C++ side of every op (torch-using files only, never .cu files).
// Python validates first with friendlier messages; these guard direct torch.ops calls.
#pragma once
#include <ATen/ATen.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

// Error messages are built here, not with TORCH_CHECK's std::ostream formatting: on the lent H200's
// toolchain (g++ 13.3 against the torch 2.11 wheel) inserting an integer into a std::ostream from
// this library segfaults, while strings do not (notes/lbs.md, "Fifth pass", item 3). Integers go
// through std::to_string, shapes are joined by hand as c10 prints them ("[2, 3]").
namespace ffa {
namespace msg_detail {
inline void put(std::string& s, const char* x) { s += x; }
inline void put(std::string& s, std::string_view x) { s += x; }
inline void put(std::string& s, const std::string& x) { s += x; }
inline void put(std::string& s, char x) { s += x; }
inline void put(std::string& s, bool x) { s += x ? "true" : "false"; }
template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool> &&
                                           !std::is_same_v<T, char>, int> = 0>
inline void put(std::string& s, T x) { s += std::to_string(x); }
template <typename T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
inline void put(std::string& s, T x) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", static_cast<double>(x));
  s += b;
}
inline void put(std::string& s, c10::ArrayRef<int64_t> a) {
  s += '[';
  for (size_t i = 0; i < a.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a[i]);
  }
  s += ']';
}
inline void put(std::string& s, at::ScalarType t) { s += c10::toString(t); }
inline void put(std::string& s, const c10::Device& d) { s += d.str(); }
}  // namespace msg_detail

template <typename... Args>
std::string msg(const Args&... args) {
  std::string s;
  (msg_detail::put(s, args), ...);
  return s;
}
}  // namespace ffa

// TORCH_CHECK / TORCH_CHECK_VALUE with the message built by ffa::msg (only when the check fails).
#define FFA_CHECK(cond, ...) TORCH_CHECK(cond, ::ffa::msg(__VA_ARGS__))
#define FFA_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::ffa::msg(__VA_ARGS__))

#define FFA_CHECK_CONTIG(x) FFA_CHECK((x).is_contiguous(), #x " must be contiguous")
#define FFA_CHECK_DTYPE(x, dt) \
  FFA_CHECK((x).scalar_type() == (dt), #x " must have dtype ", (dt), ", got ", (x).scalar_type())
#define FFA_CHECK_DIM(x, d) FFA_CHECK((x).dim() == (d), #x " must have ", (d), " dims, got shape ", (x).sizes())
#define FFA_CHECK_SAME_DEVICE(x, y) \
  FFA_CHECK((x).device() == (y).device(), #x " is on ", (x).device(), " but " #y " is on ", (y).device())

#ifdef FFAVATAR_WITH_CUDA
#include <cuda_runtime.h>
// After a launcher from a .cu file returns: turn its cudaError_t into a clear exception.
#define FFA_CHECK_CUDA(expr, what)                                                        \
  do {                                                                                    \
    cudaError_t _ffa_err = (expr);                                                        \
    FFA_CHECK(_ffa_err == cudaSuccess, what, " failed: ", cudaGetErrorString(_ffa_err)); \
  } while (0)
#endif
