#pragma once
/// \file
/// The host memory of the wan_bench process, from Linux's /proc/self: resident bytes now (VmRSS)
/// and their peak (VmHWM), which can be restarted so that each policy gets its own. Resident bytes
/// count pageable masters and page-locked (pinned) chunks alike, and what LibTorch caches.

#include <cstdint>
#include <optional>

namespace wan_bench {

struct host_memory {
  std::int64_t resident = 0; ///< VmRSS
  std::int64_t peak = 0;     ///< VmHWM: the largest VmRSS since the process started or the last reset
};

/// This process's VmRSS and VmHWM; nullopt where /proc/self/status cannot be read (not Linux).
std::optional<host_memory> read_host_memory();
/// Restarts VmHWM at the current VmRSS (writes 5 to /proc/self/clear_refs, Linux 4.0 and later);
/// false when that fails (the peak then counts from the process's start).
bool reset_host_peak();

} // namespace wan_bench
