// Port of Wan-Video/Wan2.1@9737cba, wan/modules/vae.py (the 3D causal video VAE).
//
// Class and member names follow the Python so the official Wan2.1_VAE.pth keys load with no
// rename table (encoder.downsamples.N.residual.K..., decoder.upsamples..., conv1, conv2).
//
// Deliberate deviations (none changes a result beyond float32 summation order):
//  * CausalConv3d: the spatial zero padding is done by the convolution itself (padding
//    {0, p_h, p_w}) instead of an F.pad copy; only the causal temporal front padding is
//    materialised (zeros and/or the cached frames are concatenated in front, one copy).
//    Checked bit-identical to the F.pad form on the CPU goldens.
//  * The feature cache is a std::vector<CacheSlot>; a slot is explicitly None, 'Rep' (the
//    Python string sentinel) or a tensor. feat_idx is an int64_t passed by reference.
//    Cached tensors are created from the activations, so they already live on the input's
//    device: the Python `.to(x.device)` calls on them are not needed and not made.
//  * Encoder3d/Decoder3d `downsamples`/`upsamples`/`middle` and ResidualBlock `residual`,
//    `head` are torch::nn::ModuleList / Sequential with the same indices as the Python
//    nn.Sequential (the Python iterates them layer by layer; they are never called whole).
//    An AttentionBlock inside downsamples/upsamples (attn_scales non-empty) is called without
//    the cache; the Python would raise a TypeError there.
//  * WanVAE_::encode/decode collect the per-chunk outputs and concatenate once (the Python
//    concatenates after every chunk: same values, quadratic copying).
//  * WanVAE_.forward() and .sample() are not ported: in the reference they call encode()
//    without its `scale` argument and cannot run.
//  * WanVAE(vae_pth, z_dim, ...) reads dim/z_dim from the weights (WanVAEConfig::
//    infer_from_weights) where the reference's _video_vae hard-codes dim=96, and loads through
//    offload::load_checkpoint + the strict offload::load_state.
//  * WanVAE (the wrapper) exposes `scale()` computing [mean, 1/std] from `mean`/`std` where
//    they currently are (the Python stores the list once at construction); `mean`/`std`
//    are plain tensors, not buffers, to be declared as auxiliary tensors by offload.
//    The reference's amp.autocast(dtype) is inert for the float32 default and is not ported.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/pimpl.h>

#include <offload/state_dict.hpp>

#include "wan/vae_tiling.hpp"

namespace wan {

/// Frames of history a causal convolution keeps between chunks (Python CACHE_T).
inline constexpr int64_t CACHE_T = 2;

/// One entry of the causal feature cache: the Python list holds None, the string 'Rep'
/// (upsample3d: "first chunk seen, replicate-pad next time") or a tensor of past frames.
class CacheSlot {
public:
  enum class state : std::uint8_t { none, rep, tensor };

  CacheSlot() = default;
  /// The 'Rep' sentinel.
  static CacheSlot rep() {
    CacheSlot s;
    s.state_ = state::rep;
    return s;
  }
  CacheSlot(torch::Tensor t) : state_(state::tensor), tensor_(std::move(t)) {} // NOLINT

  [[nodiscard]] bool is_none() const noexcept { return state_ == state::none; }
  [[nodiscard]] bool is_rep() const noexcept { return state_ == state::rep; }
  [[nodiscard]] bool is_tensor() const noexcept { return state_ == state::tensor; }
  [[nodiscard]] state kind() const noexcept { return state_; }
  /// The cached frames; undefined tensor unless is_tensor().
  [[nodiscard]] const torch::Tensor& tensor() const noexcept { return tensor_; }

private:
  state state_ = state::none;
  torch::Tensor tensor_;
};

/// Python `feat_cache`: one slot per CausalConv3d of the encoder or decoder.
using FeatCache = std::vector<CacheSlot>;

/// Python `scale` argument of WanVAE_.encode/decode: [mean, 1/std].
using Scale = std::array<torch::Tensor, 2>;

// ---------------------------------------------------------------------------------------------

/// Causal 3d convolution (nn.Conv3d subclass in the Python): pads 2*p_t frames in front in
/// time (or fewer when cached frames are given), p_h / p_w symmetric in space.
class CausalConv3dImpl : public torch::nn::Cloneable<CausalConv3dImpl> {
public:
  CausalConv3dImpl(int64_t in_channels, int64_t out_channels,
                   torch::ExpandingArray<3> kernel_size, torch::ExpandingArray<3> stride = 1,
                   torch::ExpandingArray<3> padding = 0);

