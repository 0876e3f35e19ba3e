#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/modules/model.py: the Wan2.1 diffusion transformer (DiT).
///
/// Classes mirror the reference one-to-one (WanRMSNorm, WanLayerNorm, WanSelfAttention,
/// WanT2VCrossAttention, WanI2VCrossAttention, WanAttentionBlock, Head, MLPProj, WanModel) and
/// register their members under the Python attribute names, so official checkpoints load with no
/// rename table.
///
/// **Compute dtypes (the autocast rule).** On GPU the reference runs the DiT under
/// `amp.autocast(dtype=bfloat16)` with float32 islands (`amp.autocast(dtype=float32)` blocks and
/// `.float()` calls). Here no autocast exists; each op states its compute dtype through ONE rule,
/// `wan::linear_compute_dtype(weight, region)`:
///   * `compute_region::weights`: matmul-like ops (patch_embedding, text_embedding, attention
///     projections, ffn, img_emb linears) compute in the dtype their weights are stored in
///     (bf16 storage => bf16 matmuls, like autocast(bf16); float32 storage => float32);
///   * `compute_region::float32`: the sinusoidal embedding (float64, then float32), time_embedding,
///     time_projection, modulation (`e`, asserted float32 by the reference) and the Head compute in
///     float32 whatever the storage dtype. Norms (WanLayerNorm, WanRMSNorm, MLPProj's LayerNorms)
///     normalise in float32 as the reference's `x.float()` / autocast's layer_norm do.
/// The residual stream follows ordinary type promotion (float32 after the first block).
/// Parity runs float32 on CPU, where every rule is the identity.
///
/// Deliberate deviations:
///   * `freqs` is a plain complex128 tensor member (as in the reference, not a buffer). forward()
///     never moves it: rope_apply throws offload::placement_error when it is not on the input's
///     device (the reference lazily does `self.freqs = self.freqs.to(device)` in forward).
///   * MLPProj's input width is `clip_dim` (config.json key, default 1280) instead of the hard-coded
///     1280, and flf2v's emb_pos is [1, 514, clip_dim] (the golden set uses a tiny CLIP width).
///   * WanI2VCrossAttentionImpl derives from WanT2VCrossAttentionImpl (the reference derives both
///     from WanSelfAttention) so that a block holds either through one typed holder with a virtual
///     forward(x, context, context_lens).
///   * Sequential members (ffn, text_embedding, time_embedding, time_projection, img_emb.proj) are
///     registered as torch::nn::Sequential (keys `ffn.0`, `ffn.2`, ...); the same Linear modules are
///     also held as typed, unregistered aliases (`ffn_0`, `ffn_2`, ...) so forward applies the
///     compute-dtype rule without downcasts.
///   * The embedding / time / text preprocessing shared by WanModel.forward and
///     VaceWanModel.forward (duplicated in the reference) are protected helpers.
///   * `forward_branches` (an addition) runs several guidance branches that share x, t, clip_fea
///     and y but differ in context block-major: every branch goes through block i before block
///     i+1. Each branch computes exactly what forward() computes (bit-identical), and a streamed
///     DiT (offload block streaming, `dit=cuda:stream=K`) moves each block once per denoising
///     step instead of once per branch. `block_stream` (not a module member) is set by the
///     offload wiring when the DiT declares its `blocks` list; null means resident.
///   * `trace` (optional callback) receives the intermediates the golden files record
///     (`patch_embedding.b`, `sinusoidal`, `time_embedding`, `time_projection`, `text_embedding`,
///     `img_emb`, `block.i`, `head`), a debugging aid with no effect on results.

#include "wan/configs/configs.hpp"
#include "wan/model_config.hpp"

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace offload {
class block_stream;
}

