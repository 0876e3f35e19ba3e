#pragma once
// Parameter count of the CLIP visual tower (wan/modules/clip.py, Wan-Video/Wan2.1@9737cba:
// VisionTransformer as XLMRobertaCLIP.visual builds it), computed from a CLIPConfig without
// building the module or reading weights, so the placement planner can size the `clip` component.
//
// Kept apart from clip.{hpp,cpp} (the port) on purpose: it is a sizing helper, not part of the
// reference. It counts exactly the tensors the port registers (wan::XLMRobertaCLIP, visual tower
// only: the text tower and log_scale are not ported), including post_norm and head, which the
// checkpoint holds and the loader loads although CLIPModel::visual does not run them.

#include <cstdint>
#include <vector>

#include "wan/clip.hpp"

namespace wan::clip {

/// Number of parameters of XLMRobertaCLIP(cfg) (= its `visual.*` tensors):
///   patch_embedding  vision_dim * 3 * patch_size^2 (+ vision_dim bias without pre_norm)
///   cls_embedding    vision_dim
///   pos_embedding    (1 + (image_size / patch_size)^2) * vision_dim
///   pre_norm         2 * vision_dim (with vision_pre_norm)
///   per block        4 d (norm1, norm2) + 3 d^2 + 3 d (to_qkv) + d^2 + d (proj)
///                    + 2 d h + h + d (mlp.0, mlp.2), h = int(d * vision_mlp_ratio)
///   post_norm        2 * vision_dim
///   head             vision_dim * embed_dim
/// 632,076,800 for CLIPConfig::clip_xlm_roberta_vit_h_14() (1.26 GB in fp16, as WanI2V keeps it).
/// Throws offload::config_error for what the port cannot build (pool other than 'token', an
/// activation other than 'gelu'/'quick_gelu', no layers, non-positive sizes).
std::int64_t parameter_count(const CLIPConfig& cfg);

/// Numbers of elements of every parameter of XLMRobertaCLIP(cfg), without building it: what
/// parameter_count sums, and the sizes the preset's pinned bytes pack. Throws as parameter_count.
std::vector<std::int64_t> tensor_numels(const CLIPConfig& cfg);

} // namespace wan::clip

namespace wan {
using clip::parameter_count;
} // namespace wan
