// Port of Wan-Video/Wan2.1@9737cba, wan/modules/vae.py. Deviations: see vae.hpp.
#include "wan/vae.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <offload/errors.hpp>
#include <offload/state_dict.hpp>

namespace wan {

namespace F = torch::nn::functional;
using torch::Tensor;

namespace {

/// x[:, :, -n:, :, :] (a view; fewer frames when x has fewer than n).
Tensor last_frames(const Tensor& x, int64_t n) {
  const int64_t t = x.size(2);
  return n >= t ? x : x.narrow(2, t - n, n);
}

/// The cached CausalConv3d step repeated throughout the Python (Encoder3d/Decoder3d conv1 and
/// head, ResidualBlock.residual): remember the last CACHE_T input frames (completed with the
/// previous chunk's last frame when this chunk has only one), run the conv on [cache, x].
Tensor cached_conv(CausalConv3dImpl& conv, const Tensor& x, FeatCache& feat_cache,
                   int64_t& feat_idx) {
  CacheSlot& slot = feat_cache.at(static_cast<std::size_t>(feat_idx));
  Tensor cache_x = last_frames(x, CACHE_T); // [B, C, <=2, H, W]
  if (cache_x.size(2) < 2 && slot.is_tensor()) {
    // cache last frame of last two chunk (the cat copies, so no clone is needed)
    cache_x = torch::cat({last_frames(slot.tensor(), 1), cache_x}, 2); // [B, C, 2, H, W]
  } else {
    cache_x = cache_x.clone(); // detach from x's storage
  }
  Tensor out = conv.forward(x, slot.tensor()); // undefined cache == None
  slot = CacheSlot(std::move(cache_x));
  ++feat_idx;
  return out;
}

/// 'b c t h w -> (b t) c h w'
Tensor frames_to_batch(const Tensor& x) {
  return x.permute({0, 2, 1, 3, 4}).reshape({x.size(0) * x.size(2), x.size(1), x.size(3), x.size(4)});
}

/// '(b t) c h w -> b c t h w'
Tensor batch_to_frames(const Tensor& x, int64_t t) {
  return x.reshape({x.size(0) / t, t, x.size(1), x.size(2), x.size(3)}).permute({0, 2, 1, 3, 4});
}

} // namespace

// --- CausalConv3d ----------------------------------------------------------------------------

CausalConv3dImpl::CausalConv3dImpl(int64_t in_channels, int64_t out_channels,
                                   torch::ExpandingArray<3> kernel_size,
                                   torch::ExpandingArray<3> stride,
                                   torch::ExpandingArray<3> padding)
    : in_channels(in_channels), out_channels(out_channels), kernel_size(kernel_size),
      stride(stride), padding(padding), time_front_pad(2 * (*padding)[0]) {
  reset();
}

void CausalConv3dImpl::reset() {
  const auto& k = *kernel_size;
  weight = register_parameter("weight", torch::empty({out_channels, in_channels, k[0], k[1], k[2]}));
  bias = register_parameter("bias", torch::empty({out_channels}));
  reset_parameters();
}

void CausalConv3dImpl::reset_parameters() {
  // nn.Conv3d's default initialisation.
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  const int64_t fan_in_elements = weight.numel() / weight.size(0); // in_channels x kernel volume
  const auto fan_in = static_cast<double>(fan_in_elements);
  const double bound = 1.0 / std::sqrt(fan_in);
  torch::nn::init::uniform_(bias, -bound, bound);
}

Tensor CausalConv3dImpl::forward(const Tensor& x, const Tensor& cache_x) {
  // x: [B, Cin, T, H, W] -> [B, Cout, T', H', W']
  int64_t front = time_front_pad; // Python padding[4]
  Tensor input = x;
  const bool use_cache = cache_x.defined() && time_front_pad > 0;
  if (use_cache) {
    front -= cache_x.size(2);
  }
  if (front > 0 || use_cache) {
    std::vector<Tensor> parts;
    parts.reserve(3);
    if (front > 0) {
      parts.push_back(x.new_zeros({x.size(0), x.size(1), front, x.size(3), x.size(4)}));
    }
    if (use_cache) {
      parts.push_back(cache_x);
    }
    parts.push_back(x);
    input = torch::cat(parts, 2); // [B, Cin, front + Tc + T, H, W]
  }
  if (front < 0) { // F.pad with a negative amount crops
    input = input.narrow(2, -front, input.size(2) + front);
  }
  const auto& p = *padding;
  return torch::conv3d(input, weight, bias, *stride, {0, p[1], p[2]});
}

// --- RMS_norm --------------------------------------------------------------------------------

RMS_normImpl::RMS_normImpl(int64_t dim, bool channel_first, bool images, bool bias)
    : dim(dim), channel_first(channel_first), images(images), has_bias(bias),
      scale(std::sqrt(static_cast<double>(dim))) {
  reset();
}

void RMS_normImpl::reset() {
  std::vector<int64_t> shape{dim};
  if (channel_first) {
    shape.insert(shape.end(), images ? 2 : 3, 1); // (dim, 1, 1) or (dim, 1, 1, 1)
  }
  gamma = register_parameter("gamma", torch::ones(shape));
  if (has_bias) {
    bias = register_parameter("bias", torch::zeros(shape));
  }
}

Tensor RMS_normImpl::forward(const Tensor& x) {
  Tensor y = F::normalize(x, F::NormalizeFuncOptions().dim(channel_first ? 1 : -1)) * scale * gamma;
  return has_bias ? y + bias : y; // Python adds the float 0. when there is no bias
}

// --- Upsample --------------------------------------------------------------------------------

Tensor UpsampleImpl::forward(const Tensor& x) {
  // Fix bfloat16 support for nearest neighbor interpolation (compute in float32).
  const Tensor xf = x.to(torch::kFloat32); // no copy for float32 input
  // F.interpolate(scale_factor=(2, 2), mode='nearest-exact') on [N, C, H, W]; the ATen op is
  // called directly because LibTorch's F::interpolate logs a spurious align_corners warning.
  Tensor y = torch::_upsample_nearest_exact2d(xf, c10::nullopt, scale_factor);
  return y.to(x.scalar_type());
}

// --- Resample --------------------------------------------------------------------------------

ResampleImpl::ResampleImpl(int64_t dim, std::string mode) : dim(dim), mode(std::move(mode)) {
  if (this->mode != "none" && this->mode != "upsample2d" && this->mode != "upsample3d" &&
      this->mode != "downsample2d" && this->mode != "downsample3d") {
    throw offload::config_error(
        "offload.config.vae_resample_mode",
        fmt::format("Resample mode '{}' is not one of none, upsample2d, upsample3d, downsample2d, "
                    "downsample3d (wan/modules/vae.py Resample)",
                    this->mode));
  }
  reset();
}

void ResampleImpl::reset() {
  using torch::nn::Conv2d;
  using torch::nn::Conv2dOptions;
  if (mode == "upsample2d" || mode == "upsample3d") {
    resample = torch::nn::Sequential(Upsample(std::vector<double>{2.0, 2.0}),
                                     Conv2d(Conv2dOptions(dim, dim / 2, 3).padding(1)));
    if (mode == "upsample3d") {
      time_conv = CausalConv3d(dim, dim * 2, torch::ExpandingArray<3>({3, 1, 1}), 1,
                               torch::ExpandingArray<3>({1, 0, 0}));
    }
  } else if (mode == "downsample2d" || mode == "downsample3d") {
    resample = torch::nn::Sequential(
        torch::nn::ZeroPad2d(torch::nn::ZeroPad2dOptions({0, 1, 0, 1})),
        Conv2d(Conv2dOptions(dim, dim, 3).stride(2)));
    if (mode == "downsample3d") {
      time_conv = CausalConv3d(dim, dim, torch::ExpandingArray<3>({3, 1, 1}),
                               torch::ExpandingArray<3>({2, 1, 1}), 0);
    }
  } else {
    resample = torch::nn::Sequential(torch::nn::Identity());
  }
  register_module("resample", resample);
  if (time_conv) {
    register_module("time_conv", time_conv);
  }
}

Tensor ResampleImpl::forward(const Tensor& x) {
  int64_t idx = 0;
  return forward(x, nullptr, idx);
}

Tensor ResampleImpl::forward(Tensor x, FeatCache* feat_cache, int64_t& feat_idx) {
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  if (mode == "upsample3d" && feat_cache != nullptr) {
    CacheSlot& slot = feat_cache->at(static_cast<std::size_t>(feat_idx));
    if (slot.is_none()) {
      slot = CacheSlot::rep(); // first chunk: no temporal upsampling
      ++feat_idx;
    } else {
      Tensor cache_x = last_frames(x, CACHE_T).clone(); // [B, C, <=2, H, W]
      if (cache_x.size(2) < 2 && slot.is_tensor()) {
        // cache last frame of last two chunk
        cache_x = torch::cat({last_frames(slot.tensor(), 1), cache_x}, 2);
      }
      if (cache_x.size(2) < 2 && slot.is_rep()) {
        cache_x = torch::cat({torch::zeros_like(cache_x), cache_x}, 2);
      }
      x = slot.is_rep() ? time_conv->forward(x) : time_conv->forward(x, slot.tensor()); // [B, 2C, T, H, W]
      slot = CacheSlot(std::move(cache_x));
      ++feat_idx;

      x = x.reshape({b, 2, c, t, h, w});
      x = torch::stack({x.select(1, 0), x.select(1, 1)}, 3); // [B, C, T, 2, H, W]
      x = x.reshape({b, c, t * 2, h, w});
    }
  }
  const int64_t t2 = x.size(2);
  x = frames_to_batch(x);    // [B*T, C, H, W]
  x = resample->forward(x);  // [B*T, C', H', W']
  x = batch_to_frames(x, t2); // [B, C', T, H', W']

  if (mode == "downsample3d" && feat_cache != nullptr) {
    CacheSlot& slot = feat_cache->at(static_cast<std::size_t>(feat_idx));
    if (slot.is_none()) {
      slot = CacheSlot(x.clone()); // first chunk: no temporal downsampling
      ++feat_idx;
    } else {
      Tensor cache_x = last_frames(x, 1).clone();
      x = time_conv->forward(torch::cat({last_frames(slot.tensor(), 1), x}, 2)); // [B, C, (T-1)/2+1, H', W']
      slot = CacheSlot(std::move(cache_x));
      ++feat_idx;
    }
  }
  return x;
}

// --- ResidualBlock ---------------------------------------------------------------------------

ResidualBlockImpl::ResidualBlockImpl(int64_t in_dim, int64_t out_dim, double dropout)
    : in_dim(in_dim), out_dim(out_dim), dropout(dropout) {
  reset();
}

void ResidualBlockImpl::reset() {
  residual = register_module(
      "residual",
      torch::nn::Sequential(RMS_norm(in_dim, true, false), torch::nn::SiLU(),
                            CausalConv3d(in_dim, out_dim, 3, 1, 1), RMS_norm(out_dim, true, false),
                            torch::nn::SiLU(), torch::nn::Dropout(dropout),
                            CausalConv3d(out_dim, out_dim, 3, 1, 1)));
  if (in_dim != out_dim) {
    shortcut = register_module("shortcut", CausalConv3d(in_dim, out_dim, 1));
  }
}

Tensor ResidualBlockImpl::forward(const Tensor& x) {
  int64_t idx = 0;
  return forward(x, nullptr, idx);
}

Tensor ResidualBlockImpl::forward(Tensor x, FeatCache* feat_cache, int64_t& feat_idx) {
  const Tensor h = shortcut ? shortcut->forward(x) : x; // [B, Cout, T, H, W]
  for (auto& layer : *residual) {
    auto* conv = layer.ptr()->as<CausalConv3dImpl>();
    if (conv != nullptr && feat_cache != nullptr) {
      x = cached_conv(*conv, x, *feat_cache, feat_idx);
    } else {
      x = layer.forward(x);
    }
  }
  return x + h;
}

// --- AttentionBlock --------------------------------------------------------------------------

AttentionBlockImpl::AttentionBlockImpl(int64_t dim) : dim(dim) { reset(); }

void AttentionBlockImpl::reset() {
  norm = register_module("norm", RMS_norm(dim));
  to_qkv = register_module("to_qkv", torch::nn::Conv2d(torch::nn::Conv2dOptions(dim, dim * 3, 1)));
  proj = register_module("proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(dim, dim, 1)));
  // zero out the last layer params
  torch::NoGradGuard no_grad;
  torch::nn::init::zeros_(proj->weight);
}

Tensor AttentionBlockImpl::forward(const Tensor& x) {
  const Tensor& identity = x;
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  Tensor y = frames_to_batch(x); // [B*T, C, H, W]
  y = norm->forward(y);
  // compute query, key, value
  auto qkv = to_qkv->forward(y)
                 .reshape({b * t, 1, c * 3, -1})
                 .permute({0, 1, 3, 2})
                 .contiguous()
                 .chunk(3, -1); // 3 x [B*T, 1, H*W, C]
  // apply attention (F.scaled_dot_product_attention, math reference)
  const double scale_factor = 1.0 / std::sqrt(static_cast<double>(c));
  Tensor attn = torch::matmul(qkv[0], qkv[1].transpose(-2, -1)) * scale_factor; // [B*T, 1, HW, HW]
  attn = torch::softmax(attn, -1);
  y = torch::matmul(attn, qkv[2]);                             // [B*T, 1, HW, C]
  y = y.squeeze(1).permute({0, 2, 1}).reshape({b * t, c, h, w}); // [B*T, C, H, W]
  // output
  y = proj->forward(y);
  y = batch_to_frames(y, t); // [B, C, T, H, W]
  return y + identity;
}

// --- Encoder3d -------------------------------------------------------------------------------

Encoder3dImpl::Encoder3dImpl(int64_t dim, int64_t z_dim, std::vector<int64_t> dim_mult,
                             int64_t num_res_blocks, std::vector<double> attn_scales,
                             std::vector<bool> temperal_downsample, double dropout)
    : dim(dim), z_dim(z_dim), dim_mult(std::move(dim_mult)), num_res_blocks(num_res_blocks),
      attn_scales(std::move(attn_scales)), temperal_downsample(std::move(temperal_downsample)),
      dropout(dropout) {
  reset();
}

namespace {
bool contains(const std::vector<double>& v, double x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}
} // namespace

void Encoder3dImpl::reset() {
  // dimensions
  std::vector<int64_t> dims{dim};
  for (int64_t u : dim_mult) {
    dims.push_back(dim * u);
  }
  double scale = 1.0;

  // init block
  conv1 = register_module("conv1", CausalConv3d(3, dims[0], 3, 1, 1));

  // downsample blocks
  downsamples = torch::nn::ModuleList();
  int64_t out_dim = dims[0];
  for (std::size_t i = 0; i + 1 < dims.size(); ++i) {
    int64_t in_dim = dims[i];
    out_dim = dims[i + 1];
    // residual (+attention) blocks
    for (int64_t r = 0; r < num_res_blocks; ++r) {
      downsamples->push_back(ResidualBlock(in_dim, out_dim, dropout));
      if (contains(attn_scales, scale)) {
        downsamples->push_back(AttentionBlock(out_dim));
      }
      in_dim = out_dim;
    }
    // downsample block
    if (i != dim_mult.size() - 1) {
      const bool temporal = temperal_downsample.at(i);
      downsamples->push_back(Resample(out_dim, temporal ? "downsample3d" : "downsample2d"));
      scale /= 2.0;
    }
  }
  register_module("downsamples", downsamples);

  // middle blocks
  middle = register_module("middle", torch::nn::ModuleList(ResidualBlock(out_dim, out_dim, dropout),
                                                           AttentionBlock(out_dim),
                                                           ResidualBlock(out_dim, out_dim, dropout)));

  // output blocks
  head = register_module("head", torch::nn::Sequential(RMS_norm(out_dim, true, false),
                                                       torch::nn::SiLU(),
                                                       CausalConv3d(out_dim, z_dim, 3, 1, 1)));
}

namespace {

/// One layer of Encoder3d.downsamples / Decoder3d.upsamples / *.middle, with the cache when
/// given (AttentionBlock never takes it).
Tensor run_block(const std::shared_ptr<torch::nn::Module>& layer, const Tensor& x,
                 FeatCache* feat_cache, int64_t& feat_idx) {
  if (auto* res = layer->as<ResidualBlockImpl>()) {
    return res->forward(x, feat_cache, feat_idx);
  }
  if (auto* rs = layer->as<ResampleImpl>()) {
    return rs->forward(x, feat_cache, feat_idx);
  }
  if (auto* attn = layer->as<AttentionBlockImpl>()) {
    return attn->forward(x);
  }
  throw offload::config_error("offload.config.vae_layer",
                              fmt::format("unexpected layer type '{}' in the VAE", layer->name()));
}

/// The `head` Sequential: cached CausalConv3d, other layers plain.
Tensor run_head(torch::nn::Sequential& head, Tensor x, FeatCache* feat_cache, int64_t& feat_idx) {
  for (auto& layer : *head) {
    auto* conv = layer.ptr()->as<CausalConv3dImpl>();
    if (conv != nullptr && feat_cache != nullptr) {
      x = cached_conv(*conv, x, *feat_cache, feat_idx);
    } else {
      x = layer.forward(x);
    }
  }
  return x;
}

} // namespace

Tensor Encoder3dImpl::forward(const Tensor& x) {
  int64_t idx = 0;
  return forward(x, nullptr, idx);
}

Tensor Encoder3dImpl::forward(Tensor x, FeatCache* feat_cache, int64_t& feat_idx) {
  // x: [B, 3, T, H, W]
  x = feat_cache != nullptr ? cached_conv(*conv1, x, *feat_cache, feat_idx) : conv1->forward(x);
  // downsamples
  for (const auto& layer : downsamples->children()) {
    x = run_block(layer, x, feat_cache, feat_idx);
  }
  // middle
  for (const auto& layer : middle->children()) {
    x = run_block(layer, x, feat_cache, feat_idx);
  }
  // head
  return run_head(head, x, feat_cache, feat_idx); // [B, z_dim, T', H/8, W/8]
}

// --- Decoder3d -------------------------------------------------------------------------------

Decoder3dImpl::Decoder3dImpl(int64_t dim, int64_t z_dim, std::vector<int64_t> dim_mult,
                             int64_t num_res_blocks, std::vector<double> attn_scales,
                             std::vector<bool> temperal_upsample, double dropout)
    : dim(dim), z_dim(z_dim), dim_mult(std::move(dim_mult)), num_res_blocks(num_res_blocks),
      attn_scales(std::move(attn_scales)), temperal_upsample(std::move(temperal_upsample)),
      dropout(dropout) {
  reset();
}

void Decoder3dImpl::reset() {
  // dimensions
  std::vector<int64_t> dims{dim * dim_mult.back()};
  for (auto it = dim_mult.rbegin(); it != dim_mult.rend(); ++it) {
    dims.push_back(dim * *it);
  }
  double scale = 1.0 / std::pow(2.0, static_cast<double>(dim_mult.size()) - 2.0);

  // init block
  conv1 = register_module("conv1", CausalConv3d(z_dim, dims[0], 3, 1, 1));

  // middle blocks
  middle = register_module("middle", torch::nn::ModuleList(ResidualBlock(dims[0], dims[0], dropout),
                                                           AttentionBlock(dims[0]),
                                                           ResidualBlock(dims[0], dims[0], dropout)));

  // upsample blocks
  upsamples = torch::nn::ModuleList();
  int64_t out_dim = dims[0];
  for (std::size_t i = 0; i + 1 < dims.size(); ++i) {
    int64_t in_dim = dims[i];
    out_dim = dims[i + 1];
    // residual (+attention) blocks
    if (i == 1 || i == 2 || i == 3) {
      in_dim = in_dim / 2;
    }
    for (int64_t r = 0; r < num_res_blocks + 1; ++r) {
      upsamples->push_back(ResidualBlock(in_dim, out_dim, dropout));
      if (contains(attn_scales, scale)) {
        upsamples->push_back(AttentionBlock(out_dim));
      }
      in_dim = out_dim;
    }
    // upsample block
    if (i != dim_mult.size() - 1) {
      const bool temporal = temperal_upsample.at(i);
      upsamples->push_back(Resample(out_dim, temporal ? "upsample3d" : "upsample2d"));
      scale *= 2.0;
    }
  }
  register_module("upsamples", upsamples);

  // output blocks
  head = register_module("head", torch::nn::Sequential(RMS_norm(out_dim, true, false),
                                                       torch::nn::SiLU(),
                                                       CausalConv3d(out_dim, 3, 3, 1, 1)));
}

Tensor Decoder3dImpl::forward(const Tensor& x) {
  int64_t idx = 0;
  return forward(x, nullptr, idx);
}

Tensor Decoder3dImpl::forward(Tensor x, FeatCache* feat_cache, int64_t& feat_idx) {
  // x: [B, z_dim, T, h, w]
  x = feat_cache != nullptr ? cached_conv(*conv1, x, *feat_cache, feat_idx) : conv1->forward(x);
  // middle
  for (const auto& layer : middle->children()) {
    x = run_block(layer, x, feat_cache, feat_idx);
  }
  // upsamples
  for (const auto& layer : upsamples->children()) {
    x = run_block(layer, x, feat_cache, feat_idx);
  }
  // head
  return run_head(head, x, feat_cache, feat_idx); // [B, 3, T', 8h, 8w]
}

int64_t count_conv3d(const torch::nn::Module& model) {
  int64_t count = dynamic_cast<const CausalConv3dImpl*>(&model) != nullptr ? 1 : 0;
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (m->as<CausalConv3dImpl>() != nullptr) {
      ++count;
    }
  }
  return count;
}

// --- config ----------------------------------------------------------------------------------

WanVAEConfig WanVAEConfig::video_vae() {
  // wan/modules/vae.py _video_vae(z_dim=16) as called by WanVAE.
  WanVAEConfig c;
  c.dim = 96;
  c.z_dim = 16;
  c.dim_mult = {1, 2, 4, 4};
  c.num_res_blocks = 2;
  c.attn_scales = {};
  c.temperal_downsample = {false, true, true};
  c.dropout = 0.0;
  return c;
}

WanVAEConfig WanVAEConfig::infer_from_weights(const offload::state_dict& sd) {
  auto get = [&](const std::string& key, int64_t rank) -> const Tensor& {
    auto it = sd.find(key);
    if (it == sd.end()) {
      throw offload::checkpoint_error(
          "offload.checkpoint.missing_keys",
          fmt::format("cannot detect the WanVAE_ config: key '{}' is missing from the state dict "
                      "({} keys); is this a Wan2.1 VAE checkpoint (Wan2.1_VAE.pth)?",
                      key, sd.size()));
    }
    if (it->second.dim() != rank) {
      throw offload::checkpoint_error(
          "offload.checkpoint.shape_mismatch",
          fmt::format("cannot detect the WanVAE_ config: '{}' expected a {}-d CausalConv3d weight, "
                      "found shape {}",
                      key, rank, fmt::join(it->second.sizes(), "x")));
    }
    return it->second;
  };
  WanVAEConfig cfg = WanVAEConfig::video_vae();
  cfg.dim = get("encoder.conv1.weight", 5).size(0);
  cfg.z_dim = get("conv2.weight", 5).size(0);
  const int64_t conv1_out = get("conv1.weight", 5).size(0);
  if (conv1_out != 2 * cfg.z_dim) {
    throw offload::checkpoint_error(
        "offload.checkpoint.shape_mismatch",
        fmt::format("'conv1.weight' expected {} output channels (2 * z_dim, z_dim = {} from "
                    "'conv2.weight'), found {}; the checkpoint is not a WanVAE_ state dict",
                    2 * cfg.z_dim, cfg.z_dim, conv1_out));
  }
  return cfg;
}

std::vector<int64_t> tensor_numels(const WanVAEConfig& cfg) {
  std::vector<int64_t> t;
  auto conv = [&](int64_t in, int64_t out, int64_t k) { // weight, bias (Conv2d or CausalConv3d)
    t.push_back(out * in * k);
    t.push_back(out);
  };
  auto norm = [&](int64_t d) { t.push_back(d); }; // RMS_norm.gamma
  auto residual = [&](int64_t in, int64_t out) {
    norm(in), conv(in, out, 27), norm(out), conv(out, out, 27);
    if (in != out) conv(in, out, 1);
  };
  auto attention = [&](int64_t d) { norm(d), conv(d, 3 * d, 1), conv(d, d, 1); };
  auto contains_scale = [&](double s) { return contains(cfg.attn_scales, s); };
  const auto n = static_cast<int64_t>(cfg.dim_mult.size());
  const int64_t dim = cfg.dim;

  // Encoder3d(dim, 2 * z_dim)
  {
    std::vector<int64_t> dims{dim};
    for (int64_t u : cfg.dim_mult) {
      dims.push_back(dim * u);
    }
    double scale = 1.0;
    conv(3, dims[0], 27);
    int64_t out = dims[0];
    for (int64_t i = 0; i < n; ++i) {
      int64_t in = dims[i];
      out = dims[i + 1];
      for (int64_t r = 0; r < cfg.num_res_blocks; ++r) {
        residual(in, out);
        if (contains_scale(scale)) attention(out);
        in = out;
      }
      if (i != n - 1) {
        conv(out, out, 9);
        if (cfg.temperal_downsample.at(i)) conv(out, out, 3);
        scale /= 2.0;
      }
    }
    residual(out, out), attention(out), residual(out, out); // middle
    norm(out), conv(out, 2 * cfg.z_dim, 27);                 // head
  }
  const int64_t z2 = 2 * cfg.z_dim;
  conv(z2, z2, 1);                 // conv1
  conv(cfg.z_dim, cfg.z_dim, 1);   // conv2
  // Decoder3d(dim, z_dim)
  {
    std::vector<int64_t> dims{dim * cfg.dim_mult.back()};
    for (auto it = cfg.dim_mult.rbegin(); it != cfg.dim_mult.rend(); ++it) {
      dims.push_back(dim * *it);
    }
    double scale = 1.0 / std::pow(2.0, static_cast<double>(n) - 2.0);
    conv(cfg.z_dim, dims[0], 27);
    residual(dims[0], dims[0]), attention(dims[0]), residual(dims[0], dims[0]); // middle
    int64_t out = dims[0];
    for (int64_t i = 0; i < n; ++i) {
      int64_t in = (i == 1 || i == 2 || i == 3) ? dims[i] / 2 : dims[i];
      out = dims[i + 1];
      for (int64_t r = 0; r < cfg.num_res_blocks + 1; ++r) {
        residual(in, out);
        if (contains_scale(scale)) attention(out);
        in = out;
      }
      if (i != n - 1) {
        // temperal_upsample = temperal_downsample reversed
        const bool temporal = cfg.temperal_downsample.at(static_cast<std::size_t>(n - 2 - i));
        conv(out, out / 2, 9);
        if (temporal) conv(out, 2 * out, 3);
        scale *= 2.0;
      }
    }
    norm(out), conv(out, 3, 27); // head
  }
  return t;
}

int64_t parameter_count(const WanVAEConfig& cfg) {
  int64_t n = 0;
  for (const auto x : tensor_numels(cfg)) n += x;
  return n;
}

// --- WanVAE_ ---------------------------------------------------------------------------------

WanVAE_Impl::WanVAE_Impl(const WanVAEConfig& cfg)
    : cfg(cfg), dim(cfg.dim), z_dim(cfg.z_dim), temperal_downsample(cfg.temperal_downsample),
      temperal_upsample(cfg.temperal_downsample.rbegin(), cfg.temperal_downsample.rend()) {
  reset();
}

void WanVAE_Impl::reset() {
  // modules
  encoder = register_module("encoder", Encoder3d(dim, z_dim * 2, cfg.dim_mult, cfg.num_res_blocks,
                                                 cfg.attn_scales, temperal_downsample, cfg.dropout));
  conv1 = register_module("conv1", CausalConv3d(z_dim * 2, z_dim * 2, 1));
  conv2 = register_module("conv2", CausalConv3d(z_dim, z_dim, 1));
  decoder = register_module("decoder", Decoder3d(dim, z_dim, cfg.dim_mult, cfg.num_res_blocks,
                                                 cfg.attn_scales, temperal_upsample, cfg.dropout));
}

void WanVAE_Impl::clear_cache() {
  _conv_num = count_conv3d(*decoder);
  _conv_idx = 0;
  _feat_map.assign(static_cast<std::size_t>(_conv_num), CacheSlot{});
  // cache encode
  _enc_conv_num = count_conv3d(*encoder);
  _enc_conv_idx = 0;
  _enc_feat_map.assign(static_cast<std::size_t>(_enc_conv_num), CacheSlot{});
}

Tensor WanVAE_Impl::encode_raw(const Tensor& x) {
  clear_cache();
  // split the input in time as 1, 4, 4, 4, ... frames
  const int64_t t = x.size(2);
  const int64_t iter = 1 + (t - 1) / 4;
  std::vector<Tensor> outs;
  outs.reserve(static_cast<std::size_t>(iter));
  for (int64_t i = 0; i < iter; ++i) {
    _enc_conv_idx = 0;
    const Tensor chunk = i == 0 ? x.narrow(2, 0, 1)                      // [B, 3, 1, H, W]
                                : x.slice(2, 1 + 4 * (i - 1), 1 + 4 * i); // [B, 3, <=4, H, W]
    outs.push_back(encoder->forward(chunk, &_enc_feat_map, _enc_conv_idx));
  }
  const Tensor out = outs.size() == 1 ? outs.front() : torch::cat(outs, 2); // [B, 2z, T', h, w]
  return conv1->forward(out);
}

Tensor WanVAE_Impl::encode(const Tensor& x, const Scale& scale) {
  auto mu_log_var = encode_raw(x).chunk(2, 1);
  Tensor mu = (mu_log_var[0] - scale[0].view({1, z_dim, 1, 1, 1})) *
              scale[1].view({1, z_dim, 1, 1, 1}); // [B, z, T', h, w]
  clear_cache();
  return mu;
}

Tensor WanVAE_Impl::encode(const Tensor& x, double shift, double mul) {
  auto mu_log_var = encode_raw(x).chunk(2, 1);
  Tensor mu = (mu_log_var[0] - shift) * mul;
  clear_cache();
  return mu;
}

Tensor WanVAE_Impl::decode_frames(const Tensor& z) {
  const int64_t iter = z.size(2);
  const Tensor x = conv2->forward(z); // [B, z, T, h, w]
  std::vector<Tensor> outs;
  outs.reserve(static_cast<std::size_t>(iter));
  for (int64_t i = 0; i < iter; ++i) {
    _conv_idx = 0;
    outs.push_back(decoder->forward(x.narrow(2, i, 1), &_feat_map, _conv_idx)); // [B, 3, 1|4, H, W]
  }
  Tensor out = outs.size() == 1 ? outs.front() : torch::cat(outs, 2); // [B, 3, 1+4(T-1), H, W]
  clear_cache();
  return out;
}

Tensor WanVAE_Impl::decode(const Tensor& z, const Scale& scale) {
  clear_cache();
  // z: [b, c, t, h, w]
  const Tensor zz = z / scale[1].view({1, z_dim, 1, 1, 1}) + scale[0].view({1, z_dim, 1, 1, 1});
  return decode_frames(zz);
}

Tensor WanVAE_Impl::decode(const Tensor& z, double shift, double mul) {
  clear_cache();
  return decode_frames(z / mul + shift);
}

// --- spatial tiling (wan/vae_tiling.hpp) ----------------------------------------------------

void VaeTiling::validate() const {
  if (tile_latent_h <= 0 || tile_latent_w <= 0) {
    throw offload::config_error(
        "offload.wan.vae.tile_size",
        fmt::format("VAE tiling expected tile sizes > 0 latent pixels, found tile_latent_h {} x "
                    "tile_latent_w {}; give positive tile sizes in latent pixels (8 video pixels "
                    "each), e.g. 32x32 for 256x256-pixel tiles",
                    tile_latent_h, tile_latent_w));
  }
  const int64_t smallest = std::min(tile_latent_h, tile_latent_w);
  if (overlap_latent < 0 || overlap_latent >= smallest) {
    throw offload::config_error(
        "offload.wan.vae.tile_overlap",
        fmt::format("VAE tiling expected 0 <= overlap_latent < {} (the smaller tile size, "
                    "tile_latent_h {} x tile_latent_w {}), found overlap_latent {}; use an overlap "
                    "smaller than the tile, about a quarter of it (e.g. 8 for 32)",
                    smallest, tile_latent_h, tile_latent_w, overlap_latent));
  }
}

namespace {

/// [begin, end) of one tile along one axis.
struct Span {
  int64_t begin, end;
  [[nodiscard]] int64_t size() const { return end - begin; }
};

/// Tiles of `tile` over [0, size) starting every tile - overlap; the last one is moved back to
/// end at `size` (one tile of `size` when tile >= size).
std::vector<Span> tile_spans(int64_t size, int64_t tile, int64_t overlap) {
  if (tile >= size) {
    return {{0, size}};
  }
  const int64_t stride = tile - overlap;
  std::vector<Span> spans{{0, tile}};
  while (spans.back().end < size) {
    const int64_t begin = std::min(spans.back().begin + stride, size - tile);
    spans.push_back({begin, begin + tile});
  }
  return spans;
}

/// Blend weights of tile k (spans in output units) along one axis: 1 inside, a linear ramp
/// (p + 1/2) / n up across the overlap of n units with the previous tile and down across the
/// overlap with the next one; the two ramps of an overlap sum to 1.
Tensor ramp_weights(const std::vector<Span>& spans, std::size_t k) {
  const int64_t len = spans[k].size();
  std::vector<double> w(static_cast<std::size_t>(len), 1.0);
  if (k > 0) {
    const int64_t n = spans[k - 1].end - spans[k].begin;
    for (int64_t p = 0; p < n; ++p) {
      auto& v = w[static_cast<std::size_t>(p)];
      v = std::min(v, (static_cast<double>(p) + 0.5) / static_cast<double>(n));
    }
  }
  if (k + 1 < spans.size()) {
    const int64_t m = spans[k].end - spans[k + 1].begin;
    for (int64_t p = len - m; p < len; ++p) {
      auto& v = w[static_cast<std::size_t>(p)];
      v = std::min(v, (static_cast<double>(len - p) - 0.5) / static_cast<double>(m));
    }
  }
  return torch::tensor(w, torch::kFloat64);
}

/// Spans in latent units -> output units (x `factor`; the last one ends at `size`).
std::vector<Span> scaled(const std::vector<Span>& spans, int64_t factor, int64_t size) {
  std::vector<Span> out;
  out.reserve(spans.size());
  for (const Span& s : spans) {
    out.push_back({s.begin * factor, std::min(s.end * factor, size)});
  }
  out.back().end = size;
  return out;
}

/// Accumulates tiles of [B, C, T, H, W] into a weighted sum and normalises it.
class TileBlender {
public:
  TileBlender(std::vector<Span> rows, std::vector<Span> cols)
      : rows_(std::move(rows)), cols_(std::move(cols)) {}

