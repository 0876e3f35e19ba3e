#pragma once
/// \file
/// One device model for real devices (`cpu`, `cuda:N`) and mock devices (`mock:N`).
///
/// A `device` accounts every byte placed on it (`allocate`/`release`), copies tensors from and to the
/// host, and reports its current and peak usage. Real devices delegate the copies to LibTorch; the
/// mock device (offload/testing/mock_device.hpp) keeps tensors in host memory, charges transfers to
/// a virtual clock and raises `capacity_error` when its capacity would be exceeded. Schedules run
/// unchanged on both.
///
/// **Example**
/// \code
/// offload::device_set devices;                       // has the host ("cpu")
/// devices.add(std::make_unique<offload::cuda_device>(0));
/// offload::device& gpu = devices.get(offload::device_id::parse("cuda:0"));
/// \endcode

#include <offload/errors.hpp>
#include <offload/units.hpp>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <compare>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace offload {

/// What kind of device an id names.
enum class device_kind : std::uint8_t { cpu, cuda, mock };

/// A device name: `cpu`, `cuda:N` or `mock:N`.
struct device_id {
  device_kind kind = device_kind::cpu;
  int index = 0;

  static constexpr device_id cpu() { return {device_kind::cpu, 0}; }
  static constexpr device_id cuda(int i = 0) { return {device_kind::cuda, i}; }
  static constexpr device_id mock(int i = 0) { return {device_kind::mock, i}; }

  /// `cpu`, `cuda`, `cuda:N`, `mock`, `mock:N`. Throws config_error otherwise.
  static device_id parse(std::string_view text) {
    auto fail = [&](std::size_t pos, std::string_view what) -> device_id {
      throw config_error("offload.config.device_syntax",
                         fmt::format("invalid device '{}' at position {}: expected {}; write 'cpu', "
                                     "'cuda:0' or 'mock:0'",
                                     text, pos, what));
    };
    const auto colon = text.find(':');
    const std::string_view head = text.substr(0, colon);
    device_id id;
    if (head == "cpu") id.kind = device_kind::cpu;
    else if (head == "cuda") id.kind = device_kind::cuda;
    else if (head == "mock") id.kind = device_kind::mock;
    else return fail(0, "'cpu', 'cuda' or 'mock'");
    if (colon == std::string_view::npos) return id;
    if (id.kind == device_kind::cpu) return fail(colon, "no index after 'cpu'");
    const std::string_view num = text.substr(colon + 1);
    if (num.empty() || num.size() > 3 ||
        !std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return fail(colon + 1, "a device index (0-999)");
    id.index = std::stoi(std::string(num));
    return id;
  }

  [[nodiscard]] bool is_host() const noexcept { return kind == device_kind::cpu; }
  [[nodiscard]] bool is_mock() const noexcept { return kind == device_kind::mock; }

  /// Where tensors placed on this device physically live: mock devices keep them on the host.
  [[nodiscard]] c10::Device torch_device() const {
    switch (kind) {
      case device_kind::cuda: return {c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index)};
      default: return {c10::DeviceType::CPU};
    }
  }

  [[nodiscard]] std::string str() const {
    switch (kind) {
      case device_kind::cpu: return "cpu";
      case device_kind::cuda: return fmt::format("cuda:{}", index);
      case device_kind::mock: return fmt::format("mock:{}", index);
    }
    return "?";
  }

  friend constexpr auto operator<=>(const device_id&, const device_id&) = default;
  /// Streams the name (`mock:0`); works with any std::ostream without including <ostream>.
  template <class Os>
  friend auto operator<<(Os& os, const device_id& d) -> decltype(os << std::string()) {
    return os << d.str();
  }
};

/// The completion of an asynchronous copy, or a point on a device's compute stream.
///
/// Consumers wait on events, never on the whole device: `device::wait(e)` makes the device's
/// compute stream wait until the copy is done. A default-constructed event is complete.
struct transfer_event {
  double ready_at = 0;      ///< virtual seconds when the copy completes (mock devices)
  std::uint64_t id = 0;     ///< 0: complete (synchronous copy or compute point); else in flight
  std::shared_ptr<c10::Event> native; ///< the LibTorch event on real devices
  /// Mock devices, compute points: clock::compute_issued() when it was recorded (0: before any
  /// compute, or no compute point at all).
  std::uint64_t compute_seq = 0;
  [[nodiscard]] bool pending() const noexcept { return id != 0 || native != nullptr; }
};

