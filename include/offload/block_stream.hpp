#pragma once
/// \file
/// Block streaming: a component's block list (the DiT's `blocks`) runs on a device that holds only
/// K of its blocks at a time, in K fixed-size device slots allocated once and reused every step.
/// While block i computes, blocks i+1..i+D are copied into free slots on the device's transfer
/// stream; the compute stream waits on each block's copy event before reading it, and a slot is
/// overwritten only after the compute that read it has run (a fence recorded at release).
///
/// **CFG-aware reuse**: a model that passes every guidance branch through block i between
/// `acquire(i)` and `release(i)` (block-major order) moves each block once per denoising step,
/// not once per branch. Outputs are bit-identical to the resident run: the same kernels run on
/// the same values; only where the weights live between uses changes.
///
/// **Example**
/// \code
/// // registry.set_blocks("blocks", 30); registry.set_streaming({.slots = 2, .prefetch = 1});
/// // registry.place_on(gpu);            // everything but the blocks, plus 2 slots
/// for (int i = 0; i < 30; ++i) {
///   offload::block_use use(stream, i);  // block i ready on the compute stream
///   for (auto& h : branches) h = blocks[i](h);
/// }                                     // released: its slot may be refilled
/// \endcode

#include <offload/detail/align.hpp>
#include <offload/device.hpp>
#include <offload/errors.hpp>
#include <offload/placement_policy.hpp>
#include <offload/stage.hpp>

#include <ATen/core/Tensor.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace offload {

namespace detail {

/// Which block goes into which slot: the decisions of block streaming without tensors, shared by
/// the runtime (block_stream) and the scheduler (which counts the bytes a stage streams).
///
/// Blocks are visited in ascending order, pass after pass. A block missing at acquire() is
/// loaded first, then up to `prefetch` following blocks (no wrap into the next pass). A slot to
/// fill is taken from the slots not in use, preferring an empty one, then the one whose block is
/// needed again latest (cyclic distance), never one holding a block of the current window.
class slot_schedule {
public:
  struct load {
    int slot = 0;
    int block = 0;
  };

  slot_schedule(int blocks, int slots, int prefetch)
      : n_(blocks), prefetch_(prefetch), content_(static_cast<std::size_t>(std::min(slots, blocks)), -1),
        held_(content_.size(), false) {}

  [[nodiscard]] int slots() const noexcept { return static_cast<int>(content_.size()); }
  [[nodiscard]] int blocks() const noexcept { return n_; }
  /// The slot holding `block`, or -1.
  [[nodiscard]] int slot_of(int block) const {
    for (std::size_t s = 0; s < content_.size(); ++s)
      if (content_[s] == block) return static_cast<int>(s);
    return -1;
  }
  [[nodiscard]] bool held(int slot) const { return held_[static_cast<std::size_t>(slot)]; }
  [[nodiscard]] int block_in(int slot) const { return content_[static_cast<std::size_t>(slot)]; }

  /// Marks `block` in use and returns the loads to issue, the block itself first when missing.
  /// Throws placement_error when every slot is in use.
  std::vector<load> acquire(int block, std::string_view component) {
    std::vector<load> loads;
    int s = slot_of(block);
    if (s < 0) {
      s = victim(block);
      if (s < 0)
        throw placement_error(
            "offload.placement.stream_slots",
            fmt::format("component '{}': block {} is needed while all {} slots hold blocks in use; "
                        "release blocks before acquiring more, or stream with more slots (stream=K)",
                        component, block, slots()));
      content_[static_cast<std::size_t>(s)] = block;
      loads.push_back({s, block});
    }
    held_[static_cast<std::size_t>(s)] = true;
    for (int j = block + 1; j <= std::min(block + prefetch_, n_ - 1); ++j) {
      if (slot_of(j) >= 0) continue;
      const int v = victim(block);
      if (v < 0) break;
      content_[static_cast<std::size_t>(v)] = j;
      loads.push_back({v, j});
    }
    return loads;
  }

