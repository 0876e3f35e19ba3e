#pragma once
/// \file
/// A mock accelerator for testing placement schedules without a GPU.
///
/// Tensors placed on a mock device live in host memory (a separate copy, so eviction semantics are
/// real), but every byte is accounted against the mock's capacity. The mock records current and peak
/// usage, charges each transfer to the run's virtual clock (bytes / bandwidth), logs every transfer,
/// and throws capacity_error — the simulated out-of-memory — when an allocation would exceed its
/// capacity. Fault injection makes the N-th allocation or the N-th transfer fail on demand.
///
/// Streams: the run's virtual clock is the compute stream. Asynchronous copies
/// (`copy_into_async`) run on a separate transfer stream: each starts when the stream is free and
/// its `not_before` point has passed, and takes bytes / bandwidth, overlapping compute when its
/// source is pinned (from pageable memory the host thread waits for it, as on a GPU). `wait(e)`
/// moves the compute clock to the copy's end. Reading data before waiting on its copy
/// (`note_read`) throws `offload.placement.read_before_transfer`, so a schedule that forgets an
/// event fails in a test instead of computing on half-copied weights on a GPU. A copy into a
/// buffer from allocate_buffer() that is not ordered after the compute issued before the allocation
/// (its `not_before` is not a compute point recorded since then) throws
/// `offload.placement.copy_races_compute`: on a GPU the caching allocator may have handed out memory
/// that kernels still queued on the compute stream read, and the transfer stream would overwrite it.
/// A buffer freed while a copy into it is in flight (not waited on) throws
/// `offload.placement.freed_under_copy` at the mock's next buffer allocation or copy: on a
/// GPU the memory would go back to the compute stream while the transfer stream still writes it.
///
/// **Example**
/// \code
/// offload::device_set devices;
/// auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 11.49 * offload::GiB});
/// gpu.fail_allocation_at(3);   // the third allocation from now throws capacity_error
/// \endcode

#include <offload/device.hpp>

#include <c10/core/StorageImpl.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace offload::testing {

/// Capacity and bandwidths of a mock device.
struct mock_options {
  std::int64_t capacity = 80 * GiB;
  double h2d_bytes_per_second = 25e9;       ///< host -> device from pinned memory
  double h2d_pageable_bytes_per_second = 0; ///< from pageable memory; 0 = same as pinned
  double d2h_bytes_per_second = 25e9;       ///< device -> host
};

/// One logged copy.
struct transfer_record {
  std::string what;        ///< dotted tensor path
  device_id from, to;
  std::int64_t bytes = 0;
  double start = 0, end = 0; ///< virtual seconds
  bool async = false;        ///< on the transfer stream (overlaps compute), not blocking
};

class mock_device final : public device {
public:
  mock_device(int index, mock_options options, offload::clock& clk)
      : index_(index), options_(options), clock_(&clk) {}

  [[nodiscard]] device_id id() const override { return device_id::mock(index_); }
  [[nodiscard]] std::optional<std::int64_t> capacity() const override { return options_.capacity; }
  [[nodiscard]] const mock_options& options() const noexcept { return options_; }
  [[nodiscard]] const std::vector<transfer_record>& transfer_log() const noexcept { return log_; }
  void clear_transfer_log() { log_.clear(); }