/// Abstract device: accounting, copies, statistics. Non-template core (see offloadable.hpp).
class device {
public:
  virtual ~device() = default;
  [[nodiscard]] virtual device_id id() const = 0;
  /// Bytes this device may hold; nullopt = not limited by offload (the real allocator decides).
  [[nodiscard]] virtual std::optional<std::int64_t> capacity() const = 0;
  [[nodiscard]] std::int64_t used() const noexcept { return used_; }
  [[nodiscard]] std::int64_t peak() const noexcept { return peak_; }
  void reset_peak() noexcept { peak_ = used_; }
  /// Number of allocate() calls so far.
  [[nodiscard]] std::int64_t allocations() const noexcept { return allocations_; }
  /// Number of copies to or from this device so far.
  [[nodiscard]] std::int64_t transfers() const noexcept { return transfers_; }
  /// Bytes copied host -> device and device -> host so far.
  [[nodiscard]] std::int64_t bytes_in() const noexcept { return bytes_in_; }
  [[nodiscard]] std::int64_t bytes_out() const noexcept { return bytes_out_; }

  /// Accounts `bytes` for `what` (a dotted tensor path, or `workspace:<stage> (<components>)`). Throws
  /// capacity_error when the device's capacity would be exceeded; nothing is accounted then.
  void allocate(std::int64_t bytes, std::string_view what) {
    ++allocations_;
    before_allocate(bytes, what);
    if (const auto cap = capacity(); cap && used_ + bytes > *cap)
      throw capacity_error(
          "offload.capacity.out_of_memory",
          fmt::format("device {} cannot hold '{}': needs {} more, {} of {} in use ({} free); evict "
                      "a component first, run it elsewhere, or use a larger device",
                      id().str(), what, format_bytes(bytes), format_bytes(used_), format_bytes(*cap),
                      format_bytes(*cap - used_)),
          id().str(), "", used_ + bytes, *cap);
    used_ += bytes;
    peak_ = std::max(peak_, used_);
  }
  /// Returns `bytes` accounted by allocate().
  void release(std::int64_t bytes) noexcept { used_ -= bytes; }

  /// Accounts one copy of `bytes` to (`to_device`) or from this device without moving data: used
  /// by simulations whose components have sizes but no tensors. Real copies call it too.
  void account_transfer(std::int64_t bytes, std::string_view what, bool to_device, bool pinned) {
    ++transfers_;
    before_transfer(bytes, what);
    (to_device ? bytes_in_ : bytes_out_) += bytes;
    on_transfer(bytes, what, to_device, pinned);
  }
  /// Copies a host tensor onto this device. `pinned` tells whether the source is in pinned memory.
  [[nodiscard]] at::Tensor copy_from_host(const at::Tensor& host, std::string_view what, bool pinned) {
    account_transfer(static_cast<std::int64_t>(host.nbytes()), what, true, pinned);
    return do_copy_from_host(host, what, pinned);
  }
  /// Copies a tensor of this device into the existing host tensor `host` (same shape and dtype).
  void copy_to_host(const at::Tensor& on_device, at::Tensor& host, std::string_view what) {
    account_transfer(static_cast<std::int64_t>(on_device.nbytes()), what, false, false);
    do_copy_to_host(on_device, host, what);
  }
  /// Waits until every copy issued to this device has completed.
  virtual void synchronize() {}

  /// A device buffer of `bytes` raw bytes, accounted like allocate() under `what`; give it back
  /// with release(bytes). Block streaming copies weights into such buffers, reused every step.
  /// The buffer belongs to the compute stream: a CUDA caching allocator may hand out memory that
  /// kernels queued there before still use, so a copy_into_async into it must wait for a compute
  /// point (record_compute()) recorded after the last compute issued before the allocation; mock
  /// devices check it (`offload.placement.copy_races_compute`).
  [[nodiscard]] at::Tensor allocate_buffer(std::int64_t bytes, std::string_view what) {
    allocate(bytes, what);
    try {
      return do_allocate_buffer(bytes);
    } catch (...) {
      release(bytes);
      throw;
    }
  }

