// The Wan pipelines as the offload scheduler sees them (see stages.hpp for the derivations).
#include "wan/stages.hpp"

#include "wan/clip_size.hpp"
#include "wan/configs/configs.hpp"
#include "wan/model.hpp"
#include "wan/t5.hpp"
#include "wan/vae.hpp"

#include <offload/block_stream.hpp>
#include <offload/detail/pinned_arena.hpp>
#include <offload/errors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>

namespace wan {

namespace {

bool is_image_task(std::string_view task) { return task.starts_with("i2v") || task.starts_with("flf2v"); }
bool is_vace_task(std::string_view task) { return task.starts_with("vace"); }

/// Bytes of one element of `t`.
std::int64_t element_bytes(c10::ScalarType t) { return static_cast<std::int64_t>(c10::elementSize(t)); }

} // namespace

// Measured ratio rounded up (tests/pipelines/activation_memory_test.cpp checks it bounds the
// measurement under the GPU's dtypes at both FFN widths).
const double workspace_constants::dit_activation_ratio = 0.48;

double dit_block_bytes_per_token_dim(const WanModelConfig& cfg) {
  using W = workspace_constants;
  return std::max(W::dit_attention_bytes_per_token_dim,
                  W::dit_ffn_base_bytes_per_token_dim +
                      2.0 * static_cast<double>(cfg.ffn_dim) / static_cast<double>(cfg.dim));
}

offload::block_layout dit_block_layout(const WanModelConfig& cfg, std::int64_t element_size,
                                       std::int64_t matmul_element_size) {
  if (matmul_element_size == 0) matmul_element_size = element_size;
  const int64_t d = cfg.dim, f = cfg.ffn_dim;
  const bool image = cfg.model_type == "i2v" || cfg.model_type == "flf2v";
  // The tensors of one block, each with its element size (matmul weights and biases may be stored
  // narrower: store=bf16): a WanAttentionBlock in registration order (norm1/norm2 have no
  // weights), and for a VaceWanAttentionBlock its before_proj (VACE layer 0 only) and after_proj.
  struct sizes {
    std::int64_t bytes = 0, slot = 0;
    void add(std::int64_t numel, std::int64_t elem) { bytes += numel * elem, slot += offload::detail::align_up(numel * elem); }
  };
  const auto attention_block = [&] {
    sizes s;
    const auto mm = [&](std::initializer_list<int64_t> n) {
      for (auto x : n) s.add(x, matmul_element_size);
    };
    const auto other = [&](std::initializer_list<int64_t> n) {
      for (auto x : n) s.add(x, element_size);
    };
    auto attention = [&](bool i2v) {
      for (int i = 0; i < 4; ++i) mm({d * d, d}); // q, k, v, o
      if (cfg.qk_norm) other({d, d});             // norm_q, norm_k
      if (i2v) {
        mm({d * d, d, d * d, d});                 // k_img, v_img
        if (cfg.qk_norm) other({d});              // norm_k_img
      }
    };
    other({6 * d});                         // modulation
    attention(false);                       // self_attn
    if (cfg.cross_attn_norm) other({d, d}); // norm3
    attention(image);                       // cross_attn
    mm({f * d, f, d * f, d});               // ffn.0, ffn.2
    return s;
  };
  const sizes block = attention_block();
  offload::block_layout l;
  const auto push = [&](const sizes& s) {
    l.block_bytes.push_back(s.bytes);
    l.slot_bytes = std::max(l.slot_bytes, s.slot);
  };
  if (cfg.model_type != "vace") {
    for (int64_t i = 0; i < cfg.num_layers; ++i) push(block);
    return l;
  }
  // VACE: VaceWanModel::block_order(), each VACE block right before the first main block that
  // needs its hint.
  const auto layers = cfg.resolved_vace_layers();
  std::map<int64_t, int64_t> mapping;
  for (size_t n = 0; n < layers.size(); ++n) mapping[layers[n]] = static_cast<int64_t>(n);
  int64_t next = 0;
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    if (auto it = mapping.find(i); it != mapping.end())
      for (; next <= it->second; ++next) {
        sizes v = block;
        if (layers[static_cast<size_t>(next)] == 0) v.add(d * d, matmul_element_size), v.add(d, matmul_element_size); // before_proj
        v.add(d * d, matmul_element_size), v.add(d, matmul_element_size);                                             // after_proj
        push(v);
      }
    push(block);
  }
  return l;
}

