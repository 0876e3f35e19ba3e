#pragma once
/// \file
/// A component that has a size but no tensors: simulates real model sizes (a 10.58 GiB T5) on mock
/// devices without allocating them. Moves are accounted and charged to the virtual clock exactly as
/// a real component's would be (one allocation and one transfer per move).

#include <offload/component.hpp>
#include <offload/device.hpp>
#include <offload/errors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <optional>

namespace offload::testing {

class sized_component final : public component {
public:
  sized_component(std::string name, std::int64_t bytes, bool pinned = false,
                  std::optional<block_layout> blocks = std::nullopt)
      : name_(std::move(name)), bytes_(bytes), pinned_(pinned), blocks_(std::move(blocks)) {}

  /// Its block list, when given: it can then be streamed. Placed streamed, it occupies all but
  /// the blocks plus the slots and copies all but the blocks (the slots' block copies are the
  /// simulation's business: testing::simulate charges the plan's streaming time).
  [[nodiscard]] std::optional<block_layout> blocks() const override { return blocks_; }
  void set_streaming(stream_options options) override {
    if (!blocks_) component::set_streaming(options); // throws when enabled
    stream_ = options;
  }

  [[nodiscard]] const std::string& name() const override { return name_; }
  [[nodiscard]] std::int64_t bytes() const override { return bytes_; }
  [[nodiscard]] device_id location() const override { return where_ ? where_->id() : device_id::cpu(); }

  void place_on(device& target) override { place(target, false); }
  /// The copy on the device's transfer stream (a mock charges it there, overlapping compute).
  void prefetch_onto(device& target) override { place(target, true); }
  void finish_placement() override {
    if (where_ && pending_.pending()) where_->wait(pending_);
    pending_ = {};
  }

  void audit(device_id expected, const stage_context& where) const override {
    if (where_ && pending_.pending()) where_->note_read(pending_, name_); // before finish_placement(): a mock throws
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
  void place(device& target, bool async) {
    if (where_ == &target) return;
    if (where_) {
      finish_placement();
      where_->release(placed_);
      where_ = nullptr;
    }
    if (target.id().is_host()) return;
    const bool streamed = blocks_ && stream_.enabled();
    const std::int64_t rest = streamed ? blocks_->streamed_rest(bytes_) : bytes_;
    placed_ = streamed ? rest + std::min<std::int64_t>(stream_.slots, blocks_->count()) * blocks_->slot_bytes : bytes_;
    target.allocate(placed_, name_);
    try {
      if (async) pending_ = target.account_transfer_async(rest, name_, pinned_, target.record_compute());
      else target.account_transfer(rest, name_, /*to_device=*/true, pinned_);
    } catch (...) {
      target.release(placed_);
      throw;
    }
    where_ = &target;
  }

  std::string name_;
  std::int64_t bytes_;
  bool pinned_;
  std::optional<block_layout> blocks_;
  stream_options stream_{};
  std::int64_t placed_ = 0; ///< bytes allocated on the device while placed
  device* where_ = nullptr;
  transfer_event pending_; ///< the prefetch's copy until finish_placement()
};

} // namespace offload::testing