  void reset() override;
  void reset_parameters();

  /// x: [B, C, T, H, W]; cache_x: [B, C, Tc, H, W] frames preceding x (undefined = None).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cache_x = {});

  int64_t in_channels, out_channels;
  torch::ExpandingArray<3> kernel_size, stride, padding;
  /// Python `_padding[4]`: frames of causal front padding without a cache (2 * padding[0]).
  int64_t time_front_pad;

  torch::Tensor weight, bias;

protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(torch::Tensor())})
};
TORCH_MODULE(CausalConv3d);

/// RMS norm over the channel dim: F.normalize(x, dim) * sqrt(dim) * gamma (+ bias).
class RMS_normImpl : public torch::nn::Cloneable<RMS_normImpl> {
public:
  explicit RMS_normImpl(int64_t dim, bool channel_first = true, bool images = true,
                        bool bias = false);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  int64_t dim;
  bool channel_first, images, has_bias;
  double scale;
  torch::Tensor gamma, bias; // bias undefined when has_bias is false (Python: 0.)
};
TORCH_MODULE(RMS_norm);

/// nn.Upsample(scale_factor=(2, 2), mode='nearest-exact') computed in float32.
class UpsampleImpl : public torch::nn::Cloneable<UpsampleImpl> {
public:
  explicit UpsampleImpl(std::vector<double> scale_factor) : scale_factor(std::move(scale_factor)) {}
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& x);
  std::vector<double> scale_factor;
};
TORCH_MODULE(Upsample);

/// Spatial (and optionally temporal) up/down sampling by 2.
class ResampleImpl : public torch::nn::Cloneable<ResampleImpl> {
public:
  ResampleImpl(int64_t dim, std::string mode);
  void reset() override;
  /// x: [B, C, T, H, W]. feat_cache == nullptr is the Python feat_cache=None.
  torch::Tensor forward(torch::Tensor x, FeatCache* feat_cache, int64_t& feat_idx);
  torch::Tensor forward(const torch::Tensor& x);

  int64_t dim;
  std::string mode; // none | upsample2d | upsample3d | downsample2d | downsample3d
  torch::nn::Sequential resample{nullptr};
  CausalConv3d time_conv{nullptr}; // upsample3d / downsample3d only
};
TORCH_MODULE(Resample);

/// RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d (+ shortcut).
class ResidualBlockImpl : public torch::nn::Cloneable<ResidualBlockImpl> {
public:
  ResidualBlockImpl(int64_t in_dim, int64_t out_dim, double dropout = 0.0);
  void reset() override;
  torch::Tensor forward(torch::Tensor x, FeatCache* feat_cache, int64_t& feat_idx);
  torch::Tensor forward(const torch::Tensor& x);

  int64_t in_dim, out_dim;
  double dropout;
  torch::nn::Sequential residual{nullptr};
  CausalConv3d shortcut{nullptr}; // registered only when in_dim != out_dim (else nn.Identity)
};
TORCH_MODULE(ResidualBlock);

/// Single-head spatial self-attention applied per frame.
class AttentionBlockImpl : public torch::nn::Cloneable<AttentionBlockImpl> {
public:
  explicit AttentionBlockImpl(int64_t dim);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  int64_t dim;
  RMS_norm norm{nullptr};
  torch::nn::Conv2d to_qkv{nullptr}, proj{nullptr};
};
TORCH_MODULE(AttentionBlock);

class Encoder3dImpl : public torch::nn::Cloneable<Encoder3dImpl> {
public:
  Encoder3dImpl(int64_t dim = 128, int64_t z_dim = 4, std::vector<int64_t> dim_mult = {1, 2, 4, 4},
                int64_t num_res_blocks = 2, std::vector<double> attn_scales = {},
                std::vector<bool> temperal_downsample = {true, true, false}, double dropout = 0.0);
  void reset() override;
  /// x: [B, 3, T, H, W] -> [B, z_dim, T', H/8, W/8]
  torch::Tensor forward(torch::Tensor x, FeatCache* feat_cache, int64_t& feat_idx);
  torch::Tensor forward(const torch::Tensor& x);

