// Port of Wan-Video/Wan2.1@9737cba, wan/modules/clip.py (visual tower); deviations in clip.hpp.
#include "clip.hpp"

#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)
#include <torch/torch.h>

#include <offload/errors.hpp>

namespace wan::clip {

namespace {

namespace F = torch::nn::functional;

const torch::Tensor& require_key(const offload::state_dict& sd, const std::string& key,
                                 std::int64_t dims) {
  const auto it = sd.find(key);
  if (it == sd.end()) {
    throw offload::checkpoint_error(
        "offload.checkpoint.missing_keys",
        fmt::format("CLIPConfig::infer_from_weights: expected key '{}' in the CLIP state dict "
                    "({} keys), found none; is this "
                    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth?",
                    key, sd.size()));
  }
  if (it->second.dim() != dims) {
    throw offload::checkpoint_error(
        "offload.checkpoint.shape_mismatch",
        fmt::format("CLIPConfig::infer_from_weights: expected '{}' to have {} dimensions, found "
                    "shape {}",
                    key, dims, fmt::join(it->second.sizes(), "x")));
  }
  return it->second;
}

// pos_interpolate: bicubic resize of the patch part of the position embedding to seq_len.
torch::Tensor pos_interpolate(const torch::Tensor& pos, std::int64_t seq_len) {
  if (pos.size(1) == seq_len) return pos;
  const auto src_grid = static_cast<std::int64_t>(std::sqrt(static_cast<double>(pos.size(1))));
  const auto tar_grid = static_cast<std::int64_t>(std::sqrt(static_cast<double>(seq_len)));
  const std::int64_t n = pos.size(1) - src_grid * src_grid;
  auto grid = pos.slice(1, n).to(torch::kFloat).reshape({1, src_grid, src_grid, -1}).permute(
      {0, 3, 1, 2});  // [1, C, g, g]
  grid = F::interpolate(grid, F::InterpolateFuncOptions()
                                  .size(std::vector<std::int64_t>{tar_grid, tar_grid})
                                  .mode(torch::kBicubic)
                                  .align_corners(false));
  return torch::cat({pos.slice(1, 0, n), grid.flatten(2).transpose(1, 2)}, 1);  // [1, L, C]
}

} // namespace

// ---- config ---------------------------------------------------------------------------------

CLIPConfig CLIPConfig::clip_xlm_roberta_vit_h_14() {
  CLIPConfig c;  // the member defaults are the preset (cfg of clip_xlm_roberta_vit_h_14)
  c.embed_dim = 1024;
  c.image_size = 224;
  c.patch_size = 14;
  c.vision_dim = 1280;
  c.vision_mlp_ratio = 4;
  c.vision_heads = 16;
  c.vision_layers = 32;
  c.vision_pool = "token";
  c.activation = "gelu";
  c.vocab_size = 250002;
  c.max_text_len = 514;
  c.type_size = 1;
  c.pad_id = 1;
  c.text_dim = 1024;
  c.text_heads = 16;
  c.text_layers = 24;
  c.text_post_norm = true;
  c.text_dropout = 0.1;
  c.attn_dropout = 0.0;
  c.proj_dropout = 0.0;
  c.embedding_dropout = 0.0;
  return c;
}

CLIPConfig CLIPConfig::infer_from_weights(const offload::state_dict& sd,
                                          std::int64_t vision_heads) {
  CLIPConfig c = clip_xlm_roberta_vit_h_14();
  const auto& patch = require_key(sd, "visual.patch_embedding.weight", 4);  // [dim, 3, p, p]
  c.vision_dim = patch.size(0);
  c.patch_size = patch.size(2);
  const auto& pos = require_key(sd, "visual.pos_embedding", 3);  // [1, 1 + g*g, dim]
  c.image_size =
      static_cast<std::int64_t>(std::lround(std::sqrt(static_cast<double>(pos.size(1) - 1)))) *
      c.patch_size;
  c.embed_dim = require_key(sd, "visual.head", 2).size(1);  // [dim, embed_dim]
  c.vision_mlp_ratio =
      static_cast<double>(require_key(sd, "visual.transformer.0.mlp.0.weight", 2).size(0)) /
      static_cast<double>(c.vision_dim);
  std::int64_t layers = 0;
  while (sd.count(fmt::format("visual.transformer.{}.norm1.weight", layers)) > 0) ++layers;
  c.vision_layers = layers;
  c.vision_pre_norm = sd.count("visual.pre_norm.weight") > 0;
  c.vision_heads = vision_heads;
  return c;
}

// ---- modules --------------------------------------------------------------------------------

torch::Tensor QuickGELUImpl::forward(const torch::Tensor& x) {
  return x * torch::sigmoid(1.702 * x);
}

LayerNormImpl::LayerNormImpl(std::int64_t dim_, double eps_) : dim(dim_), eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
  bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  // nn.LayerNorm.forward(x.float()).type_as(x); non-float32 weights are read as float32
  const auto w = weight.scalar_type() == torch::kFloat ? weight : weight.to(torch::kFloat);
  const auto b = bias.scalar_type() == torch::kFloat ? bias : bias.to(torch::kFloat);
  return torch::layer_norm(x.to(torch::kFloat), {dim}, w, b, eps).to(x.scalar_type());
}

