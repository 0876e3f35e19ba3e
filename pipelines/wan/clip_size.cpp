// Parameter count of the CLIP visual tower (Wan-Video/Wan2.1@9737cba, wan/modules/clip.py);
// see clip_size.hpp.
#include "wan/clip_size.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <offload/errors.hpp>

namespace wan::clip {

namespace {

void check_buildable(const CLIPConfig& c) {
  if (c.vision_pool != "token")
    throw offload::config_error(
        "offload.config.clip_pool",
        fmt::format("clip sizes: expected vision_pool 'token' (the Wan CLIP), found "
                    "'{}'; 'token_fc' and 'attn_pool' are not ported",
                    c.vision_pool));
  if (c.activation != "gelu" && c.activation != "quick_gelu")
    throw offload::config_error(
        "offload.config.clip_activation",
        fmt::format("clip sizes: expected activation 'gelu' or 'quick_gelu', found '{}'",
                    c.activation));
  if (c.vision_layers < 1 || c.vision_dim < 1 || c.patch_size < 1 || c.image_size < c.patch_size ||
      c.vision_mlp_ratio <= 0)
    throw offload::config_error(
        "offload.config.clip_size",
        fmt::format("clip sizes: expected vision_layers >= 1, vision_dim >= 1, "
                    "image_size >= patch_size >= 1 and vision_mlp_ratio > 0, found {}, {}, {}, {} "
                    "and {}",
                    c.vision_layers, c.vision_dim, c.image_size, c.patch_size, c.vision_mlp_ratio));
}

} // namespace

std::int64_t parameter_count(const CLIPConfig& c) {
  std::int64_t n = 0;
  for (const auto x : tensor_numels(c)) n += x;
  return n;
}

std::vector<std::int64_t> tensor_numels(const CLIPConfig& c) {
  check_buildable(c);
  const std::int64_t d = c.vision_dim;
  // int(dim * mlp_ratio) in the reference, as the port computes it
  const auto h = static_cast<std::int64_t>(static_cast<double>(d) * c.vision_mlp_ratio);
  const std::int64_t grid = c.image_size / c.patch_size;
  const std::int64_t out_dim = c.embed_dim > 0 ? c.embed_dim : d;

  std::vector<std::int64_t> t{d * 3 * c.patch_size * c.patch_size}; // patch_embedding.weight
  if (!c.vision_pre_norm) t.push_back(d);                             // patch_embedding.bias
  t.push_back(d);                                                     // cls_embedding
  t.push_back((1 + grid * grid) * d);                                 // pos_embedding
  if (c.vision_pre_norm) t.insert(t.end(), {d, d});                   // pre_norm
  for (std::int64_t i = 0; i < c.vision_layers; ++i)
    t.insert(t.end(), {d, d,                 // norm1
                       3 * d * d, 3 * d,     // attn.to_qkv
                       d * d, d,             // attn.proj
                       d, d,                 // norm2
                       h * d, h,             // mlp.0
                       d * h, d});           // mlp.2
  t.insert(t.end(), {d, d, d * out_dim}); // post_norm, head
  return t;
}

} // namespace wan::clip
