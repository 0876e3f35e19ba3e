#pragma once
/// \file
/// A component that has a size but no tensors: simulates real model sizes (a 10.58 GiB T5) on mock
/// devices without allocating them. Moves are accounted and charged to the virtual clock exactly as
/// a real component's would be (one allocation and one transfer per move).

#include <offload/component.hpp>
#include <offload/device.hpp>
#include <offload/errors.hpp>

#include <fmt/format.h>

namespace offload::testing {

class sized_component final : public component {
public:
  sized_component(std::string name, std::int64_t bytes, bool pinned = false)
      : name_(std::move(name)), bytes_(bytes), pinned_(pinned) {}

  [[nodiscard]] const std::string& name() const override { return name_; }
  [[nodiscard]] std::int64_t bytes() const override { return bytes_; }
  [[nodiscard]] device_id location() const override { return where_ ? where_->id() : device_id::cpu(); }

  void place_on(device& target) override {
    if (where_ == &target) return;
    if (where_) {
      where_->release(bytes_);
      where_ = nullptr;
    }
    if (target.id().is_host()) return;
    target.allocate(bytes_, name_);
    try {
      target.account_transfer(bytes_, name_, /*to_device=*/true, pinned_);
    } catch (...) {
      target.release(bytes_);
      throw;
    }
    where_ = &target;
  }

  void audit(device_id expected, const stage_context& where) const override {
    if (location() != expected)
      throw placement_error("offload.placement.component_mismatch",
                            fmt::format("component '{}' expected on {}, found on {} (stage '{}', "
                                        "policy '{}')",
                                        name_, expected.str(), location().str(), where.stage, where.policy));
  }

  void use_pinned_memory(bool pinned) override { pinned_ = pinned; }
  /// Sized as the plan stores it already (simulate() passes stored sizes): nothing to convert.
  void set_storage(storage_dtype) override {}
  /// Tiling changes workspace (the stage list's business), not the component's size.
  void set_tiling(tile_options) override {}

private:
  std::string name_;
  std::int64_t bytes_;
  bool pinned_;
  device* where_ = nullptr;
};

} // namespace offload::testing
