// CUDA glue of the rasterize ops: validation, allocation through torch's caching allocator (outputs,
// intermediates, CUB temp storage), the current stream, and the launchers of rasterize_*.cu.
// float32 only. One host sync per forward: reading the intersection count to size the key buffers.
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "rasterize/rasterize_checks.h"

namespace ffa {
namespace rasterize {
namespace {

#define FFA_F32(t) FFA_CHECK((t).scalar_type() == at::kFloat, "rasterize (CUDA): " #t " must be float32, got ", (t).scalar_type())

constexpr size_t kAlign = 256;
inline size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Zero a float32 output with one cudaMemsetAsync (cheaper on the host than at::zeros_like's fill launch).
inline at::Tensor zeros_f32(const at::Tensor& like, cudaStream_t stream) {
  at::Tensor t = at::empty_like(like, at::MemoryFormat::Contiguous);
  if (t.numel() > 0)
    FFA_CHECK_CUDA(cudaMemsetAsync(t.data_ptr(), 0, (size_t)t.numel() * sizeof(float), stream), "rasterize memset");
  return t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_cuda(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height, double near_plane,
    double far_plane, double eps2d, bool antialiased, int64_t tile_size) {
  const Sized s = project_dims(means, quats, scales, opacities, viewmats, Ks, width, height, tile_size);
  const Dims& d = s.d;
  FFA_F32(means);
  c10::cuda::CUDAGuard guard(means.device());
  at::Tensor radii, means2d, depths, conics, opac2d, tiles;
  std::tie(radii, means2d, depths, conics, opac2d, tiles) = alloc_project_outputs(s, means.options());
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
  const Sized s = project_dims(means, quats, scales, opacities, viewmats, Ks, width, height, 16);
  const Dims& d = s.d;
  FFA_F32(means);
  check_project_grads(s, radii, v_means2d, v_depths, v_conics, v_opac2d);
  c10::cuda::CUDAGuard guard(means.device());
  int64_t sd = 1;  // v_depths: contiguous, or expanded (stride 0: no depth gradient, nothing materialized)
  const at::Tensor vd = flat_grad(v_depths, &sd);
  const at::Tensor vm2 = v_means2d.contiguous(), vc = v_conics.contiguous(), vo = v_opac2d.contiguous();
  at::Tensor v_means = at::empty_like(means), v_quats = at::empty_like(quats);
  at::Tensor v_scales = at::empty_like(scales), v_opacities = at::empty_like(opacities);
  FFA_CHECK_CUDA(launch_project_bwd(means.data_ptr<float>(), quats.data_ptr<float>(), scales.data_ptr<float>(),
                                    opacities.data_ptr<float>(), viewmats.data_ptr<float>(), Ks.data_ptr<float>(), d,
                                    (float)eps2d, antialiased, radii.data_ptr<int32_t>(), vm2.data_ptr<float>(),
                                    vd.data_ptr<float>(), sd, vc.data_ptr<float>(), vo.data_ptr<float>(),
                                    v_means.data_ptr<float>(), v_quats.data_ptr<float>(), v_scales.data_ptr<float>(),
                                    v_opacities.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
                 "rasterize project_bwd kernel");
  return {v_means, v_quats, v_scales, v_opacities};
}

std::tuple<at::Tensor, at::Tensor> bin_cuda(const at::Tensor& means2d, const at::Tensor& radii,
                                            const at::Tensor& depths, const at::Tensor& conics,
                                            const at::Tensor& opac2d, const at::Tensor& tiles, int64_t width,
                                            int64_t height, int64_t tile_size) {
  const Sized s = bin_dims(means2d, radii, depths, conics, opac2d, tiles, width, height, tile_size);
  const Dims& d = s.d;
  FFA_F32(means2d);
  c10::cuda::CUDAGuard guard(means2d.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto io = means2d.options().dtype(at::kInt);
  auto bo = means2d.options().dtype(at::kByte);
  const int64_t MN = d.B * d.C * d.N, TP = (int64_t)d.tiles_x * d.tiles_y;
  at::Tensor tile_offsets = at::empty(s.shape({d.C, d.tiles_y, d.tiles_x}), io);
  if (MN == 0) return {tile_offsets.zero_(), at::empty({0}, io)};
  const int end_bit = 32 + bit_width(TP) + bit_width(d.B * d.C);
  FFA_CHECK(end_bit <= 64, "rasterize: images x tiles too large for 64-bit keys");
  // Inclusive scan of the counts (offsets and CUB's temp storage: one allocation), then the one host
  // sync of the forward: the total, copied straight from the last offset.
  size_t scan_bytes = 0;
  FFA_CHECK_CUDA(launch_scan_counts(nullptr, &scan_bytes, tiles.data_ptr<int32_t>(), nullptr, MN, stream),
                 "rasterize scan (size)");
  const size_t off_bytes = align_up((size_t)MN * sizeof(int32_t));
  at::Tensor obuf = at::empty({(int64_t)(off_bytes + scan_bytes + 1)}, bo);
  int32_t* offsets = static_cast<int32_t*>(obuf.data_ptr());
  FFA_CHECK_CUDA(launch_scan_counts(static_cast<char*>(obuf.data_ptr()) + off_bytes, &scan_bytes,
                                    tiles.data_ptr<int32_t>(), offsets, MN, stream),
                 "rasterize scan");
  int32_t total = 0;
  c10::cuda::memcpy_and_sync(&total, offsets + (MN - 1), sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
  // int32 scan: an overflow (> 2^31 intersections) shows up as a negative total
  FFA_CHECK(total >= 0, "rasterize: too many tile intersections (int32 overflow)");
  const int64_t n_isects = total;
  if (n_isects == 0) return {tile_offsets.zero_(), at::empty({0}, io)};
  // Keys, their double buffer and the sort's temp storage: one allocation; the values: two (the sorted
  // ones are returned as flatten_ids; everything else is freed on return, before the render allocates).
  size_t sort_bytes = 0;
  FFA_CHECK_CUDA(launch_sort_pairs(nullptr, &sort_bytes, nullptr, nullptr, nullptr, nullptr, n_isects, end_bit,
                                   nullptr, stream),
                 "rasterize sort (size)");
  const size_t key_bytes = align_up((size_t)n_isects * sizeof(int64_t));
  at::Tensor kbuf = at::empty({(int64_t)(2 * key_bytes + sort_bytes + 1)}, bo);
  char* kp = static_cast<char*>(kbuf.data_ptr());
  int64_t* keys = reinterpret_cast<int64_t*>(kp);
  int64_t* keys_alt = reinterpret_cast<int64_t*>(kp + key_bytes);
  at::Tensor vals = at::empty({n_isects}, io), vals_alt = at::empty({n_isects}, io);
  FFA_CHECK_CUDA(launch_emit_keys(means2d.data_ptr<float>(), radii.data_ptr<int32_t>(), depths.data_ptr<float>(),
                                  conics.data_ptr<float>(), opac2d.data_ptr<float>(), offsets,
                                  tiles.data_ptr<int32_t>(), d, keys, vals.data_ptr<int32_t>(), stream),
                 "rasterize emit_keys kernel");
  bool in_alt = false;
  FFA_CHECK_CUDA(launch_sort_pairs(kp + 2 * key_bytes, &sort_bytes, keys, keys_alt, vals.data_ptr<int32_t>(),
                                   vals_alt.data_ptr<int32_t>(), n_isects, end_bit, &in_alt, stream),
                 "rasterize sort");
  FFA_CHECK_CUDA(launch_tile_offsets(in_alt ? keys_alt : keys, n_isects, d, tile_offsets.data_ptr<int32_t>(),
                                     stream),
                 "rasterize tile_offsets kernel");
  return {tile_offsets, in_alt ? vals_alt : vals};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_cuda(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& colors,
    const c10::optional<at::Tensor>& backgrounds, const at::Tensor& tile_offsets, const at::Tensor& flatten_ids,
    int64_t width, int64_t height, int64_t tile_size) {
  const Sized s = render_dims(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width,
                              height, tile_size);
  const Dims& d = s.d;
  FFA_F32(means2d);
  c10::cuda::CUDAGuard guard(means2d.device());
  auto fo = means2d.options();
  at::Tensor out_c = at::empty(s.shape({d.C, d.H, d.W, d.D}), fo);
  at::Tensor out_a = at::empty(s.shape({d.C, d.H, d.W, 1}), fo);
  at::Tensor last = at::empty(s.shape({d.C, d.H, d.W}), fo.dtype(at::kInt));
  at::Tensor final_T = at::empty(s.shape({d.C, d.H, d.W, 1}), fo);
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
  const Sized s = render_dims(means2d, conics, opac2d, colors, backgrounds, tile_offsets, flatten_ids, width,
                              height, tile_size);
  const Dims& d = s.d;
  FFA_F32(means2d);
  check_render_grads(s, final_Ts, last_ids, v_render_colors, v_render_alphas);
  c10::cuda::CUDAGuard guard(means2d.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  // output gradients as they come (e.g. the expanded ones of a sum: no copy); contiguous copies otherwise
  const PixelGrad gc = pixel_grad(v_render_colors), ga = pixel_grad(v_render_alphas);
  at::Tensor v_means2d = zeros_f32(means2d, stream), v_conics = zeros_f32(conics, stream);
  at::Tensor v_opac2d = zeros_f32(opac2d, stream), v_colors = zeros_f32(colors, stream);
  FFA_CHECK_CUDA(launch_render_bwd(means2d.data_ptr<float>(), conics.data_ptr<float>(), opac2d.data_ptr<float>(),
                                   colors.data_ptr<float>(),
                                   backgrounds.has_value() ? backgrounds->data_ptr<float>() : nullptr,
                                   tile_offsets.data_ptr<int32_t>(), flatten_ids.data_ptr<int32_t>(),
                                   flatten_ids.numel(), d, final_Ts.data_ptr<float>(), last_ids.data_ptr<int32_t>(),
                                   gc.t.data_ptr<float>(), ga.t.data_ptr<float>(), GradStrides{gc.pix, gc.ch, ga.pix},
                                   v_means2d.data_ptr<float>(), v_conics.data_ptr<float>(), v_opac2d.data_ptr<float>(),
                                   v_colors.data_ptr<float>(), stream),
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
