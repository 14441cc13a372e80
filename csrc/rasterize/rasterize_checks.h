// Argument checks and size bookkeeping shared by the CPU and CUDA entry points of the rasterize ops
// (torch side only; never included by .cu files).
#pragma once
#include <ATen/ATen.h>

#include "common/checks.h"
#include "rasterize/rasterize.h"

namespace ffa {
namespace rasterize {

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef want) {
  bool ok = t.dim() == (int64_t)want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || t.size(i) == want[i];
  TORCH_CHECK(ok, "rasterize: ", name, " must have shape ", want, " (-1: any), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "rasterize: ", name, " must be contiguous");
}

inline void check_image(int64_t width, int64_t height, int64_t tile_size) {
  TORCH_CHECK(width > 0 && height > 0, "rasterize: width and height must be > 0, got ", width, "x", height);
  TORCH_CHECK(tile_size >= 1 && tile_size <= 32, "rasterize: tile_size must be in [1, 32], got ", tile_size);
}

inline Dims make_dims(int64_t B, int64_t C, int64_t N, int64_t Cc, int64_t D, int64_t width, int64_t height,
                      int64_t tile_size) {
  Dims d;
  d.B = B; d.C = C; d.N = N; d.Cc = Cc; d.D = D;
  d.W = (int)width; d.H = (int)height; d.tile_size = (int)tile_size;
  d.tiles_x = (int)((width + tile_size - 1) / tile_size);
  d.tiles_y = (int)((height + tile_size - 1) / tile_size);
  TORCH_CHECK(B * C * N < (int64_t(1) << 31), "rasterize: B*C*N must be < 2^31, got ", B * C * N);
  return d;
}

// Sizes of a projection call: means [B,N,3] ... viewmats [B,C,4,4], Ks [B,C,3,3].
inline Dims project_dims(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                         const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks,
                         int64_t width, int64_t height, int64_t tile_size) {
  check_image(width, height, tile_size);
  TORCH_CHECK(means.dim() == 3, "rasterize: means must have shape [B,N,3], got ", means.sizes());
  TORCH_CHECK(viewmats.dim() == 4, "rasterize: viewmats must have shape [B,C,4,4], got ", viewmats.sizes());
  int64_t B = means.size(0), N = means.size(1), C = viewmats.size(1);
  check_shape(means, "means", {B, N, 3});
  check_shape(quats, "quats", {B, N, 4});
  check_shape(scales, "scales", {B, N, 3});
  check_shape(opacities, "opacities", {B, N});
  check_shape(viewmats, "viewmats", {B, C, 4, 4});
  check_shape(Ks, "Ks", {B, C, 3, 3});
  for (const at::Tensor* t : {&quats, &scales, &opacities, &viewmats, &Ks}) {
    FFA_CHECK_SAME_DEVICE(means, (*t));
    TORCH_CHECK(t->scalar_type() == means.scalar_type(), "rasterize: all float inputs must share means' dtype ",
                means.scalar_type(), ", got ", t->scalar_type());
  }
  return make_dims(B, C, N, 1, 0, width, height, tile_size);
}

// Shapes of the projection backward's extra inputs (shared by the CPU and CUDA glue).
inline void check_project_grads(const Dims& d, const at::Tensor& radii, const at::Tensor& v_means2d,
                                const at::Tensor& v_depths, const at::Tensor& v_conics,
                                const at::Tensor& v_opac2d) {
  check_shape(radii, "radii", {d.B, d.C, d.N, 2});
  check_shape(v_means2d, "v_means2d", {d.B, d.C, d.N, 2});
  check_shape(v_depths, "v_depths", {d.B, d.C, d.N});
  check_shape(v_conics, "v_conics", {d.B, d.C, d.N, 3});
  check_shape(v_opac2d, "v_opacities2d", {d.B, d.C, d.N});
}

// Sizes of a render call: means2d [B,C,N,2], colors [B,Cc,N,D], backgrounds [B,C,D]?.
inline Dims render_dims(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d,
                        const at::Tensor& colors, const c10::optional<at::Tensor>& backgrounds,
                        const at::Tensor& tile_offsets, const at::Tensor& flatten_ids, int64_t width,
                        int64_t height, int64_t tile_size) {
  check_image(width, height, tile_size);
  TORCH_CHECK(means2d.dim() == 4, "rasterize: means2d must have shape [B,C,N,2], got ", means2d.sizes());
  TORCH_CHECK(colors.dim() == 4, "rasterize: colors must have shape [B,Cc,N,D], got ", colors.sizes());
  int64_t B = means2d.size(0), C = means2d.size(1), N = means2d.size(2);
  int64_t Cc = colors.size(1), D = colors.size(3);
  TORCH_CHECK(Cc == 1 || Cc == C, "rasterize: colors dim 1 must be 1 or C=", C, ", got ", Cc);
  check_shape(means2d, "means2d", {B, C, N, 2});
  check_shape(conics, "conics", {B, C, N, 3});
  check_shape(opac2d, "opacities2d", {B, C, N});
  check_shape(colors, "colors", {B, Cc, N, D});
  Dims d = make_dims(B, C, N, Cc, D, width, height, tile_size);
  check_shape(tile_offsets, "tile_offsets", {B, C, d.tiles_y, d.tiles_x});
  check_shape(flatten_ids, "flatten_ids", {-1});
  TORCH_CHECK(tile_offsets.scalar_type() == at::kInt && flatten_ids.scalar_type() == at::kInt,
              "rasterize: tile_offsets and flatten_ids must be int32");
  if (backgrounds.has_value()) check_shape(*backgrounds, "backgrounds", {B, C, D});
  for (const at::Tensor* t : {&conics, &opac2d, &colors}) {
    FFA_CHECK_SAME_DEVICE(means2d, (*t));
    TORCH_CHECK(t->scalar_type() == means2d.scalar_type(), "rasterize: float inputs must share means2d's dtype ",
                means2d.scalar_type(), ", got ", t->scalar_type());
  }
  return d;
}

}  // namespace rasterize
}  // namespace ffa