namespace wan {

// ------------------------------------------------------------------------------------------------
// compute-dtype rule
// ------------------------------------------------------------------------------------------------

/// Where an op sits relative to the reference's autocast regions (see the file comment).
enum class compute_region {
  weights, ///< under autocast(bf16): compute in the weights' storage dtype
  float32, ///< inside amp.autocast(dtype=float32) / explicit .float(): compute in float32
};

/// THE compute-dtype rule: the dtype a Linear/Conv with this weight computes in within `region`.
torch::Dtype linear_compute_dtype(const torch::Tensor& weight,
                                  compute_region region = compute_region::weights);

/// Emulates the reference's `amp.autocast(dtype=...)` around the DiT for the scope of the guard
/// (per thread): ops in `compute_region::weights` compute in `dtype` whatever their weights'
/// storage dtype (fp32 weights are cast per op, as autocast does). With the guard off (default)
/// they compute in the storage dtype. So an fp32 model under `autocast_guard(kBFloat16)` and the
/// same model with its matmul weights stored in bf16 (`store_matmul_weights`) give the same numbers.
class autocast_guard {
public:
  explicit autocast_guard(torch::Dtype dtype);
  ~autocast_guard();
  autocast_guard(const autocast_guard&) = delete;
  autocast_guard& operator=(const autocast_guard&) = delete;

private:
  std::optional<torch::Dtype> previous_;
};

/// Stores the weights and biases of the ops in `compute_region::weights` (patch embeddings, text
/// embedding, attention projections, FFNs, image-embedding linears, VACE projections) in `dtype`;
/// time embedding, time projection, head, norms and modulation keep their dtype. The storage rule
/// that matches autocast_guard(dtype) on an fp32 model, bit for bit.
void store_matmul_weights(torch::nn::Module& model, torch::Dtype dtype);

/// The dotted paths of the parameters store_matmul_weights converts (its one selection rule): the
/// DiT component's storage rule (`dit=cuda:store=bf16`) converts exactly these.
std::set<std::string> matmul_weight_paths(torch::nn::Module& model);

/// `layer(x)` computed in linear_compute_dtype(layer->weight, region) (input and parameters are
/// cast to it; no-op casts when dtypes already agree).
torch::Tensor linear(const torch::nn::Linear& layer, const torch::Tensor& x,
                     compute_region region = compute_region::weights);

// ------------------------------------------------------------------------------------------------
// config
// ------------------------------------------------------------------------------------------------

// WanModelConfig, from_config_json and parameter_count: wan/model_config.hpp.

/// The DiT config of a WAN_CONFIGS task (`t2v-14B`, `t2v-1.3B`, `i2v-14B`, `t2i-14B`, `flf2v-14B`,
/// `vace-1.3B`, `vace-14B`): the transformer fields of wan::configs::wan_config(task) plus the
/// fields that only the released checkpoints' config.json carry (model_type, in_dim = 36 for
/// i2v/flf2v, text_len = 512, text_dim = 4096, out_dim = 16, VACE's vace_layers / vace_in_dim = 96).
WanModelConfig model_config(std::string_view task);
inline WanModelConfig wan_t2v_1_3B() { return model_config("t2v-1.3B"); }
inline WanModelConfig wan_t2v_14B() { return model_config("t2v-14B"); }
inline WanModelConfig wan_i2v_14B() { return model_config("i2v-14B"); }
inline WanModelConfig wan_t2i_14B() { return model_config("t2i-14B"); }
inline WanModelConfig wan_flf2v_14B() { return model_config("flf2v-14B"); }
inline WanModelConfig wan_vace_1_3B() { return model_config("vace-1.3B"); }
inline WanModelConfig wan_vace_14B() { return model_config("vace-14B"); }


// ------------------------------------------------------------------------------------------------
// functions
// ------------------------------------------------------------------------------------------------

/// sinusoidal_embedding_1d(dim, position): float64 [B, dim] = cat(cos, sin).
torch::Tensor sinusoidal_embedding_1d(int64_t dim, const torch::Tensor& position);

/// rope_params(max_seq_len, dim, theta): complex128 [max_seq_len, dim / 2] built in float64.
torch::Tensor rope_params(int64_t max_seq_len, int64_t dim, double theta = 10000.0);

/// Tokens rope_apply rotates at a time: its float64 temporaries (24 bytes per element of x in the
/// reference, which rotates the whole sequence at once) stay within 1024 tokens.
inline constexpr int64_t ROPE_CHUNK_TOKENS = 1024;

/// rope_apply(x [B, L, N, D], grid_sizes int64 [B, 3] on the CPU, freqs complex128 [1024, D / 2])
/// -> [B, L, N, D] in `dtype`. `freqs` must be on x's device (throws offload::placement_error).
/// The rotation is computed in float64 and rounded to float32 as in the reference; a narrower
/// `dtype` is then rounded from that float32 value, so the result equals
/// `rope_apply(x, ...).to(dtype)` bit for bit (the attention's cast, done chunk by chunk).
/// `chunk_tokens` (> 0) tokens are rotated at a time, their multipliers gathered for the chunk;
/// every chunking gives the same bits.
torch::Tensor rope_apply(const torch::Tensor& x, const torch::Tensor& grid_sizes,
                         const torch::Tensor& freqs, int64_t chunk_tokens = ROPE_CHUNK_TOKENS,
                         c10::ScalarType dtype = c10::ScalarType::Float);

/// Receives recorded intermediates (see the file comment).
using trace_fn = std::function<void(const std::string& name, const torch::Tensor& value)>;

// ------------------------------------------------------------------------------------------------
// modules
// ------------------------------------------------------------------------------------------------

class WanRMSNormImpl : public torch::nn::Module {
public:
  explicit WanRMSNormImpl(int64_t dim, double eps = 1e-5);
  /// x [B, L, C] -> [B, L, C]
  torch::Tensor forward(const torch::Tensor& x) const;
  torch::Tensor norm(const torch::Tensor& x) const; ///< the reference's `_norm`