offload::block_layout t5_block_layout(const T5Config& cfg, std::int64_t element_size) {
  std::int64_t bytes = 0, slot = 0;
  for (auto n : block_tensor_numels(cfg)) bytes += n * element_size, slot += offload::detail::align_up(n * element_size);
  offload::block_layout l;
  l.block_bytes.assign(static_cast<std::size_t>(cfg.encoder_layers), bytes);
  l.slot_bytes = slot;
  l.host_bytes = cfg.vocab_size * cfg.dim * element_size; // token_embedding, kept on the host while streaming
  return l;
}

offload::stored_size dit_stored_size(const WanModelConfig& cfg, offload::storage_dtype dtype) {
  const auto n = parameter_counts(cfg);
  const std::int64_t full = element_bytes(c10::ScalarType::Float);
  const std::int64_t narrow = dtype == offload::storage_dtype::native ? full : offload::element_size(dtype);
  // The RoPE table `freqs` (an auxiliary tensor of the component, complex128, dtype kept):
  // [1024, head_dim / 2].
  const std::int64_t freqs = 1024 * (cfg.dim / cfg.num_heads / 2) * element_bytes(c10::ScalarType::ComplexDouble);
  offload::stored_size s;
  s.dtype = dtype;
  s.exact = dtype != offload::storage_dtype::native && dtype == dit_exact_storage();
  s.bytes = (n.total - n.matmul) * full + n.matmul * narrow + freqs;
  s.blocks = dit_block_layout(cfg, full, narrow);
  // Pinned, the masters are packed into power-of-two chunks as offloadable packs them.
  std::vector<std::int64_t> sizes{freqs};
  for (const auto& t : dit_tensors(cfg)) sizes.push_back(t.numel * (t.matmul ? narrow : full));
  s.pinned_bytes = offload::detail::plan_arena(sizes).total();
  return s;
}

namespace {

/// A component of tensors of `numels` elements of `element_size` bytes: their bytes, and packed
/// into power-of-two chunks as offloadable packs its masters once pinned.
offload::component_info packed_info(std::string_view name, const std::vector<std::int64_t>& numels,
                                    std::int64_t element_size) {
  offload::component_info info{std::string(name), 0};
  std::vector<std::int64_t> sizes;
  sizes.reserve(numels.size());
  for (const auto n : numels) {
    sizes.push_back(n * element_size);
    info.bytes += n * element_size;
  }
  info.pinned_bytes = offload::detail::plan_arena(sizes).total();
  return info;
}

} // namespace

offload::component_info vae_component_info(const WanVAEConfig& cfg, c10::ScalarType dtype) {
  auto numels = tensor_numels(cfg);
  numels.insert(numels.end(), {cfg.z_dim, cfg.z_dim}); // mean, std (auxiliary tensors)
  auto info = packed_info(VAE_COMPONENT, numels, element_bytes(dtype));
  info.tileable = true;
  return info;
}

offload::component_info clip_component_info(const CLIPConfig& cfg, c10::ScalarType dtype) {
  return packed_info(CLIP_COMPONENT, clip::tensor_numels(cfg), element_bytes(dtype));
}

offload::storage_dtype dit_exact_storage() {
  const auto dtype = configs::wan_shared_cfg().param_dtype;
  if (dtype == c10::ScalarType::BFloat16) return offload::storage_dtype::bf16;
  if (dtype == c10::ScalarType::Half) return offload::storage_dtype::fp16;
  return offload::storage_dtype::native;
}

std::vector<offload::component_info> preset_components(std::string_view task) {
  const auto& cfg = configs::wan_config(task); // throws config_error for an unknown task
  std::vector<offload::component_info> out;
  const auto t5 = T5Config::umt5_xxl();
  out.push_back(packed_info(T5_COMPONENT, tensor_numels(t5), element_bytes(cfg.t5_dtype)));
  out.back().blocks = t5_block_layout(t5, element_bytes(cfg.t5_dtype));
  if (is_image_task(task))
    out.push_back(clip_component_info(CLIPConfig::clip_xlm_roberta_vit_h_14(),
                                      cfg.clip_dtype.value_or(c10::ScalarType::Half)));
  const auto dit = model_config(task);
  const auto native = dit_stored_size(dit, offload::storage_dtype::native);
  offload::component_info dit_info{std::string(DIT_COMPONENT), native.bytes, native.blocks};
  dit_info.pinned_bytes = native.pinned_bytes;
  for (const auto d : {offload::storage_dtype::bf16, offload::storage_dtype::fp16})
    dit_info.storage.push_back(dit_stored_size(dit, d));
  out.push_back(std::move(dit_info));
  out.push_back(vae_component_info(WanVAEConfig::video_vae(), c10::ScalarType::Float));
  return out;
}

