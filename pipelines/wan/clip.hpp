#pragma once
// Port of Wan-Video/Wan2.1@9737cba, wan/modules/clip.py: the VISUAL tower of
// clip_xlm_roberta_vit_h_14 as WanI2V / WanFLF2V use it (CLIPModel.visual).
//
// Ported: QuickGELU, LayerNorm (float32 statistics), SelfAttention, AttentionBlock,
// VisionTransformer, XLMRobertaCLIP (the `visual` member only), clip_xlm_roberta_vit_h_14 (as
// CLIPConfig::clip_xlm_roberta_vit_h_14()) and the CLIPModel wrapper (preprocessing + visual).
// Names equal the Python ones, so `visual.patch_embedding.weight`,
// `visual.transformer.N.attn.to_qkv.weight`, ... load with no rename table.
//
// Deliberate deviations:
//  * The classes live in namespace wan::clip, because clip.py's AttentionBlock would collide with
//    vae.py's AttentionBlock in namespace wan; wan::CLIPModel/CLIPConfig/XLMRobertaCLIP alias them.
//  * The text tower (XLMRobertaWithHead, `textual.*`) and `log_scale` are not ported: Wan only runs
//    the visual tower. The official checkpoint holds them; CLIPModel skips them explicitly with
//    offload::load_options::ignore_unexpected_prefixes = unported_checkpoint_prefixes()
//    ({"textual.", "log_scale"}). For the same reason CLIPModel takes no tokenizer_path.
//  * Only pool_type 'token' and activations 'gelu' / 'quick_gelu' are built (what the reference
//    presets use); 'token_fc', 'attn_pool' and 'swi_glu' throw offload::config_error.
//  * Attention is softmax(q k^T / sqrt(d)) v computed in the input precision (softmax in float32),
//    the function flash_attention computes; the GPU kernel's bf16 rounding of q/k/v is not applied.
//  * The reference runs the visual tower under torch.cuda.amp.autocast(dtype); LibTorch has no
//    such context here, so CLIPModel::visual casts the preprocessed images to the module dtype.
//  * Freshly built modules are not initialised like the Python (weights come from a checkpoint;
//    the config overload of CLIPModel keeps LibTorch's default initialisation, for benchmarks).

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <offload/state_dict.hpp>

namespace wan::clip {

/// Hyper-parameters of XLMRobertaCLIP (clip_xlm_roberta_vit_h_14 in clip.py). The text fields are
/// kept so the preset reads like the Python; only the vision fields build modules.
struct CLIPConfig {
  std::int64_t embed_dim = 1024;
  std::int64_t image_size = 224;
  std::int64_t patch_size = 14;
  std::int64_t vision_dim = 1280;
  double vision_mlp_ratio = 4;
  std::int64_t vision_heads = 16;
  std::int64_t vision_layers = 32;
  std::string vision_pool = "token";
  bool vision_pre_norm = true;
  bool vision_post_norm = false;
  std::string activation = "gelu";
  std::int64_t vocab_size = 250002;
  std::int64_t max_text_len = 514;
  std::int64_t type_size = 1;
  std::int64_t pad_id = 1;
  std::int64_t text_dim = 1024;
  std::int64_t text_heads = 16;
  std::int64_t text_layers = 24;
  bool text_post_norm = true;
  double text_dropout = 0.1;
  double attn_dropout = 0.0;
  double proj_dropout = 0.0;
  double embedding_dropout = 0.0;
  double norm_eps = 1e-5;
  /// Normalize constants of the image transforms (_clip: the non-siglip mean/std).
  std::array<double, 3> norm_mean = {0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> norm_std = {0.26862954, 0.26130258, 0.27577711};

  /// The preset WanI2V / WanFLF2V build (open-clip-xlm-roberta-large-vit-huge-14).
  static CLIPConfig clip_xlm_roberta_vit_h_14();
  /// Reads the vision hyper-parameters off a checkpoint (`visual.*`): vision_dim and patch_size
  /// from visual.patch_embedding.weight, image_size from visual.pos_embedding, embed_dim from
  /// visual.head, vision_mlp_ratio from visual.transformer.0.mlp.0.weight, vision_layers = number
  /// of visual.transformer.N, vision_pre_norm = presence of visual.pre_norm.weight.
  /// vision_heads cannot be inferred and is taken from the argument (official: 16).
  static CLIPConfig infer_from_weights(const offload::state_dict& sd,
                                       std::int64_t vision_heads = 16);

  bool operator==(const CLIPConfig&) const = default;
};

/// x * sigmoid(1.702 x).
class QuickGELUImpl : public torch::nn::Module {
public:
  torch::Tensor forward(const torch::Tensor& x);
};
TORCH_MODULE(QuickGELU);

/// nn.LayerNorm run in float32 and cast back to the input dtype.
class LayerNormImpl : public torch::nn::Module {
public:
  explicit LayerNormImpl(std::int64_t dim, double eps = 1e-5);
  torch::Tensor forward(const torch::Tensor& x);

  std::int64_t dim;
  double eps;
  torch::Tensor weight, bias;
};
TORCH_MODULE(LayerNorm);

/// Fused-qkv multi-head self-attention.
class SelfAttentionImpl : public torch::nn::Module {
public:
  SelfAttentionImpl(std::int64_t dim, std::int64_t num_heads, bool causal = false,
                    double attn_dropout = 0.0, double proj_dropout = 0.0);
  /// x: [B, L, C] -> [B, L, C].
  torch::Tensor forward(const torch::Tensor& x);

