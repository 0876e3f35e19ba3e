#pragma once
/// \file
/// A stand-in for LibTorch's pinned-memory allocator (the CUDA caching host allocator) on a machine
/// without CUDA, for tests of what pinning costs the host.
///
/// Like the real one it rounds every request up to a power of two, keeps a freed block for a later
/// request of the same rounded size, and gives cached blocks back only on empty_cache(). Its
/// blocks are ordinary host tensors from LibTorch's CPU allocator, so a host_memory_probe counts
/// them, in use or cached: the probe's peak is what the host would hold. Single-threaded.
///
/// **Example**
/// \code
/// offload::testing::caching_host_allocator pinned;
/// registry.set_pinned(true, pinned.allocator(), pinned.release());
/// registry.set_pinned(false);
/// assert(pinned.reserved() == 0); // every chunk went back to the system
/// \endcode

#include <offload/offloadable.hpp>
#include <offload/tensor_registry.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace offload::testing {

class caching_host_allocator {
public:
  /// `bytes` (> 0) as a 1-D kByte tensor whose storage is a block of pow2_ceil(bytes) bytes: a
  /// cached one of that size if there is one, else a new one.
  [[nodiscard]] at::Tensor allocate(std::int64_t bytes) const {
    const std::int64_t rounded = static_cast<std::int64_t>(std::bit_ceil(static_cast<std::uint64_t>(std::max<std::int64_t>(bytes, 1))));
    auto& s = *state_;
    ++s.requests;
    at::Tensor block;
    if (auto& cached = s.free[rounded]; !cached.empty()) {
      block = std::move(cached.back());
      cached.pop_back();
      s.cached -= rounded;
    } else {
      block = at::empty({rounded}, at::kByte);
      ++s.system_allocations;
      s.reserved += rounded;
      s.peak_reserved = std::max(s.peak_reserved, s.reserved);
    }
    s.in_use += rounded;
    // Freed with its last view: back to the cache, not to the system.
    auto deleter = [state = state_, block, rounded](void*) {
      state->in_use -= rounded;
      state->cached += rounded;
      state->free[rounded].push_back(block);
    };
    return at::from_blob(block.data_ptr(), {bytes}, deleter, at::TensorOptions().dtype(at::kByte));
  }
  /// Gives every cached block back to the system.
  void empty_cache() const {
    auto& s = *state_;
    ++s.releases;
    s.reserved -= s.cached;
    s.cached = 0;
    s.free.clear();
  }

  /// allocate() and empty_cache() as the functions tensor_registry::set_pinned takes.
  [[nodiscard]] tensor_registry::host_allocator allocator() const {
    return [self = *this](std::int64_t bytes) { return self.allocate(bytes); };
  }
  [[nodiscard]] tensor_registry::cache_release release() const {
    return [self = *this] { self.empty_cache(); };
  }

  /// Bytes of the blocks taken from the system and not given back: in use plus cached.
  [[nodiscard]] std::int64_t reserved() const { return state_->reserved; }
  [[nodiscard]] std::int64_t peak_reserved() const { return state_->peak_reserved; }
  /// Bytes of the blocks that hold tensors now.
  [[nodiscard]] std::int64_t in_use() const { return state_->in_use; }
  /// Bytes of the freed blocks kept for later requests.
  [[nodiscard]] std::int64_t cached() const { return state_->cached; }
  [[nodiscard]] int requests() const { return state_->requests; }
  /// Requests that took a new block from the system (the others reused a cached one).
  [[nodiscard]] int system_allocations() const { return state_->system_allocations; }
  [[nodiscard]] int releases() const { return state_->releases; }

private:
  struct state {
    std::map<std::int64_t, std::vector<at::Tensor>> free; ///< cached blocks by size
    std::int64_t reserved = 0, peak_reserved = 0, in_use = 0, cached = 0;
    int requests = 0, system_allocations = 0, releases = 0;
  };
  std::shared_ptr<state> state_ = std::make_shared<state>(); ///< shared with the blocks' deleters
};

/// While alive, offloadable::use_pinned_memory (what the executor calls for a policy's `:pinned`)
/// takes its chunks from `allocator` and empties its cache, as a CUDA build does with LibTorch's:
/// the executor, the block streams and the pipelines then run on packed masters in a CPU test.
/// Restores what was set before. One at a time, around single-threaded code.
///
/// \code
/// offload::testing::caching_host_allocator pinned;
/// {
///   offload::testing::scoped_pinned_memory source(pinned);
///   pipeline.generate(...); // a policy with ':pinned': its components' masters in chunks
/// }
/// \endcode
class scoped_pinned_memory {
public:
  explicit scoped_pinned_memory(const caching_host_allocator& allocator)
      : previous_(std::exchange(detail::pinned_memory_override(),
                                detail::pinned_memory_source{allocator.allocator(), allocator.release()})) {}
  ~scoped_pinned_memory() { detail::pinned_memory_override() = std::move(previous_); }
  scoped_pinned_memory(const scoped_pinned_memory&) = delete;
  scoped_pinned_memory& operator=(const scoped_pinned_memory&) = delete;

private:
  std::optional<detail::pinned_memory_source> previous_;
};

} // namespace offload::testing