  int64_t dim;
  double eps;
  torch::Tensor weight; ///< [dim]
};
TORCH_MODULE(WanRMSNorm);

class WanLayerNormImpl : public torch::nn::Module {
public:
  explicit WanLayerNormImpl(int64_t dim, double eps = 1e-6, bool elementwise_affine = false);
  /// x [B, L, C] -> [B, L, C], normalised in float32, returned in x's dtype
  torch::Tensor forward(const torch::Tensor& x) const;

  int64_t dim;
  double eps;
  torch::Tensor weight, bias; ///< [dim] each, only when elementwise_affine
};
TORCH_MODULE(WanLayerNorm);

class WanSelfAttentionImpl : public torch::nn::Module {
public:
  WanSelfAttentionImpl(int64_t dim, int64_t num_heads, std::array<int64_t, 2> window_size = {-1, -1},
                       bool qk_norm = true, double eps = 1e-6);
  /// x [B, L, C], seq_lens int64 [B], grid_sizes int64 [B, 3], freqs complex128 [1024, C/N/2]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& seq_lens,
                        const torch::Tensor& grid_sizes, const torch::Tensor& freqs);

  int64_t dim, num_heads, head_dim;
  std::array<int64_t, 2> window_size;
  /// Tokens rope_apply rotates at a time (any value gives the same output; not a module member).
  int64_t rope_chunk_tokens = ROPE_CHUNK_TOKENS;
  bool qk_norm;
  double eps;
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  WanRMSNorm norm_q{nullptr}, norm_k{nullptr}; ///< null when !qk_norm (nn.Identity)

protected:
  torch::Tensor apply_norm(const WanRMSNorm& n, const torch::Tensor& x) const;
};
TORCH_MODULE(WanSelfAttention);

class WanT2VCrossAttentionImpl : public WanSelfAttentionImpl {
public:
  using WanSelfAttentionImpl::WanSelfAttentionImpl;
  /// x [B, L1, C], context [B, L2, C], context_lens int64 [B] or undefined (None)
  virtual torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context,
                                const torch::Tensor& context_lens);
};
TORCH_MODULE(WanT2VCrossAttention);

class WanI2VCrossAttentionImpl : public WanT2VCrossAttentionImpl {
public:
  WanI2VCrossAttentionImpl(int64_t dim, int64_t num_heads,
                           std::array<int64_t, 2> window_size = {-1, -1}, bool qk_norm = true,
                           double eps = 1e-6);
  /// x [B, L1, C], context [B, L_img + 512, C] (image tokens first)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context,
                        const torch::Tensor& context_lens) override;

  torch::nn::Linear k_img{nullptr}, v_img{nullptr};
  WanRMSNorm norm_k_img{nullptr};
};
TORCH_MODULE(WanI2VCrossAttention);

