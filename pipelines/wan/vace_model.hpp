#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/modules/vace_model.py: VaceWanAttentionBlock,
/// BaseWanAttentionBlock and VaceWanModel (the VACE control branch of the Wan2.1 DiT).
///
/// Deliberate deviations:
///   * The reference builds WanModel's blocks and then replaces them; here VaceWanModel asks the
///     WanModel constructor not to build them (no transient allocation of a second block stack).
///     The blocks it registers keep PyTorch's default init, as in the reference (init_weights ran on
///     the discarded blocks); before_proj / after_proj are zero-initialised.
///   * forward() keeps the reference's parameter list; clip_fea / y (ignored by the reference, the
///     code using them is commented out) throw offload::config_error when given instead of being
///     silently dropped.
///   * forward() runs each VACE block just before the first main block that needs its hint
///     (`vace_blocks.n` before `blocks.<vace_layers[n]>`) and drops a hint once it is added, where
///     the reference runs every VACE block first and keeps all hints (num VACE layers x [L, dim]).
///     Every value is computed by the same operations on the same inputs (bit-identical); only
///     the order of independent work and the memory held change. `forward_branches` runs several
///     guidance branches block-major in that order, so a streamed DiT (`dit=cuda:stream=K`) moves
///     each block of both lists once per denoising step; `block_order()` is the order it streams.
///   * `trace` additionally receives `vace_patch_embedding.b` and `vace_block.i.0` (c) /
///     `vace_block.i.1` (c_skip, the hint), as recorded by the golden files.
/// The compute-dtype rule is the one documented in model.hpp.

#include "wan/model.hpp"

#include <map>
#include <optional>
#include <utility>

namespace wan {

class VaceWanAttentionBlockImpl : public WanAttentionBlockImpl {
public:
  VaceWanAttentionBlockImpl(const std::string& cross_attn_type, int64_t dim, int64_t ffn_dim,
                            int64_t num_heads, std::array<int64_t, 2> window_size = {-1, -1},
                            bool qk_norm = true, bool cross_attn_norm = false, double eps = 1e-6,
                            int64_t block_id = 0);
  /// c, x [B, L, C] (+ WanAttentionBlock's arguments) -> {c [B, L, C], c_skip [B, L, C]}
  std::pair<torch::Tensor, torch::Tensor>
  forward(const torch::Tensor& c, const torch::Tensor& x, const torch::Tensor& e,
          const torch::Tensor& seq_lens, const torch::Tensor& grid_sizes,
          const torch::Tensor& freqs, const torch::Tensor& context,
          const torch::Tensor& context_lens);

  int64_t block_id;
  torch::nn::Linear before_proj{nullptr}; ///< block_id == 0 only
  torch::nn::Linear after_proj{nullptr};
};
TORCH_MODULE(VaceWanAttentionBlock);

class BaseWanAttentionBlockImpl : public WanAttentionBlockImpl {
public:
  BaseWanAttentionBlockImpl(const std::string& cross_attn_type, int64_t dim, int64_t ffn_dim,
                            int64_t num_heads, std::array<int64_t, 2> window_size = {-1, -1},
                            bool qk_norm = true, bool cross_attn_norm = false, double eps = 1e-6,
                            std::optional<int64_t> block_id = std::nullopt);
  /// x [B, L, C]; hints: one [B, L, C] per VACE block; adds hints[block_id] * context_scale
  torch::Tensor forward(const torch::Tensor& x, const std::vector<torch::Tensor>& hints,
                        double context_scale, const torch::Tensor& e,
                        const torch::Tensor& seq_lens, const torch::Tensor& grid_sizes,
                        const torch::Tensor& freqs, const torch::Tensor& context,
                        const torch::Tensor& context_lens);

  std::optional<int64_t> block_id;
};
TORCH_MODULE(BaseWanAttentionBlock);

class VaceWanModelImpl : public WanModelImpl {
public:
  /// config.model_type must be "vace"; vace_layers / vace_in_dim default as in the reference.
  /// `matmul_dtype` as in WanModel: each block's matmul weights converted as it is built.
  explicit VaceWanModelImpl(const WanModelConfig& config, std::optional<torch::Dtype> matmul_dtype = std::nullopt);

  /// Returns the hints: one c_skip [B, seq_len, dim] per VACE block.
  std::vector<torch::Tensor> forward_vace(const torch::Tensor& x,
                                          const std::vector<torch::Tensor>& vace_context,
                                          int64_t seq_len, const torch::Tensor& e,
                                          const torch::Tensor& seq_lens,
                                          const torch::Tensor& grid_sizes,
                                          const torch::Tensor& freqs, const torch::Tensor& context,
                                          const torch::Tensor& context_lens);

  /// x: B tensors [in_dim, F, H, W]; t int64 [B]; vace_context: B tensors [vace_in_dim, F, H, W];
  /// context: B tensors [L_b, text_dim]. Returns B float32 tensors [out_dim, F, H, W].
  std::vector<torch::Tensor> forward(std::vector<torch::Tensor> x, const torch::Tensor& t,
                                     const std::vector<torch::Tensor>& vace_context,
                                     const std::vector<torch::Tensor>& context, int64_t seq_len,
                                     double vace_context_scale = 1.0,
                                     const torch::Tensor& clip_fea = {},
                                     const std::vector<torch::Tensor>& y = {});

  /// Several guidance branches sharing x, t and vace_context, one context each (cond, uncond):
  /// block-major in block_order(), each branch bit-identical to forward(). Intermediates are
  /// recorded for a single branch.
  std::vector<std::vector<torch::Tensor>> forward_branches(const std::vector<torch::Tensor>& x, const torch::Tensor& t,
                                                           const std::vector<torch::Tensor>& vace_context,
                                                           const std::vector<std::vector<torch::Tensor>>& contexts,
                                                           int64_t seq_len, double vace_context_scale = 1.0);

  /// The module paths of the blocks in the order forward() runs them: `vace_blocks.n` right
  /// before `blocks.<vace_layers[n]>` (and after `vace_blocks.n-1`, whose output it reads).
  [[nodiscard]] std::vector<std::string> block_order() const;

  std::vector<int64_t> vace_layers;
  int64_t vace_in_dim;
  std::map<int64_t, int64_t> vace_layers_mapping; ///< layer index -> hint index

  torch::nn::ModuleList vace_blocks{nullptr};
  torch::nn::Conv3d vace_patch_embedding{nullptr};

protected:
  std::vector<BaseWanAttentionBlock> base_block_list;  ///< typed aliases of blocks[i]
  std::vector<VaceWanAttentionBlock> vace_block_list;  ///< typed aliases of vace_blocks[i]
};
TORCH_MODULE(VaceWanModel);

/// VaceWanModel from a directory holding config.json and diffusion_pytorch_model*.safetensors,
/// strictly loaded (offload::load_state). Throws offload::config_error when config.json does not
/// describe a VACE model. `matmul_dtype` as in load_wan_model.
VaceWanModel load_vace_wan_model(const std::filesystem::path& dir,
                                 std::optional<torch::Dtype> matmul_dtype = std::nullopt);

} // namespace wan
