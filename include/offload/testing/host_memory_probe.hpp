#pragma once
/// \file
/// Measures the host memory LibTorch allocates on the calling thread while a probe is alive: live
/// bytes, their peak and the number of allocations, through c10's memory-reporting hook (the one
/// the profiler's memory view uses). It turns "this lowers the peak" into a number a CPU test can
/// assert, such as the activation peak of one DiT forward with and without chunking.
///
/// What it sees: every CPU tensor allocation and free made on this thread through LibTorch's CPU
/// allocator. What it does not: allocations on intra-op worker threads (scratch inside a kernel),
/// memory LibTorch does not allocate (the probe's own bookkeeping, std containers), and frees of
/// tensors allocated before the probe started (they are ignored, so live bytes never go negative).
/// Probes nest: the innermost one counts, the outer ones see nothing until it ends.
///
/// **Example**
/// \code
/// offload::testing::host_memory_probe probe;
/// auto y = model->forward(x);
/// fmt::print("peak {} over {} allocations\n", offload::format_bytes(probe.peak()), probe.allocations());
/// \endcode

#include <offload/compat.hpp>

#include <c10/util/ThreadLocalDebugInfo.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace offload::testing {

class host_memory_probe {
public:
  host_memory_probe() : reporter_(std::make_shared<reporter>()), guard_(c10::DebugInfoKind::PROFILER_STATE, reporter_) {}
  host_memory_probe(const host_memory_probe&) = delete;
  host_memory_probe& operator=(const host_memory_probe&) = delete;

  /// Bytes allocated under the probe and not yet freed.
  [[nodiscard]] std::int64_t current() const {
    std::lock_guard lock(reporter_->mutex);
    return reporter_->current;
  }
  /// The largest current() since the probe started or since reset_peak().
  [[nodiscard]] std::int64_t peak() const {
    std::lock_guard lock(reporter_->mutex);
    return reporter_->peak;
  }
  /// Allocations seen since the probe started.
  [[nodiscard]] std::int64_t allocations() const {
    std::lock_guard lock(reporter_->mutex);
    return reporter_->allocations;
  }
  /// Restarts the peak at the current live bytes (to measure one phase after a setup).
  void reset_peak() {
    std::lock_guard lock(reporter_->mutex);
    reporter_->peak = reporter_->current;
  }

private:
  struct reporter final : compat::memory_reporter {
    void on_report(void* ptr, std::int64_t bytes, c10::Device device) override {
      if (!device.is_cpu() || bytes == 0) return;
      std::lock_guard lock(mutex);
      if (bytes > 0) {
        live[ptr] = bytes;
        current += bytes;
        peak = std::max(peak, current);
        ++allocations;
      } else if (const auto it = live.find(ptr); it != live.end()) {
        current -= it->second;
        live.erase(it);
      }
    }
    mutable std::mutex mutex;
    std::unordered_map<void*, std::int64_t> live;
    std::int64_t current = 0, peak = 0, allocations = 0;
  };

  std::shared_ptr<reporter> reporter_;
  c10::DebugInfoGuard guard_;
};

} // namespace offload::testing