  void release(int block) {
    if (const int s = slot_of(block); s >= 0) held_[static_cast<std::size_t>(s)] = false;
  }
  /// Forgets what slot `s` holds (its copy failed).
  void forget(int s) {
    content_[static_cast<std::size_t>(s)] = -1;
    held_[static_cast<std::size_t>(s)] = false;
  }
  /// Forgets every slot's content (the slots were freed).
  void clear() {
    std::fill(content_.begin(), content_.end(), -1);
    std::fill(held_.begin(), held_.end(), false);
  }

  /// Bytes copied by `passes` passes over every block (acquire and release in order), continuing
  /// from the current contents.
  std::int64_t run_passes(int passes, const block_layout& layout) {
    std::int64_t bytes = 0;
    run_passes_timed(passes, layout, 1.0, std::vector<double>(static_cast<std::size_t>(n_), 0.0), true, bytes);
    return bytes;
  }

  /// run_passes with time: the seconds `passes` passes take when block i computes `compute[i]`
  /// seconds and the copies run as block streaming runs them, on one transfer stream at
  /// `bytes_per_second`. A copy is issued at the acquire of the block that needs or prefetches it
  /// and starts when it is issued, the stream is free and its slot's previous block has computed;
  /// a block computes once its copy is done; from pageable memory (`pinned` false) the host waits
  /// for each copy, so nothing overlaps. Blocks held before the first pass are ready. `bytes` gets
  /// the bytes copied.
  double run_passes_timed(int passes, const block_layout& layout, double bytes_per_second,
                          const std::vector<double>& compute, bool pinned, std::int64_t& bytes) {
    double now = 0, stream_free = 0;
    std::vector<double> slot_free(content_.size(), 0.0), ready(static_cast<std::size_t>(n_), 0.0);
    bytes = 0;
    for (int p = 0; p < passes; ++p)
      for (int i = 0; i < n_; ++i) {
        for (const auto& l : acquire(i, "")) {
          const auto b = layout.block_bytes[static_cast<std::size_t>(l.block)];
          bytes += b;
          const double start = std::max({now, stream_free, slot_free[static_cast<std::size_t>(l.slot)]});
          stream_free = start + static_cast<double>(b) / bytes_per_second;
          ready[static_cast<std::size_t>(l.block)] = stream_free;
          if (!pinned) now = stream_free;
        }
        now = std::max(now, ready[static_cast<std::size_t>(i)]) + compute[static_cast<std::size_t>(i)];
        slot_free[static_cast<std::size_t>(slot_of(i))] = now;
        release(i);
      }
    return now;
  }

private:
  /// A slot to fill while `current` computes, or -1.
  [[nodiscard]] int victim(int current) const {
    int best = -1;
    long best_distance = -1;
    for (std::size_t s = 0; s < content_.size(); ++s) {
      if (held_[s]) continue;
      const int b = content_[s];
      if (b < 0) return static_cast<int>(s);
      const long distance = (b - current + n_) % n_;
      if (distance <= prefetch_) continue; // part of the current window
      if (distance > best_distance) best_distance = distance, best = static_cast<int>(s);
    }
    return best;
  }

  int n_, prefetch_;
  std::vector<int> content_;
  std::vector<bool> held_;
};

} // namespace detail

/// The runtime of block streaming for one component. Owned by its tensor_registry; models reach it
/// through `block_use`.
class block_stream {
public:
  /// One tensor of a block: its dotted path, its host master, and how to point the module at a
  /// tensor (the master between uses, a view into a slot while in use).
  struct tensor_ref {
    std::string path; ///< dotted; qualified with the component's name by the constructor
    std::function<const at::Tensor&()> master;
    std::function<void(const at::Tensor&)> assign;
  };