  /// Copies host tensor `host` into `dst` (a view of a buffer on this device, same shape and
  /// dtype) on the device's transfer stream, after `not_before` (a compute point: the previous
  /// reader of `dst` is done, and for a fresh buffer the compute issued before its allocation).
  /// Returns the copy's completion; nothing may read `dst` before wait() on it. Counted in
  /// transfers() and bytes_in().
  [[nodiscard]] transfer_event copy_into_async(const at::Tensor& host, at::Tensor& dst, std::string_view what,
                                               bool pinned, const transfer_event& not_before = {}) {
    ++transfers_;
    before_transfer(static_cast<std::int64_t>(host.nbytes()), what);
    bytes_in_ += static_cast<std::int64_t>(host.nbytes());
    return do_copy_into_async(host, dst, what, pinned, not_before);
  }
  /// Accounts an asynchronous host -> device copy of `bytes` on the transfer stream without moving
  /// data (simulations of sized components), after `not_before`; returns its completion as
  /// copy_into_async does. Counted in transfers() and bytes_in().
  [[nodiscard]] transfer_event account_transfer_async(std::int64_t bytes, std::string_view what, bool pinned,
                                                      const transfer_event& not_before = {}) {
    ++transfers_;
    before_transfer(bytes, what);
    bytes_in_ += bytes;
    return do_account_transfer_async(bytes, what, pinned, not_before);
  }
  /// Makes the compute stream wait for `e` (no host wait).
  void wait(const transfer_event& e) { if (e.pending()) do_wait(e); }
  /// A point on the compute stream: copies issued after it with `not_before` start when the work
  /// queued so far has run (the slot's previous reader is done).
  [[nodiscard]] transfer_event record_compute() { return do_record_compute(); }
  /// Declares that the compute stream is about to read data whose copy completes at `e`. Real
  /// devices trust the stream order; the mock checks that wait(e) came first.
  void note_read(const transfer_event& e, std::string_view what) { do_note_read(e, what); }

protected:
  virtual void before_allocate(std::int64_t /*bytes*/, std::string_view /*what*/) {}
  virtual void before_transfer(std::int64_t /*bytes*/, std::string_view /*what*/) {}
  virtual void on_transfer(std::int64_t /*bytes*/, std::string_view /*what*/, bool /*to_device*/,
                           bool /*pinned*/) {}
  virtual at::Tensor do_copy_from_host(const at::Tensor& host, std::string_view what, bool pinned) = 0;
  virtual void do_copy_to_host(const at::Tensor& on_device, at::Tensor& host, std::string_view what) = 0;
  virtual at::Tensor do_allocate_buffer(std::int64_t bytes) {
    return at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(id().torch_device()));
  }
  /// Default: a synchronous copy, complete on return.
  virtual transfer_event do_copy_into_async(const at::Tensor& host, at::Tensor& dst, std::string_view /*what*/,
                                            bool /*pinned*/, const transfer_event& /*not_before*/) {
    dst.copy_(host);
    return {};
  }
  /// Default: a synchronous transfer, complete when it returns.
  virtual transfer_event do_account_transfer_async(std::int64_t bytes, std::string_view what, bool pinned,
                                                   const transfer_event& /*not_before*/) {
    on_transfer(bytes, what, true, pinned);
    return {};
  }
  virtual void do_wait(const transfer_event& /*e*/) {}
  virtual transfer_event do_record_compute() { return {}; }
  virtual void do_note_read(const transfer_event& /*e*/, std::string_view /*what*/) {}

private:
  std::int64_t used_ = 0, peak_ = 0, allocations_ = 0, transfers_ = 0, bytes_in_ = 0, bytes_out_ = 0;
};

