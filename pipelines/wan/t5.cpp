// Port of Wan-Video/Wan2.1@9737cba, wan/modules/t5.py (encoder only); deviations in t5.hpp.
#include "t5.hpp"

#include <cmath>
#include <limits>
#include <numbers>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)
#include <torch/torch.h>

#include <offload/block_stream.hpp>
#include <offload/errors.hpp>

namespace wan {

namespace {

// fp16_clamp: keep float16 activations finite.
torch::Tensor fp16_clamp(torch::Tensor x) {
  if (x.scalar_type() == torch::kHalf && torch::isinf(x).any().item<bool>()) {
    const double clamp = 65504.0 - 1000.0;  // torch.finfo(float16).max - 1000
    x = torch::clamp(x, -clamp, clamp);
  }
  return x;
}

double dtype_min(torch::ScalarType t) {  // torch.finfo(dtype).min
  switch (t) {
  case torch::kHalf: return -65504.0;
  case torch::kBFloat16: return -3.3895313892515355e38;
  case torch::kDouble: return std::numeric_limits<double>::lowest();
  default: return std::numeric_limits<float>::lowest();
  }
}

const torch::Tensor& require_key(const offload::state_dict& sd, const std::string& key,
                                 std::int64_t dims) {
  const auto it = sd.find(key);
  if (it == sd.end()) {
    throw offload::checkpoint_error(
        "offload.checkpoint.missing_keys",
        fmt::format("T5Config::infer_from_weights: expected key '{}' in the T5 encoder state "
                    "dict ({} keys), found none; is this models_t5_umt5-xxl-enc-*.pth?",
                    key, sd.size()));
  }
  if (it->second.dim() != dims) {
    throw offload::checkpoint_error(
        "offload.checkpoint.shape_mismatch",
        fmt::format("T5Config::infer_from_weights: expected '{}' to have {} dimensions, found "
                    "shape {}",
                    key, dims, fmt::join(it->second.sizes(), "x")));
  }
  return it->second;
}

} // namespace

// ---- config ---------------------------------------------------------------------------------

T5Config T5Config::umt5_xxl() {
  T5Config c;
  c.vocab_size = 256384;
  c.dim = 4096;
  c.dim_attn = 4096;
  c.dim_ffn = 10240;
  c.num_heads = 64;
  c.encoder_layers = 24;
  c.decoder_layers = 24;
  c.num_buckets = 32;
  c.shared_pos = false;
  c.dropout = 0.1;
  return c;
}

T5Config T5Config::infer_from_weights(const offload::state_dict& sd) {
  T5Config c = umt5_xxl();
  const auto& emb = require_key(sd, "token_embedding.weight", 2);  // [vocab, dim]
  c.vocab_size = emb.size(0);
  c.dim = emb.size(1);
  c.dim_attn = require_key(sd, "blocks.0.attn.q.weight", 2).size(0);   // [dim_attn, dim]
  c.dim_ffn = require_key(sd, "blocks.0.ffn.fc1.weight", 2).size(0);   // [dim_ffn, dim]
  c.shared_pos = sd.count("pos_embedding.embedding.weight") > 0;
  const auto& pos = require_key(
      sd, c.shared_pos ? "pos_embedding.embedding.weight" : "blocks.0.pos_embedding.embedding.weight",
      2);  // [num_buckets, num_heads]
  c.num_buckets = pos.size(0);
  c.num_heads = pos.size(1);
  std::int64_t layers = 0;
  while (sd.count(fmt::format("blocks.{}.norm1.weight", layers)) > 0) ++layers;
  c.encoder_layers = layers;
  c.decoder_layers = layers;
  return c;
}

std::int64_t parameter_count(const T5Config& c) {
  std::int64_t n = 0;
  for (const auto x : tensor_numels(c)) n += x;
  return n;
}

std::vector<std::int64_t> tensor_numels(const T5Config& c) {
  std::vector<std::int64_t> n = {c.vocab_size * c.dim};                 // token_embedding
  if (c.shared_pos) n.push_back(c.num_buckets * c.num_heads);          // pos_embedding
  const auto block = block_tensor_numels(c);
  for (std::int64_t b = 0; b < c.encoder_layers; ++b) n.insert(n.end(), block.begin(), block.end());
  n.push_back(c.dim);                                                   // norm
  return n;
}

std::vector<std::int64_t> block_tensor_numels(const T5Config& c) {
  std::vector<std::int64_t> n = {c.dim,                                                     // norm1
                                 c.dim * c.dim_attn, c.dim * c.dim_attn, c.dim * c.dim_attn, // q, k, v
                                 c.dim_attn * c.dim,                                        // o
                                 c.dim,                                                     // norm2
                                 c.dim * c.dim_ffn, c.dim * c.dim_ffn, c.dim_ffn * c.dim};  // gate.0, fc1, fc2
  if (!c.shared_pos) n.push_back(c.num_buckets * c.num_heads);                              // pos_embedding
  return n;
}

// ---- modules --------------------------------------------------------------------------------

torch::Tensor GELUImpl::forward(const torch::Tensor& x) {
  return 0.5 * x *
         (1.0 + torch::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * torch::pow(x, 3.0))));
}