class WanAttentionBlockImpl : public torch::nn::Module {
public:
  WanAttentionBlockImpl(const std::string& cross_attn_type, int64_t dim, int64_t ffn_dim,
                        int64_t num_heads, std::array<int64_t, 2> window_size = {-1, -1},
                        bool qk_norm = true, bool cross_attn_norm = false, double eps = 1e-6);
  /// x [B, L, C], e [B, 6, C] float32, seq_lens [B], grid_sizes [B, 3], freqs, context [B, L2, C]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& e,
                        const torch::Tensor& seq_lens, const torch::Tensor& grid_sizes,
                        const torch::Tensor& freqs, const torch::Tensor& context,
                        const torch::Tensor& context_lens);

  int64_t dim, ffn_dim, num_heads;
  std::array<int64_t, 2> window_size;
  bool qk_norm, cross_attn_norm;
  double eps;
  WanLayerNorm norm1{nullptr};
  WanSelfAttention self_attn{nullptr};
  WanLayerNorm norm3{nullptr}; ///< null when !cross_attn_norm (nn.Identity)
  WanT2VCrossAttention cross_attn{nullptr}; ///< holds a WanI2VCrossAttentionImpl for 'i2v_cross_attn'
  WanLayerNorm norm2{nullptr};
  torch::nn::Sequential ffn{nullptr};
  torch::nn::Linear ffn_0{nullptr}, ffn_2{nullptr}; ///< aliases of ffn[0], ffn[2]
  torch::Tensor modulation; ///< [1, 6, dim]
};
TORCH_MODULE(WanAttentionBlock);

class HeadImpl : public torch::nn::Module {
public:
  HeadImpl(int64_t dim, int64_t out_dim, std::array<int64_t, 3> patch_size, double eps = 1e-6);
  /// x [B, L, C], e [B, C] float32 -> [B, L, prod(patch_size) * out_dim]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& e);

  int64_t dim, out_dim;
  std::array<int64_t, 3> patch_size;
  double eps;
  WanLayerNorm norm{nullptr};
  torch::nn::Linear head{nullptr};
  torch::Tensor modulation; ///< [1, 2, dim]
};
TORCH_MODULE(Head);

class MLPProjImpl : public torch::nn::Module {
public:
  MLPProjImpl(int64_t in_dim, int64_t out_dim, bool flf_pos_emb = false);
  /// image_embeds [B, 257, in_dim] (flf2v: [2B, 257, in_dim] viewed as [B, 514, in_dim])
  torch::Tensor forward(const torch::Tensor& image_embeds);

  torch::nn::Sequential proj{nullptr};
  torch::nn::LayerNorm proj_0{nullptr}, proj_4{nullptr}; ///< aliases of proj[0], proj[4]
  torch::nn::Linear proj_1{nullptr}, proj_3{nullptr};    ///< aliases of proj[1], proj[3]
  torch::Tensor emb_pos; ///< [1, 514, in_dim], flf2v only
};
TORCH_MODULE(MLPProj);

class WanModelImpl : public torch::nn::Module {
public:
  /// Built in float32, as the reference's WanModel. With `matmul_dtype` (bf16 or fp16), its matmul
  /// weights (store_matmul_weights' selection) are stored in it, block by block: each block is
  /// created in float32 (LibTorch's initialisation), given the reference's init_weights() and
  /// converted before the next, so the host never holds the float32 DiT (T2V-14B: 53 GiB in
  /// float32, 27 with its matmul weights in bf16). Random values then differ from the float32
  /// build's (the blocks' draws come in another order); a checkpoint loaded into it gives the bits
  /// of the float32 build loaded and converted (load_wan_model).
  explicit WanModelImpl(const WanModelConfig& config, std::optional<torch::Dtype> matmul_dtype = std::nullopt);

  /// x: B tensors [C_in, F, H, W]; t int64 [B]; context: B tensors [L_b, text_dim];
  /// clip_fea [B, 257, clip_dim] (flf2v: [2B, 257, clip_dim]) and y: B tensors [C_y, F, H, W]
  /// for i2v / flf2v. Returns B float32 tensors [out_dim, F, H, W].
  std::vector<torch::Tensor> forward(std::vector<torch::Tensor> x, const torch::Tensor& t,
                                     const std::vector<torch::Tensor>& context, int64_t seq_len,
                                     const torch::Tensor& clip_fea = {},
                                     const std::vector<torch::Tensor>& y = {});

  /// forward() for several contexts (CFG's cond and uncond) at once, block-major: returns, per
  /// context in `contexts`, what forward(x, t, context, seq_len, clip_fea, y) returns, bit for bit.
  std::vector<std::vector<torch::Tensor>> forward_branches(std::vector<torch::Tensor> x, const torch::Tensor& t,
                                                           const std::vector<std::vector<torch::Tensor>>& contexts,
                                                           int64_t seq_len, const torch::Tensor& clip_fea = {},
                                                           const std::vector<torch::Tensor>& y = {});

