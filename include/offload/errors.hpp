#pragma once
/// \file
/// The one exception family of offload.
///
/// Every error carries a stable id (`offload.<family>.<what>`) and a message that says what was
/// expected, what was found, where (dotted tensor path, stage, policy) and what to do.
/// `what()` is `"<id>: <message>"`.
///
/// **Example**
/// \code
/// try { plan.require_fit(); }
/// catch (const offload::capacity_error& e) { report(e.what()); }
/// \endcode

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace offload {

/// Base of every exception thrown by offload.
class error : public std::runtime_error {
public:
  error(std::string id, const std::string& message)
      : std::runtime_error(id + ": " + message), id_(std::move(id)) {}
  /// Stable identifier such as `offload.placement.device_mismatch`.
  [[nodiscard]] const std::string& id() const noexcept { return id_; }

private:
  std::string id_;
};

/// A tensor is not where the plan says (device or dtype), or a move cannot be done.
class placement_error : public error {
public:
  using error::error;
};

/// A device (real or mock) cannot hold what is asked of it: the simulated out-of-memory.
class capacity_error : public error {
public:
  capacity_error(std::string id, const std::string& message, std::string device = {},
                 std::string stage = {}, std::int64_t needed = 0, std::int64_t available = 0)
      : error(std::move(id), message), device_(std::move(device)), stage_(std::move(stage)),
        needed_(needed), available_(available) {}
  /// The device that ran out (`mock:0`, `cuda:0`).
  [[nodiscard]] const std::string& device() const noexcept { return device_; }
  /// The stage during which it ran out (empty outside a stage).
  [[nodiscard]] const std::string& stage() const noexcept { return stage_; }
  /// Bytes the failing request needed in total on the device (already used + requested).
  [[nodiscard]] std::int64_t needed() const noexcept { return needed_; }
  /// Capacity of the device in bytes.
  [[nodiscard]] std::int64_t available() const noexcept { return available_; }

private:
  std::string device_, stage_;
  std::int64_t needed_, available_;
};

/// A checkpoint file is unreadable, malformed, or does not match the module.
class checkpoint_error : public error {
public:
  using error::error;
};

/// A configuration (policy text, device name, size, config.json) is invalid.
class config_error : public error {
public:
  using error::error;
};

} // namespace offload