/// The host. Tensors "placed" here are the host masters themselves: no copy.
class host_device final : public device {
public:
  explicit host_device(std::optional<std::int64_t> budget = std::nullopt) : budget_(budget) {}
  [[nodiscard]] device_id id() const override { return device_id::cpu(); }
  [[nodiscard]] std::optional<std::int64_t> capacity() const override { return budget_; }

protected:
  at::Tensor do_copy_from_host(const at::Tensor& host, std::string_view, bool) override { return host; }
  void do_copy_to_host(const at::Tensor& t, at::Tensor& host, std::string_view) override {
    if (!t.is_same(host)) host.copy_(t);
  }

private:
  std::optional<std::int64_t> budget_;
};

/// A real CUDA device. Accounting tracks what offload placed (the caching allocator may hold more);
/// copies go through LibTorch (`non_blocking` from pinned host memory). A real out-of-memory from
/// LibTorch is reported as capacity_error.
class cuda_device final : public device {
public:
  explicit cuda_device(int index = 0, std::optional<std::int64_t> capacity = std::nullopt)
      : index_(index), capacity_(capacity) {}
  [[nodiscard]] device_id id() const override { return device_id::cuda(index_); }
  [[nodiscard]] std::optional<std::int64_t> capacity() const override { return capacity_; }

protected:
  at::Tensor do_copy_from_host(const at::Tensor& host, std::string_view what, bool pinned) override {
    try {
      return host.to(id().torch_device(), /*non_blocking=*/pinned);
    } catch (const c10::Error& e) {
      throw cuda_error(fmt::format("copying '{}' ({}) to {}", what, size_of(host), id().str()), e);
    }
  }
  void do_copy_to_host(const at::Tensor& t, at::Tensor& host, std::string_view what) override {
    try {
      host.copy_(t);
    } catch (const c10::Error& e) {
      throw cuda_error(fmt::format("copying '{}' ({}) from {} to the host", what, size_of(t), id().str()), e);
    }
  }
  at::Tensor do_allocate_buffer(std::int64_t bytes) override {
    try {
      return device::do_allocate_buffer(bytes);
    } catch (const c10::Error& e) {
      // allocate_buffer accounted the buffer before asking for it: what was in use before is less.
      throw cuda_error(fmt::format("allocating a buffer of {} on {} ({} accounted in use before it)",
                                  format_bytes(bytes), id().str(), format_bytes(used() - bytes)),
                       e, "plan for less of this device (its capacity) or stream through fewer slots");
    }
  }

  // Asynchronous copies on a dedicated stream from LibTorch's pool, ordered by events. Written
  // against c10's device-generic stream/event interface, so it compiles with a CPU-only LibTorch.
  transfer_event do_copy_into_async(const at::Tensor& host, at::Tensor& dst, std::string_view what, bool pinned,
                                    const transfer_event& not_before) override {
    const c10::Stream copy = copy_stream();
    try {
      c10::StreamGuard guard(copy);
      if (not_before.native) not_before.native->block(copy);
      dst.copy_(host, /*non_blocking=*/pinned);
      auto done = std::make_shared<c10::Event>(c10::DeviceType::CUDA);
      done->record(copy);
      return {0, 0, std::move(done)};
    } catch (const c10::Error& e) {
      throw cuda_error(fmt::format("asynchronous copy of '{}' ({}) to {}", what, size_of(host), id().str()), e);
    }
  }
  void do_wait(const transfer_event& e) override {
    try {
      if (e.native) e.native->block(compute_stream());
    } catch (const c10::Error& err) {
      throw cuda_error(fmt::format("making the compute stream of {} wait for a copy", id().str()), err,
                       kernel_advice);
    }
  }
  transfer_event do_record_compute() override {
    try {
      auto point = std::make_shared<c10::Event>(c10::DeviceType::CUDA);
      point->record(compute_stream());
      return {0, 0, std::move(point)};
    } catch (const c10::Error& err) {
      throw cuda_error(fmt::format("recording a point of the compute stream of {}", id().str()), err, kernel_advice);
    }
  }

private:
  static constexpr std::string_view kernel_advice =
      "a kernel queued before it may have failed (rerun with CUDA_LAUNCH_BLOCKING=1 to find it)";
  static std::string size_of(const at::Tensor& t) { return format_bytes(static_cast<std::int64_t>(t.nbytes())); }
  /// A CUDA error as an offload error: `doing` failed, LibTorch's message, and advice if any.
  [[nodiscard]] capacity_error cuda_error(const std::string& doing, const c10::Error& e,
                                          std::string_view advice = {}) const {
    return capacity_error("offload.capacity.cuda_error",
                          fmt::format("{} failed: {}{}{}", doing, e.what_without_backtrace(), advice.empty() ? "" : "; ",
                                      advice),
                          id().str(), "", used(), capacity_.value_or(0));
  }
  [[nodiscard]] const c10::impl::DeviceGuardImplInterface& impl() const {
    return *c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
  }
  [[nodiscard]] c10::Stream compute_stream() const { return impl().getStream(id().torch_device()); }
  [[nodiscard]] c10::Stream copy_stream() {
    if (!copy_stream_) copy_stream_ = impl().getStreamFromGlobalPool(id().torch_device());
    return *copy_stream_;
  }