T5LayerNormImpl::T5LayerNormImpl(std::int64_t dim_, double eps_) : dim(dim_), eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor T5LayerNormImpl::forward(const torch::Tensor& x) {
  auto y = x * torch::rsqrt(x.to(torch::kFloat).pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (weight.scalar_type() == torch::kHalf || weight.scalar_type() == torch::kBFloat16) {
    y = y.to(weight.scalar_type());
  }
  return weight * y;
}

T5AttentionImpl::T5AttentionImpl(std::int64_t dim_, std::int64_t dim_attn_,
                                 std::int64_t num_heads_, double dropout_p)
    : dim(dim_), dim_attn(dim_attn_), num_heads(num_heads_), head_dim(dim_attn_ / num_heads_) {
  if (num_heads <= 0 || dim_attn % num_heads != 0) {
    throw offload::config_error(
        "offload.config.t5_heads",
        fmt::format("T5Attention: expected dim_attn divisible by num_heads, found dim_attn {} "
                    "and num_heads {}",
                    dim_attn, num_heads));
  }
  using torch::nn::LinearOptions;
  q = register_module("q", torch::nn::Linear(LinearOptions(dim, dim_attn).bias(false)));
  k = register_module("k", torch::nn::Linear(LinearOptions(dim, dim_attn).bias(false)));
  v = register_module("v", torch::nn::Linear(LinearOptions(dim, dim_attn).bias(false)));
  o = register_module("o", torch::nn::Linear(LinearOptions(dim_attn, dim).bias(false)));
  dropout = register_module("dropout", torch::nn::Dropout(dropout_p));
}

torch::Tensor T5AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context_in,
                                       const torch::Tensor& mask_in,
                                       const torch::Tensor& pos_bias) {
  const torch::Tensor& context = context_in.defined() ? context_in : x;
  const std::int64_t b = x.size(0), n = num_heads, c = head_dim;

  auto qh = q->forward(x).view({b, -1, n, c});        // [B, L1, N, C]
  auto kh = k->forward(context).view({b, -1, n, c});  // [B, L2, N, C]
  auto vh = v->forward(context).view({b, -1, n, c});  // [B, L2, N, C]

  // attention bias
  auto attn_bias = x.new_zeros({b, n, qh.size(1), kh.size(1)});  // [B, N, L1, L2]
  if (pos_bias.defined()) attn_bias += pos_bias;
  if (mask_in.defined()) {
    if (mask_in.dim() != 2 && mask_in.dim() != 3) {
      throw offload::config_error(
          "offload.config.t5_mask",
          fmt::format("T5Attention: expected a mask of shape [B, L2] or [B, L1, L2], found {}",
                      fmt::join(mask_in.sizes(), "x")));
    }
    const auto mask = mask_in.dim() == 2 ? mask_in.view({b, 1, 1, -1})  // [B, 1, 1, L2]
                                         : mask_in.unsqueeze(1);        // [B, 1, L1, L2]
    attn_bias.masked_fill_(mask == 0, dtype_min(x.scalar_type()));
  }

  // compute attention (T5 does not use scaling); einsum('binc,bjnc->bnij')
  auto attn = torch::matmul(qh.permute({0, 2, 1, 3}), kh.permute({0, 2, 3, 1})) +
              attn_bias;                                                         // [B, N, L1, L2]
  attn = torch::softmax(attn.to(torch::kFloat), -1).to(attn.scalar_type());
  auto out = torch::matmul(attn, vh.permute({0, 2, 1, 3})).permute({0, 2, 1, 3});  // [B, L1, N, C]

  out = out.reshape({b, -1, n * c});  // [B, L1, dim_attn]
  out = o->forward(out);              // [B, L1, C]
  return dropout->forward(out);
}

