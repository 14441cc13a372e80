// Every op schema of the library, in one place: torch.ops.ffavatar.<name>.
// Backend kernels register in csrc/<op>/<op>.cpp (CPU) and csrc/<op>/<op>_cuda.cpp (CUDA) with
// TORCH_LIBRARY_IMPL; autograd and fake (meta) kernels are attached in Python
// (ffavatar_kernels/<op>.py) with torch.library.register_autograd / register_fake.
#include <torch/library.h>

TORCH_LIBRARY(ffavatar, m) {
  // ---- flame_lbs, skin_gaussians (csrc/flame_lbs) -------------------------------------------

  // ---- rasterize (csrc/rasterize) -------------------------------------------------------------

}
