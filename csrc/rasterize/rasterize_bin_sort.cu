// The bin's two radix sorts with CUB's onesweep kernels, dispatched here instead of by
// cub::DeviceRadixSort (rasterize.h, "onesweep sorts"). Torch-free.
//
// Why: CUB's dispatch queues, per sort, a memset of its tile counters and one of its digit counts, a
// histogram kernel and an exclusive-sum kernel, then per pass a memset of the look-back state and the
// onesweep kernel: 12 launches for the depth sort (4 passes), 8 for the tile sort (2 passes). Each is
// short, and between two of them the GPU idles ~1 us (H200, inside the bin's CUDA graphs); the
// memsets and histograms took ~35 us of a ~180 us bin at 8 cameras. Here each sort's counters and
// per-pass look-back state sit in one region that the caller zeroes with one memset (or inside its
// own kernel), and each sort's digit counts are taken by the kernel that writes its keys
// (rasterize_bin.cu), which also turns them into offsets: a memset and the passes for the depth
// sort, the passes alone for the tile sort (its state is zeroed by the depth keys kernel). The
// kernels are CUB's, with its sm_90 tuning for 32-bit keys and values (384 threads x 23 items), fixed
// for every architecture so the host knows the tile size. They sit in cub::detail: a CCCL whose
// kernels take other arguments fails to compile here (nothing silent).
#include <cub/device/device_radix_sort.cuh>

#include "rasterize/rasterize.h"

namespace ffa {
namespace rasterize {
namespace {

using Offset = cub::detail::choose_offset_t<int>;  // the offset type of cub::DeviceRadixSort on int sizes
using BaseHub = cub::detail::radix::policy_hub<uint32_t, int32_t, Offset>;

// One policy for every architecture: CUB's sm_90 tuning of 32-bit key / 32-bit value sorts.
struct BinSortHub {
  struct Policy : cub::ChainedPolicy<900, Policy, Policy>,
                  BaseHub::OnesweepSmallKeyTunedPolicy<cub::detail::radix::sm90_small_key_tuning<4, 4, 4>> {};
  using MaxPolicy = Policy;
};
using Policy = BinSortHub::MaxPolicy;
using Decomposer = cub::detail::identity_decomposer_t;
static_assert(Policy::ONESWEEP_RADIX_BITS == kSortRadixBits, "onesweep digit width");

constexpr int kSweepThreads = Policy::OnesweepPolicy::BLOCK_THREADS;
constexpr int64_t kTileItems = (int64_t)kSweepThreads * Policy::OnesweepPolicy::ITEMS_PER_THREAD;
// CUB cuts larger inputs into portions of at most this many items (its look-back needs it)
constexpr int64_t kPortion = ((int64_t(1) << 28) - 1) / kTileItems * kTileItems;

int passes_for(int end_bit) { return (end_bit + kSortRadixBits - 1) / kSortRadixBits; }
int64_t blocks_of(int64_t n) { return (n + kTileItems - 1) / kTileItems; }
// words before the look-back state: bins, tickets and done, padded to 4 words
int64_t head_words(int passes) { return (int64_t)passes * kSortDigits + (passes + 1 + 3) / 4 * 4; }

}  // namespace

bool onesweep_ok(int64_t n) { return n > 0 && n <= kPortion; }

int64_t sort_state_words(int64_t n, int end_bit) {
  const int p = passes_for(end_bit);
  return head_words(p) + (int64_t)p * blocks_of(n) * kSortDigits;
}

SortState sort_state(int32_t* words, int64_t n, int end_bit) {
  SortState s;
  s.passes = passes_for(end_bit);
  s.end_bit = end_bit;
  s.n = n;
  s.blocks = blocks_of(n);
  s.bins = reinterpret_cast<uint32_t*>(words);
  s.ctrs = words + (int64_t)s.passes * kSortDigits;
  s.done = s.ctrs + s.passes;
  s.lookback = words + head_words(s.passes);
  return s;
}

cudaError_t launch_onesweep(const SortState& s, uint32_t* keys, uint32_t* keys_alt, int32_t* values,
                            int32_t* values_alt, bool* result_in_alt, cudaStream_t stream) {
  if (!onesweep_ok(s.n)) return cudaErrorInvalidValue;
  auto sweep = cub::detail::radix_sort::DeviceRadixSortOnesweepKernel<Policy, cub::SortOrder::Ascending, uint32_t,
                                                                      int32_t, Offset, int, int, Decomposer>;
  uint32_t* k[2] = {keys, keys_alt};
  int32_t* v[2] = {values, values_alt};
  int cur = 0;
  for (int pass = 0; pass < s.passes; ++pass) {
    const int bit = pass * kSortRadixBits;
    const int bits = s.end_bit - bit < kSortRadixBits ? s.end_bit - bit : kSortRadixBits;
    sweep<<<(unsigned)s.blocks, kSweepThreads, 0, stream>>>(
        s.lookback + (int64_t)pass * s.blocks * kSortDigits, s.ctrs + pass, nullptr,
        reinterpret_cast<const Offset*>(s.bins) + (int64_t)pass * kSortDigits, k[1 - cur], k[cur], v[1 - cur], v[cur],
        (int)s.n, bit, bits, Decomposer{});
    cur = 1 - cur;
  }
  if (result_in_alt) *result_in_alt = cur == 1;
  return cudaGetLastError();
}

}  // namespace rasterize
}  // namespace ffa