SelfAttentionImpl::SelfAttentionImpl(std::int64_t dim_, std::int64_t num_heads_, bool causal_,
                                     double attn_dropout_, double proj_dropout_)
    : dim(dim_), num_heads(num_heads_), head_dim(num_heads_ > 0 ? dim_ / num_heads_ : 0),
      causal(causal_), attn_dropout(attn_dropout_), proj_dropout(proj_dropout_) {
  if (num_heads <= 0 || dim % num_heads != 0) {
    throw offload::config_error(
        "offload.config.clip_heads",
        fmt::format("clip SelfAttention: expected dim divisible by num_heads, found dim {} and "
                    "num_heads {} (vision_heads is not stored in the checkpoint; official: 16)",
                    dim, num_heads));
  }
  to_qkv = register_module("to_qkv", torch::nn::Linear(dim, dim * 3));
  proj = register_module("proj", torch::nn::Linear(dim, dim));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& x) {
  const std::int64_t b = x.size(0), s = x.size(1), c = x.size(2), n = num_heads, d = head_dim;

  // compute query, key, value
  const auto qkv = to_qkv->forward(x).view({b, s, 3, n, d}).unbind(2);  // 3 x [B, L, N, D]
  const auto q = qkv[0].transpose(1, 2);                                // [B, N, L, D]
  const auto k = qkv[1].transpose(1, 2);                                // [B, N, L, D]
  const auto v = qkv[2].transpose(1, 2);                                // [B, N, L, D]

  // compute attention: flash_attention(q, k, v) = softmax(q k^T / sqrt(d)) v
  auto attn = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(d)));
  if (causal) {  // [B, N, L, L]
    const auto keep = torch::ones({s, s}, torch::TensorOptions().dtype(torch::kBool).device(
                                              x.device())).tril();
    attn = attn.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
  }
  attn = torch::softmax(attn.to(torch::kFloat), -1).to(q.scalar_type());
  const double p = is_training() ? attn_dropout : 0.0;
  if (p > 0.0) attn = torch::dropout(attn, p, /*train=*/true);
  auto out = torch::matmul(attn, v).transpose(1, 2).reshape({b, s, c});  // [B, L, C]

  // output
  out = proj->forward(out);
  return torch::dropout(out, proj_dropout, is_training());
}

AttentionBlockImpl::AttentionBlockImpl(std::int64_t dim_, double mlp_ratio_,
                                       std::int64_t num_heads_, bool post_norm_, bool causal_,
                                       const std::string& activation, double attn_dropout,
                                       double proj_dropout, double norm_eps_)
    : dim(dim_), mlp_ratio(mlp_ratio_), num_heads(num_heads_), post_norm(post_norm_),
      causal(causal_), norm_eps(norm_eps_) {
  if (activation != "gelu" && activation != "quick_gelu") {
    throw offload::config_error(
        "offload.config.clip_activation",
        fmt::format("clip AttentionBlock: expected activation 'gelu' or 'quick_gelu', found "
                    "'{}' ('swi_glu' is not ported: no Wan checkpoint uses it)",
                    activation));
  }
  norm1 = register_module("norm1", LayerNorm(dim, norm_eps));
  attn = register_module("attn", SelfAttention(dim, num_heads, causal, attn_dropout, proj_dropout));
  norm2 = register_module("norm2", LayerNorm(dim, norm_eps));
  const auto hidden = static_cast<std::int64_t>(static_cast<double>(dim) * mlp_ratio);
  torch::nn::Sequential seq;
  seq->push_back(torch::nn::Linear(dim, hidden));
  if (activation == "quick_gelu") {
    seq->push_back(QuickGELU());
  } else {
    seq->push_back(torch::nn::GELU());
  }
  seq->push_back(torch::nn::Linear(hidden, dim));
  seq->push_back(torch::nn::Dropout(proj_dropout));
  mlp = register_module("mlp", seq);
}

