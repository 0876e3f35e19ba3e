#pragma once
/// \file
/// Storage dtype of a component's tensors as a policy option (`dit=cuda:store=bf16`).
///
/// A component may declare a *storage rule*: which of its tensors may be stored in a 16-bit
/// floating dtype (a DiT's matmul weights, which the reference casts to bf16 per op under
/// autocast anyway) while the others (norms, modulation, embeddings, tables) keep theirs. The
/// policy then picks the dtype; the host masters are converted once, before the first placement,
/// which halves those tensors' host memory, device memory and transfers.
///
/// Conversion is one-way: a master converted to bf16 cannot get its float32 bits back. A policy
/// without `store` leaves a component as it is now.
///
/// Kept free of LibTorch headers: plans and stage lists carry it.

#include <cstdint>
#include <optional>
#include <string_view>

namespace offload {

/// The dtype a component's storage rule converts its tensors to.
enum class storage_dtype : std::uint8_t {
  native, ///< as the component is now (no conversion)
  bf16,   ///< bfloat16
  fp16,   ///< IEEE half
};

[[nodiscard]] constexpr std::string_view to_string(storage_dtype d) noexcept {
  switch (d) {
    case storage_dtype::native: return "native";
    case storage_dtype::bf16: return "bf16";
    case storage_dtype::fp16: return "fp16";
  }
  return "?";
}

/// "bf16" / "bfloat16" / "fp16" / "float16" / "half" -> the dtype; anything else nullopt.
[[nodiscard]] constexpr std::optional<storage_dtype> parse_storage_dtype(std::string_view s) noexcept {
  if (s == "bf16" || s == "bfloat16") return storage_dtype::bf16;
  if (s == "fp16" || s == "float16" || s == "half") return storage_dtype::fp16;
  return std::nullopt;
}

/// Bytes per element of a converted tensor (0 for native: it keeps its own).
[[nodiscard]] constexpr std::int64_t element_size(storage_dtype d) noexcept {
  return d == storage_dtype::native ? 0 : 2;
}

} // namespace offload
