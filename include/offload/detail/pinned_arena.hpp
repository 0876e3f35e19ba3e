#pragma once
/// \file
/// Pinned host masters packed into a few power-of-two chunks.
///
/// LibTorch's pinned-memory allocator (the CUDA caching host allocator, in 1.13 and every 2.x)
/// rounds each request up to the next power of two before it page-locks it. Pinned tensor by
/// tensor (`pin_memory()`), Wan's weights take about 1.5x their bytes: a 5120 x 13824 bf16 matrix
/// (135 MiB) takes 256 MiB. Here the masters of a component are copied into chunks whose sizes are
/// powers of two already, so the allocator adds nothing, and each master becomes a view of its
/// chunk with the same sizes, strides, dtype and values.
///
/// `plan_arena` is the packing alone (first fit by decreasing size, each chunk then shrunk to the
/// power of two its contents need); `pack_into_arena` allocates the chunks through a function and
/// copies, one chunk at a time. Both are pure of CUDA: tests pass an ordinary host allocation.

#include <offload/detail/align.hpp>
#include <offload/errors.hpp>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <functional>
#include <numeric>
#include <string_view>
#include <vector>

namespace offload::detail {

/// Every master starts at a multiple of this, as in a device slot (a multiple of every element
/// size, so a chunk's bytes can be viewed as any dtype at any such offset).
inline constexpr std::int64_t arena_alignment = tensor_alignment;
/// The largest chunk tried; a tensor above it gets a chunk of its own (its size rounded to a power
/// of two, whose tail then holds smaller tensors).
inline constexpr std::int64_t arena_max_chunk = std::int64_t{1} << 30;
/// The smallest chunk size tried when several chunks are needed.
inline constexpr std::int64_t arena_min_chunk = std::int64_t{1} << 20;

[[nodiscard]] inline std::int64_t pow2_ceil(std::int64_t n) {
  return n <= 1 ? 1 : static_cast<std::int64_t>(std::bit_ceil(static_cast<std::uint64_t>(n)));
}

/// Where each of a list of byte sizes goes.
struct arena_layout {
  struct place {
    std::size_t chunk = 0;
    std::int64_t offset = 0;
  };
  std::vector<std::int64_t> chunks; ///< bytes of each chunk, each a power of two
  std::vector<place> places;        ///< one per size, in the order given
  [[nodiscard]] std::int64_t total() const { return std::accumulate(chunks.begin(), chunks.end(), std::int64_t{0}); }
};

/// Packs with chunks of `chunk_bytes` (a power of two): first fit by decreasing size; a size
/// above it opens a chunk of pow2_ceil(size). Each chunk is then shrunk to the power of two its
/// used bytes need. Zero sizes take no room (chunk 0, offset 0 when there is no chunk).
[[nodiscard]] inline arena_layout plan_arena_with(const std::vector<std::int64_t>& sizes, std::int64_t chunk_bytes) {
  arena_layout out;
  out.places.resize(sizes.size());
  std::vector<std::size_t> order(sizes.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sizes[a] > sizes[b]; });
  std::vector<std::int64_t> used;
  for (const std::size_t i : order) {
    const std::int64_t need = align_up(sizes[i], arena_alignment);
    if (need == 0) continue;
    std::size_t c = 0;
    while (c < used.size() && used[c] + need > out.chunks[c]) ++c;
    if (c == used.size()) {
      out.chunks.push_back(std::max(chunk_bytes, pow2_ceil(need)));
      used.push_back(0);
    }
    out.places[i] = {c, used[c]};
    used[c] += need;
  }
  for (std::size_t c = 0; c < used.size(); ++c) out.chunks[c] = pow2_ceil(used[c]);
  return out;
}

/// The packing of `sizes` that pins the fewest bytes: each power-of-two chunk size from
/// arena_min_chunk to arena_max_chunk is tried, and one chunk for everything when that is smaller;
/// on a tie, the fewer chunks (fewer page-locking calls).
[[nodiscard]] inline arena_layout plan_arena(const std::vector<std::int64_t>& sizes) {
  std::int64_t sum = 0;
  for (const auto s : sizes) sum += align_up(s, arena_alignment);
  std::vector<std::int64_t> tries;
  for (std::int64_t c = arena_min_chunk; c <= arena_max_chunk; c *= 2) tries.push_back(c);
  if (sum > 0 && pow2_ceil(sum) < arena_min_chunk) tries.push_back(pow2_ceil(sum));
  arena_layout best;
  bool have = false;
  for (const auto c : tries) {
    arena_layout l = plan_arena_with(sizes, c);
    if (!have || l.total() < best.total() || (l.total() == best.total() && l.chunks.size() < best.chunks.size())) {
      best = std::move(l);
      have = true;
    }
  }
  return best;
}

