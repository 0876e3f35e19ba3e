#pragma once
/// \file
/// The DiT's configuration (WanModel / VaceWanModel __init__ arguments) and its config.json reader,
/// kept free of LibTorch so the reader can be fuzzed on its own (tests/fuzz). Definitions:
/// wan/model_config.ipp, compiled into model.cpp (and into the fuzz target).

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace wan {

inline constexpr int64_t T5_CONTEXT_TOKEN_NUMBER = 512;
inline constexpr int64_t FIRST_LAST_FRAME_CONTEXT_TOKEN_NUMBER = int64_t{257} * 2;

/// The WanModel / VaceWanModel __init__ arguments, defaults equal to the reference's.
struct WanModelConfig {
  std::string model_type = "t2v"; ///< 't2v' | 'i2v' | 'flf2v' | 'vace'
  std::array<int64_t, 3> patch_size{1, 2, 2};
  int64_t text_len = 512;
  int64_t in_dim = 16;
  int64_t dim = 2048;
  int64_t ffn_dim = 8192;
  int64_t freq_dim = 256;
  int64_t text_dim = 4096;
  int64_t out_dim = 16;
  int64_t num_heads = 16;
  int64_t num_layers = 32;
  std::array<int64_t, 2> window_size{-1, -1};
  bool qk_norm = true;
  bool cross_attn_norm = true;
  double eps = 1e-6;
  /// MLPProj input width (i2v / flf2v); the reference hard-codes 1280 (see deviations).
  int64_t clip_dim = 1280;
  /// VaceWanModel only: block indices that receive hints; nullopt = range(0, num_layers, 2).
  std::optional<std::vector<int64_t>> vace_layers;
  /// VaceWanModel only: vace_patch_embedding input channels; nullopt = in_dim.
  std::optional<int64_t> vace_in_dim;

  /// Validates the config (model_type, positive sizes below sanity bounds that keep every derived
  /// size inside int64, divisibility, vace_layers) before anything is allocated; throws
  /// offload::config_error.
  void validate() const;
  /// `vace_layers` resolved to the reference default.
  [[nodiscard]] std::vector<int64_t> resolved_vace_layers() const;
  /// `vace_in_dim` resolved to the reference default.
  [[nodiscard]] int64_t resolved_vace_in_dim() const { return vace_in_dim.value_or(in_dim); }
};

/// Reads a diffusers-layout config.json (`_class_name` WanModel / VaceWanModel); keys starting
/// with '_' are ignored, unknown keys and wrong types throw offload::config_error.
WanModelConfig from_config_json(const std::filesystem::path& path);

/// Number of parameters of WanModel / VaceWanModel built from `cfg`, computed without weights.
int64_t parameter_count(const WanModelConfig& cfg);

/// Parameters of the model built from `cfg`, all of them and those of its matmul ops (the ones
/// store_matmul_weights / the DiT's storage rule convert: Linear and Conv3d weights and biases
/// outside time_embedding, time_projection and head), computed without weights.
struct DitParameterCounts {
  int64_t total = 0;
  int64_t matmul = 0;
};
DitParameterCounts parameter_counts(const WanModelConfig& cfg);

/// One parameter of the model built from a config: its number of elements, and whether it is a
/// matmul weight or bias (converted by the storage rule).
struct DitTensor {
  int64_t numel = 0;
  bool matmul = false;
};
/// Every parameter of WanModel / VaceWanModel built from `cfg` (not the RoPE table `freqs`),
/// without weights: what parameter_counts sums, and the sizes the preset's pinned bytes pack.
std::vector<DitTensor> dit_tensors(const WanModelConfig& cfg);

} // namespace wan