  int64_t dim, z_dim;
  std::vector<int64_t> dim_mult;
  int64_t num_res_blocks;
  std::vector<double> attn_scales;
  std::vector<bool> temperal_downsample;
  double dropout;

  CausalConv3d conv1{nullptr};
  torch::nn::ModuleList downsamples{nullptr}; // ResidualBlock / AttentionBlock / Resample
  torch::nn::ModuleList middle{nullptr};      // ResidualBlock, AttentionBlock, ResidualBlock
  torch::nn::Sequential head{nullptr};        // RMS_norm, SiLU, CausalConv3d
};
TORCH_MODULE(Encoder3d);

class Decoder3dImpl : public torch::nn::Cloneable<Decoder3dImpl> {
public:
  Decoder3dImpl(int64_t dim = 128, int64_t z_dim = 4, std::vector<int64_t> dim_mult = {1, 2, 4, 4},
                int64_t num_res_blocks = 2, std::vector<double> attn_scales = {},
                std::vector<bool> temperal_upsample = {false, true, true}, double dropout = 0.0);
  void reset() override;
  /// x: [B, z_dim, T, h, w] -> [B, 3, T', 8h, 8w]
  torch::Tensor forward(torch::Tensor x, FeatCache* feat_cache, int64_t& feat_idx);
  torch::Tensor forward(const torch::Tensor& x);

  int64_t dim, z_dim;
  std::vector<int64_t> dim_mult;
  int64_t num_res_blocks;
  std::vector<double> attn_scales;
  std::vector<bool> temperal_upsample;
  double dropout;

  CausalConv3d conv1{nullptr};
  torch::nn::ModuleList middle{nullptr};
  torch::nn::ModuleList upsamples{nullptr};
  torch::nn::Sequential head{nullptr};
};
TORCH_MODULE(Decoder3d);

/// Number of CausalConv3d modules in `model` (itself included).
int64_t count_conv3d(const torch::nn::Module& model);

// ---------------------------------------------------------------------------------------------

/// Hyper-parameters of WanVAE_ (Python keyword arguments of _video_vae / WanVAE_).
struct WanVAEConfig {
  int64_t dim = 96;
  int64_t z_dim = 16;
  std::vector<int64_t> dim_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;
  std::vector<double> attn_scales = {};
  std::vector<bool> temperal_downsample = {false, true, true};
  double dropout = 0.0;

  /// The official Wan2.1 VAE (_video_vae with z_dim=16, as built by WanVAE).
  static WanVAEConfig video_vae();

  /// Config of a checkpoint's weights: dim = encoder.conv1.weight.shape[0],
  /// z_dim = conv2.weight.shape[0] (= conv1.weight.shape[0] / 2); the rest is the preset.
  /// Throws offload::checkpoint_error when a needed key is missing or shapes disagree.
  static WanVAEConfig infer_from_weights(const offload::state_dict& sd);

  bool operator==(const WanVAEConfig&) const = default;
};

/// Parameter count of WanVAE_(cfg), computed without building it
/// (126,892,531 for WanVAEConfig::video_vae()): the sum of tensor_numels(cfg).
int64_t parameter_count(const WanVAEConfig& cfg);

/// Numbers of elements of every parameter of WanVAE_(cfg) (each CausalConv3d's and Conv2d's weight
/// and bias, each RMS_norm's gamma), without building it: what parameter_count sums, and the sizes
/// the preset's pinned bytes pack (194 tensors for WanVAEConfig::video_vae()).
std::vector<int64_t> tensor_numels(const WanVAEConfig& cfg);

class WanVAE_Impl : public torch::nn::Cloneable<WanVAE_Impl> {
public:
  explicit WanVAE_Impl(const WanVAEConfig& cfg = {});
  void reset() override;

  /// x: [B, 3, T, H, W] in [-1, 1] -> normalised mu [B, z_dim, 1 + (T-1)/4, H/8, W/8].
  /// Encodes the first frame, then groups of 4 frames, with the causal feature cache.
  torch::Tensor encode(const torch::Tensor& x, const Scale& scale);
  torch::Tensor encode(const torch::Tensor& x, double shift, double mul);
  /// z: [B, z_dim, T, h, w] normalised latent -> [B, 3, 1 + 4(T-1), 8h, 8w] (not clamped).
  /// Decodes one latent frame at a time with the causal feature cache.
  torch::Tensor decode(const torch::Tensor& z, const Scale& scale);
  torch::Tensor decode(const torch::Tensor& z, double shift, double mul);