  const std::vector<Span>& rows() const { return rows_; }
  const std::vector<Span>& cols() const { return cols_; }

  /// Adds tile (i, j) with its weights; the first call allocates the output.
  void add(std::size_t i, std::size_t j, const Tensor& tile) {
    const Span r = rows_[i], c = cols_[j];
    TORCH_CHECK(tile.dim() == 5 && tile.size(3) == r.size() && tile.size(4) == c.size(),
                "VAE tile (", i, ", ", j, ") has shape ", tile.sizes(), ", expected [.., ",
                r.size(), ", ", c.size(), "]");
    if (!out_.defined()) {
      dtype_ = tile.scalar_type();
      acc_ = dtype_ == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
      auto opts = tile.options().dtype(acc_);
      out_ = torch::zeros({tile.size(0), tile.size(1), tile.size(2), rows_.back().end,
                           cols_.back().end},
                          opts);
      wsum_ = torch::zeros({rows_.back().end, cols_.back().end}, opts);
    }
    const auto opts = torch::TensorOptions().dtype(acc_).device(tile.device());
    const Tensor w = torch::outer(ramp_weights(rows_, i), ramp_weights(cols_, j)).to(opts);
    out_.slice(3, r.begin, r.end).slice(4, c.begin, c.end).addcmul_(tile.to(acc_), w);
    wsum_.slice(0, r.begin, r.end).slice(1, c.begin, c.end).add_(w);
  }

