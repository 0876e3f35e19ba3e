// Parameter count of the CLIP visual tower (Wan-Video/Wan2.1@9737cba, wan/modules/clip.py);
// see clip_size.hpp.
#include "wan/clip_size.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <offload/errors.hpp>

namespace wan::clip {

std::int64_t parameter_count(const CLIPConfig& c) {
  if (c.vision_pool != "token")
    throw offload::config_error(
        "offload.config.clip_pool",
        fmt::format("clip parameter_count: expected vision_pool 'token' (the Wan CLIP), found "
                    "'{}'; 'token_fc' and 'attn_pool' are not ported",
                    c.vision_pool));
  if (c.activation != "gelu" && c.activation != "quick_gelu")
    throw offload::config_error(
        "offload.config.clip_activation",
        fmt::format("clip parameter_count: expected activation 'gelu' or 'quick_gelu', found '{}'",
                    c.activation));
  if (c.vision_layers < 1 || c.vision_dim < 1 || c.patch_size < 1 || c.image_size < c.patch_size ||
      c.vision_mlp_ratio <= 0)
    throw offload::config_error(
        "offload.config.clip_size",
        fmt::format("clip parameter_count: expected vision_layers >= 1, vision_dim >= 1, "
                    "image_size >= patch_size >= 1 and vision_mlp_ratio > 0, found {}, {}, {}, {} "
                    "and {}",
                    c.vision_layers, c.vision_dim, c.image_size, c.patch_size, c.vision_mlp_ratio));

  const std::int64_t d = c.vision_dim;
  // int(dim * mlp_ratio) in the reference, as the port computes it
  const auto h = static_cast<std::int64_t>(static_cast<double>(d) * c.vision_mlp_ratio);
  const std::int64_t grid = c.image_size / c.patch_size;
  const std::int64_t out_dim = c.embed_dim > 0 ? c.embed_dim : d;

  const std::int64_t patch = d * 3 * c.patch_size * c.patch_size + (c.vision_pre_norm ? 0 : d);
  const std::int64_t cls = d;
  const std::int64_t pos = (1 + grid * grid) * d;
  const std::int64_t pre_norm = c.vision_pre_norm ? 2 * d : 0;
  const std::int64_t block = 4 * d                 // norm1, norm2 (weight + bias)
                             + 3 * d * d + 3 * d   // attn.to_qkv
                             + d * d + d           // attn.proj
                             + d * h + h           // mlp.0
                             + h * d + d;          // mlp.2
  const std::int64_t post_norm = 2 * d;
  const std::int64_t head = d * out_dim;
  return patch + cls + pos + pre_norm + c.vision_layers * block + post_norm + head;
}

} // namespace wan::clip
