// Argument checks and size bookkeeping shared by the CPU and CUDA entry points of the rasterize ops
// (torch side only; never included by .cu files).
//
// Every op takes its tensors either batched, with a leading scene dimension B ([B,N,3], [B,C,N,2],
// ...), or unbatched, without it ([N,3], [C,N,2], ...; B = 1): the first tensor argument decides,
// the others and the outputs follow. The kernels see the same memory either way.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/SmallVector.h>

#include <initializer_list>
#include <tuple>

#include "common/checks.h"
#include "rasterize/rasterize.h"
#include "rasterize/rasterize_split.h"

namespace ffa {
namespace rasterize {

using Shape = c10::SmallVector<int64_t, 6>;

// Sizes of one call and whether its tensors carry the leading B.
struct Sized {
  Dims d;
  bool batched;
  // [B, rest...] when batched, [rest...] otherwise
  Shape shape(std::initializer_list<int64_t> rest) const {
    Shape s;
    if (batched) s.push_back(d.B);
    s.append(rest.begin(), rest.end());
    return s;
  }
};

// Outputs of rasterize_project (CPU and CUDA): radii [B?,C,N,2] i32, means2d [..,2], depths [..],
// conics [..,3], opacities2d [..], tiles_per_gauss [..] i32.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> alloc_project_outputs(
    const Sized& s, const at::TensorOptions& fo) {
  const Dims& d = s.d;
  auto io = fo.dtype(at::kInt);
  return {at::empty(s.shape({d.C, d.N, 2}), io), at::empty(s.shape({d.C, d.N, 2}), fo),
          at::empty(s.shape({d.C, d.N}), fo),        at::empty(s.shape({d.C, d.N, 3}), fo),
          at::empty(s.shape({d.C, d.N}), fo),        at::empty(s.shape({d.C, d.N}), io)};
}

inline void check_sizes(const at::Tensor& t, const char* name, at::IntArrayRef want) {
  bool ok = t.dim() == (int64_t)want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || t.size(i) == want[i];
  FFA_CHECK(ok, "rasterize: ", name, " must have shape ", want, " (-1: any), got ", t.sizes());
}

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef want) {
  check_sizes(t, name, want);
  FFA_CHECK(t.is_contiguous(), "rasterize: ", name, " must be contiguous");
}

// Whether the first `ndims` dims of t can be read as one flat index f with element offset f * stride
// (contiguous: the product of the remaining sizes; broadcast by expand: 0); sets *stride if so.
inline bool flat_stride(const at::Tensor& t, int64_t ndims, int64_t* stride) {
  int64_t s = 0, inner = 1;
  bool have = false;
  for (int64_t k = ndims - 1; k >= 0; --k) {
    const int64_t n = t.size(k);
    if (n != 1) {
      if (!have) {
        s = t.stride(k);
        have = true;
      } else if (t.stride(k) != s * inner) {
        return false;
      }
    }
    inner *= n;
  }
  *stride = s;
  return true;
}

// An output gradient read per pixel (all dims but the last flattened; any strides that allow it,
// e.g. the expanded gradient of a sum, else a contiguous copy): element (pixel p, channel c) at
// data + p * pix + c * ch.
struct PixelGrad {
  at::Tensor t;
  int64_t pix, ch;
};

inline PixelGrad pixel_grad(const at::Tensor& g) {
  PixelGrad r{g, 0, 0};
  if (!flat_stride(g, g.dim() - 1, &r.pix)) {
    r.t = g.contiguous();
    r.pix = g.size(-1);
  }
  r.ch = r.t.stride(-1);
  return r;
}

// A per-(image, Gaussian) gradient [B?,C,N] read at data + i * stride (contiguous or expanded).
inline at::Tensor flat_grad(const at::Tensor& g, int64_t* stride) {
  if (flat_stride(g, g.dim(), stride)) return g;
  *stride = 1;
  return g.contiguous();
}

constexpr int64_t kMaxImageSide = 32768;  // ffavatar_kernels.rasterize.MAX_IMAGE_SIDE

inline void check_image(int64_t width, int64_t height, int64_t tile_size) {
  FFA_CHECK(width > 0 && height > 0, "rasterize: width and height must be > 0, got ", width, "x", height);
  // Dims holds them as int and pixel indices as int32 per image: bound them (no narrowing)
  FFA_CHECK(width <= kMaxImageSide && height <= kMaxImageSide, "rasterize: width and height must be <= ",
            kMaxImageSide, ", got ", width, "x", height);
  FFA_CHECK(tile_size >= 1 && tile_size <= 32, "rasterize: tile_size must be in [1, 32], got ", tile_size);
}