/// Whether a tensor has elements that share memory (an expanded tensor, stride 0): it is packed
/// contiguous, since a copy cannot write into such a layout.
[[nodiscard]] inline bool self_overlapping(const at::Tensor& t) {
  return at::has_internal_overlap(t) == at::MemOverlap::Yes;
}

/// The bytes a tensor takes in the arena: the span of its elements in memory (its layout is kept),
/// or its elements' bytes when they overlap (packed contiguous).
[[nodiscard]] inline std::int64_t arena_bytes(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  if (self_overlapping(t)) return t.numel() * static_cast<std::int64_t>(t.element_size());
  std::int64_t last = 0;
  for (std::int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return (last + 1) * static_cast<std::int64_t>(t.element_size());
}

/// Copies `tensors` (host tensors) into chunks that `allocate(bytes)` returns (1-D host tensors
/// of kByte, at least `bytes` long), as plan_arena places them, chunk by chunk: each chunk is
/// allocated, filled, and each copy handed to `commit(i, copy)` (a view of the chunk with the
/// sizes, strides, dtype and values of `tensors[i]`, contiguous where its elements overlap; an
/// empty tensor gets a fresh empty one) while
/// `tensors[i]` is released, so the originals can be freed as their copies land and the host holds
/// at most one chunk more than the masters at any time. Returns the packing.
///
/// An allocation that fails throws capacity_error `offload.capacity.pinned_allocation` naming
/// `what`, the chunk and the bytes; the tensors of the chunks before it are committed already (their
/// values unchanged), the others are not. `allocated`, when given, counts the bytes of the chunks
/// allocated so far (also when it throws).
inline arena_layout pack_into_arena(std::vector<at::Tensor> tensors,
                                    const std::function<at::Tensor(std::int64_t)>& allocate,
                                    const std::function<void(std::size_t, at::Tensor)>& commit, std::string_view what,
                                    std::int64_t* allocated = nullptr) {
  std::vector<std::int64_t> sizes;
  sizes.reserve(tensors.size());
  for (const auto& t : tensors) sizes.push_back(arena_bytes(t));
  arena_layout plan = plan_arena(sizes);
  std::vector<std::vector<std::size_t>> members(plan.chunks.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (sizes[i] > 0) {
      members[plan.places[i].chunk].push_back(i);
    } else {
      commit(i, at::empty(tensors[i].sizes(), tensors[i].options()));
      tensors[i].reset();
    }
  }
  if (allocated) *allocated = 0;
  for (std::size_t c = 0; c < plan.chunks.size(); ++c) {
    at::Tensor chunk;
    try {
      chunk = allocate(plan.chunks[c]);
    } catch (const c10::Error& e) {
      throw capacity_error("offload.capacity.pinned_allocation",
                           fmt::format("pinning the host masters of '{}': chunk {} of {} ({} bytes, {} in all) could "
                                       "not be allocated: {}; the masters of the chunks before it stay pinned, the "
                                       "others pageable; pin less (drop ':pinned' from some components, or give "
                                       "the budget planner a pinned budget)",
                                       what, c + 1, plan.chunks.size(), plan.chunks[c], plan.total(),
                                       e.what_without_backtrace()),
                           "cpu", {}, plan.total(), 0);
    }
    if (chunk.scalar_type() != at::kByte || chunk.dim() != 1 || chunk.numel() < plan.chunks[c] || !chunk.is_cpu())
      throw placement_error("offload.placement.arena_chunk",
                            fmt::format("pinning the host masters of '{}': the allocator returned {} for a chunk of "
                                        "{} bytes, expected a 1-D host tensor of Byte at least that long",
                                        what, chunk.toString(), plan.chunks[c]));
    if (allocated) *allocated += plan.chunks[c];
    for (const std::size_t i : members[c]) {
      at::Tensor& t = tensors[i];
      const at::Tensor region = chunk.narrow(0, plan.places[i].offset, sizes[i]).view(t.scalar_type());
      at::Tensor copy = self_overlapping(t) ? region.view(t.sizes()) : region.as_strided(t.sizes(), t.strides());
      copy.copy_(t);
      t.reset();
      commit(i, std::move(copy));
    }
  }
  return plan;
}

} // namespace offload::detail
