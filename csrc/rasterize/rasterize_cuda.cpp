// CUDA glue of the rasterize ops: validation, allocation through torch's caching allocator (outputs,
// intermediates, CUB temp storage), the current stream, and the launchers of rasterize_*.cu.
// float32 only. One host sync per forward: reading the intersection count to size the key buffers.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "rasterize/rasterize_checks.h"

namespace ffa {
namespace rasterize {
namespace {

#define FFA_F32(t) TORCH_CHECK((t).scalar_type() == at::kFloat, "rasterize (CUDA): " #t " must be float32, got ", (t).scalar_type())

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_cuda(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height, double near_plane,
    double far_plane, double eps2d, bool antialiased, int64_t tile_size) {
  Dims d = project_dims(means, quats, scales, opacities, viewmats, Ks, width, height, tile_size);
  FFA_F32(means);
  c10::cuda::CUDAGuard guard(means.device());
  auto fo = means.options();
  auto io = fo.dtype(at::kInt);
  at::Tensor radii = at::empty({d.B, d.C, d.N, 2}, io);
  at::Tensor means2d = at::empty({d.B, d.C, d.N, 2}, fo);
  at::Tensor depths = at::empty({d.B, d.C, d.N}, fo);
  at::Tensor conics = at::empty({d.B, d.C, d.N, 3}, fo);
  at::Tensor opac2d = at::empty({d.B, d.C, d.N}, fo);
  at::Tensor tiles = at::empty({d.B, d.C, d.N}, io);
  FFA_CHECK_CUDA(launch_project_fwd(means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                                    opacities.data_ptr<float>(), viewmats.data_ptr<float>(), Ks.data_ptr<float>(), d,
                                    (float)near_plane, (float)far_plane, (float)eps2d, antialiased,
                                    radii.data_ptr<int32_t>(), means2d.data_ptr<float>(), depths.data_ptr<float>(),
                                    conics.data_ptr<float>(), opac2d.data_ptr<float>(), tiles.data_ptr<int32_t>(),
                                    c10::cuda::getCurrentCUDAStream()),
                 "rasterize project_fwd kernel");
  return {means2d, depths, conics, opac2d, radii, tiles};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_bwd_cuda(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, const at::Tensor& radii, const at::Tensor& v_means2d,
    const at::Tensor& v_depths, const at::Tensor& v_conics, const at::Tensor& v_opac2d, int64_t width,
    int64_t height, double eps2d, bool antialiased) {
  Dims d = project_dims(means, quats, scales, opacities, viewmats, Ks, width, height, 16);
  FFA_F32(means);
  check_project_grads(d, radii, v_means2d, v_depths, v_conics, v_opac2d);
  c10::cuda::CUDAGuard guard(means.device());
  at::Tensor v_means = at::empty_like(means), v_quats = at::empty_like(quats);
  at::Tensor v_scales = at::empty_like(scales), v_opacities = at::empty_like(opacities);
  FFA_CHECK_CUDA(launch_project_bwd(means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                                    opacities.data_ptr<float>(), viewmats.data_ptr<float>(), Ks.data_ptr<float>(), d,
                                    (float)eps2d, antialiased, radii.data_ptr<int32_t>(), v_means2d.data_ptr<float>(),
                                    v_depths.data_ptr<float>(), v_conics.data_ptr<float>(), v_opac2d.data_ptr<float>(),
                                    v_means.data_ptr<float>(), v_quats.data_ptr<float>(), v_scales.data_ptr<float>(),
                                    v_opacities.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
                 "rasterize project_bwd kernel");
  return {v_means, v_quats, v_scales, v_opacities};
}

std::tuple<at::Tensor, at::Tensor> bin_cuda(const at::Tensor& means2d, const at::Tensor& radii,
                                            const at::Tensor& depths, const at::Tensor& conics,
                                            const at::Tensor& opac2d, const at::Tensor& tiles, int64_t width,
                                            int64_t height, int64_t tile_size) {
  check_image(width, height, tile_size);
  TORCH_CHECK(means2d.dim() == 4, "rasterize: means2d must have shape [B,C,N,2], got ", means2d.sizes());
  int64_t B = means2d.size(0), C = means2d.size(1), N = means2d.size(2);
  Dims d = make_dims(B, C, N, 1, 0, width, height, tile_size);
  FFA_F32(means2d);
  check_shape(radii, "radii", {B, C, N, 2});
  check_shape(depths, "depths", {B, C, N});
  check_shape(conics, "conics", {B, C, N, 3});
  check_shape(opac2d, "opacities2d", {B, C, N});
  check_shape(tiles, "tiles_per_gauss", {B, C, N});
  c10::cuda::CUDAGuard guard(means2d.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto io = means2d.options().dtype(at::kInt);
  const int64_t MN = B * C * N, TP = (int64_t)d.tiles_x * d.tiles_y;
  at::Tensor tile_offsets = at::empty({B, C, d.tiles_y, d.tiles_x}, io);
  if (MN == 0) return {tile_offsets.zero_(), at::empty({0}, io)};
  // inclusive scan of the counts, then the one host sync of the forward: the total
  at::Tensor offsets = at::empty({MN}, io);
  size_t bytes = 0;
  FFA_CHECK_CUDA(launch_scan_counts(nullptr, &bytes, tiles.data_ptr<int32_t>(), offsets.data_ptr<int32_t>(), MN, stream),
                 "rasterize scan (size)");
  at::Tensor temp = at::empty({(int64_t)bytes + 1}, means2d.options().dtype(at::kByte));
  FFA_CHECK_CUDA(launch_scan_counts(temp.data_ptr(), &bytes, tiles.data_ptr<int32_t>(), offsets.data_ptr<int32_t>(),
                                    MN, stream),
                 "rasterize scan");
  // int32 scan: an overflow (> 2^31 intersections) shows up as a negative total
  int64_t n_isects = (int64_t)offsets[MN - 1].item<int32_t>();
  TORCH_CHECK(n_isects >= 0, "rasterize: too many tile intersections (int32 overflow)");
  if (n_isects == 0) return {tile_offsets.zero_(), at::empty({0}, io)};
  auto lo = means2d.options().dtype(at::kLong);
  at::Tensor keys = at::empty({n_isects}, lo), keys_alt = at::empty({n_isects}, lo);
  at::Tensor vals = at::empty({n_isects}, io), vals_alt = at::empty({n_isects}, io);
  FFA_CHECK_CUDA(launch_emit_keys(means2d.data_ptr<float>(), radii.data_ptr<int32_t>(), depths.data_ptr<float>(),
                                  conics.data_ptr<float>(), opac2d.data_ptr<float>(), offsets.data_ptr<int32_t>(),
                                  tiles.data_ptr<int32_t>(), d, keys.data_ptr<int64_t>(), vals.data_ptr<int32_t>(), stream),
                 "rasterize emit_keys kernel");
  int end_bit = 32 + bit_width(TP) + bit_width(B * C);
  TORCH_CHECK(end_bit <= 64, "rasterize: images x tiles too large for 64-bit keys");
  bool in_alt = false;
  bytes = 0;
  FFA_CHECK_CUDA(launch_sort_pairs(nullptr, &bytes, keys.data_ptr<int64_t>(), keys_alt.data_ptr<int64_t>(),
                                   vals.data_ptr<int32_t>(), vals_alt.data_ptr<int32_t>(), n_isects, end_bit, nullptr,
                                   stream),
                 "rasterize sort (size)");
  temp = at::empty({(int64_t)bytes + 1}, means2d.options().dtype(at::kByte));
  FFA_CHECK_CUDA(launch_sort_pairs(temp.data_ptr(), &bytes, keys.data_ptr<int64_t>(), keys_alt.data_ptr<int64_t>(),
                                   vals.data_ptr<int32_t>(), vals_alt.data_ptr<int32_t>(), n_isects, end_bit, &in_alt,
                                   stream),
                 "rasterize sort");
  at::Tensor sk = in_alt ? keys_alt : keys, sv = in_alt ? vals_alt : vals;
  FFA_CHECK_CUDA(launch_tile_offsets(sk.data_ptr<int64_t>(), n_isects, d, tile_offsets.data_ptr<int32_t>(), stream),
                 "rasterize tile_offsets kernel");
  return {tile_offsets, sv};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_cuda(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& colors,
    const c10::optional<at::Tensor>& backgrounds, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
    int64_t width, int64_t height, int64_t tile_size) {
  Dims d = render_dims(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width, height,
                       tile_size);
  FFA_F32(means2d);
  c10::cuda::CUDAGuard guard(means2d.device());
  auto fo = means2d.options();
  at::Tensor out_c = at::empty({d.B, d.C, d.H, d.W, d.D}, fo);
  at::Tensor out_a = at::empty({d.B, d.C, d.H, d.W, 1}, fo);
  at::Tensor last = at::empty({d.B, d.C, d.H, d.W}, fo.dtype(at::kInt));
  at::Tensor final_T = at::empty({d.B, d.C, d.H, d.W, 1}, fo);
  FFA_CHECK_CUDA(launch_render_fwd(means2d.data_ptr<float>(), conics.data_ptr<float>(), opac2d.data_ptr<float>(),
                                   colors.data_ptr<float>(),
                                   backgrounds.has_value() ? backgrounds->data_ptr<float>() : nullptr,
                                   tile_offsets.data_ptr<int32_t>(), flatten_ids.data_ptr<int32_t>(),
                                   flatten_ids.numel(), d, out_c.data_ptr<float>(), out_a.data_ptr<float>(),
                                   last.data_ptr<int32_t>(), final_T.data_ptr<float>(),
                                   c10::cuda::getCurrentCUDAStream()),
                 "rasterize render_fwd kernel");
  return {out_c, out_a, last, final_T};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_bwd_cuda(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& colors,
    const c10::optional<at::Tensor>& backgrounds, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
    const at::Tensor& final_Ts, const at::Tensor& last_ids, const at::Tensor& v_render_colors,
    const at::Tensor& v_render_alphas, int64_t width, int64_t height, int64_t tile_size) {
  Dims d = render_dims(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width, height,
                       tile_size);
  FFA_F32(means2d);
  check_shape(final_Ts, "final_Ts", {d.B, d.C, d.H, d.W, 1});
  check_shape(last_ids, "last_ids", {d.B, d.C, d.H, d.W});
  check_shape(v_render_colors, "v_render_colors", {d.B, d.C, d.H, d.W, d.D});
  check_shape(v_render_alphas, "v_render_alphas", {d.B, d.C, d.H, d.W, 1});
  c10::cuda::CUDAGuard guard(means2d.device());
  at::Tensor v_means2d = at::zeros_like(means2d), v_conics = at::zeros_like(conics);
  at::Tensor v_opac2d = at::zeros_like(opac2d), v_colors = at::zeros_like(colors);
  FFA_CHECK_CUDA(launch_render_bwd(means2d.data_ptr<float>(), conics.data_ptr<float>(), opac2d.data_ptr<float>(),
                                   colors.data_ptr<float>(),
                                   backgrounds.has_value() ? backgrounds->data_ptr<float>() : nullptr,
                                   tile_offsets.data_ptr<int32_t>(), flatten_ids.data_ptr<int32_t>(),
                                   flatten_ids.numel(), d, final_Ts.data_ptr<float>(), last_ids.data_ptr<int32_t>(),
                                   v_render_colors.data_ptr<float>(), v_render_alphas.data_ptr<float>(),
                                   v_means2d.data_ptr<float>(), v_conics.data_ptr<float>(), v_opac2d.data_ptr<float>(),
                                   v_colors.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
                 "rasterize render_bwd kernel");
  return {v_means2d, v_conics, v_opac2d, v_colors};
}

}  // namespace
}  // namespace rasterize
}  // namespace ffa

TORCH_LIBRARY_IMPL(ffavatar, CUDA, m) {
  m.impl("rasterize_project", &ffa::rasterize::project_cuda);
  m.impl("rasterize_project_bwd", &ffa::rasterize::project_bwd_cuda);
  m.impl("rasterize_bin", &ffa::rasterize::bin_cuda);
  m.impl("rasterize_render", &ffa::rasterize::render_cuda);
  m.impl("rasterize_render_bwd", &ffa::rasterize::render_bwd_cuda);
}
