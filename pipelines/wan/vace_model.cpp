// Port of Wan-Video/Wan2.1@9737cba, wan/modules/vace_model.py. Deliberate deviations are listed in
// vace_model.hpp.
#include "wan/vace_model.hpp"

#include <offload/block_stream.hpp>
#include <offload/errors.hpp>
#include <offload/state_dict.hpp>

#include <fmt/format.h>
#include <torch/torch.h>

namespace wan {

VaceWanAttentionBlockImpl::VaceWanAttentionBlockImpl(const std::string& cross_attn_type,
                                                     int64_t dim_, int64_t ffn_dim_,
                                                     int64_t num_heads_,
                                                     std::array<int64_t, 2> window_size_,
                                                     bool qk_norm_, bool cross_attn_norm_,
                                                     double eps_, int64_t block_id_)
    : WanAttentionBlockImpl(cross_attn_type, dim_, ffn_dim_, num_heads_, window_size_, qk_norm_,
                            cross_attn_norm_, eps_),
      block_id(block_id_) {
  torch::NoGradGuard no_grad;
  if (block_id == 0) {
    before_proj = register_module("before_proj", torch::nn::Linear(dim, dim));
    torch::nn::init::zeros_(before_proj->weight);
    torch::nn::init::zeros_(before_proj->bias);
  }
  after_proj = register_module("after_proj", torch::nn::Linear(dim, dim));
  torch::nn::init::zeros_(after_proj->weight);
  torch::nn::init::zeros_(after_proj->bias);
}

std::pair<torch::Tensor, torch::Tensor> VaceWanAttentionBlockImpl::forward(
    const torch::Tensor& c_in, const torch::Tensor& x, const torch::Tensor& e,
    const torch::Tensor& seq_lens, const torch::Tensor& grid_sizes, const torch::Tensor& freqs,
    const torch::Tensor& context, const torch::Tensor& context_lens) {
  auto c = c_in; // [B, L, C]
  if (block_id == 0) c = linear(before_proj, c) + x;
  c = WanAttentionBlockImpl::forward(c, e, seq_lens, grid_sizes, freqs, context, context_lens);
  auto c_skip = linear(after_proj, c); // [B, L, C]
  return {c, c_skip};
}

BaseWanAttentionBlockImpl::BaseWanAttentionBlockImpl(const std::string& cross_attn_type,
                                                     int64_t dim_, int64_t ffn_dim_,
                                                     int64_t num_heads_,
                                                     std::array<int64_t, 2> window_size_,
                                                     bool qk_norm_, bool cross_attn_norm_,
                                                     double eps_,
                                                     std::optional<int64_t> block_id_)
    : WanAttentionBlockImpl(cross_attn_type, dim_, ffn_dim_, num_heads_, window_size_, qk_norm_,
                            cross_attn_norm_, eps_),
      block_id(block_id_) {}

torch::Tensor BaseWanAttentionBlockImpl::forward(
    const torch::Tensor& x_in, const std::vector<torch::Tensor>& hints, double context_scale,
    const torch::Tensor& e, const torch::Tensor& seq_lens, const torch::Tensor& grid_sizes,
    const torch::Tensor& freqs, const torch::Tensor& context, const torch::Tensor& context_lens) {
  auto x = WanAttentionBlockImpl::forward(x_in, e, seq_lens, grid_sizes, freqs, context,
                                          context_lens); // [B, L, C]
  if (block_id) {
    if (*block_id >= static_cast<int64_t>(hints.size()))
      throw offload::config_error(
          "offload.wan.model.hints",
          fmt::format("BaseWanAttentionBlock: hint {} requested but only {} hints were computed",
                      *block_id, hints.size()));
    x = x + hints[static_cast<size_t>(*block_id)] * context_scale;
  }
  return x;
}

namespace {
WanModelConfig checked_vace(const WanModelConfig& cfg) {
  if (cfg.model_type != "vace")
    throw offload::config_error(
        "offload.wan.config.invalid",
        fmt::format("VaceWanModel: model_type must be 'vace', found '{}'", cfg.model_type));
  return cfg;
}
} // namespace

VaceWanModelImpl::VaceWanModelImpl(const WanModelConfig& cfg, std::optional<torch::Dtype> matmul_dtype)
    : WanModelImpl(checked_vace(cfg), /*build_blocks=*/false, matmul_dtype),
      vace_layers(cfg.resolved_vace_layers()), vace_in_dim(cfg.resolved_vace_in_dim()) {
  for (size_t n = 0; n < vace_layers.size(); ++n)
    vace_layers_mapping[vace_layers[n]] = static_cast<int64_t>(n);

  // blocks
  for (int64_t i = 0; i < num_layers; ++i) {
    std::optional<int64_t> id;
    if (auto it = vace_layers_mapping.find(i); it != vace_layers_mapping.end()) id = it->second;
    BaseWanAttentionBlock blk("t2v_cross_attn", dim, ffn_dim, num_heads, window_size, qk_norm,
                              cross_attn_norm, eps, id);
    if (matmul_dtype) store_matmul_weights(*blk, *matmul_dtype); // before the next block is built
    blocks->push_back(blk);
    base_block_list.push_back(blk);
  }

  // vace blocks
  vace_blocks = register_module("vace_blocks", torch::nn::ModuleList());
  for (auto i : vace_layers) {
    VaceWanAttentionBlock blk("t2v_cross_attn", dim, ffn_dim, num_heads, window_size, qk_norm,
                              cross_attn_norm, eps, /*block_id=*/i);
    if (matmul_dtype) store_matmul_weights(*blk, *matmul_dtype);
    vace_blocks->push_back(blk);
    vace_block_list.push_back(blk);
  }

  // vace patch embeddings
  const auto ps = torch::ExpandingArray<3>({patch_size[0], patch_size[1], patch_size[2]});
  vace_patch_embedding = register_module(
      "vace_patch_embedding",
      torch::nn::Conv3d(torch::nn::Conv3dOptions(vace_in_dim, dim, ps).stride(ps)));
  if (matmul_dtype) store_matmul_weights(*this, *matmul_dtype); // vace_patch_embedding; the rest is converted
}

std::vector<torch::Tensor> VaceWanModelImpl::forward_vace(
    const torch::Tensor& x, const std::vector<torch::Tensor>& vace_context, int64_t seq_len,
    const torch::Tensor& e, const torch::Tensor& seq_lens, const torch::Tensor& grid_sizes,
    const torch::Tensor& freqs_, const torch::Tensor& context, const torch::Tensor& context_lens) {
  // embeddings
  auto c = patchify(vace_patch_embedding, vace_context, seq_len, "vace_patch_embedding").x;
  // [B, seq_len, dim]
  std::vector<torch::Tensor> hints;
  for (size_t i = 0; i < vace_block_list.size(); ++i) {
    auto [c_next, c_skip] =
        vace_block_list[i](c, x, e, seq_lens, grid_sizes, freqs_, context, context_lens);
    c = c_next;
    record(fmt::format("vace_block.{}.0", i), c);
    record(fmt::format("vace_block.{}.1", i), c_skip);
    hints.push_back(c_skip);
  }
  return hints;
}

std::vector<torch::Tensor> VaceWanModelImpl::forward(
    std::vector<torch::Tensor> x, const torch::Tensor& t,
    const std::vector<torch::Tensor>& vace_context, const std::vector<torch::Tensor>& context,
    int64_t seq_len, double vace_context_scale, const torch::Tensor& clip_fea,
    const std::vector<torch::Tensor>& y) {
  if (clip_fea.defined() || !y.empty())
    throw offload::config_error(
        "offload.wan.model.vace_condition",
        "VaceWanModel: clip_fea / y are not used by the VACE model (the reference ignores them); "
        "pass the control signal through vace_context");
  return forward_branches(std::move(x), t, vace_context, {context}, seq_len, vace_context_scale)[0];
}

namespace {
/// For each main block i, the VACE blocks to run just before it (those not yet run up to the one
/// whose hint block i adds), in order.
std::vector<std::vector<int64_t>> vace_blocks_before(const std::map<int64_t, int64_t>& mapping, int64_t num_layers) {
  std::vector<std::vector<int64_t>> before(static_cast<size_t>(num_layers));
  int64_t next = 0; // the next VACE block to run
  for (int64_t i = 0; i < num_layers; ++i)
    if (auto it = mapping.find(i); it != mapping.end())
      for (; next <= it->second; ++next) before[static_cast<size_t>(i)].push_back(next);
  return before;
}
} // namespace

std::vector<std::string> VaceWanModelImpl::block_order() const {
  std::vector<std::string> order;
  const auto before = vace_blocks_before(vace_layers_mapping, num_layers);
  for (int64_t i = 0; i < num_layers; ++i) {
    for (auto n : before[static_cast<size_t>(i)]) order.push_back(fmt::format("vace_blocks.{}", n));
    order.push_back(fmt::format("blocks.{}", i));
  }
  return order;
}

std::vector<std::vector<torch::Tensor>> VaceWanModelImpl::forward_branches(
    const std::vector<torch::Tensor>& x, const torch::Tensor& t, const std::vector<torch::Tensor>& vace_context,
    const std::vector<std::vector<torch::Tensor>>& contexts, int64_t seq_len, double vace_context_scale) {
  if (contexts.empty())
    throw offload::config_error("offload.wan.model.batch",
                                "VaceWanModel::forward_branches: expected at least one context, found none");
  for (const auto& context : contexts)
    if (x.size() != context.size() || x.size() != vace_context.size() || t.dim() != 1 ||
        t.size(0) != static_cast<int64_t>(x.size()))
      throw offload::config_error(
          "offload.wan.model.batch",
          fmt::format("VaceWanModel: expected one context, vace_context and timestep per sample; "
                      "found {} x, {} context, {} vace_context, t with {} dims",
                      x.size(), context.size(), vace_context.size(), t.dim()));
  if (static_cast<int64_t>(vace_block_list.size()) != static_cast<int64_t>(vace_layers.size()))
    throw offload::config_error("offload.wan.model.hints",
                                fmt::format("VaceWanModel: {} VACE blocks for {} vace_layers", vace_block_list.size(),
                                            vace_layers.size()));
  const bool one = contexts.size() == 1; // intermediates are recorded for a single branch

  // embeddings (shared by the branches: same x, same vace_context)
  auto emb = patchify(patch_embedding, x, seq_len, "patch_embedding");

  // time embeddings
  auto [e, e0] = embed_time(t);

  // context, per branch
  torch::Tensor context_lens; // None
  const size_t branches = contexts.size();
  // VACE embeddings, forward_vace's c before its first block [B, seq_len, dim]: the branches'
  // control streams are its only references, so it goes with the first VACE block's outputs.
  std::vector<torch::Tensor> ctx, h,
      c(branches, patchify(vace_patch_embedding, vace_context, seq_len, "vace_patch_embedding").x);
  std::vector<std::vector<torch::Tensor>> hints(branches, std::vector<torch::Tensor>(vace_layers.size()));
  for (const auto& context : contexts) {
    ctx.push_back(embed_text(context));
    h.push_back(emb.x);
  }

  // blocks, block-major in block_order(): a streamed block is loaded once for every branch, and a
  // hint lives from its VACE block to the main block that adds it.
  const auto before = vace_blocks_before(vace_layers_mapping, num_layers);
  int unit = 0;
  for (size_t i = 0; i < base_block_list.size(); ++i) {
    for (const auto n : before[i]) {
      offload::block_use use(block_stream, unit++);
      for (size_t b = 0; b < branches; ++b) {
        auto [c_next, c_skip] = vace_block_list[static_cast<size_t>(n)](c[b], emb.x, e0, emb.seq_lens, emb.grid_sizes,
                                                                        freqs, ctx[b], context_lens);
        c[b] = c_next;
        hints[b][static_cast<size_t>(n)] = c_skip;
      }
      if (one) {
        record(fmt::format("vace_block.{}.0", n), c[0]);
        record(fmt::format("vace_block.{}.1", n), hints[0][static_cast<size_t>(n)]);
      }
    }
    offload::block_use use(block_stream, unit++);
    for (size_t b = 0; b < branches; ++b) {
      h[b] = base_block_list[i](h[b], hints[b], vace_context_scale, e0, emb.seq_lens, emb.grid_sizes, freqs, ctx[b],
                                context_lens);
      if (const auto& id = base_block_list[i]->block_id) hints[b][static_cast<size_t>(*id)] = torch::Tensor();
    }
    if (one) record(fmt::format("block.{}", i), h[0]);
    // The embedding is read by the VACE block with block_id 0 only (before_proj(c) + x), which
    // runs before main block 0; after that the residual streams replace it (the reference rebinds
    // x in its block loop).
    if (i == 0) emb.x = torch::Tensor();
  }

  return head_branches(std::move(h), e, emb.grid_sizes, one);
}

VaceWanModel load_vace_wan_model(const std::filesystem::path& dir, std::optional<torch::Dtype> matmul_dtype) {
  auto cfg = from_config_json(dir / "config.json");
  if (cfg.model_type != "vace")
    throw offload::config_error(
        "offload.wan.config.class",
        fmt::format("'{}' describes a WanModel ({}); load it with wan::load_wan_model",
                    (dir / "config.json").string(), cfg.model_type));
  VaceWanModel model(cfg, matmul_dtype);
  offload::load_state(*model, dir); // the error names the directory; float32 values converted as copied
  return model;
}

} // namespace wan