T5FeedForwardImpl::T5FeedForwardImpl(std::int64_t dim_, std::int64_t dim_ffn_, double dropout_p)
    : dim(dim_), dim_ffn(dim_ffn_) {
  using torch::nn::LinearOptions;
  gate = register_module(
      "gate", torch::nn::Sequential(torch::nn::Linear(LinearOptions(dim, dim_ffn).bias(false)),
                                    GELU()));
  fc1 = register_module("fc1", torch::nn::Linear(LinearOptions(dim, dim_ffn).bias(false)));
  fc2 = register_module("fc2", torch::nn::Linear(LinearOptions(dim_ffn, dim).bias(false)));
  dropout = register_module("dropout", torch::nn::Dropout(dropout_p));
}

torch::Tensor T5FeedForwardImpl::forward(const torch::Tensor& x) {
  auto y = fc1->forward(x) * gate->forward(x);  // [B, L, dim_ffn]
  y = dropout->forward(y);
  y = fc2->forward(y);                          // [B, L, dim]
  return dropout->forward(y);
}

T5RelativeEmbeddingImpl::T5RelativeEmbeddingImpl(std::int64_t num_buckets_,
                                                 std::int64_t num_heads_, bool bidirectional_,
                                                 std::int64_t max_dist_)
    : num_buckets(num_buckets_), num_heads(num_heads_), bidirectional(bidirectional_),
      max_dist(max_dist_) {
  embedding = register_module("embedding", torch::nn::Embedding(num_buckets, num_heads));
}

torch::Tensor T5RelativeEmbeddingImpl::forward(std::int64_t lq, std::int64_t lk) {
  const auto device = embedding->weight.device();
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  auto rel_pos = torch::arange(lk, opts).unsqueeze(0) - torch::arange(lq, opts).unsqueeze(1);
  rel_pos = relative_position_bucket(rel_pos);            // [Lq, Lk]
  auto rel_pos_embeds = embedding->forward(rel_pos);      // [Lq, Lk, N]
  return rel_pos_embeds.permute({2, 0, 1}).unsqueeze(0).contiguous();  // [1, N, Lq, Lk]
}

torch::Tensor T5RelativeEmbeddingImpl::relative_position_bucket(torch::Tensor rel_pos) const {
  // preprocess
  std::int64_t buckets = num_buckets;
  torch::Tensor rel_buckets;
  if (bidirectional) {
    buckets = num_buckets / 2;
    rel_buckets = (rel_pos > 0).to(torch::kLong) * buckets;
    rel_pos = torch::abs(rel_pos);
  } else {
    rel_buckets = torch::zeros_like(rel_pos);
    rel_pos = -torch::min(rel_pos, torch::zeros_like(rel_pos));
  }

  // embeddings for small and large positions
  const std::int64_t max_exact = buckets / 2;
  auto rel_pos_large =
      max_exact + (torch::log(rel_pos.to(torch::kFloat) / max_exact) /
                   std::log(static_cast<double>(max_dist) / static_cast<double>(max_exact)) *
                   (buckets - max_exact))
                      .to(torch::kLong);
  rel_pos_large = torch::min(rel_pos_large, torch::full_like(rel_pos_large, buckets - 1));
  return rel_buckets + torch::where(rel_pos < max_exact, rel_pos, rel_pos_large);
}

