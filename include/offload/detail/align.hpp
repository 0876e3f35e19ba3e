#pragma once
/// \file
/// Byte alignment of tensors inside shared buffers (device block slots, pinned host chunks).

#include <cstdint>

namespace offload::detail {

/// Where a tensor starts inside a shared buffer: a multiple of every element size, and what CUDA
/// allocations are aligned to.
inline constexpr std::int64_t tensor_alignment = 256;

[[nodiscard]] inline std::int64_t align_up(std::int64_t bytes, std::int64_t to = tensor_alignment) {
  return (bytes + to - 1) / to * to;
}

} // namespace offload::detail