  /// `blocks[i]` lists block i's tensors with paths relative to the component; they are
  /// qualified here once (`dit.blocks.3.ffn.0.weight`), not on every copy.
  block_stream(std::string component, std::vector<std::vector<tensor_ref>> blocks)
      : component_(std::move(component)), blocks_(std::move(blocks)) {
    for (auto& b : blocks_)
      for (auto& r : b) r.path = component_ + "." + r.path;
  }
  block_stream(const block_stream&) = delete;
  block_stream& operator=(const block_stream&) = delete;

  [[nodiscard]] int size() const noexcept { return static_cast<int>(blocks_.size()); }

  /// Sizes of the blocks and of one slot (each tensor aligned to 256 bytes).
  [[nodiscard]] block_layout layout() const {
    return layout([](std::string_view, const at::Tensor& master) { return static_cast<std::int64_t>(master.nbytes()); });
  }
  /// The same with each tensor's bytes given by `size(qualified path, master)` (the layout under
  /// another storage dtype).
  [[nodiscard]] block_layout layout(const std::function<std::int64_t(std::string_view, const at::Tensor&)>& size) const {
    block_layout l;
    for (const auto& b : blocks_) {
      std::int64_t bytes = 0, slot = 0;
      for (const auto& t : b) {
        const auto n = size(t.path, t.master());
        bytes += n;
        slot += detail::align_up(n);
      }
      l.block_bytes.push_back(bytes);
      l.slot_bytes = std::max(l.slot_bytes, slot);
    }
    return l;
  }

  /// Slots and prefetch depth; only while detached.
  void configure(stream_options options) {
    if (device_)
      throw placement_error("offload.placement.not_home",
                            fmt::format("cannot change the streaming of '{}' while it is on {}; evict it first",
                                        component_, device_->id().str()));
    options_ = options;
  }
  [[nodiscard]] const stream_options& options() const noexcept { return options_; }
  [[nodiscard]] bool enabled() const noexcept { return options_.enabled(); }
  [[nodiscard]] bool attached() const noexcept { return device_ != nullptr; }

  /// Allocates the slots on `d` (K x slot bytes, accounted as `<component>.blocks[slot s]`).
  /// Transactional: on failure nothing stays allocated.
  void attach(device& d, bool pinned) {
    const block_layout l = layout();
    const int k = std::min(options_.slots, size());
    std::vector<slot> slots;
    transfer_event allocated;
    try {
      for (int s = 0; s < k; ++s) {
        slots.push_back({d.allocate_buffer(l.slot_bytes, fmt::format("{}.blocks[slot {}]", component_, s)), {}, {}});
      }
      // The slots belong to the compute stream, which may still read their memory's previous
      // contents (a caching allocator reuses freed memory at once): their first fills wait for the
      // compute issued so far, as refills wait for the compute that read the block before.
      try {
        allocated = d.record_compute();
      } catch (const capacity_error& e) {
        throw capacity_error(e.id(),
                             fmt::format("placing the block slots '{}.blocks[slot 0..{}]': {}", component_, k - 1,
                                         e.what() + e.id().size() + 2),
                             e.device(), e.stage(), e.needed(), e.available());
      }
    } catch (...) {
      for (std::size_t s = 0; s < slots.size(); ++s) d.release(l.slot_bytes);
      throw;
    }
    for (auto& s : slots) s.free_after = allocated;
    slots_ = std::move(slots);
    slot_bytes_ = l.slot_bytes;
    schedule_ = detail::slot_schedule(size(), k, options_.prefetch);
    device_ = &d;
    pinned_ = pinned;
  }

  /// Waits for copies in flight, points every block back at its master and frees the slots.
  void detach() noexcept {
    if (!device_) return;
    for (auto& s : slots_)
      try {
        device_->wait(s.ready);
      } catch (...) {
      }
    for (int b = 0; b < size(); ++b) point_at_masters(b);
    for (std::size_t s = 0; s < slots_.size(); ++s) device_->release(slot_bytes_);
    slots_.clear();
    schedule_.clear();
    device_ = nullptr;
    lost_.clear();
  }