std::int64_t dit_tokens(const generation_shape& s) {
  const std::int64_t lat_t = (s.frame_num - 1) / 4 + 1 + s.ref_images;
  return lat_t * (s.height / 16) * (s.width / 16);
}

std::int64_t denoise_held_bytes(const generation_shape& s) {
  using W = workspace_constants;
  const auto& cfg = configs::wan_config(s.task);
  const auto dit = model_config(s.task);
  const std::int64_t clip_images = s.task.starts_with("flf2v") ? 2 : is_image_task(s.task) ? 1 : 0;
  // Float32 latent frames [C, T_lat (+ refs), H/8, W/8], per channel.
  const std::int64_t latent_t = (s.frame_num - 1) / 4 + 1 + s.ref_images, latent_h = s.height / 8,
                     latent_w = s.width / 8;
  const auto frame_values = static_cast<double>(latent_t * latent_h * latent_w);
  double channels = W::sampler_latents * 16.0;
  if (is_image_task(s.task)) channels += 4.0 + 16.0; // y: the mask and the encoded frames
  if (is_vace_task(s.task)) channels += static_cast<double>(dit.resolved_vace_in_dim());
  const double text = 2.0 * static_cast<double>(cfg.text_len * dit.text_dim * element_bytes(cfg.t5_dtype));
  const std::int64_t clip_tokens = clip_images * W::clip_tokens_per_image;
  const double clip = static_cast<double>(clip_tokens * dit.clip_dim) * 4.0;
  const double embedded = 2.0 * static_cast<double>((cfg.text_len + clip_tokens) * dit.dim) * 4.0;
  return static_cast<std::int64_t>(std::llround(channels * frame_values * 4.0 + text + clip + embedded));
}

namespace {

/// A VAE pass over `width x height` frames: `vae_bytes_per_pixel` x the pixels it works on at once
/// (the frame, or one tile: min(8 tile_latent_h, H) x min(8 tile_latent_w, W)) + `held` (the
/// videos it holds throughout); tiled, + one tile of video (3 x frame_num x tile pixels float32)
/// + `tiled_held` (the blend's accumulators).
std::int64_t vae_workspace(int width, int height, int frame_num, double held, const std::optional<VaeTiling>& tiling,
                           double tiled_held) {
  using W = workspace_constants;
  auto b = [](double x) { return static_cast<std::int64_t>(std::llround(x)); };
  if (tiling) tiling->validate();
  if (!tiling || tiling->covers(height / 8, width / 8))
    return b(W::vae_bytes_per_pixel * static_cast<double>(width) * height + held);
  const double tile_pixels = static_cast<double>(std::min<std::int64_t>(8 * tiling->tile_latent_h, height)) *
                             static_cast<double>(std::min<std::int64_t>(8 * tiling->tile_latent_w, width));
  return b(W::vae_bytes_per_pixel * tile_pixels + held + 3.0 * frame_num * tile_pixels * 4.0 + tiled_held);
}

} // namespace

std::int64_t decode_workspace_bytes(int width, int height, int frame_num,
                                    const std::optional<VaeTiling>& tiling) {
  const double pixels = static_cast<double>(width) * height;
  // the decoded video; tiled, the blend's weight sum (H x W float32)
  return vae_workspace(width, height, frame_num, 3.0 * frame_num * pixels * 4.0, tiling, pixels * 4.0);
}

std::int64_t encode_workspace_bytes(int width, int height, int frame_num, int videos,
                                    const std::optional<VaeTiling>& tiling) {
  const double pixels = static_cast<double>(width) * height;
  // the input videos; tiled, the latent blend (accumulator and weights)
  const std::int64_t latent_frames = (frame_num - 1) / 4 + 1, latent_h = height / 8, latent_w = width / 8;
  const double latent = 16.0 * static_cast<double>(latent_frames * latent_h * latent_w) * 4.0;
  return vae_workspace(width, height, frame_num, videos * 3.0 * frame_num * pixels * 4.0, tiling, 2.0 * latent);
}