  /// decode(z, scale) spatially tiled (wan/vae_tiling.hpp): each tile of the latent is decoded
  /// through all T latent frames with its own causal cache, the tiles are blended linearly across
  /// their overlaps in pixel space. Same output shape as decode(); exactly decode(z, scale) when
  /// one tile covers the latent. Throws offload::config_error for invalid `tiling`.
  torch::Tensor tiled_decode(const torch::Tensor& z, const Scale& scale, const VaeTiling& tiling);
  /// encode(x, scale) spatially tiled: tiles of 8 * tiling sizes video pixels, each encoded
  /// through all frames, blended in latent space. Same shape as encode(); exactly encode(x,
  /// scale) when one tile covers the latent [H/8, W/8].
  torch::Tensor tiled_encode(const torch::Tensor& x, const Scale& scale, const VaeTiling& tiling);

  static torch::Tensor reparameterize(const torch::Tensor& mu, const torch::Tensor& log_var);
  void clear_cache();

  WanVAEConfig cfg;
  int64_t dim, z_dim;
  std::vector<bool> temperal_downsample, temperal_upsample;

  Encoder3d encoder{nullptr};
  CausalConv3d conv1{nullptr}, conv2{nullptr};
  Decoder3d decoder{nullptr};

  // Python clear_cache() state (public like the Python attributes, for tests and tools).
  int64_t _conv_num = 0, _conv_idx = 0, _enc_conv_num = 0, _enc_conv_idx = 0;
  FeatCache _feat_map, _enc_feat_map;

private:
  torch::Tensor encode_raw(const torch::Tensor& x);      // [B, 2z, T', h, w] after conv1
  torch::Tensor decode_frames(const torch::Tensor& z);   // z already de-normalised
};
TORCH_MODULE(WanVAE_);

/// The Python WanVAE wrapper (not a Module): owns `model` and the latent statistics.
class WanVAE {
public:
  /// Builds WanVAE_(cfg) (random weights) in eval mode, requires_grad off, on `device`.
  explicit WanVAE(const WanVAEConfig& cfg = WanVAEConfig::video_vae(),
                  torch::Dtype dtype = torch::kFloat32, torch::Device device = torch::kCPU);
  /// Python WanVAE(z_dim, vae_pth, dtype, device): loads `vae_pth` strictly.
  WanVAE(const std::filesystem::path& vae_pth, int64_t z_dim = 16,
         torch::Dtype dtype = torch::kFloat32, torch::Device device = torch::kCPU);

  /// videos: each [C, T, H, W] -> each [z_dim, 1 + (T-1)/4, H/8, W/8] float32.
  std::vector<torch::Tensor> encode(const std::vector<torch::Tensor>& videos);
  /// zs: each [z_dim, T, h, w] -> each [3, 1 + 4(T-1), 8h, 8w] float32 clamped to [-1, 1].
  std::vector<torch::Tensor> decode(const std::vector<torch::Tensor>& zs);
  /// encode()/decode() spatially tiled (WanVAE_::tiled_encode / tiled_decode): lower activation
  /// peak, same shapes; exactly the untiled result when one tile covers the latent.
  std::vector<torch::Tensor> encode(const std::vector<torch::Tensor>& videos,
                                    const VaeTiling& tiling);
  std::vector<torch::Tensor> decode(const std::vector<torch::Tensor>& zs, const VaeTiling& tiling);

  /// Python `scale`: [mean, 1.0 / std], computed where mean/std currently are.
  [[nodiscard]] Scale scale() const;

  /// The 16 reference latent channel means / stds (wan/modules/vae.py WanVAE.__init__).
  static const std::array<double, 16>& reference_mean();
  static const std::array<double, 16>& reference_std();

  torch::Dtype dtype;
  torch::Device device;
  torch::Tensor mean, std; // [z_dim]; auxiliary tensors, NOT registered buffers
  WanVAE_ model{nullptr};

private:
  void check_placement(const torch::Tensor& input, const char* what) const;
};

} // namespace wan
