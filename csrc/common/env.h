// The library's environment switches, in one place. Each is on when the variable is set, non-empty
// and not "0". All have one lifetime: read at every call that uses them (std::getenv is cheap next to
// a kernel launch), so tests and A/B scripts can toggle them in-process (os.environ,
// monkeypatch.setenv). Torch-free (.cu files include it).
//
//   FFAVATAR_NO_PDL        LBS forward: plain launches instead of programmatic dependent launch (pdl.cuh)
//   FFAVATAR_BIN_SYNC      rasterize bin: always the exact way (host waits for the intersection count)
//   FFAVATAR_NO_SPLIT      rasterize render: every tile in one block (heavy tiles not split in chunks)
//   FFAVATAR_NO_BIN_GRAPH  rasterize bin: launch the kernels directly (no cached CUDA graphs)
//   FFAVATAR_BIN_CUB_SORT  rasterize bin: cub::DeviceRadixSort instead of the library's onesweep sorts
#pragma once

#include <cstdlib>

namespace ffa {
namespace env {

inline bool flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != 0 && !(v[0] == '0' && v[1] == 0);
}

inline bool no_pdl() { return flag("FFAVATAR_NO_PDL"); }
inline bool bin_sync() { return flag("FFAVATAR_BIN_SYNC"); }
inline bool no_split() { return flag("FFAVATAR_NO_SPLIT"); }
inline bool no_bin_graph() { return flag("FFAVATAR_NO_BIN_GRAPH"); }
inline bool bin_cub_sort() { return flag("FFAVATAR_BIN_CUB_SORT"); }

}  // namespace env
}  // namespace ffa
