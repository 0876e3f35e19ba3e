#pragma once
// Runs one Wan component (T5 encoder, VAE encode / decode, DiT, VACE DiT, CLIP visual tower) from
// a checkpoint on named input tensors and returns its outputs under the names the golden files use
// (tests/data/golden/README.md, "Golden cases"), so a golden case file can be fed in as inputs and
// the result compared name by name. The logic behind examples/wan_module_run.
//
// Not a port: a tool around the ports (t5, vae, model, vace_model, clip). Hyper-parameters come
// from the checkpoint through the ports' loaders (config.json for the DiT / VACE, the weights for
// T5 / VAE / CLIP); the CLIP head count is the one value the weights do not hold.
//
// Input and output names per module (`cN` = sub-case N, `b` / `i` = list index):
//
// | module      | inputs                                              | outputs                     |
// |-------------|-----------------------------------------------------|-----------------------------|
// | t5          | in.cN.ids, in.cN.mask (int64 [B, L])                | out.cN.context, out.cN.seq_lens |
// | vae_encode  | in.video.i ([3, F, H, W] in [-1, 1])                | out.latent.i                |
// | vae_decode  | in.z.i ([16, T, h, w] normalised latent)            | out.decoded_raw.i (no clamp) |
// | dit         | in.cN.x.b, in.cN.t, in.cN.context.b, in.cN.seq_len, | out.cN.out.b                |
// |             | i2v/flf2v: in.cN.clip_fea, in.cN.y.b                |                             |
// | vace        | as dit + in.cN.vace_context.b,                      | out.cN.out.b                |
// |             | in.cN.vace_context_scale (optional, default 1)      |                             |
// | clip_visual | in.image.i ([3, H, W] in [-1, 1]) or                | out.features_i2v (image 0), |
// |             | in.image_u8.i (uint8 [H, W, 3])                     | out.features_flf2v (0 and 1) |
//
// With record_intermediates, dit / vace also return the model's trace points as cN.mid.<name>
// (patch_embedding.b, time_embedding, block.i, head, ...) and cN.mid.freqs_first64, the names
// the recorded golden sub-cases store.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <c10/core/ScalarType.h>

#include <offload/state_dict.hpp>

namespace wan {

/// The components wan_module_run can run.
enum class module_kind : std::uint8_t { t5, vae_encode, vae_decode, dit, vace, clip_visual };

/// "t5", "vae_encode", "vae_decode", "dit", "vace", "clip_visual".
[[nodiscard]] std::string_view to_string(module_kind kind);
/// Every module name, in enum order.
[[nodiscard]] const std::vector<std::string>& module_kind_names();
/// Parses a module name; throws offload::config_error naming the valid ones.
[[nodiscard]] module_kind parse_module_kind(std::string_view text);
/// "float32" / "bfloat16" (also "fp32", "bf16"); throws offload::config_error otherwise.
[[nodiscard]] c10::ScalarType parse_module_dtype(std::string_view text);
/// PyTorch's name of a dtype, as the golden manifests spell it: "float32", "bfloat16", "int64",
/// "uint8", "complex64", ...; c10's name for the others.
[[nodiscard]] std::string dtype_name(c10::ScalarType t);
/// "cN" or "N" -> N; throws offload::config_error otherwise.
[[nodiscard]] int parse_case(std::string_view text);

/// What to run and how.
struct module_run_options {
  module_kind module = module_kind::dit;
  /// t5 / vae / clip: the .pth (or .safetensors) file; dit / vace: the directory holding
  /// config.json and the weights, or a weights file with config.json beside it.
  std::filesystem::path checkpoint;
  /// Run only sub-case cN (t5 / dit / vace) or list index N (vae_encode / vae_decode); every
  /// sub-case found in the inputs when empty. clip_visual has no sub-cases.
  std::optional<int> sub_case;
  /// Storage (and compute) dtype of the module's weights: float32 or bfloat16 (t5, dit, vace,
  /// clip_visual; the VAE port runs in float32 only and refuses bfloat16). The modules cast
  /// their float32 inputs themselves.
  c10::ScalarType dtype = c10::ScalarType::Float;
  /// CLIP: attention heads of the visual tower (not inferable from the weights); the checkpoint's
  /// official value (16) when empty.
  std::optional<std::int64_t> vision_heads;
  /// dit / vace: also return the trace points as cN.mid.* (see the file comment).
  bool record_intermediates = false;
};

/// Runs `options.module` on `inputs` (named as in the table above) and returns the outputs, on the
/// CPU. `inputs_source` names the inputs in error messages (e.g. the file they came from).
/// Throws offload::config_error (id offload.wan.module_run.*) naming the first missing or
/// mis-shaped input tensor, offload::checkpoint_error / config_error from the ports' loaders.
[[nodiscard]] offload::state_dict run_module(const module_run_options& options,
                                             const offload::state_dict& inputs,
                                             std::string_view inputs_source = "the inputs");

/// The same with the inputs read from a .safetensors file.
[[nodiscard]] offload::state_dict run_module(const module_run_options& options,
                                             const std::filesystem::path& inputs_file);

} // namespace wan
