// wan_bench's CUDA statistics (see cuda_stats.hpp). The availability guard is
// OFFLOAD_HAS_CUDA_ALLOCATOR_STATS in offload/compat.hpp, the one place for such differences.
#include "cuda_stats.hpp"

#include <offload/compat.hpp>

#if OFFLOAD_HAS_CUDA_ALLOCATOR_STATS
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

namespace wan_bench {

#if OFFLOAD_HAS_CUDA_ALLOCATOR_STATS

bool cuda_stats_available() { return true; }

void reset_cuda_peaks(int index) {
  namespace alloc = c10::cuda::CUDACachingAllocator;
  alloc::emptyCache();
  alloc::resetPeakStats(static_cast<c10::DeviceIndex>(index));
}

void restart_cuda_peaks(int index) {
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
}

std::optional<cuda_memory_peaks> read_cuda_peaks(int index) {
  namespace alloc = c10::cuda::CUDACachingAllocator;
  const auto stats = alloc::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  // Index 0 is StatType::AGGREGATE (all pools), what torch.cuda.max_memory_* report.
  return cuda_memory_peaks{static_cast<std::int64_t>(stats.allocated_bytes[0].peak),
                           static_cast<std::int64_t>(stats.reserved_bytes[0].peak)};
}

std::string cuda_device_name(int index) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) return {};
  return prop.name;
}

#else

bool cuda_stats_available() { return false; }
void reset_cuda_peaks(int /*index*/) {}
void restart_cuda_peaks(int /*index*/) {}
std::optional<cuda_memory_peaks> read_cuda_peaks(int /*index*/) { return std::nullopt; }
std::string cuda_device_name(int /*index*/) { return {}; }

#endif

} // namespace wan_bench