  /// Block `i` is on the device, ready for the compute stream, until release(i). Issues its copy
  /// if missing and prefetches the next blocks. A no-op when the component is not streamed.
  void acquire(int i) {
    if (!device_) return;
    check_index(i);
    if (!lost_.empty())
      throw placement_error("offload.placement.stream_lost",
                            fmt::format("block {} of '{}' cannot be brought to {}: {}; evict '{}' (it frees the "
                                        "slots) and place it again",
                                        i, component_, device_->id().str(), lost_, component_));
    const auto loads = schedule_.acquire(i, component_);
    std::size_t filled = 0;
    try {
      for (; filled < loads.size(); ++filled) fill(loads[filled].slot, loads[filled].block);
    } catch (...) {
      // The failed load and the ones not issued hold nothing usable: forget them, so their
      // blocks are copied again next time.
      for (std::size_t l = filled; l < loads.size(); ++l) {
        auto& sl = slots_[static_cast<std::size_t>(loads[l].slot)];
        sl.views.clear();
        sl.ready = {};
        schedule_.forget(loads[l].slot);
      }
      schedule_.release(i);
      throw;
    }
    auto& s = slots_[static_cast<std::size_t>(schedule_.slot_of(i))];
    device_->wait(s.ready);
    const auto& views = s.views;
    auto& refs = blocks_[static_cast<std::size_t>(i)];
    for (std::size_t t = 0; t < refs.size(); ++t) {
      device_->note_read(s.ready, refs[t].path);
      refs[t].assign(views[t]);
    }
  }

  /// Block `i` is no longer read: its tensors point back at the host masters and its slot may be
  /// refilled once the compute queued so far has run.
  void release(int i) {
    if (!device_) return;
    check_index(i);
    const int s = schedule_.slot_of(i);
    if (s < 0 || !schedule_.held(s)) return;
    point_at_masters(i);
    try {
      slots_[static_cast<std::size_t>(s)].free_after = device_->record_compute();
    } catch (const capacity_error& e) {
      // A device in an error state records no compute point: nobody knows when the slot's last
      // reader finishes, so no copy may refill it.
      lose(i, e.what());
      throw capacity_error(e.id(),
                           fmt::format("releasing block {} of '{}' ('{}' ...): {}", i, component_, first_path(i),
                                       e.what() + e.id().size() + 2),
                           e.device(), e.stage(), e.needed(), e.available());
    } catch (const std::exception& e) {
      lose(i, e.what());
      throw;
    }
    schedule_.release(i);
  }

  /// release(i) while an exception unwinds the compute that used block `i`: never throws (a
  /// failed release is only remembered, see lost()).
  void release_unwinding(int i) noexcept {
    try {
      release(i);
    } catch (...) {
      if (lost_.empty()) lose(i, "unknown error");
    }
  }

  /// Why the stream refuses acquire() until detach() (empty: it does not). A release that failed
  /// leaves its slot forgotten and every later acquire throws `offload.placement.stream_lost`
  /// until detach() frees the slots (evicting the component does).
  [[nodiscard]] const std::string& lost() const noexcept { return lost_; }

  /// Whether block `i` is in use (between acquire and release).
  [[nodiscard]] bool in_use(int i) const {
    const int s = device_ ? schedule_.slot_of(i) : -1;
    return s >= 0 && schedule_.held(s);
  }

  /// Bytes copied into slots since construction, and the number of block loads.
  [[nodiscard]] std::int64_t bytes_streamed() const noexcept { return bytes_streamed_; }
  [[nodiscard]] std::int64_t loads() const noexcept { return loads_; }

  /// The tensor block `i`'s tensor `t` should be now: a slot view while in use, else the master.
  [[nodiscard]] const at::Tensor& expected(int block, std::size_t t) const {
    const auto& refs = blocks_[static_cast<std::size_t>(block)];
    if (in_use(block)) return slots_[static_cast<std::size_t>(schedule_.slot_of(block))].views[t];
    return refs[t].master();
  }

private:
  struct slot {
    at::Tensor buffer;
    transfer_event ready, free_after;
    std::vector<at::Tensor> views; ///< the tensors of the block it holds, in order
  };