  /// The end of forward() for each branch's block output: `head` (e from the time embedding) and
  /// unpatchify, cast to float32. Records "head" for the first branch when `record_first`.
  std::vector<std::vector<torch::Tensor>> head_branches(std::vector<torch::Tensor> h, const torch::Tensor& e,
                                                        const torch::Tensor& grid_sizes, bool record_first);

  /// x [B, L, prod(patch) * out_dim], grid_sizes int64 [B, 3] -> B tensors [out_dim, F, H, W]
  std::vector<torch::Tensor> unpatchify(const torch::Tensor& x,
                                        const torch::Tensor& grid_sizes) const;

  /// The reference's init_weights() (Xavier / normal(0.02) / zero head), run by the constructor.
  void init_weights();

  WanModelConfig config;
  std::string model_type;
  std::array<int64_t, 3> patch_size;
  int64_t text_len, in_dim, dim, ffn_dim, freq_dim, text_dim, out_dim, num_heads, num_layers;
  std::array<int64_t, 2> window_size;
  bool qk_norm, cross_attn_norm;
  double eps;

  torch::nn::Conv3d patch_embedding{nullptr};
  torch::nn::Sequential text_embedding{nullptr};
  torch::nn::Sequential time_embedding{nullptr};
  torch::nn::Sequential time_projection{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  Head head{nullptr};
  MLPProj img_emb{nullptr}; ///< i2v / flf2v only

  /// RoPE table, complex128 [1024, head_dim / 2]; NOT a parameter or buffer (not in checkpoints).
  /// Declared to the offload library as an auxiliary tensor that follows the device, keeps dtype.
  torch::Tensor freqs;

  /// Optional recorder of intermediates (debugging aid).
  trace_fn trace;

  /// The block stream of the offload component wrapping this model (streamed DiT), or null.
  offload::block_stream* block_stream = nullptr;

protected:
  /// Builds everything but `blocks` when !build_blocks (VaceWanModel registers its own blocks),
  /// with its matmul weights in `matmul_dtype` when given.
  WanModelImpl(const WanModelConfig& config, bool build_blocks, std::optional<torch::Dtype> matmul_dtype);

  struct embedded {
    torch::Tensor x;          ///< [B, seq_len, dim]
    torch::Tensor grid_sizes; ///< int64 [B, 3] (CPU)
    torch::Tensor seq_lens;   ///< int64 [B] (CPU)
  };
  /// patch embedding, flatten, zero-pad to seq_len (shared with VaceWanModel)
  embedded patchify(torch::nn::Conv3d conv, const std::vector<torch::Tensor>& x,
                    int64_t seq_len, const std::string& trace_name);
  /// time embeddings: {e [B, dim], e0 [B, 6, dim]} in float32
  std::pair<torch::Tensor, torch::Tensor> embed_time(const torch::Tensor& t) const;
  /// text embedding of the contexts zero-padded to text_len: [B, text_len, dim]
  torch::Tensor embed_text(const std::vector<torch::Tensor>& context) const;
  void record(const std::string& name, const torch::Tensor& value) const {
    if (trace) trace(name, value);
  }

  torch::nn::Linear text_embedding_0{nullptr}, text_embedding_2{nullptr};
  torch::nn::Linear time_embedding_0{nullptr}, time_embedding_2{nullptr};
  torch::nn::Linear time_projection_1{nullptr};
  std::vector<WanAttentionBlock> block_list; ///< typed aliases of blocks[i]

private:
  void build(bool build_blocks, std::optional<torch::Dtype> matmul_dtype);
  /// init_weights() without the blocks' linears (`blocks.*`), which a build in matmul_dtype
  /// initialises before converting them.
  void init_weights(bool blocks);
};
TORCH_MODULE(WanModel);

/// WanModel from a directory holding config.json and diffusion_pytorch_model*.safetensors (single
/// file or sharded index), strictly loaded (offload::load_state). Throws offload::config_error for
/// a VACE config (use load_vace_wan_model) and offload::checkpoint_error for key mismatches.
/// With `matmul_dtype`, the model is built with its matmul weights in it (WanModel(config,
/// matmul_dtype)) and the checkpoint's values are converted as each is copied in: the bits of
/// load_wan_model(dir) followed by store_matmul_weights(matmul_dtype), without the float32 DiT on
/// the host.
WanModel load_wan_model(const std::filesystem::path& dir, std::optional<torch::Dtype> matmul_dtype = std::nullopt);

} // namespace wan
