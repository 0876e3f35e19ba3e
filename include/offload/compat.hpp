#pragma once
/// \file
/// The one place where LibTorch version differences are handled.
/// Debian 12 ships LibTorch 1.13 (CPU); GPU machines use the LibTorch 2.x bundled with PyTorch.

#include <ATen/Context.h>
#include <torch/version.h>

#define OFFLOAD_TORCH_VERSION (TORCH_VERSION_MAJOR * 10000 + TORCH_VERSION_MINOR * 100)

/// LibTorch >= 2.0 has at::scaled_dot_product_attention.
#if OFFLOAD_TORCH_VERSION >= 20000
#define OFFLOAD_HAS_SDPA 1
#else
#define OFFLOAD_HAS_SDPA 0
#endif

/// LibTorch >= 2.1 uses `c10::DeviceType::PrivateUse1`; the mock device never needs it but the
/// names of some allocator statistics changed between versions.
#if OFFLOAD_TORCH_VERSION >= 20000
#define OFFLOAD_TORCH2 1
#else
#define OFFLOAD_TORCH2 0
#endif

namespace offload::detail {
/// Whether this LibTorch can use CUDA (pinning host memory needs it).
inline bool cuda_available() { return at::globalContext().hasCUDA(); }
} // namespace offload::detail