  /// The blended result in the tiles' dtype.
  Tensor result() {
    out_.div_(wsum_);
    return out_.to(dtype_);
  }

private:
  std::vector<Span> rows_, cols_;
  Tensor out_, wsum_;
  torch::Dtype dtype_ = torch::kFloat32, acc_ = torch::kFloat32;
};

void check_rank(const Tensor& t, const char* what) {
  if (t.dim() != 5) {
    throw offload::config_error(
        "offload.wan.vae.input_shape",
        fmt::format("WanVAE_::{} expected a 5-d tensor [B, C, T, H, W], found {} dims {}; add the "
                    "batch dimension (unsqueeze(0))",
                    what, t.dim(), fmt::join(t.sizes(), "x")));
  }
}

} // namespace

Tensor WanVAE_Impl::tiled_decode(const Tensor& z, const Scale& scale, const VaeTiling& tiling) {
  tiling.validate();
  check_rank(z, "tiled_decode");
  const int64_t h = z.size(3), w = z.size(4);
  if (tiling.covers(h, w)) {
    return decode(z, scale);
  }
  // de-normalise once (elementwise, so a tile of it equals the untiled path's values)
  const Tensor zz = z / scale[1].view({1, z_dim, 1, 1, 1}) + scale[0].view({1, z_dim, 1, 1, 1});
  const auto lrows = tile_spans(h, tiling.tile_latent_h, tiling.overlap_latent);
  const auto lcols = tile_spans(w, tiling.tile_latent_w, tiling.overlap_latent);
  TileBlender blend(scaled(lrows, 8, 8 * h), scaled(lcols, 8, 8 * w));
  for (std::size_t i = 0; i < lrows.size(); ++i) {
    for (std::size_t j = 0; j < lcols.size(); ++j) {
      clear_cache(); // each tile has its own causal cache over the whole sequence
      const Tensor tile = zz.slice(3, lrows[i].begin, lrows[i].end)
                              .slice(4, lcols[j].begin, lcols[j].end);
      blend.add(i, j, decode_frames(tile)); // [B, 3, 1+4(T-1), 8th, 8tw]; clears the cache
    }
  }
  return blend.result();
}

Tensor WanVAE_Impl::tiled_encode(const Tensor& x, const Scale& scale, const VaeTiling& tiling) {
  tiling.validate();
  check_rank(x, "tiled_encode");
  const int64_t H = x.size(3), W = x.size(4);
  const int64_t h = H / 8, w = W / 8; // the encoder's latent size (three floor halvings)
  if (tiling.covers(h, w)) {
    return encode(x, scale);
  }
  const auto lrows = tile_spans(h, tiling.tile_latent_h, tiling.overlap_latent);
  const auto lcols = tile_spans(w, tiling.tile_latent_w, tiling.overlap_latent);
  // video pixels of each tile: 8x the latent span; the last one takes the < 8 leftover pixels
  const auto prows = scaled(lrows, 8, H), pcols = scaled(lcols, 8, W);
  TileBlender blend(lrows, lcols);
  for (std::size_t i = 0; i < lrows.size(); ++i) {
    for (std::size_t j = 0; j < lcols.size(); ++j) {
      const Tensor tile = x.slice(3, prows[i].begin, prows[i].end)
                              .slice(4, pcols[j].begin, pcols[j].end);
      blend.add(i, j, encode(tile, scale)); // clear_cache before and after, whole sequence
    }
  }
  return blend.result();
}

Tensor WanVAE_Impl::reparameterize(const Tensor& mu, const Tensor& log_var) {
  const Tensor std = torch::exp(0.5 * log_var);
  const Tensor eps = torch::randn_like(std);
  return eps * std + mu;
}

// --- WanVAE ----------------------------------------------------------------------------------

const std::array<double, 16>& WanVAE::reference_mean() {
  static const std::array<double, 16> mean{-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653,
                                           -0.1517, 1.5508,  0.4134,  -0.0715, 0.5517,  -0.3632,
                                           -0.1922, -0.9497, 0.2503,  -0.2921};
  return mean;
}

const std::array<double, 16>& WanVAE::reference_std() {
  static const std::array<double, 16> std{2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708,
                                          2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                                          1.6382, 1.1253, 2.8251, 1.9160};
  return std;
}

namespace {

WanVAE_ build_model(const WanVAEConfig& cfg, torch::Device device) {
  WanVAE_ model(cfg);
  model->eval();
  for (auto& p : model->parameters()) {
    p.requires_grad_(false);
  }
  model->to(device);
  return model;
}

void check_z_dim(int64_t z_dim) {
  if (z_dim != 16) {
    throw offload::config_error(
        "offload.config.vae_z_dim",
        fmt::format("WanVAE expected z_dim 16 (the reference latent mean/std have 16 channels), "
                    "found z_dim {}; use WanVAE_ directly with your own scale for other widths",
                    z_dim));
  }
}

Tensor make_stat(const std::array<double, 16>& v, torch::Dtype dtype, torch::Device device) {
  return torch::tensor(at::ArrayRef<double>(v.data(), v.size()),
                       torch::TensorOptions().dtype(dtype).device(device));
}

} // namespace

WanVAE::WanVAE(const WanVAEConfig& cfg, torch::Dtype dtype, torch::Device device)
    : dtype(dtype), device(device) {
  check_z_dim(cfg.z_dim);
  mean = make_stat(reference_mean(), dtype, device);
  std = make_stat(reference_std(), dtype, device);
  // init model
  model = build_model(cfg, device);
}

WanVAE::WanVAE(const std::filesystem::path& vae_pth, int64_t z_dim, torch::Dtype dtype,
               torch::Device device)
    : dtype(dtype), device(device) {
  check_z_dim(z_dim);
  mean = make_stat(reference_mean(), dtype, device);
  std = make_stat(reference_std(), dtype, device);
  // init model: the reference hard-codes dim=96; the width is read from the weights instead.
  const offload::state_dict sd = offload::load_checkpoint(vae_pth);
  WanVAEConfig cfg = WanVAEConfig::infer_from_weights(sd);
  if (cfg.z_dim != z_dim) {
    throw offload::checkpoint_error(
        "offload.checkpoint.shape_mismatch",
        fmt::format("'{}': 'conv2.weight' has {} channels, expected z_dim {}", vae_pth.string(),
                    cfg.z_dim, z_dim));
  }
  WanVAE_ m(cfg);
  offload::load_options opts;
  opts.source = vae_pth.string();
  offload::load_state(*m, sd, opts);
  m->eval();
  for (auto& p : m->parameters()) {
    p.requires_grad_(false);
  }
  m->to(device);
  model = m;
}

Scale WanVAE::scale() const { return {mean, std.reciprocal()}; }

void WanVAE::check_placement(const Tensor& input, const char* what) const {
  const std::pair<const char*, const Tensor*> stats[] = {{"vae.mean", &mean}, {"vae.std", &std}};
  for (const auto& [name, t] : stats) {
    if (!t->defined() || t->device() != input.device()) {
      throw offload::placement_error(
          "offload.placement.device_mismatch",
          fmt::format("tensor '{}' expected {} (the device of the input to WanVAE::{}), found {}; "
                      "declare mean/std as auxiliary tensors of the VAE component so they follow "
                      "its device",
                      name, input.device().str(), what,
                      t->defined() ? t->device().str() : std::string("an undefined tensor")));
    }
  }
}

std::vector<Tensor> WanVAE::encode(const std::vector<Tensor>& videos) {
  std::vector<Tensor> out;
  out.reserve(videos.size());
  for (const Tensor& u : videos) {
    check_placement(u, "encode");
    out.push_back(model->encode(u.unsqueeze(0), scale()).to(torch::kFloat32).squeeze(0));
  }
  return out;
}

std::vector<Tensor> WanVAE::decode(const std::vector<Tensor>& zs) {
  std::vector<Tensor> out;
  out.reserve(zs.size());
  for (const Tensor& u : zs) {
    check_placement(u, "decode");
    out.push_back(
        model->decode(u.unsqueeze(0), scale()).to(torch::kFloat32).clamp_(-1, 1).squeeze(0));
  }
  return out;
}

std::vector<Tensor> WanVAE::encode(const std::vector<Tensor>& videos, const VaeTiling& tiling) {
  tiling.validate();
  std::vector<Tensor> out;
  out.reserve(videos.size());
  for (const Tensor& u : videos) {
    check_placement(u, "encode");
    out.push_back(
        model->tiled_encode(u.unsqueeze(0), scale(), tiling).to(torch::kFloat32).squeeze(0));
  }
  return out;
}

std::vector<Tensor> WanVAE::decode(const std::vector<Tensor>& zs, const VaeTiling& tiling) {
  tiling.validate();
  std::vector<Tensor> out;
  out.reserve(zs.size());
  for (const Tensor& u : zs) {
    check_placement(u, "decode");
    out.push_back(model->tiled_decode(u.unsqueeze(0), scale(), tiling)
                      .to(torch::kFloat32)
                      .clamp_(-1, 1)
                      .squeeze(0));
  }
  return out;
}

} // namespace wan