  int index_;
  std::optional<std::int64_t> capacity_;
  std::optional<c10::Stream> copy_stream_;
};

/// A clock in seconds: wall time for real runs, virtual time when mock devices simulate transfers.
class clock {
public:
  [[nodiscard]] double now() const {
    if (virtual_) return virtual_now_;
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  /// Switches to virtual time (mock simulation); time then moves only through advance() and
  /// advance_waiting().
  void make_virtual() { virtual_ = true; }
  [[nodiscard]] bool is_virtual() const noexcept { return virtual_; }
  /// Compute runs on the compute stream for `seconds` (virtual time): counted in compute_issued().
  void advance(double seconds) {
    if (!virtual_) return;
    virtual_now_ += seconds;
    ++compute_issued_;
  }
  /// Compute was issued whose time is not simulated (a stage that ran real kernels): counted in
  /// compute_issued(), no time passes.
  void note_compute() noexcept {
    if (virtual_) ++compute_issued_;
  }
  /// Time passes while the host waits for a device (a synchronous copy, an event) and issues no
  /// compute (virtual time; what mock devices charge for their own copies and waits).
  void advance_waiting(double seconds) {
    if (virtual_) virtual_now_ += seconds;
  }
  /// How many times compute was issued (advance()) so far, in virtual time. Mock devices use it to
  /// check that a copy into fresh memory is ordered after the compute that used the memory before.
  [[nodiscard]] std::uint64_t compute_issued() const noexcept { return compute_issued_; }

private:
  bool virtual_ = false;
  double virtual_now_ = 0;
  std::uint64_t compute_issued_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

/// The devices of a run, by id. Always holds the host (`cpu`).
class device_set {
public:
  explicit device_set(std::optional<std::int64_t> host_budget = std::nullopt) {
    devices_.push_back(std::make_unique<host_device>(host_budget));
  }
  /// Adds a device (its id must be new) and returns it.
  device& add(std::unique_ptr<device> d) {
    if (find(d->id()))
      throw config_error("offload.config.duplicate_device",
                         fmt::format("device {} is already in the set; add each device once",
                                     d->id().str()));
    devices_.push_back(std::move(d));
    return *devices_.back();
  }
  template <class D, class... Args>
  D& emplace(Args&&... args) {
    return static_cast<D&>(add(std::make_unique<D>(std::forward<Args>(args)...)));
  }
  [[nodiscard]] device* find(device_id id) const {
    for (const auto& d : devices_)
      if (d->id() == id) return d.get();
    return nullptr;
  }
  [[nodiscard]] device& get(device_id id) const {
    if (auto* d = find(id)) return *d;
    std::string known;
    for (const auto& d : devices_) known += (known.empty() ? "" : ", ") + d->id().str();
    throw config_error("offload.config.unknown_device",
                       fmt::format("device {} is not in this run (known: {}); add it to the "
                                   "device_set or change the policy",
                                   id.str(), known));
  }
  [[nodiscard]] device& host() const { return *devices_.front(); }
  [[nodiscard]] std::vector<device*> all() const {
    std::vector<device*> out;
    for (const auto& d : devices_) out.push_back(d.get());
    return out;
  }
  [[nodiscard]] offload::clock& clock() noexcept { return clock_; }
  [[nodiscard]] const offload::clock& clock() const noexcept { return clock_; }

private:
  std::vector<std::unique_ptr<device>> devices_;
  offload::clock clock_;
};

} // namespace offload
