#pragma once
/// \file
/// The interface the scheduler moves: a named set of tensors with a size and a location.
///
/// `offloadable<M>` (a LibTorch module with its auxiliary tensors) implements it, and so does
/// `testing::sized_component` (bytes only, for simulations of real model sizes without weights).

#include <offload/device.hpp>
#include <offload/errors.hpp>
#include <offload/placement_policy.hpp>
#include <offload/stage.hpp>

#include <fmt/format.h>

#include <optional>
#include <vector>

#include <cstdint>
#include <string>
#include <string_view>

namespace offload {

/// Where a check happens, for error messages: the stage and the policy text.
struct stage_context {
  std::string_view stage = "<none>";
  std::string_view policy = "<none>";
};

/// A unit of placement: moved as a whole between the host and one device.
class component {
public:
  virtual ~component() = default;
  /// The name policies and stages use (`t5`, `dit`, `vae`).
  [[nodiscard]] virtual const std::string& name() const = 0;
  /// Bytes the component occupies on a device (all tensors that follow it).
  [[nodiscard]] virtual std::int64_t bytes() const = 0;
  /// Where the component is now: the host (`cpu`) when it is at home.
  [[nodiscard]] virtual device_id location() const = 0;
  /// Moves everything that follows the component onto `target`, or back home when `target` is the
  /// host (eviction: device memory is freed; immutable tensors copy nothing back). Transactional:
  /// when a copy or allocation fails, everything is back home and the error propagates.
  virtual void place_on(device& target) = 0;
  /// Starts moving the component onto `target` in the background, on the device's transfer stream
  /// (cross-stage prefetch: the executor calls it during the stage before the one that uses it).
  /// It is placed (accounted, location() == target) when this returns; finish_placement() makes
  /// the compute stream wait for the copies. Default: place_on (synchronous). Transactional.
  virtual void prefetch_onto(device& target) { place_on(target); }
  /// Makes the compute stream of the device wait for the copies prefetch_onto started (no host
  /// wait); nothing may read the component before. No effect when nothing is pending.
  virtual void finish_placement() {}
  /// Throws placement_error unless every tensor is on `expected` with its planned dtype.
  virtual void audit(device_id expected, const stage_context& where) const = 0;
  /// Keeps the host masters in pinned memory (or not). Called by the executor, at home, from the
  /// policy. Components without tensors only record it.
  virtual void use_pinned_memory(bool pinned) { (void)pinned; }
  /// The sizes of its block list when it declares one (it can then be streamed).
  [[nodiscard]] virtual std::optional<block_layout> blocks() const { return std::nullopt; }
  /// Streams its block list while placed (see block_stream.hpp). Called by the executor, at home,
  /// from the policy. Throws config_error `offload.config.not_streamable` without a block list.
  virtual void set_streaming(stream_options options) {
    if (options.enabled())
      throw config_error("offload.config.not_streamable",
                         fmt::format("component '{}' declares no block list, so it cannot be streamed; "
                                     "drop ':stream' from its policy",
                                     name()));
  }
  /// Its sizes under the storage dtypes its storage rule offers (see storage.hpp); none by default.
  [[nodiscard]] virtual std::vector<stored_size> storage_sizes() const { return {}; }
  /// Converts the tensors its storage rule selects to `dtype` (native: leaves it as it is). Called
  /// by the executor, at home, from the policy. Throws config_error `offload.config.no_storage_rule`
  /// without a rule.
  virtual void set_storage(storage_dtype dtype) {
    if (dtype != storage_dtype::native)
      throw config_error("offload.config.no_storage_rule",
                         fmt::format("component '{}' declares no storage rule, so it cannot be stored as {}; "
                                     "drop ':store' from its policy",
                                     name(), to_string(dtype)));
  }
  /// Whether it honours tile options (set_tiling).
  [[nodiscard]] virtual bool tileable() const { return false; }
  /// Runs tiled with `options` (the model reads them through tiling()). Called by the executor from
  /// the policy. Throws config_error `offload.config.not_tileable` unless tileable().
  virtual void set_tiling(tile_options options) {
    if (options.enabled())
      throw config_error("offload.config.not_tileable",
                         fmt::format("component '{}' does not run tiled; drop ':tile' from its policy", name()));
  }
  /// The tile options in force (disabled by default).
  [[nodiscard]] virtual tile_options tiling() const { return {}; }
  /// Host bytes its masters take once pinned (0: unknown, taken as bytes()).
  [[nodiscard]] virtual std::int64_t pinned_bytes() const { return 0; }
  /// Host bytes its masters take in pinned memory now: 0 unless they are really pinned (a
  /// CPU-only LibTorch pins nothing; mock devices only charge pinned bandwidth).
  [[nodiscard]] virtual std::int64_t pinned_host_bytes() const { return 0; }
};

/// What the scheduler needs to know of a component: name, bytes, block list, storage sizes and
/// whether it runs tiled.
[[nodiscard]] inline component_info info_of(const component& c) {
  return {c.name(), c.bytes(), c.blocks(), c.storage_sizes(), c.tileable(), c.pinned_bytes()};
}

namespace detail {

/// The components as the policy stores them: each `store=` replaced by the component's stored size
/// (bytes and blocks). Throws config_error `offload.config.no_storage_rule` for a dtype the
/// component does not offer and `offload.config.not_tileable` for `tile` on one that does not tile.
inline std::vector<component_info> stored_infos(const std::vector<component_info>& comps,
                                                const placement_policy& policy) {
  std::vector<component_info> out = comps;
  for (auto& c : out) {
    const auto& cp = policy.of(c.name);
    if (cp.tile.enabled() && !c.tileable)
      throw config_error("offload.config.not_tileable",
                         fmt::format("policy '{}' tiles component '{}', which does not run tiled; drop ':tile' "
                                     "for it",
                                     policy.label(), c.name));
    if (cp.store == storage_dtype::native) continue;
    const stored_size* s = c.stored_as(cp.store);
    if (!s)
      throw config_error("offload.config.no_storage_rule",
                         fmt::format("policy '{}' stores component '{}' as {}, which it does not offer ({}); "
                                     "drop ':store' for it",
                                     policy.label(), c.name, to_string(cp.store),
                                     c.storage.empty() ? std::string("it declares no storage rule")
                                                       : fmt::format("it offers {}", [&] {
                                                           std::string o;
                                                           for (const auto& v : c.storage)
                                                             o += (o.empty() ? "" : ", ") + std::string(to_string(v.dtype));
                                                           return o;
                                                         }())));
    c.bytes = s->bytes;
    c.blocks = s->blocks;
  }
  return out;
}

} // namespace detail

} // namespace offload