  void check_index(int i) const {
    if (i < 0 || i >= size())
      throw placement_error("offload.placement.unknown_block",
                            fmt::format("component '{}' has blocks 0..{}, found block {}", component_,
                                        size() - 1, i));
  }

  void lose(int i, std::string_view why) noexcept {
    try {
      if (const int s = schedule_.slot_of(i); s >= 0) {
        point_at_masters(i);
        slots_[static_cast<std::size_t>(s)].views.clear();
        schedule_.forget(s);
      }
      lost_ = fmt::format("releasing block {} failed ({}), so the last reader of its slot is unknown", i,
                          why.substr(0, why.find('\n')));
    } catch (...) {
      lost_ = "releasing a block failed";
    }
  }

  /// The path of block `b`'s first tensor (`dit.blocks.3.norm3.weight`), for messages.
  [[nodiscard]] std::string first_path(int b) const {
    const auto& refs = blocks_[static_cast<std::size_t>(b)];
    return refs.empty() ? fmt::format("{}.<block {}>", component_, b) : refs.front().path;
  }

  void point_at_masters(int b) {
    for (auto& r : blocks_[static_cast<std::size_t>(b)]) r.assign(r.master());
  }

  /// Copies block `b` into slot `s` on the transfer stream, after the slot's last reader.
  void fill(int s, int b) {
    auto& sl = slots_[static_cast<std::size_t>(s)];
    auto& refs = blocks_[static_cast<std::size_t>(b)];
    std::vector<at::Tensor> views;
    views.reserve(refs.size());
    std::int64_t offset = 0;
    transfer_event last = sl.free_after;
    try {
      for (auto& r : refs) {
        const at::Tensor& m = r.master();
        const auto n = static_cast<std::int64_t>(m.nbytes());
        at::Tensor view = sl.buffer.narrow(0, offset, n).view(m.scalar_type()).view(m.sizes());
        offset += detail::align_up(n);
        last = device_->copy_into_async(m, view, r.path, pinned_, sl.free_after);
        views.push_back(std::move(view));
        bytes_streamed_ += n;
      }
    } catch (...) {
      // Let the copies already issued finish before the caller (acquire) forgets the slot.
      try {
        device_->wait(last);
      } catch (...) {
      }
      throw;
    }
    sl.views = std::move(views);
    sl.ready = last;
    ++loads_;
  }

  std::string component_;
  std::vector<std::vector<tensor_ref>> blocks_;
  stream_options options_{};
  device* device_ = nullptr;
  bool pinned_ = false;
  std::vector<slot> slots_;
  std::int64_t slot_bytes_ = 0;
  detail::slot_schedule schedule_{0, 0, 0};
  std::int64_t bytes_streamed_ = 0, loads_ = 0;
  std::string lost_; ///< why acquire() refuses until detach(); see release_unwinding()
};

/// RAII use of block `i` of a stream (null: nothing to do, the component is resident).
/// Leaving the scope normally releases the block and reports a failure to do so (the destructor
/// may throw); leaving it through an exception never throws a second one (release_unwinding).
class block_use {
public:
  block_use(block_stream* stream, int i)
      : stream_(stream && stream->attached() ? stream : nullptr), i_(i), exceptions_(std::uncaught_exceptions()) {
    if (stream_) stream_->acquire(i_);
  }
  block_use(const block_use&) = delete;
  block_use& operator=(const block_use&) = delete;
  // Throws only when not unwinding: a failed release surfaces where it happened, never as a second
  // exception (see the class comment).
  ~block_use() noexcept(false) { // NOLINT(bugprone-exception-escape)
    if (!stream_) return;
    if (std::uncaught_exceptions() > exceptions_) stream_->release_unwinding(i_);
    else stream_->release(i_);
  }

private:
  block_stream* stream_;
  int i_;
  int exceptions_; ///< std::uncaught_exceptions() at construction: more at destruction means unwinding
};

} // namespace offload