torch::Tensor AttentionBlockImpl::forward(const torch::Tensor& x_in) {
  torch::Tensor x = x_in;  // [B, L, C]
  if (post_norm) {
    x = x + norm1->forward(attn->forward(x));
    x = x + norm2->forward(mlp->forward(x));
  } else {
    x = x + attn->forward(norm1->forward(x));
    x = x + mlp->forward(norm2->forward(x));
  }
  return x;
}

VisionTransformerImpl::VisionTransformerImpl(
    std::int64_t image_size_, std::int64_t patch_size_, std::int64_t dim_, double mlp_ratio_,
    std::int64_t out_dim_, std::int64_t num_heads_, std::int64_t num_layers_,
    const std::string& pool_type_, bool pre_norm_flag, bool post_norm_flag,
    const std::string& activation, double attn_dropout, double proj_dropout,
    double embedding_dropout, double norm_eps_)
    : image_size(image_size_), patch_size(patch_size_),
      num_patches((image_size_ / patch_size_) * (image_size_ / patch_size_)), dim(dim_),
      mlp_ratio(mlp_ratio_), out_dim(out_dim_ > 0 ? out_dim_ : dim_), num_heads(num_heads_),
      num_layers(num_layers_), pool_type(pool_type_), norm_eps(norm_eps_) {
  if (pool_type != "token") {
    throw offload::config_error(
        "offload.config.clip_pool",
        fmt::format("clip VisionTransformer: expected pool_type 'token' (the Wan CLIP), found "
                    "'{}'; 'token_fc' and 'attn_pool' are not ported",
                    pool_type));
  }
  if (num_layers < 1) {
    throw offload::config_error(
        "offload.config.clip_layers",
        fmt::format("clip VisionTransformer: expected num_layers >= 1, found {}", num_layers));
  }

  // embeddings
  const double gain = 1.0 / std::sqrt(static_cast<double>(dim));
  patch_embedding = register_module(
      "patch_embedding",
      torch::nn::Conv2d(
          torch::nn::Conv2dOptions(3, dim, patch_size).stride(patch_size).bias(!pre_norm_flag)));
  cls_embedding = register_parameter("cls_embedding", gain * torch::randn({1, 1, dim}));
  pos_embedding =
      register_parameter("pos_embedding", gain * torch::randn({1, num_patches + 1, dim}));
  dropout = register_module("dropout", torch::nn::Dropout(embedding_dropout));

  // transformer
  if (pre_norm_flag) pre_norm = register_module("pre_norm", LayerNorm(dim, norm_eps));
  transformer = register_module("transformer", torch::nn::Sequential());
  for (std::int64_t i = 0; i < num_layers; ++i) {
    transformer->push_back(AttentionBlock(dim, mlp_ratio, num_heads, post_norm_flag, false,
                                          activation, attn_dropout, proj_dropout, norm_eps));
  }
  post_norm = register_module("post_norm", LayerNorm(dim, norm_eps));

  // head
  head = register_parameter("head", gain * torch::randn({dim, out_dim}));
}

torch::Tensor VisionTransformerImpl::embeddings(const torch::Tensor& x_in, bool interpolation) {
  const std::int64_t b = x_in.size(0);
  auto x = patch_embedding->forward(x_in).flatten(2).permute({0, 2, 1});  // [B, L, C]
  x = torch::cat({cls_embedding.expand({b, -1, -1}), x}, 1);               // [B, 1 + L, C]
  const auto e = interpolation ? pos_interpolate(pos_embedding, x.size(1)) : pos_embedding;
  x = dropout->forward(x + e);
  if (!pre_norm.is_empty()) x = pre_norm->forward(x);
  return x;
}

torch::Tensor VisionTransformerImpl::forward(const torch::Tensor& x_in, bool interpolation,
                                             bool use_31_block) {
  auto x = embeddings(x_in, interpolation);  // [B, 1 + L, C]
  const std::size_t n = transformer->size() - (use_31_block ? 1 : 0);
  for (std::size_t i = 0; i < n; ++i) {
    x = transformer->ptr<AttentionBlockImpl>(i)->forward(x);  // [B, 1 + L, C]
  }
  return x;
}