  /// The n-th allocation from now (1 = the next one) throws capacity_error. 0 disarms.
  void fail_allocation_at(std::int64_t n) { fail_alloc_ = n; }
  /// The n-th transfer from now (1 = the next one) throws capacity_error. 0 disarms.
  void fail_transfer_at(std::int64_t n) { fail_transfer_ = n; }
  /// The n-th compute point recorded from now (device::record_compute(); 1 = the next one) throws
  /// capacity_error, as a CUDA device in an error state does. 0 disarms.
  void fail_record_compute_at(std::int64_t n) { fail_record_ = n; }
  /// Compute points recorded so far (device::record_compute(), failed ones included).
  [[nodiscard]] std::int64_t compute_points() const noexcept { return compute_points_; }

protected:
  void before_allocate(std::int64_t bytes, std::string_view what) override {
    if (fail_alloc_ > 0 && --fail_alloc_ == 0)
      throw capacity_error("offload.capacity.injected_fault",
                           fmt::format("injected allocation failure on {} while allocating '{}' ({})",
                                       id().str(), what, format_bytes(bytes)),
                           id().str(), "", used() + bytes, options_.capacity);
  }
  void before_transfer(std::int64_t bytes, std::string_view what) override {
    if (fail_transfer_ > 0 && --fail_transfer_ == 0)
      throw capacity_error("offload.capacity.injected_fault",
                           fmt::format("injected transfer failure on {} while copying '{}' ({})",
                                       id().str(), what, format_bytes(bytes)),
                           id().str(), "", used(), options_.capacity);
  }
  void on_transfer(std::int64_t bytes, std::string_view what, bool to_device, bool pinned) override {
    double bw = options_.d2h_bytes_per_second;
    if (to_device)
      bw = (!pinned && options_.h2d_pageable_bytes_per_second > 0) ? options_.h2d_pageable_bytes_per_second
                                                                   : options_.h2d_bytes_per_second;
    const double start = clock_->now();
    clock_->advance_waiting(bw > 0 ? static_cast<double>(bytes) / bw : 0.0);
    log_.push_back({std::string(what), to_device ? device_id::cpu() : id(),
                    to_device ? id() : device_id::cpu(), bytes, start, clock_->now()});
  }
  at::Tensor do_copy_from_host(const at::Tensor& host, std::string_view, bool) override {
    return host.clone(); // a distinct allocation in host memory standing for device memory
  }
  at::Tensor do_allocate_buffer(std::int64_t bytes) override {
    check_no_buffer_freed_under_a_copy();
    at::Tensor buffer = at::empty({bytes}, at::TensorOptions().dtype(at::kByte)); // host memory standing for device
    if (buffers_.size() >= 2 * live_after_prune_ + 64) {
      std::erase_if(buffers_, [](const auto& b) { return b.second.storage.expired(); });
      live_after_prune_ = buffers_.size();
    }
    buffers_.insert_or_assign(buffer.storage().unsafeGetStorageImpl(),
                              buffer_record{buffer.storage().getWeakStorageImpl(), clock_->compute_issued()});
    return buffer;
  }
  transfer_event do_copy_into_async(const at::Tensor& host, at::Tensor& dst, std::string_view what, bool pinned,
                                    const transfer_event& not_before) override {
    check_no_buffer_freed_under_a_copy();
    if (const auto it = buffers_.find(dst.storage().unsafeGetStorageImpl());
        it != buffers_.end() && !it->second.storage.expired() && not_before.compute_seq < it->second.compute_seq)
      throw placement_error(
          "offload.placement.copy_races_compute",
          fmt::format("'{}' is copied on {}'s transfer stream into a buffer allocated after {} compute steps, "
                      "ordered after {}: on a GPU the caching allocator may hand out memory that kernels "
                      "queued on the compute stream still use; pass a compute point recorded after the "
                      "allocation (device::record_compute()) as not_before",
                      what, id().str(), it->second.compute_seq,
                      not_before.compute_seq == 0 ? std::string("no compute point")
                                                  : fmt::format("a compute point after {} steps",
                                                                not_before.compute_seq)));
    dst.copy_(host);
    transfer_event e = do_account_transfer_async(static_cast<std::int64_t>(host.nbytes()), what, pinned, not_before);
    writes_.push_back({dst.storage().getWeakStorageImpl(), e.id, std::string(what)});
    return e;
  }
  transfer_event do_account_transfer_async(std::int64_t bytes, std::string_view what, bool pinned,
                                           const transfer_event& not_before) override {
    const double bw = (!pinned && options_.h2d_pageable_bytes_per_second > 0) ? options_.h2d_pageable_bytes_per_second
                                                                              : options_.h2d_bytes_per_second;
    const double start = std::max({clock_->now(), stream_free_at_, not_before.ready_at});
    stream_free_at_ = start + (bw > 0 ? static_cast<double>(bytes) / bw : 0.0);
    log_.push_back({std::string(what), device_id::cpu(), id(), bytes, start, stream_free_at_, true});
    // From pageable memory the copy is synchronous for the host thread that queues the compute
    // (cuda_device copies it with non_blocking=false): nothing new computes until it is done.
    if (!pinned && stream_free_at_ > clock_->now()) clock_->advance_waiting(stream_free_at_ - clock_->now());
    const std::uint64_t event = next_event_++;
    in_flight_.push_back(event);
    return {stream_free_at_, event, nullptr};
  }
  void do_wait(const transfer_event& e) override {
    if (e.ready_at > clock_->now()) clock_->advance_waiting(e.ready_at - clock_->now());
    // One transfer stream: a copy completes after every copy issued before it.
    std::erase_if(in_flight_, [&](std::uint64_t id) { return id <= e.id; });
    std::erase_if(writes_, [&](const auto& w) { return w.event <= e.id; });
  }
  transfer_event do_record_compute() override {
    ++compute_points_;
    if (fail_record_ > 0 && --fail_record_ == 0)
      throw capacity_error("offload.capacity.injected_fault",
                           fmt::format("injected failure on {} while recording a compute point", id().str()),
                           id().str(), "", used(), options_.capacity);
    return {clock_->now(), 0, nullptr, clock_->compute_issued()};
  }
  void do_note_read(const transfer_event& e, std::string_view what) override {
    if (e.id != 0 && std::find(in_flight_.begin(), in_flight_.end(), e.id) != in_flight_.end())
      throw placement_error("offload.placement.read_before_transfer",
                            fmt::format("'{}' is read on {} at {:.6f} s before its copy (event {}, done at "
                                        "{:.6f} s) was waited on; call device::wait(event) before "
                                        "reading what copy_into_async wrote",
                                        what, id().str(), clock_->now(), e.id, e.ready_at));
  }

public:
  /// When the transfer stream is next free (virtual seconds).
  [[nodiscard]] double transfer_stream_free_at() const noexcept { return stream_free_at_; }
  /// Asynchronous copies not yet waited on.
  [[nodiscard]] std::size_t copies_in_flight() const noexcept { return in_flight_.size(); }

protected:
  void do_copy_to_host(const at::Tensor& t, at::Tensor& host, std::string_view) override { host.copy_(t); }

private:
  int index_;
  mock_options options_;
  offload::clock* clock_;
  std::vector<transfer_record> log_;
  std::int64_t fail_alloc_ = 0, fail_transfer_ = 0, fail_record_ = 0, compute_points_ = 0;
  double stream_free_at_ = 0;
  std::uint64_t next_event_ = 1;
  std::vector<std::uint64_t> in_flight_;
  /// Buffers from allocate_buffer() and the compute steps issued before each was allocated. The
  /// weak reference keeps a freed storage's address from being reused while its entry exists;
  /// expired entries are dropped when the map has doubled since the last pruning.
  struct buffer_record {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    std::uint64_t compute_seq = 0;
  };
  std::map<const c10::StorageImpl*, buffer_record> buffers_;
  std::size_t live_after_prune_ = 0;
  /// Copies into buffers not yet waited on: the buffer, the copy's event, what it copies.
  struct write_record {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    std::uint64_t event = 0;
    std::string what;
  };
  std::vector<write_record> writes_;

  void check_no_buffer_freed_under_a_copy() {
    for (auto it = writes_.begin(); it != writes_.end(); ++it) {
      if (!it->storage.expired()) continue;
      const write_record w = *it;
      writes_.erase(it); // reported once
      throw placement_error("offload.placement.freed_under_copy",
                            fmt::format("a buffer on {} was freed while the copy of '{}' into it (event {}) "
                                        "was never waited on: on a GPU its memory would go back to the "
                                        "compute stream while the transfer stream may still write it; "
                                        "device::wait(event) before dropping the buffer",
                                        id().str(), w.what, w.event));
    }
  }
};

/// Adds `mock:<index>` to `devices`, switching the run's clock to virtual time.
inline mock_device& add_mock(device_set& devices, int index, mock_options options = {}) {
  devices.clock().make_virtual();
  return devices.emplace<mock_device>(index, options, devices.clock());
}

} // namespace offload::testing