  std::int64_t dim, num_heads, head_dim;
  bool causal;
  double attn_dropout, proj_dropout;
  torch::nn::Linear to_qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(SelfAttention);

/// Pre-norm (or post-norm) transformer block with an MLP `mlp` = Sequential(Linear, act, Linear,
/// Dropout).
class AttentionBlockImpl : public torch::nn::Module {
public:
  AttentionBlockImpl(std::int64_t dim, double mlp_ratio, std::int64_t num_heads,
                     bool post_norm = false, bool causal = false,
                     const std::string& activation = "quick_gelu", double attn_dropout = 0.0,
                     double proj_dropout = 0.0, double norm_eps = 1e-5);
  torch::Tensor forward(const torch::Tensor& x);

  std::int64_t dim;
  double mlp_ratio;
  std::int64_t num_heads;
  bool post_norm, causal;
  double norm_eps;
  LayerNorm norm1{nullptr};
  SelfAttention attn{nullptr};
  LayerNorm norm2{nullptr};
  torch::nn::Sequential mlp{nullptr};
};
TORCH_MODULE(AttentionBlock);

/// ViT with a class token; `transformer` is a Sequential of AttentionBlocks.
class VisionTransformerImpl : public torch::nn::Module {
public:
  VisionTransformerImpl(std::int64_t image_size = 224, std::int64_t patch_size = 16,
                        std::int64_t dim = 768, double mlp_ratio = 4, std::int64_t out_dim = 512,
                        std::int64_t num_heads = 12, std::int64_t num_layers = 12,
                        const std::string& pool_type = "token", bool pre_norm = true,
                        bool post_norm = false, const std::string& activation = "quick_gelu",
                        double attn_dropout = 0.0, double proj_dropout = 0.0,
                        double embedding_dropout = 0.0, double norm_eps = 1e-5);
  /// x: [B, 3, H, W] -> [B, 1 + (H/p)*(W/p), dim], the output of all blocks, or of all but the
  /// last one with use_31_block (what CLIPModel.visual reads). No post_norm / head, like the
  /// reference.
  torch::Tensor forward(const torch::Tensor& x, bool interpolation = false,
                        bool use_31_block = false);
  /// The first half of forward: patch embedding, class token, position embedding, dropout,
  /// pre_norm. forward = embeddings followed by the transformer blocks.
  torch::Tensor embeddings(const torch::Tensor& x, bool interpolation = false);

  std::int64_t image_size, patch_size, num_patches, dim;
  double mlp_ratio;
  std::int64_t out_dim, num_heads, num_layers;
  std::string pool_type;
  double norm_eps;
  torch::nn::Conv2d patch_embedding{nullptr};
  torch::Tensor cls_embedding;  // [1, 1, dim]
  torch::Tensor pos_embedding;  // [1, num_patches + 1, dim]
  torch::nn::Dropout dropout{nullptr};
  LayerNorm pre_norm{nullptr};  ///< null without pre_norm
  torch::nn::Sequential transformer{nullptr};
  LayerNorm post_norm{nullptr};
  torch::Tensor head;  // [dim, out_dim]
};
TORCH_MODULE(VisionTransformer);

/// CLIP with an XLM-RoBERTa text tower in the reference; here the visual tower only.
class XLMRobertaCLIPImpl : public torch::nn::Module {
public:
  explicit XLMRobertaCLIPImpl(const CLIPConfig& cfg = CLIPConfig::clip_xlm_roberta_vit_h_14());

  /// Checkpoint prefixes of the parts not ported ({"textual.", "log_scale"}): pass them as
  /// offload::load_options::ignore_unexpected_prefixes when loading an official checkpoint.
  static std::vector<std::string> unported_checkpoint_prefixes();

  CLIPConfig config;
  VisionTransformer visual{nullptr};
};
TORCH_MODULE(XLMRobertaCLIP);

/// Pixel preprocessing of CLIPModel.visual: each [3, F, H, W] video in [-1, 1] is resized
/// (bicubic, align_corners=False) to image_size, the frames are concatenated, mapped to [0, 1]
/// (x * 0.5 + 0.5) and normalised with the config's mean/std. Returns [sum F, 3, S, S].
torch::Tensor preprocess_videos(const std::vector<torch::Tensor>& videos, const CLIPConfig& cfg);

/// The wrapper WanI2V / WanFLF2V use (CLIPModel in clip.py).
///
/// **Example**
/// \code
/// wan::CLIPModel clip(torch::kFloat, torch::kCPU,
///     "Wan2.1-I2V-14B-480P/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth");
/// torch::Tensor clip_fea = clip.visual({img.unsqueeze(1)});  // [1, 257, 1280]
/// \endcode
class CLIPModel {
public:
  /// Builds XLMRobertaCLIP (config inferred from the checkpoint's visual.* keys unless given) in
  /// `dtype`, loads `visual.*` strictly, ignoring exactly unported_checkpoint_prefixes(),
  /// switches to eval mode and moves it to `device`.
  CLIPModel(torch::Dtype dtype, torch::Device device, const std::filesystem::path& checkpoint_path,
            std::optional<CLIPConfig> config = std::nullopt);
  /// Builds XLMRobertaCLIP(config) without a checkpoint (random weights, LibTorch's default
  /// initialisation; benchmarks) in `dtype`, eval mode, on `device`.
  CLIPModel(torch::Dtype dtype, torch::Device device, const CLIPConfig& config);

  /// videos: [3, F, H, W] each, values in [-1, 1]. Returns [sum F, 257, vision_dim] (the output
  /// of all transformer blocks but the last).
  torch::Tensor visual(const std::vector<torch::Tensor>& videos);

  torch::Dtype dtype;
  torch::Device device;
  std::filesystem::path checkpoint_path;
  XLMRobertaCLIP model{nullptr};
};

} // namespace wan::clip

namespace wan {
using clip::CLIPConfig;
using clip::CLIPModel;
using clip::XLMRobertaCLIP;
using clip::XLMRobertaCLIPImpl;
} // namespace wan
