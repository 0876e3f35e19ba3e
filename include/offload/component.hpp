#pragma once
/// \file
/// The interface the scheduler moves: a named set of tensors with a size and a location.
///
/// `offloadable<M>` (a LibTorch module with its auxiliary tensors) implements it, and so does
/// `testing::sized_component` (bytes only, for simulations of real model sizes without weights).

#include <offload/device.hpp>

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
};

} // namespace offload
