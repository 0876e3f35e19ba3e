#pragma once
/// \file
/// Stages: what a pipeline declares to the scheduler, in order.
///
/// **Example**
/// \code
/// using namespace offload::literals;
/// std::vector<offload::stage> stages = {
///     {"text_encode", {"t5"}, {{"t5", 0.28_GiB}}},
///     {"denoise", {"dit"}, {{"dit", 2.06_GiB}}, /*repeat=*/50},
///     {"decode", {"vae"}, {{"vae", 8.28_GiB}}},
/// };
/// \endcode

#include <offload/storage.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace offload {

/// Activation bytes a stage needs on the device where `component` executes.
struct workspace_item {
  std::string component;
  std::int64_t bytes = 0;
};

/// One stage of a pipeline.
struct stage {
  std::string name;
  /// Components the stage runs (they must be on their execution device during it).
  std::vector<std::string> uses;
  /// Workspace estimates, each on the execution device of its component.
  std::vector<workspace_item> workspace;
  /// How many times the stage runs back to back (denoising steps); placement changes only once.
  int repeat = 1;
  /// Compute time of one repetition in seconds (cost model for predictions and simulations).
  double seconds = 0;
};

/// The block list of a component (the DiT's `blocks`), for block streaming: the bytes of each
/// block and of the fixed-size device slot that holds any one of them (tensors aligned to 256 B).
struct block_layout {
  std::vector<std::int64_t> block_bytes;
  std::int64_t slot_bytes = 0;
  /// Bytes outside the blocks that stay on the host while the component streams: lookup tables
  /// its forward gathers from there (offloadable::keep_on_host_while_streaming, e.g. T5's token
  /// embedding).
  std::int64_t host_bytes = 0;
  [[nodiscard]] std::int64_t count() const noexcept { return static_cast<std::int64_t>(block_bytes.size()); }
  [[nodiscard]] std::int64_t total() const noexcept {
    std::int64_t n = 0;
    for (auto b : block_bytes) n += b;
    return n;
  }
  /// What moves as a whole when a component of `component_bytes` is placed streamed: all but the
  /// blocks and the host tables.
  [[nodiscard]] std::int64_t streamed_rest(std::int64_t component_bytes) const noexcept {
    return component_bytes - total() - host_bytes;
  }
  friend bool operator==(const block_layout&, const block_layout&) = default;
};

/// What a component would weigh with its storage rule applied (`dit=cuda:store=bf16`).
struct stored_size {
  storage_dtype dtype = storage_dtype::native;
  std::int64_t bytes = 0;
  std::optional<block_layout> blocks;
  /// The component computes the same bits with this storage when it executes on the accelerator
  /// (its forward computes the converted tensors in this dtype there anyway, e.g. under bf16
  /// autocast). The budget planner may then choose it (budget_options::allow_exact_storage); a
  /// storage that is not exact is only ever the user's choice.
  bool exact = false;
  /// Host bytes its masters take once pinned (packed into power-of-two chunks,
  /// detail/pinned_arena.hpp); 0: unknown, taken as `bytes`.
  std::int64_t pinned_bytes = 0;
  friend bool operator==(const stored_size&, const stored_size&) = default;
};

/// A component as the scheduler sees it: a name and its size on a device.
struct component_info {
  std::string name;
  std::int64_t bytes = 0;
  /// Its block list when it declares one (it can then be streamed: `dit=cuda:stream=2`).
  std::optional<block_layout> blocks;
  /// Its sizes under each storage dtype its storage rule offers (empty: no rule, `store` refused).
  std::vector<stored_size> storage;
  /// Whether it runs tiled when asked (`vae=cuda:tile=32`); the stage list then carries the tiled
  /// workspace.
  bool tileable = false;
  /// Host bytes its masters take once pinned (packed into power-of-two chunks,
  /// detail/pinned_arena.hpp); 0: unknown, taken as `bytes`.
  std::int64_t pinned_bytes = 0;

  /// The pinned host bytes of its masters, stored as `d` (native: as they are).
  [[nodiscard]] std::int64_t pinned_as(storage_dtype d) const {
    if (d == storage_dtype::native) return pinned_bytes > 0 ? pinned_bytes : bytes;
    const stored_size* s = stored_as(d);
    if (!s) return pinned_as(storage_dtype::native);
    return s->pinned_bytes > 0 ? s->pinned_bytes : s->bytes;
  }

  /// The size stored as `d`, or nullptr when the component offers no such storage.
  [[nodiscard]] const stored_size* stored_as(storage_dtype d) const {
    for (const auto& s : storage)
      if (s.dtype == d) return &s;
    return nullptr;
  }
};

} // namespace offload