inline Dims make_dims(int64_t B, int64_t C, int64_t N, int64_t Cc, int64_t D, int64_t width, int64_t height,
                      int64_t tile_size) {
  Dims d;
  d.B = B; d.C = C; d.N = N; d.Cc = Cc; d.D = D;
  d.W = (int)width; d.H = (int)height; d.tile_size = (int)tile_size;
  d.tiles_x = (int)((width + tile_size - 1) / tile_size);
  d.tiles_y = (int)((height + tile_size - 1) / tile_size);
  FFA_CHECK(B * C * N < (int64_t(1) << 31), "rasterize: B*C*N must be < 2^31, got ", B * C * N);
  return d;
}

// Sizes of a projection call: means [B?,N,3] ... viewmats [B?,C,4,4], Ks [B?,C,3,3].
inline Sized project_dims(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                          const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks,
                          int64_t width, int64_t height, int64_t tile_size) {
  check_image(width, height, tile_size);
  FFA_CHECK(means.dim() == 2 || means.dim() == 3, "rasterize: means must have shape [B,N,3] or [N,3], got ",
              means.sizes());
  Sized s;
  s.batched = means.dim() == 3;
  FFA_CHECK(viewmats.dim() == means.dim() + 1, "rasterize: viewmats must have shape ",
              s.batched ? "[B,C,4,4]" : "[C,4,4]", " (as means ", means.sizes(), "), got ", viewmats.sizes());
  const int64_t B = s.batched ? means.size(0) : 1, N = means.size(-2), C = viewmats.size(-3);
  s.d.B = B;
  check_shape(means, "means", s.shape({N, 3}));
  check_shape(quats, "quats", s.shape({N, 4}));
  check_shape(scales, "scales", s.shape({N, 3}));
  check_shape(opacities, "opacities", s.shape({N}));
  check_shape(viewmats, "viewmats", s.shape({C, 4, 4}));
  check_shape(Ks, "Ks", s.shape({C, 3, 3}));
  for (const at::Tensor* t : {&quats, &scales, &opacities, &viewmats, &Ks}) {
    FFA_CHECK_SAME_DEVICE(means, (*t));
    FFA_CHECK(t->scalar_type() == means.scalar_type(), "rasterize: all float inputs must share means' dtype ",
                means.scalar_type(), ", got ", t->scalar_type());
  }
  s.d = make_dims(B, C, N, 1, 0, width, height, tile_size);
  return s;
}

// Sizes of the projection backward's extra inputs (shared by the CPU and CUDA glue); the output
// gradients may have any strides (the glue reads them through flat_grad / contiguous copies).
inline void check_project_grads(const Sized& s, const at::Tensor& radii, const at::Tensor& v_means2d,
                                const at::Tensor& v_depths, const at::Tensor& v_conics,
                                const at::Tensor& v_opac2d) {
  const Dims& d = s.d;
  check_shape(radii, "radii", s.shape({d.C, d.N, 2}));
  check_sizes(v_means2d, "v_means2d", s.shape({d.C, d.N, 2}));
  check_sizes(v_depths, "v_depths", s.shape({d.C, d.N}));
  check_sizes(v_conics, "v_conics", s.shape({d.C, d.N, 3}));
  check_sizes(v_opac2d, "v_opacities2d", s.shape({d.C, d.N}));
}

// Image checks and batching of a bin / render call (from means2d [B?,C,N,2]); the caller fills s.d.
inline Sized sized_from_means2d(const at::Tensor& means2d, int64_t width, int64_t height, int64_t tile_size) {
  check_image(width, height, tile_size);
  FFA_CHECK(means2d.dim() == 3 || means2d.dim() == 4,
              "rasterize: means2d must have shape [B,C,N,2] or [C,N,2], got ", means2d.sizes());
  Sized s;
  s.batched = means2d.dim() == 4;
  return s;
}

// Sizes of a bin call: means2d [B?,C,N,2], radii [B?,C,N,2], depths, opacities2d, tiles [B?,C,N],
// conics [B?,C,N,3].
inline Sized bin_dims(const at::Tensor& means2d, const at::Tensor& radii, const at::Tensor& depths,
                      const at::Tensor& conics, const at::Tensor& opac2d, const at::Tensor& tiles, int64_t width,
                      int64_t height, int64_t tile_size) {
  Sized s = sized_from_means2d(means2d, width, height, tile_size);
  const int64_t B = s.batched ? means2d.size(0) : 1, C = means2d.size(-3), N = means2d.size(-2);
  s.d.B = B;
  check_shape(means2d, "means2d", s.shape({C, N, 2}));
  check_shape(radii, "radii", s.shape({C, N, 2}));
  check_shape(depths, "depths", s.shape({C, N}));
  check_shape(conics, "conics", s.shape({C, N, 3}));
  check_shape(opac2d, "opacities2d", s.shape({C, N}));
  check_shape(tiles, "tiles_per_gauss", s.shape({C, N}));
  s.d = make_dims(B, C, N, 1, 0, width, height, tile_size);
  return s;
}