T5SelfAttentionImpl::T5SelfAttentionImpl(std::int64_t dim_, std::int64_t dim_attn_,
                                         std::int64_t dim_ffn_, std::int64_t num_heads_,
                                         std::int64_t num_buckets_, bool shared_pos_,
                                         double dropout_p)
    : dim(dim_), dim_attn(dim_attn_), dim_ffn(dim_ffn_), num_heads(num_heads_),
      num_buckets(num_buckets_), shared_pos(shared_pos_) {
  norm1 = register_module("norm1", T5LayerNorm(dim));
  attn = register_module("attn", T5Attention(dim, dim_attn, num_heads, dropout_p));
  norm2 = register_module("norm2", T5LayerNorm(dim));
  ffn = register_module("ffn", T5FeedForward(dim, dim_ffn, dropout_p));
  if (!shared_pos) {
    pos_embedding = register_module(
        "pos_embedding", T5RelativeEmbedding(num_buckets, num_heads, /*bidirectional=*/true));
  }
}

torch::Tensor T5SelfAttentionImpl::forward(const torch::Tensor& x_in, const torch::Tensor& mask,
                                           const torch::Tensor& pos_bias) {
  const auto e = shared_pos ? pos_bias : pos_embedding->forward(x_in.size(1), x_in.size(1));
  auto x = fp16_clamp(x_in + attn->forward(norm1->forward(x_in), {}, mask, e));  // [B, L, C]
  x = fp16_clamp(x + ffn->forward(norm2->forward(x)));                          // [B, L, C]
  return x;
}

T5EncoderImpl::T5EncoderImpl(const T5Config& cfg, torch::Dtype dtype) : config(cfg) {
  const auto in_dtype = [dtype](auto part) {
    part->to(dtype);
    return part;
  };
  token_embedding = register_module("token_embedding", in_dtype(torch::nn::Embedding(cfg.vocab_size, cfg.dim)));
  if (cfg.shared_pos) {
    pos_embedding = register_module(
        "pos_embedding", in_dtype(T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads, /*bidirectional=*/true)));
  }
  dropout = register_module("dropout", torch::nn::Dropout(cfg.dropout));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < cfg.encoder_layers; ++i) {
    blocks->push_back(in_dtype(T5SelfAttention(cfg.dim, cfg.dim_attn, cfg.dim_ffn, cfg.num_heads,
                                               cfg.num_buckets, cfg.shared_pos, cfg.dropout)));
  }
  norm = register_module("norm", in_dtype(T5LayerNorm(cfg.dim)));
}

torch::Tensor T5EncoderImpl::forward(const torch::Tensor& ids, const torch::Tensor& mask) {
  return forward_branches({{ids, mask}})[0];
}

std::vector<torch::Tensor> T5EncoderImpl::forward_branches(
    const std::vector<std::pair<torch::Tensor, torch::Tensor>>& inputs) {
  std::vector<torch::Tensor> xs, es;
  for (const auto& [ids, mask] : inputs) {
    // The table may stay on the host while T5 streams (keep_on_host_while_streaming): gather the
    // rows there and move them to the ids' device (a gather: the same values anywhere).
    const auto& table = token_embedding->weight;
    auto x = table.device() == ids.device() ? token_embedding->forward(ids)
                                            : token_embedding->forward(ids.to(table.device())).to(ids.device());  // [B, L, C]
    xs.push_back(dropout->forward(x));
    es.push_back(config.shared_pos ? pos_embedding->forward(x.size(1), x.size(1))  // [1, N, L, L]
                                   : torch::Tensor());
  }
  for (std::size_t i = 0; i < blocks->size(); ++i) {
    offload::block_use use(block_stream, static_cast<int>(i)); // every sequence through block i
    for (std::size_t b = 0; b < xs.size(); ++b)
      xs[b] = blocks->ptr<T5SelfAttentionImpl>(i)->forward(xs[b], inputs[b].second, es[b]);  // [B, L, C]
  }
  for (auto& x : xs) x = dropout->forward(norm->forward(x));
  return xs;
}