XLMRobertaCLIPImpl::XLMRobertaCLIPImpl(const CLIPConfig& cfg) : config(cfg) {
  visual = register_module(
      "visual", VisionTransformer(cfg.image_size, cfg.patch_size, cfg.vision_dim,
                                  cfg.vision_mlp_ratio, cfg.embed_dim, cfg.vision_heads,
                                  cfg.vision_layers, cfg.vision_pool, cfg.vision_pre_norm,
                                  cfg.vision_post_norm, cfg.activation, cfg.attn_dropout,
                                  cfg.proj_dropout, cfg.embedding_dropout, cfg.norm_eps));
}

std::vector<std::string> XLMRobertaCLIPImpl::unported_checkpoint_prefixes() {
  return {"textual.", "log_scale"};
}

// ---- CLIPModel ------------------------------------------------------------------------------

torch::Tensor preprocess_videos(const std::vector<torch::Tensor>& videos, const CLIPConfig& cfg) {
  if (videos.empty()) {
    throw offload::config_error("offload.config.clip_input",
                                "CLIPModel::visual: expected at least one [3, F, H, W] video, "
                                "found an empty list");
  }
  std::vector<torch::Tensor> resized;
  for (std::size_t i = 0; i < videos.size(); ++i) {
    const auto& u = videos[i];
    if (u.dim() != 4 || u.size(0) != 3) {
      throw offload::config_error(
          "offload.config.clip_input",
          fmt::format("CLIPModel::visual: expected video {} of shape [3, F, H, W], found {}; a "
                      "single image [3, H, W] is passed as img.unsqueeze(1)",
                      i, fmt::join(u.sizes(), "x")));
    }
    resized.push_back(F::interpolate(
        u.transpose(0, 1),  // [F, 3, H, W]
        F::InterpolateFuncOptions()
            .size(std::vector<std::int64_t>{cfg.image_size, cfg.image_size})
            .mode(torch::kBicubic)
            .align_corners(false)));  // [F, 3, S, S]
  }
  auto x = torch::cat(resized);  // [N, 3, S, S]
  x = x.mul(0.5).add(0.5);
  // T.Normalize(mean, std): (x - mean[:, None, None]) / std[:, None, None] in x's dtype
  const auto opts = torch::TensorOptions().dtype(x.scalar_type()).device(x.device());
  const auto mean = torch::tensor(std::vector<double>(cfg.norm_mean.begin(), cfg.norm_mean.end()),
                                  opts).view({-1, 1, 1});
  const auto std_ = torch::tensor(std::vector<double>(cfg.norm_std.begin(), cfg.norm_std.end()),
                                  opts).view({-1, 1, 1});
  return x.sub(mean).div(std_);  // [N, 3, S, S]
}

CLIPModel::CLIPModel(torch::Dtype dtype_, torch::Device device_,
                     const std::filesystem::path& checkpoint_path_,
                     std::optional<CLIPConfig> config)
    : dtype(dtype_), device(device_), checkpoint_path(checkpoint_path_) {
  const offload::state_dict sd = offload::load_checkpoint(checkpoint_path);
  const CLIPConfig cfg = config ? *config : CLIPConfig::infer_from_weights(sd);
  model = XLMRobertaCLIP(cfg);
  model->to(dtype);
  offload::load_options opts;
  opts.ignore_unexpected_prefixes = XLMRobertaCLIPImpl::unported_checkpoint_prefixes();
  opts.source = checkpoint_path.string();
  offload::load_state(*model, sd, opts);
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  model->to(device);
}

CLIPModel::CLIPModel(torch::Dtype dtype_, torch::Device device_, const CLIPConfig& config)
    : dtype(dtype_), device(device_) {
  model = XLMRobertaCLIP(config);
  model->to(dtype);
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  model->to(device);
}

torch::Tensor CLIPModel::visual(const std::vector<torch::Tensor>& videos) {
  torch::NoGradGuard no_grad;
  const auto x = preprocess_videos(videos, model->config);  // [N, 3, S, S]
  return model->visual->forward(x.to(dtype), /*interpolation=*/false, /*use_31_block=*/true);
}

} // namespace wan::clip