std::vector<offload::stage> pipeline_stages(const generation_shape& s) {
  const auto& cfg = configs::wan_config(s.task);
  if (s.width <= 0 || s.height <= 0 || s.width % 16 || s.height % 16)
    throw offload::config_error("offload.wan.stages.size",
                                fmt::format("size {}x{} for task '{}': expected positive multiples of 16",
                                            s.width, s.height, s.task));
  if (s.frame_num < 1 || (s.frame_num - 1) % 4)
    throw offload::config_error("offload.wan.stages.frame_num",
                                fmt::format("frame_num {} for task '{}': expected 4n+1 (1, 5, ..., 81)",
                                            s.frame_num, s.task));
  if (s.sampling_steps < 1)
    throw offload::config_error("offload.wan.stages.steps",
                                fmt::format("sampling_steps {}: expected >= 1", s.sampling_steps));
  using W = workspace_constants;
  const auto t5 = std::string(T5_COMPONENT), clip = std::string(CLIP_COMPONENT),
             dit = std::string(DIT_COMPONENT), vae = std::string(VAE_COMPONENT);
  auto b = [](double x) { return static_cast<std::int64_t>(std::llround(x)); };

  // This port's stages also carry cuBLAS's workspace (the reference's measurements hold its own).
  const std::int64_t lib = s.reference_activations ? 0 : W::library_workspace_bytes;
  std::vector<offload::stage> out;
  out.push_back({"text_encode", {t5}, {{t5, b(W::text_encode_bytes) + lib}}});
  if (is_image_task(s.task)) {
    out.push_back({"clip_encode", {clip}, {{clip, b(W::clip_encode_bytes) + lib}}});
    out.push_back({"vae_encode", {vae}, {{vae, encode_workspace_bytes(s.width, s.height, s.frame_num, 1, s.vae_tiling) + lib}}});
  } else if (is_vace_task(s.task)) {
    // vace_encode_frames encodes inactive and reactive videos (+ reference images).
    out.push_back({"vae_encode", {vae}, {{vae, encode_workspace_bytes(s.width, s.height, s.frame_num, 2, s.vae_tiling) + lib}}});
  }
  // The reference: the calibrated activations of one forward (the branches run one after the
  // other; VACE keeps every hint: one [L, dim] float32 tensor per VACE layer, + 1 for the stacked
  // copy). This port: its block's measured peak, plus the other branch's residual stream
  // (block-major) and, for VACE, the control stream and hint of each branch.
  // This port also holds the sampler's latents, the conditioning and the contexts
  // (denoise_held_bytes); the reference's calibration holds its own.
  const auto cfg_dit = model_config(s.task);
  const double per_token_dim =
      s.reference_activations
          ? W::dit_bytes_per_token_dim +
                (is_vace_task(s.task) ? 4.0 * (static_cast<double>(cfg_dit.resolved_vace_layers().size()) + 1) : 0.0)
          : dit_block_bytes_per_token_dim(cfg_dit) + W::branch_residual_bytes_per_token_dim +
                (is_vace_task(s.task) ? W::vace_bytes_per_token_dim : 0.0);
  const std::int64_t held = s.reference_activations ? 0 : denoise_held_bytes(s);
  out.push_back({"denoise",
                 {dit},
                 {{dit, b(per_token_dim * static_cast<double>(dit_tokens(s)) * static_cast<double>(cfg.dim)) + held + lib}},
                 s.sampling_steps});
  out.push_back({"decode", {vae}, {{vae, decode_workspace_bytes(s.width, s.height, s.frame_num, s.vae_tiling) + lib}}});
  return out;
}

std::pair<int, int> parse_size(std::string_view text) {
  const auto star = text.find('*');
  auto fail = [&](std::size_t pos, std::string_view what) -> std::pair<int, int> {
    throw offload::config_error("offload.wan.size_syntax",
                                fmt::format("size '{}' at position {}: expected {}; write WIDTH*HEIGHT, "
                                            "e.g. '832*480'",
                                            text, pos, what));
  };
  if (star == std::string_view::npos) return fail(text.size(), "'*' between width and height");
  int w = 0, h = 0;
  const auto a = text.substr(0, star), c = text.substr(star + 1);
  if (auto r = std::from_chars(a.data(), a.data() + a.size(), w); r.ec != std::errc() || r.ptr != a.data() + a.size() || w <= 0)
    return fail(0, "a positive width");
  if (auto r = std::from_chars(c.data(), c.data() + c.size(), h); r.ec != std::errc() || r.ptr != c.data() + c.size() || h <= 0)
    return fail(star + 1, "a positive height");
  return {w, h};
}

} // namespace wan