// ---- T5EncoderModel -------------------------------------------------------------------------

T5EncoderModel::T5EncoderModel(std::int64_t text_len_, torch::Dtype dtype_,
                               torch::Device device_,
                               const std::filesystem::path& checkpoint_path_,
                               const std::filesystem::path& tokenizer_path_,
                               std::optional<T5Config> config)
    : text_len(text_len_), dtype(dtype_), device(device_), checkpoint_path(checkpoint_path_),
      tokenizer_path(tokenizer_path_) {
  const offload::state_dict sd = offload::load_checkpoint(checkpoint_path);
  const T5Config cfg = config ? *config : T5Config::infer_from_weights(sd);
  model = T5Encoder(cfg, dtype);
  offload::load_options opts;
  opts.source = checkpoint_path.string();
  offload::load_state(*model, sd, opts);
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  model->to(device);
  if (!tokenizer_path.empty()) {
    tokenizer.emplace(tokenizer_path, text_len, "whitespace");
  }
}

T5EncoderModel::T5EncoderModel(std::int64_t text_len_, torch::Dtype dtype_, torch::Device device_,
                               const T5Config& config)
    : text_len(text_len_), dtype(dtype_), device(device_) {
  model = T5Encoder(config, dtype);
  model->eval();
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  model->to(device);
}

std::vector<torch::Tensor> T5EncoderModel::operator()(const std::vector<std::string>& texts,
                                                      torch::Device target) {
  auto [ids, mask] = tokenize(texts, target);
  return encode(ids, mask);
}

std::pair<torch::Tensor, torch::Tensor> T5EncoderModel::tokenize(const std::vector<std::string>& texts,
                                                                 torch::Device target) {
  if (!tokenizer) {
    throw offload::config_error(
        "offload.config.t5_no_tokenizer",
        fmt::format("T5EncoderModel('{}'): expected a tokenizer to encode {} text(s), found none; "
                    "pass tokenizer_path (the google/umt5-xxl folder) or call encode(ids, mask)",
                    checkpoint_path.string(), texts.size()));
  }
  auto [ids, mask] = (*tokenizer)(texts, /*add_special_tokens=*/true);
  return {ids.to(target), mask.to(target)};
}

std::vector<torch::Tensor> T5EncoderModel::encode(const torch::Tensor& ids,
                                                  const torch::Tensor& mask) {
  return encode_branches({{ids, mask}})[0];
}

std::vector<std::vector<torch::Tensor>> T5EncoderModel::encode_branches(
    const std::vector<std::pair<torch::Tensor, torch::Tensor>>& inputs) {
  for (const auto& [ids, mask] : inputs) {
    if (ids.dim() != 2 || mask.sizes() != ids.sizes()) {
      throw offload::config_error(
          "offload.config.t5_ids",
          fmt::format("T5EncoderModel::encode: expected ids and mask of the same shape [B, L], "
                      "found ids {} and mask {}",
                      fmt::join(ids.sizes(), "x"), fmt::join(mask.sizes(), "x")));
    }
  }
  torch::NoGradGuard no_grad;
  const auto contexts = model->forward_branches(inputs);  // [B, L, C] each
  std::vector<std::vector<torch::Tensor>> out;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const auto seq_lens = inputs[i].second.gt(0).sum(1).to(torch::kLong).cpu();  // [B]
    auto& o = out.emplace_back();
    for (std::int64_t b = 0; b < inputs[i].first.size(0); ++b)
      o.push_back(contexts[i][b].slice(0, 0, seq_lens[b].item<std::int64_t>()));  // [L_b, C]
  }
  return out;
}

} // namespace wan
