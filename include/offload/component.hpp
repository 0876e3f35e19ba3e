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
};

/// What the scheduler needs to know of a component: name, bytes and block list.
[[nodiscard]] inline component_info info_of(const component& c) { return {c.name(), c.bytes(), c.blocks()}; }

} // namespace offload