// Sizes of a render call: means2d [B?,C,N,2], colors [B?,Cc,N,D] (Cc = 1 or C) or [B?,N,D] (shared
// by the cameras), backgrounds [B?,C,D]?.
inline Sized render_dims(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac2d,
                         const at::Tensor& colors, const c10::optional<at::Tensor>& backgrounds,
                         const at::Tensor& tile_offsets, const at::Tensor& flatten_ids, int64_t width,
                         int64_t height, int64_t tile_size) {
  Sized s = sized_from_means2d(means2d, width, height, tile_size);
  const int64_t L = s.batched ? 1 : 0;
  FFA_CHECK(colors.dim() == L + 2 || colors.dim() == L + 3, "rasterize: colors must have shape ",
              s.batched ? "[B,N,D] or [B,Cc,N,D]" : "[N,D] or [Cc,N,D]", ", got ", colors.sizes());
  const int64_t B = s.batched ? means2d.size(0) : 1, C = means2d.size(-3), N = means2d.size(-2);
  const int64_t Cc = colors.dim() == L + 3 ? colors.size(L) : 1, D = colors.size(-1);
  FFA_CHECK(Cc == 1 || Cc == C, "rasterize: colors' camera dim must be 1 or C=", C, ", got ", Cc);
  s.d.B = B;
  check_shape(means2d, "means2d", s.shape({C, N, 2}));
  check_shape(conics, "conics", s.shape({C, N, 3}));
  check_shape(opac2d, "opacities2d", s.shape({C, N}));
  if (colors.dim() == L + 3)
    check_shape(colors, "colors", s.shape({Cc, N, D}));
  else
    check_shape(colors, "colors", s.shape({N, D}));
  s.d = make_dims(B, C, N, Cc, D, width, height, tile_size);
  check_shape(tile_offsets, "tile_offsets", s.shape({C, s.d.tiles_y, s.d.tiles_x}));
  check_shape(flatten_ids, "flatten_ids", {-1});
  FFA_CHECK(tile_offsets.scalar_type() == at::kInt && flatten_ids.scalar_type() == at::kInt,
              "rasterize: tile_offsets and flatten_ids must be int32");
  if (backgrounds.has_value()) check_shape(*backgrounds, "backgrounds", s.shape({C, D}));
  for (const at::Tensor* t : {&conics, &opac2d, &colors}) {
    FFA_CHECK_SAME_DEVICE(means2d, (*t));
    FFA_CHECK(t->scalar_type() == means2d.scalar_type(), "rasterize: float inputs must share means2d's dtype ",
                means2d.scalar_type(), ", got ", t->scalar_type());
  }
  return s;
}

// Extra inputs of the render backward: final_Ts, last_ids (contiguous), output gradients (sizes).
inline void check_render_grads(const Sized& s, const at::Tensor& final_Ts, const at::Tensor& last_ids,
                               const at::Tensor& v_render_colors, const at::Tensor& v_render_alphas) {
  const Dims& d = s.d;
  check_shape(final_Ts, "final_Ts", s.shape({d.C, d.H, d.W, 1}));
  check_shape(last_ids, "last_ids", s.shape({d.C, d.H, d.W}));
  check_sizes(v_render_colors, "v_render_colors", s.shape({d.C, d.H, d.W, d.D}));
  check_sizes(v_render_alphas, "v_render_alphas", s.shape({d.C, d.H, d.W, 1}));
}

// split_state of the render backward (the forward's 5th output): None or empty (no split), or int32,
// 1-D, on means2d's device, with the size of a plan for G tiles of nt pixels and D channels. Returns
// its pool of slots (0: no split).
inline int64_t split_state_pool(const c10::optional<at::Tensor>& state, const at::Tensor& means2d, int64_t G,
                                int64_t nt, int64_t D) {
  if (!state.has_value() || !state->defined() || state->numel() == 0) return 0;
  const at::Tensor& t = *state;
  FFA_CHECK(t.scalar_type() == at::kInt && t.dim() == 1 && t.is_contiguous(),
            "split_state: expected the 1-D int32 tensor of the render forward, got ", t.scalar_type(), " of shape ",
            t.sizes());
  FFA_CHECK_SAME_DEVICE(means2d, t);
  FFA_CHECK(means2d.is_cuda(), "split_state: expected an empty tensor on the CPU (the CPU render does not split "
            "tiles), got ", t.numel(), " elements");
  const int64_t rest = t.numel() - 3 * G, per = 3 + nt * (D + 2);
  FFA_CHECK(rest > 0 && rest % per == 0 && split_state_words(G, rest / per, nt, D) == t.numel(),
            "split_state: ", t.numel(), " elements do not fit this call's ", G, " tiles and ", D,
            " channels (was it made by the render forward of the same call?)");
  return rest / per;
}

}  // namespace rasterize
}  // namespace ffa
