#pragma once
/// \file
/// What wan_bench reads from CUDA beyond LibTorch's device-generic interface: the caching
/// allocator's peak statistics and the device's name. Available when this LibTorch ships the
/// allocator header and the CUDA runtime headers are found (OFFLOAD_HAS_CUDA_ALLOCATOR_STATS,
/// offload/compat.hpp: PyTorch's LibTorch 2.x with a CUDA toolkit); otherwise every function
/// answers "unavailable" and wan_bench reports offload's own accounting only.

#include <cstdint>
#include <optional>
#include <string>

namespace wan_bench {

/// Peaks of the CUDA caching allocator since the last reset_cuda_peaks (aggregate over pools).
struct cuda_memory_peaks {
  std::int64_t allocated = 0; ///< bytes handed out to tensors (torch.cuda.max_memory_allocated)
  std::int64_t reserved = 0;  ///< bytes held from the driver (torch.cuda.max_memory_reserved)
};

/// Whether this build can read the allocator's statistics.
bool cuda_stats_available();
/// Returns cached blocks to the driver and resets the peaks of device `index` (no-op when unavailable).
void reset_cuda_peaks(int index);
/// Restarts the peaks of device `index` at the current bytes, keeping the cache (between stages).
void restart_cuda_peaks(int index);
/// The peaks of device `index` since the last reset; nullopt when unavailable.
std::optional<cuda_memory_peaks> read_cuda_peaks(int index);
/// cudaGetDeviceProperties(index).name, or "" when unavailable.
std::string cuda_device_name(int index);

} // namespace wan_bench
