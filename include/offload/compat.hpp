#pragma once
/// \file
/// The one place where LibTorch version differences are handled.
/// Debian 12 ships LibTorch 1.13 (CPU); GPU machines use the LibTorch 2.x bundled with PyTorch.

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <torch/version.h>

#include <cstddef>
#include <cstdint>

#define OFFLOAD_TORCH_VERSION (TORCH_VERSION_MAJOR * 10000 + TORCH_VERSION_MINOR * 100)

/// LibTorch >= 2.8 has one host-allocator interface for every device type,
/// at::getHostAllocator(at::kCUDA) (ATen/core/CachingHostAllocator.h, no CUDA header needed), with
/// empty_cache(). Before, the CUDA one was reached through ATen/cuda headers only.
#if OFFLOAD_TORCH_VERSION >= 20800
#define OFFLOAD_HAS_HOST_ALLOCATOR_API 1
#include <ATen/core/CachingHostAllocator.h>
#else
#define OFFLOAD_HAS_HOST_ALLOCATOR_API 0
#endif

/// LibTorch >= 2.0 has at::scaled_dot_product_attention.
#if OFFLOAD_TORCH_VERSION >= 20000
#define OFFLOAD_HAS_SDPA 1
#else
#define OFFLOAD_HAS_SDPA 0
#endif

/// LibTorch >= 2.1: at::scaled_dot_product_attention takes a `scale` argument (after is_causal);
/// 2.0's has none (its scale is always 1/sqrt(head dim)).
#if OFFLOAD_TORCH_VERSION >= 20100
#define OFFLOAD_SDPA_HAS_SCALE 1
#else
#define OFFLOAD_SDPA_HAS_SCALE 0
#endif

/// LibTorch 2.x (any minor version). Nothing tests it yet: prefer a macro per feature, as above.
#if OFFLOAD_TORCH_VERSION >= 20000
#define OFFLOAD_TORCH2 1
#else
#define OFFLOAD_TORCH2 0
#endif

/// The CUDA caching allocator's statistics (peak allocated and reserved bytes per device) can be
/// read when LibTorch ships c10/cuda/CUDACachingAllocator.h and the CUDA runtime headers it includes
/// are on the include path: PyTorch's bundled LibTorch 2.x with a CUDA toolkit, not Debian's
/// CPU-only 1.13. Code that reads them includes that header itself, under this macro.
#if __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#define OFFLOAD_HAS_CUDA_ALLOCATOR_STATS 1
#else
#define OFFLOAD_HAS_CUDA_ALLOCATOR_STATS 0
#endif

namespace offload::compat {
/// c10's per-thread memory-reporting hook (what the profiler's memory view uses), with one
/// signature for every LibTorch: `on_report(ptr, bytes, device)`, bytes negative for a free.
/// `MemoryReportingInfoBase::reportMemoryUsage` took (ptr, size, device) before 1.9,
/// (ptr, size, int64 allocated, int64 reserved, device) in 1.13 and size_t totals in 2.x; the
/// overload matching this LibTorch's overrides it, the others are inert. A future signature makes
/// this class abstract: a compile error here, not a silent miss.
struct memory_reporter : c10::MemoryReportingInfoBase {
  virtual void on_report(void* ptr, std::int64_t bytes, c10::Device device) = 0;
  bool memoryProfilingEnabled() const override { return true; }

  // NOLINTBEGIN(modernize-use-override): exactly one of these overrides, depending on the version
  virtual void reportMemoryUsage(void* ptr, std::int64_t bytes, c10::Device device) { on_report(ptr, bytes, device); }
  virtual void reportMemoryUsage(void* ptr, std::int64_t bytes, std::int64_t, std::int64_t, c10::Device device) {
    on_report(ptr, bytes, device);
  }
  virtual void reportMemoryUsage(void* ptr, std::int64_t bytes, std::size_t, std::size_t, c10::Device device) {
    on_report(ptr, bytes, device);
  }
  // NOLINTEND(modernize-use-override)
};
} // namespace offload::compat

namespace offload::detail {
/// Whether this LibTorch can use CUDA (pinning host memory needs it).
inline bool cuda_available() { return at::globalContext().hasCUDA(); }
/// `bytes` of page-locked host memory from LibTorch's pinned allocator (the CUDA caching host
/// allocator, which rounds a request up to a power of two: pass powers of two). Needs CUDA.
inline at::Tensor pinned_host_bytes(std::int64_t bytes) {
  return at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
}
/// Whether release_cached_pinned_memory can return cached pinned memory on this LibTorch.
inline bool can_release_cached_pinned_memory() { return OFFLOAD_HAS_HOST_ALLOCATOR_API && cuda_available(); }
/// Returns to the system the pinned blocks LibTorch's caching host allocator keeps for tensors
/// already freed (a block whose copies are still running stays until they end). That allocator
/// otherwise keeps every freed block, page-locked, for a later request of the same power of two.
/// A no-op where this LibTorch offers no way to (before 2.8; see OFFLOAD_HAS_HOST_ALLOCATOR_API)
/// or has no CUDA.
inline void release_cached_pinned_memory() {
#if OFFLOAD_HAS_HOST_ALLOCATOR_API
  if (cuda_available()) at::getHostAllocator(at::kCUDA)->empty_cache();
#endif
}
} // namespace offload::detail
