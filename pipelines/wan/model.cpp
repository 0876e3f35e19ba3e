// Port of Wan-Video/Wan2.1@9737cba, wan/modules/model.py. Deliberate deviations and the
// compute-dtype rule are listed in model.hpp.
#include "wan/model.hpp"

#include "wan/attention.hpp"

#include <offload/block_stream.hpp>
#include <offload/errors.hpp>
#include <offload/state_dict.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

namespace wan {
namespace F = torch::nn::functional;

// ------------------------------------------------------------------------------------------------
// compute-dtype rule
// ------------------------------------------------------------------------------------------------

namespace {
thread_local std::optional<torch::Dtype> autocast_dtype; // set by autocast_guard
} // namespace

autocast_guard::autocast_guard(torch::Dtype dtype) : previous_(autocast_dtype) { autocast_dtype = dtype; }
autocast_guard::~autocast_guard() { autocast_dtype = previous_; }

torch::Dtype linear_compute_dtype(const torch::Tensor& weight, compute_region region) {
  if (region == compute_region::float32) return torch::kFloat32;
  return autocast_dtype ? *autocast_dtype : weight.scalar_type();
}

std::set<std::string> matmul_weight_paths(torch::nn::Module& model) {
  std::set<std::string> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    if (name.rfind("time_embedding", 0) == 0 || name.rfind("time_projection", 0) == 0 ||
        name.rfind("head", 0) == 0)
      continue; // float32 regions
    const bool matmul = item.value()->as<torch::nn::Linear>() || item.value()->as<torch::nn::Conv3d>();
    if (!matmul) continue;
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) out.insert(name + "." + p.key());
  }
  return out;
}

void store_matmul_weights(torch::nn::Module& model, torch::Dtype dtype) {
  torch::NoGradGuard no_grad;
  const auto paths = matmul_weight_paths(model);
  for (auto& item : model.named_parameters(/*recurse=*/true))
    if (paths.count(item.key())) item.value().set_data(item.value().to(dtype));
}

namespace {
/// The reference's basic init (init_weights: isinstance(m, nn.Linear)) over `module` and its
/// submodules, in modules() order: Xavier-uniform weights, zero biases.
void init_linears(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (const auto& m : module.modules(/*include_self=*/true))
    if (auto* l = m->as<torch::nn::LinearImpl>()) {
      torch::nn::init::xavier_uniform_(l->weight);
      if (l->bias.defined()) torch::nn::init::zeros_(l->bias);
    }
}
} // namespace

torch::Tensor linear(const torch::nn::Linear& layer, const torch::Tensor& x, compute_region region) {
  const auto dt = linear_compute_dtype(layer->weight, region);
  const auto& b = layer->bias;
  return F::linear(x.to(dt), layer->weight.to(dt), b.defined() ? b.to(dt) : b);
}

namespace {

torch::Tensor gelu_tanh(const torch::Tensor& x) { return torch::gelu(x, "tanh"); }

/// float32 layer norm over the last dim (the reference's `x.float()` / autocast layer_norm).
torch::Tensor layer_norm_f32(const torch::Tensor& x, int64_t dim, const torch::Tensor& weight,
                             const torch::Tensor& bias, double eps) {
  auto opts = F::LayerNormFuncOptions({dim}).eps(eps);
  if (weight.defined()) opts = opts.weight(weight.to(torch::kFloat32));
  if (bias.defined()) opts = opts.bias(bias.to(torch::kFloat32));
  return F::layer_norm(x.to(torch::kFloat32), opts);
}

std::string shape_str(const torch::Tensor& t) {
  return t.defined() ? fmt::format("[{}]", fmt::join(t.sizes(), ", ")) : "undefined";
}

} // namespace

// ------------------------------------------------------------------------------------------------
// config
// ------------------------------------------------------------------------------------------------

// WanModelConfig::resolved_vace_layers, validate, from_config_json, parameter_count: wan/model_config.ipp
// (included at the end of this file).

WanModelConfig model_config(std::string_view task) {
  const auto& c = configs::wan_config(task); // throws for unknown tasks
  WanModelConfig m;
  m.patch_size = c.patch_size;
  m.text_len = c.text_len;
  m.dim = c.dim;
  m.ffn_dim = c.ffn_dim;
  m.freq_dim = c.freq_dim;
  m.num_heads = c.num_heads;
  m.num_layers = c.num_layers;
  m.window_size = c.window_size;
  m.qk_norm = c.qk_norm;
  m.cross_attn_norm = c.cross_attn_norm;
  m.eps = c.eps;
  // Fields only the released checkpoints' config.json carry (in_dim, text_dim and out_dim keep the
  // WanModel defaults 16 / 4096 / 16 unless stated).
  if (task == "i2v-14B") {
    m.model_type = "i2v";
    m.in_dim = 36;
  } else if (task == "flf2v-14B") {
    m.model_type = "flf2v";
    m.in_dim = 36;
  } else if (task == "vace-1.3B") {
    m.model_type = "vace";
    m.vace_in_dim = 96;
    m.vace_layers = m.resolved_vace_layers(); // [0, 2, ..., 28]
  } else if (task == "vace-14B") {
    m.model_type = "vace";
    m.vace_in_dim = 96;
    m.vace_layers = std::vector<int64_t>{0, 5, 10, 15, 20, 25, 30, 35};
  } else {
    m.model_type = "t2v"; // t2v-14B, t2v-1.3B, t2i-14B
  }
  return m;
}

// ------------------------------------------------------------------------------------------------
// functions
// ------------------------------------------------------------------------------------------------

torch::Tensor sinusoidal_embedding_1d(int64_t dim, const torch::Tensor& position) {
  if (dim % 2 != 0)
    throw offload::config_error("offload.wan.config.invalid",
                                fmt::format("sinusoidal_embedding_1d: dim must be even, found {}",
                                            dim));
  const int64_t half = dim / 2;
  auto pos = position.to(torch::kFloat64);                                        // [B]
  auto exponent = torch::arange(half, pos.options()).div(half);                   // [half]
  auto sinusoid = torch::outer(pos, torch::pow(10000, -exponent));                // [B, half]
  return torch::cat({torch::cos(sinusoid), torch::sin(sinusoid)}, 1);             // [B, dim]
}

torch::Tensor rope_params(int64_t max_seq_len, int64_t dim, double theta) {
  if (dim % 2 != 0)
    throw offload::config_error("offload.wan.config.invalid",
                                fmt::format("rope_params: dim must be even, found {}", dim));
  auto inv = 1.0 / torch::pow(theta, torch::arange(0, dim, 2).to(torch::kFloat64).div(dim));
  auto freqs = torch::outer(torch::arange(max_seq_len), inv); // float64 [max_seq_len, dim / 2]
  return torch::polar(torch::ones_like(freqs), freqs);        // complex128
}

torch::Tensor rope_apply(const torch::Tensor& x, const torch::Tensor& grid_sizes,
                         const torch::Tensor& freqs, int64_t chunk_tokens, c10::ScalarType dtype) {
  if (freqs.device() != x.device())
    throw offload::placement_error(
        "offload.placement.device_mismatch",
        fmt::format("rope_apply: RoPE table 'freqs' is on {} but the activations are on {}; "
                    "place the model's auxiliary tensor 'freqs' with the model (declare it aux "
                    "with follow::device) before calling forward",
                    freqs.device().str(), x.device().str()));
  if (chunk_tokens < 1)
    throw offload::config_error("offload.wan.model.rope_chunk",
                                fmt::format("rope_apply: chunk_tokens must be positive, found {}", chunk_tokens));
  const int64_t n = x.size(2), c = x.size(3) / 2;
  auto parts = freqs.split_with_sizes({c - 2 * (c / 3), c / 3, c / 3}, 1);
  const auto grid = grid_sizes.to(torch::kCPU, torch::kLong).contiguous();
  const auto g = grid.accessor<int64_t, 2>();
  // The reference rotates each sample's whole sequence in float64 (x in float64, the complex
  // product, the concatenation with the padding, the stack: 24 to 32 bytes per element at once)
  // and converts the result to float32. Here each chunk's float64 product is rounded straight
  // into the output (float32, then `dtype`): the same roundings of the same values.
  auto out = torch::empty(x.sizes(), x.options().dtype(dtype)); // [B, L, N, D]

  for (int64_t i = 0; i < grid.size(0); ++i) {
    const int64_t f = g[i][0], h = g[i][1], w = g[i][2], seq_len = f * h * w;
    if (f > parts[0].size(0) || h > parts[1].size(0) || w > parts[2].size(0))
      throw offload::config_error(
          "offload.wan.model.grid_too_large",
          fmt::format("rope_apply: grid ({}, {}, {}) of sample {} exceeds the RoPE table length {}",
                      f, h, w, i, freqs.size(0)));
    // apply rotary embedding, chunk by chunk
    for (int64_t s = 0; s < seq_len; s += chunk_tokens) {
      const int64_t m = std::min(chunk_tokens, seq_len - s);
      // the chunk's multipliers: token t sits at frame t / (h w), row t / w % h, column t % w (the
      // rows of the reference's cat of the expanded tables, copied exactly)
      const auto t = torch::arange(s, s + m, torch::TensorOptions(torch::kLong).device(freqs.device()));
      auto freqs_i = torch::cat({parts[0].index_select(0, torch::div(t, h * w, "floor")),
                                 parts[1].index_select(0, torch::remainder(torch::div(t, w, "floor"), h)),
                                 parts[2].index_select(0, torch::remainder(t, w))},
                                -1)
                         .unsqueeze(1); // [m, 1, c]
      auto x_i = torch::view_as_complex(
          x[i].slice(0, s, s + m).to(torch::kFloat64).contiguous().reshape({m, n, -1, 2}));
      auto r = torch::view_as_real(x_i * freqs_i).flatten(2); // float64 [m, n, 2c]
      x_i = torch::Tensor();
      out[i].slice(0, s, s + m).copy_(r.to(torch::kFloat32)); // float64 -> float32 -> dtype
    }
    // the padding past seq_len passes through (float64 and back in the reference: exact)
    if (seq_len < x.size(1)) out[i].slice(0, seq_len).copy_(x[i].slice(0, seq_len).to(torch::kFloat32));
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// norms
// ------------------------------------------------------------------------------------------------

WanRMSNormImpl::WanRMSNormImpl(int64_t dim_, double eps_) : dim(dim_), eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor WanRMSNormImpl::norm(const torch::Tensor& x) const {
  // One operation per statement, so x.pow(2) is freed before the product is allocated (as Python
  // frees it); the same operations and values as the reference's one expression.
  const auto r = torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return x * r;
}

torch::Tensor WanRMSNormImpl::forward(const torch::Tensor& x) const {
  auto y = norm(x.to(torch::kFloat32));
  y = y.to(x.scalar_type());
  return y * weight;
}

WanLayerNormImpl::WanLayerNormImpl(int64_t dim_, double eps_, bool elementwise_affine)
    : dim(dim_), eps(eps_) {
  if (elementwise_affine) {
    weight = register_parameter("weight", torch::ones({dim}));
    bias = register_parameter("bias", torch::zeros({dim}));
  }
}

torch::Tensor WanLayerNormImpl::forward(const torch::Tensor& x) const {
  return layer_norm_f32(x, dim, weight, bias, eps).to(x.scalar_type());
}

// ------------------------------------------------------------------------------------------------
// attention
// ------------------------------------------------------------------------------------------------

WanSelfAttentionImpl::WanSelfAttentionImpl(int64_t dim_, int64_t num_heads_,
                                           std::array<int64_t, 2> window_size_, bool qk_norm_,
                                           double eps_)
    : dim(dim_), num_heads(num_heads_), head_dim(dim_ / num_heads_), window_size(window_size_),
      qk_norm(qk_norm_), eps(eps_) {
  if (dim % num_heads != 0)
    throw offload::config_error(
        "offload.wan.config.invalid",
        fmt::format("WanSelfAttention: dim ({}) must be divisible by num_heads ({})", dim,
                    num_heads));
  q = register_module("q", torch::nn::Linear(dim, dim));
  k = register_module("k", torch::nn::Linear(dim, dim));
  v = register_module("v", torch::nn::Linear(dim, dim));
  o = register_module("o", torch::nn::Linear(dim, dim));
  if (qk_norm) {
    norm_q = register_module("norm_q", WanRMSNorm(dim, eps));
    norm_k = register_module("norm_k", WanRMSNorm(dim, eps));
  }
}

torch::Tensor WanSelfAttentionImpl::apply_norm(const WanRMSNorm& n, const torch::Tensor& x) const {
  return n ? n->forward(x) : x; // nn.Identity when !qk_norm
}

torch::Tensor WanSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& seq_lens,
                                            const torch::Tensor& grid_sizes,
                                            const torch::Tensor& freqs) {
  const int64_t b = x.size(0), s = x.size(1), n = num_heads, d = head_dim;
  // query, key, value function
  auto q_ = apply_norm(norm_q, linear(q, x)).view({b, s, n, d}); // [B, L, N, D]
  auto k_ = apply_norm(norm_k, linear(k, x)).view({b, s, n, d}); // [B, L, N, D]
  auto v_ = linear(v, x).view({b, s, n, d});                     // [B, L, N, D]

  // RoPE chunk by chunk, rounded to the dtype flash_attention computes in (v's: it casts q and k
  // to it), each input dropped once rotated; the inputs of the attention are dropped after it.
  // Same values as the reference, which holds q, k, their float32 rotations and their casts.
  const auto dt = v_.scalar_type();
  auto qr = rope_apply(q_, grid_sizes, freqs, rope_chunk_tokens, dt);
  q_ = torch::Tensor();
  auto kr = rope_apply(k_, grid_sizes, freqs, rope_chunk_tokens, dt);
  k_ = torch::Tensor();
  // Its output comes back in that dtype, not the reference's float32 (`type_as(q)` of the float32
  // rotation): the output projection computes in the same dtype (linear_compute_dtype), and a
  // float32 round trip of a narrower float is exact.
  auto out = flash_attention(qr, kr, v_, /*q_lens=*/{}, /*k_lens=*/seq_lens, 0.0, {}, {}, false,
                             window_size); // [B, L, N, D]
  qr = kr = v_ = torch::Tensor();
  // output
  return linear(o, out.flatten(2)); // [B, L, C]
}

torch::Tensor WanT2VCrossAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context,
                                                const torch::Tensor& context_lens) {
  const int64_t b = x.size(0), n = num_heads, d = head_dim;
  // compute query, key, value
  auto q_ = apply_norm(norm_q, linear(q, x)).view({b, -1, n, d});       // [B, L1, N, D]
  auto k_ = apply_norm(norm_k, linear(k, context)).view({b, -1, n, d}); // [B, L2, N, D]
  auto v_ = linear(v, context).view({b, -1, n, d});                     // [B, L2, N, D]
  // flash_attention computes in v's dtype (it casts q to it); casting here returns the output in
  // that dtype instead of float32, which the output projection would cast back (exact), and
  // frees the float32 q before the attention runs.
  q_ = q_.to(v_.scalar_type());
  // compute attention
  auto out = flash_attention(q_, k_, v_, {}, context_lens); // [B, L1, N, D]
  q_ = k_ = v_ = torch::Tensor();
  // output
  return linear(o, out.flatten(2)); // [B, L1, C]
}

WanI2VCrossAttentionImpl::WanI2VCrossAttentionImpl(int64_t dim_, int64_t num_heads_,
                                                   std::array<int64_t, 2> window_size_,
                                                   bool qk_norm_, double eps_)
    : WanT2VCrossAttentionImpl(dim_, num_heads_, window_size_, qk_norm_, eps_) {
  k_img = register_module("k_img", torch::nn::Linear(dim, dim));
  v_img = register_module("v_img", torch::nn::Linear(dim, dim));
  if (qk_norm) norm_k_img = register_module("norm_k_img", WanRMSNorm(dim, eps));
}

torch::Tensor WanI2VCrossAttentionImpl::forward(const torch::Tensor& x,
                                                const torch::Tensor& context_all,
                                                const torch::Tensor& context_lens) {
  const int64_t image_context_length = context_all.size(1) - T5_CONTEXT_TOKEN_NUMBER;
  if (image_context_length < 0)
    throw offload::config_error(
        "offload.wan.model.i2v_context",
        fmt::format("WanI2VCrossAttention: context has {} tokens, expected image tokens followed "
                    "by exactly {} text tokens (the reference hard-codes T5_CONTEXT_TOKEN_NUMBER; "
                    "use text_len = 512)",
                    context_all.size(1), T5_CONTEXT_TOKEN_NUMBER));
  auto context_img = context_all.slice(1, 0, image_context_length); // [B, L_img, C]
  auto context = context_all.slice(1, image_context_length);        // [B, 512, C]
  const int64_t b = x.size(0), n = num_heads, d = head_dim;

  // compute query, key, value
  auto q_ = apply_norm(norm_q, linear(q, x)).view({b, -1, n, d});                   // [B, L1, N, D]
  auto k_ = apply_norm(norm_k, linear(k, context)).view({b, -1, n, d});             // [B, 512, N, D]
  auto v_ = linear(v, context).view({b, -1, n, d});                                 // [B, 512, N, D]
  auto ki = apply_norm(norm_k_img, linear(k_img, context_img)).view({b, -1, n, d}); // [B, L_img, N, D]
  auto vi = linear(v_img, context_img).view({b, -1, n, d});                         // [B, L_img, N, D]
  auto img_x = flash_attention(q_, ki, vi, {}, /*k_lens=*/{}); // [B, L1, N, D]
  // compute attention
  auto out = flash_attention(q_, k_, v_, {}, context_lens); // [B, L1, N, D]

  // output
  out = out.flatten(2) + img_x.flatten(2); // [B, L1, C]
  return linear(o, out);
}

// ------------------------------------------------------------------------------------------------
// block, head, MLPProj
// ------------------------------------------------------------------------------------------------

WanAttentionBlockImpl::WanAttentionBlockImpl(const std::string& cross_attn_type, int64_t dim_,
                                             int64_t ffn_dim_, int64_t num_heads_,
                                             std::array<int64_t, 2> window_size_, bool qk_norm_,
                                             bool cross_attn_norm_, double eps_)
    : dim(dim_), ffn_dim(ffn_dim_), num_heads(num_heads_), window_size(window_size_),
      qk_norm(qk_norm_), cross_attn_norm(cross_attn_norm_), eps(eps_) {
  if (cross_attn_type != "t2v_cross_attn" && cross_attn_type != "i2v_cross_attn")
    throw offload::config_error(
        "offload.wan.config.invalid",
        fmt::format("WanAttentionBlock: cross_attn_type must be 't2v_cross_attn' or "
                    "'i2v_cross_attn', found '{}'",
                    cross_attn_type));
  // layers
  norm1 = register_module("norm1", WanLayerNorm(dim, eps));
  self_attn = register_module("self_attn", WanSelfAttention(dim, num_heads, window_size, qk_norm, eps));
  if (cross_attn_norm)
    norm3 = register_module("norm3", WanLayerNorm(dim, eps, /*elementwise_affine=*/true));
  cross_attn = register_module(
      "cross_attn",
      cross_attn_type == "t2v_cross_attn"
          ? WanT2VCrossAttention(dim, num_heads, std::array<int64_t, 2>{-1, -1}, qk_norm, eps)
          : WanT2VCrossAttention(std::shared_ptr<WanT2VCrossAttentionImpl>(
                std::make_shared<WanI2VCrossAttentionImpl>(dim, num_heads,
                                                           std::array<int64_t, 2>{-1, -1},
                                                           qk_norm, eps))));
  norm2 = register_module("norm2", WanLayerNorm(dim, eps));
  ffn_0 = torch::nn::Linear(dim, ffn_dim);
  ffn_2 = torch::nn::Linear(ffn_dim, dim);
  ffn = register_module(
      "ffn", torch::nn::Sequential(ffn_0, torch::nn::GELU(torch::nn::GELUOptions().approximate("tanh")),
                                   ffn_2));
  // modulation
  modulation = register_parameter("modulation",
                                  torch::randn({1, 6, dim}) / std::sqrt(static_cast<double>(dim)));
}

torch::Tensor WanAttentionBlockImpl::forward(const torch::Tensor& x_in, const torch::Tensor& e_in,
                                             const torch::Tensor& seq_lens,
                                             const torch::Tensor& grid_sizes,
                                             const torch::Tensor& freqs,
                                             const torch::Tensor& context,
                                             const torch::Tensor& context_lens) {
  if (e_in.scalar_type() != torch::kFloat32)
    throw offload::config_error(
        "offload.wan.model.modulation_dtype",
        fmt::format("WanAttentionBlock: e must be float32 (the reference asserts it), found {}",
                    c10::toString(e_in.scalar_type())));
  // modulation in float32: [B, 6, C] -> 6 x [B, 1, C]
  auto e = (modulation.to(torch::kFloat32) + e_in).chunk(6, 1);

  // The reference's expressions, one operation per statement: a C++ temporary lives to the end of
  // its full expression (norm1's output and the product would stay through the whole attention),
  // where Python frees it as soon as it is used. Same operations, same values.
  torch::Tensor y;
  {
    // self-attention
    auto a = norm1(x_in).to(torch::kFloat32); // [B, L, C]
    a = a * (1 + e[1]);
    a = a + e[0];
    // Only the q, k, v projections read it, each casting it to their compute dtype: cast once.
    a = a.to(linear_compute_dtype(self_attn->q->weight, compute_region::weights));
    y = self_attn(a, seq_lens, grid_sizes, freqs); // [B, L, C]
  }
  y = y * e[2];
  auto x = x_in + y; // [B, L, C]
  y = torch::Tensor();

  // cross-attention & ffn function
  {
    // Only the q projection reads it: cast to its compute dtype here (the same values).
    auto n = (norm3 ? norm3(x) : x).to(linear_compute_dtype(cross_attn->q->weight, compute_region::weights));
    y = cross_attn(n, context, context_lens);
  }
  x = x + y; // [B, L, C]
  y = torch::Tensor();
  {
    auto h = norm2(x).to(torch::kFloat32); // [B, L, C]
    h = h * (1 + e[4]);
    h = h + e[3];
    h = h.to(linear_compute_dtype(ffn_0->weight, compute_region::weights)); // the cast ffn_0 makes, float32 h freed
    auto f = linear(ffn_0, h); // [B, L, ffn_dim]
    h = torch::Tensor();
    torch::gelu_(f, "tanh"); // in place: the same kernel and values as gelu(f)
    y = linear(ffn_2, f);    // [B, L, C]
  }
  y = y * e[5];
  x = x + y;
  return x;
}

HeadImpl::HeadImpl(int64_t dim_, int64_t out_dim_, std::array<int64_t, 3> patch_size_, double eps_)
    : dim(dim_), out_dim(out_dim_), patch_size(patch_size_), eps(eps_) {
  // layers
  const int64_t out = patch_size[0] * patch_size[1] * patch_size[2] * out_dim;
  norm = register_module("norm", WanLayerNorm(dim, eps));
  head = register_module("head", torch::nn::Linear(dim, out));
  // modulation
  modulation = register_parameter("modulation",
                                  torch::randn({1, 2, dim}) / std::sqrt(static_cast<double>(dim)));
}

torch::Tensor HeadImpl::forward(const torch::Tensor& x, const torch::Tensor& e_in) {
  if (e_in.scalar_type() != torch::kFloat32)
    throw offload::config_error(
        "offload.wan.model.modulation_dtype",
        fmt::format("Head: e must be float32 (the reference asserts it), found {}",
                    c10::toString(e_in.scalar_type())));
  // amp.autocast(dtype=float32) region
  auto e = (modulation.to(torch::kFloat32) + e_in.unsqueeze(1)).chunk(2, 1); // 2 x [B, 1, C]
  return linear(head, norm(x) * (1 + e[1]) + e[0], compute_region::float32); // [B, L, p*out_dim]
}

MLPProjImpl::MLPProjImpl(int64_t in_dim, int64_t out_dim, bool flf_pos_emb) {
  proj_0 = torch::nn::LayerNorm(torch::nn::LayerNormOptions({in_dim}));
  proj_1 = torch::nn::Linear(in_dim, in_dim);
  proj_3 = torch::nn::Linear(in_dim, out_dim);
  proj_4 = torch::nn::LayerNorm(torch::nn::LayerNormOptions({out_dim}));
  proj = register_module("proj", torch::nn::Sequential(proj_0, proj_1, torch::nn::GELU(), proj_3,
                                                       proj_4));
  if (flf_pos_emb) // NOTE: only used for flf2v
    emb_pos = register_parameter("emb_pos",
                                 torch::zeros({1, FIRST_LAST_FRAME_CONTEXT_TOKEN_NUMBER, in_dim}));
}

torch::Tensor MLPProjImpl::forward(const torch::Tensor& image_embeds) {
  auto x = image_embeds; // [B, 257, C]
  if (emb_pos.defined()) {
    const int64_t n = x.size(1), d = x.size(2);
    x = x.view({-1, 2 * n, d}) + emb_pos; // [B / 2, 514, C]
  }
  auto ln = [](const torch::nn::LayerNorm& m, const torch::Tensor& t) {
    return layer_norm_f32(t, m->options.normalized_shape()[0], m->weight, m->bias,
                          m->options.eps());
  };
  x = ln(proj_0, x);
  x = torch::gelu(linear(proj_1, x)); // exact GELU
  x = linear(proj_3, x);
  return ln(proj_4, x); // [B, L_img, out_dim]
}

// ------------------------------------------------------------------------------------------------
// WanModel
// ------------------------------------------------------------------------------------------------

WanModelImpl::WanModelImpl(const WanModelConfig& cfg, std::optional<torch::Dtype> matmul_dtype)
    : WanModelImpl(cfg, true, matmul_dtype) {}

WanModelImpl::WanModelImpl(const WanModelConfig& cfg, bool build_blocks, std::optional<torch::Dtype> matmul_dtype)
    : config(cfg), model_type(cfg.model_type), patch_size(cfg.patch_size),
      text_len(cfg.text_len), in_dim(cfg.in_dim), dim(cfg.dim), ffn_dim(cfg.ffn_dim),
      freq_dim(cfg.freq_dim), text_dim(cfg.text_dim), out_dim(cfg.out_dim),
      num_heads(cfg.num_heads), num_layers(cfg.num_layers), window_size(cfg.window_size),
      qk_norm(cfg.qk_norm), cross_attn_norm(cfg.cross_attn_norm), eps(cfg.eps) {
  cfg.validate(); // before anything is allocated
  if (matmul_dtype && *matmul_dtype != torch::kBFloat16 && *matmul_dtype != torch::kFloat16)
    throw offload::config_error("offload.wan.model.matmul_dtype",
                                fmt::format("WanModel: matmul weights can be stored as bf16 or fp16, found {}; "
                                            "pass torch::kBFloat16 or torch::kFloat16, or nothing for float32",
                                            c10::toString(*matmul_dtype)));
  build(build_blocks, matmul_dtype);
}

void WanModelImpl::build(bool build_blocks, std::optional<torch::Dtype> matmul_dtype) {
  // embeddings
  const auto ps = torch::ExpandingArray<3>({patch_size[0], patch_size[1], patch_size[2]});
  patch_embedding = register_module(
      "patch_embedding", torch::nn::Conv3d(torch::nn::Conv3dOptions(in_dim, dim, ps).stride(ps)));
  text_embedding_0 = torch::nn::Linear(text_dim, dim);
  text_embedding_2 = torch::nn::Linear(dim, dim);
  text_embedding = register_module(
      "text_embedding",
      torch::nn::Sequential(text_embedding_0,
                            torch::nn::GELU(torch::nn::GELUOptions().approximate("tanh")),
                            text_embedding_2));
  time_embedding_0 = torch::nn::Linear(freq_dim, dim);
  time_embedding_2 = torch::nn::Linear(dim, dim);
  time_embedding = register_module(
      "time_embedding", torch::nn::Sequential(time_embedding_0, torch::nn::SiLU(), time_embedding_2));
  time_projection_1 = torch::nn::Linear(dim, dim * 6);
  time_projection = register_module("time_projection",
                                    torch::nn::Sequential(torch::nn::SiLU(), time_projection_1));

  // blocks
  blocks = register_module("blocks", torch::nn::ModuleList());
  if (build_blocks) {
    const std::string cross_attn_type = model_type == "t2v" ? "t2v_cross_attn" : "i2v_cross_attn";
    for (int64_t i = 0; i < num_layers; ++i) {
      WanAttentionBlock blk(cross_attn_type, dim, ffn_dim, num_heads, window_size, qk_norm,
                            cross_attn_norm, eps);
      if (matmul_dtype) { // its part of init_weights(), then its matmul weights converted
        init_linears(*blk);
        store_matmul_weights(*blk, *matmul_dtype);
      }
      blocks->push_back(blk);
      block_list.push_back(blk);
    }
  }

  // head
  head = register_module("head", Head(dim, out_dim, patch_size, eps));

  // RoPE table: a plain tensor, not a buffer (the reference avoids register_buffer so that .to()
  // does not change its dtype).
  const int64_t d = dim / num_heads;
  freqs = torch::cat({rope_params(1024, d - 4 * (d / 6)), rope_params(1024, 2 * (d / 6)),
                      rope_params(1024, 2 * (d / 6))},
                     1); // complex128 [1024, d / 2]

  if (model_type == "i2v" || model_type == "flf2v")
    img_emb = register_module("img_emb", MLPProj(config.clip_dim, dim, model_type == "flf2v"));

  // initialize weights
  init_weights(/*blocks=*/!matmul_dtype);
  if (matmul_dtype) store_matmul_weights(*this, *matmul_dtype); // the rest; the blocks' are converted
}

void WanModelImpl::init_weights() { init_weights(/*blocks=*/true); }

void WanModelImpl::init_weights(bool blocks) {
  torch::NoGradGuard no_grad;
  namespace init = torch::nn::init;
  // basic init (isinstance(m, nn.Linear) over self.modules())
  for (const auto& item : named_children())
    if (blocks || item.key() != "blocks") init_linears(*item.value());
  // init embeddings
  init::xavier_uniform_(patch_embedding->weight.flatten(1));
  for (auto* l : {&text_embedding_0, &text_embedding_2, &time_embedding_0, &time_embedding_2})
    init::normal_((*l)->weight, 0.0, 0.02);
  // init output layer
  init::zeros_(head->head->weight);
}

WanModelImpl::embedded WanModelImpl::patchify(torch::nn::Conv3d conv,
                                              const std::vector<torch::Tensor>& x, int64_t seq_len,
                                              const std::string& trace_name) {
  const auto dt = linear_compute_dtype(conv->weight);
  std::vector<torch::Tensor> seqs;
  std::vector<int64_t> grid, lens;
  for (size_t b = 0; b < x.size(); ++b) {
    // The patch embedding has no padding (kernel == stride == patch_size).
    auto u = F::conv3d(x[b].unsqueeze(0).to(dt), conv->weight.to(dt), // [1, C, F, H, W]
                       F::Conv3dFuncOptions()
                           .bias(conv->bias.defined() ? conv->bias.to(dt) : conv->bias)
                           .stride(conv->options.stride()));
    record(fmt::format("{}.{}", trace_name, b), u);
    grid.insert(grid.end(), {u.size(2), u.size(3), u.size(4)});
    u = u.flatten(2).transpose(1, 2); // [1, F*H*W, C]
    lens.push_back(u.size(1));
    seqs.push_back(u);
  }
  const int64_t max_len = lens.empty() ? 0 : *std::max_element(lens.begin(), lens.end());
  if (max_len > seq_len)
    throw offload::config_error(
        "offload.wan.model.seq_len",
        fmt::format("WanModel: a sample has {} tokens but seq_len is {}; pass seq_len >= the "
                    "longest patch sequence (the reference asserts seq_lens.max() <= seq_len)",
                    max_len, seq_len));
  for (auto& u : seqs)
    u = torch::cat({u, u.new_zeros({1, seq_len - u.size(1), u.size(2)})}, 1); // [1, seq_len, C]
  const auto B = static_cast<int64_t>(x.size());
  return {torch::cat(seqs),                                                  // [B, seq_len, C]
          torch::tensor(grid, torch::kLong).view({B, 3}),                    // [B, 3]
          torch::tensor(lens, torch::kLong)};                                // [B]
}

std::pair<torch::Tensor, torch::Tensor> WanModelImpl::embed_time(const torch::Tensor& t) const {
  // amp.autocast(dtype=float32) region
  auto s = sinusoidal_embedding_1d(freq_dim, t); // float64 [B, freq_dim]
  record("sinusoidal", s);
  auto e = linear(time_embedding_2,
                  torch::silu(linear(time_embedding_0, s.to(torch::kFloat32), compute_region::float32)),
                  compute_region::float32); // [B, dim]
  record("time_embedding", e);
  auto e0 = linear(time_projection_1, torch::silu(e), compute_region::float32); // [B, 6 * dim]
  record("time_projection", e0);
  return {e, e0.view({e0.size(0), 6, dim})}; // [B, dim], [B, 6, dim]
}

torch::Tensor WanModelImpl::embed_text(const std::vector<torch::Tensor>& context) const {
  std::vector<torch::Tensor> padded;
  for (size_t b = 0; b < context.size(); ++b) {
    const auto& u = context[b]; // [L_b, text_dim]
    if (u.dim() != 2 || u.size(0) > text_len || u.size(1) != text_dim)
      throw offload::config_error(
          "offload.wan.model.context",
          fmt::format("WanModel: context[{}] must be [L <= text_len ({}), text_dim ({})], found {}",
                      b, text_len, text_dim, shape_str(u)));
    padded.push_back(torch::cat({u, u.new_zeros({text_len - u.size(0), u.size(1)})}));
  }
  auto c = torch::stack(padded);                                     // [B, text_len, text_dim]
  c = linear(text_embedding_2, gelu_tanh(linear(text_embedding_0, c))); // [B, text_len, dim]
  record("text_embedding", c);
  return c;
}

std::vector<torch::Tensor> WanModelImpl::forward(std::vector<torch::Tensor> x,
                                                 const torch::Tensor& t,
                                                 const std::vector<torch::Tensor>& context,
                                                 int64_t seq_len, const torch::Tensor& clip_fea,
                                                 const std::vector<torch::Tensor>& y) {
  return forward_branches(std::move(x), t, {context}, seq_len, clip_fea, y)[0];
}

std::vector<std::vector<torch::Tensor>>
WanModelImpl::forward_branches(std::vector<torch::Tensor> x, const torch::Tensor& t,
                               const std::vector<std::vector<torch::Tensor>>& contexts, int64_t seq_len,
                               const torch::Tensor& clip_fea, const std::vector<torch::Tensor>& y) {
  if (model_type == "i2v" || model_type == "flf2v") {
    if (!clip_fea.defined() || y.empty())
      throw offload::config_error(
          "offload.wan.model.missing_condition",
          fmt::format("WanModel({}): clip_fea and y are required (found clip_fea {}, {} y tensors)",
                      model_type, shape_str(clip_fea), y.size()));
    if (text_len != T5_CONTEXT_TOKEN_NUMBER)
      throw offload::config_error(
          "offload.wan.model.i2v_text_len",
          fmt::format("WanModel({}): text_len must be {} (WanI2VCrossAttention splits the context "
                      "at context.shape[1] - {}), found {}",
                      model_type, T5_CONTEXT_TOKEN_NUMBER, T5_CONTEXT_TOKEN_NUMBER, text_len));
  }
  if (contexts.empty())
    throw offload::config_error("offload.wan.model.batch",
                                "WanModel::forward_branches: expected at least one context, found none");
  for (const auto& context : contexts)
    if (x.size() != context.size() || t.dim() != 1 || t.size(0) != static_cast<int64_t>(x.size()))
      throw offload::config_error(
          "offload.wan.model.batch",
          fmt::format("WanModel: expected one context and one timestep per sample; found {} x, {} "
                      "context, t {}",
                      x.size(), context.size(), shape_str(t)));
  if (!y.empty()) {
    if (y.size() != x.size())
      throw offload::config_error("offload.wan.model.batch",
                                  fmt::format("WanModel: {} y tensors for {} samples", y.size(),
                                              x.size()));
    for (size_t i = 0; i < x.size(); ++i) x[i] = torch::cat({x[i], y[i]}, 0); // [C_in, F, H, W]
  }
  // Intermediates are recorded for a single branch (the golden traces hold one).
  const bool one = contexts.size() == 1;

  // embeddings (shared by the branches: same x)
  auto emb = patchify(patch_embedding, x, seq_len, "patch_embedding");

  // time embeddings
  auto [e, e0] = embed_time(t);

  // context, per branch
  torch::Tensor context_lens; // None
  torch::Tensor context_clip;
  if (clip_fea.defined()) {
    if (!img_emb)
      throw offload::config_error(
          "offload.wan.model.clip_fea",
          fmt::format("WanModel({}): clip_fea given but the model has no img_emb (t2v)", model_type));
    context_clip = img_emb(clip_fea); // [B, 257 (x2), dim]
    if (one) record("img_emb", context_clip);
  }
  std::vector<torch::Tensor> ctx, h;
  for (const auto& context : contexts) {
    auto c = embed_text(context);
    if (context_clip.defined()) c = torch::cat({context_clip, c}, 1);
    ctx.push_back(c);
    h.push_back(emb.x);
  }
  // The branches' residual streams are the only references to the embedding: the reference
  // rebinds x in its block loop, so the embedding goes with the first block's output (holding it
  // here would keep one more float32 [B, seq_len, dim] through every block).
  emb.x = torch::Tensor();
  x.clear(); // the inputs (with y concatenated, for i2v and flf2v) are embedded

  // blocks, block-major: a streamed block is loaded once for every branch
  for (size_t i = 0; i < block_list.size(); ++i) {
    offload::block_use use(block_stream, static_cast<int>(i));
    for (size_t b = 0; b < h.size(); ++b)
      h[b] = block_list[i](h[b], e0, emb.seq_lens, emb.grid_sizes, freqs, ctx[b], context_lens);
    if (one) record(fmt::format("block.{}", i), h[0]);
  }

  return head_branches(std::move(h), e, emb.grid_sizes, one);
}

std::vector<std::vector<torch::Tensor>> WanModelImpl::head_branches(std::vector<torch::Tensor> h,
                                                                   const torch::Tensor& e,
                                                                   const torch::Tensor& grid_sizes, bool record_first) {
  std::vector<std::vector<torch::Tensor>> outs;
  for (auto& hb : h) {
    // head
    hb = head(hb, e);
    if (record_first && outs.empty()) record("head", hb);

    // unpatchify
    auto out = unpatchify(hb, grid_sizes);
    for (auto& u : out) u = u.to(torch::kFloat32);
    outs.push_back(std::move(out));
  }
  return outs;
}

std::vector<torch::Tensor> WanModelImpl::unpatchify(const torch::Tensor& x,
                                                    const torch::Tensor& grid_sizes) const {
  const int64_t c = out_dim;
  const auto grid = grid_sizes.to(torch::kCPU, torch::kLong).contiguous();
  const auto g = grid.accessor<int64_t, 2>();
  std::vector<torch::Tensor> out;
  for (int64_t b = 0; b < grid.size(0); ++b) {
    const int64_t f = g[b][0], h = g[b][1], w = g[b][2];
    auto u = x[b].slice(0, 0, f * h * w).reshape(
        {f, h, w, patch_size[0], patch_size[1], patch_size[2], c}); // [f, h, w, p, q, r, c]
    u = u.permute({6, 0, 3, 1, 4, 2, 5});                           // 'fhwpqrc->cfphqwr'
    u = u.reshape({c, f * patch_size[0], h * patch_size[1], w * patch_size[2]}); // [c, F, H, W]
    out.push_back(u);
  }
  return out;
}

WanModel load_wan_model(const std::filesystem::path& dir, std::optional<torch::Dtype> matmul_dtype) {
  auto cfg = from_config_json(dir / "config.json");
  if (cfg.model_type == "vace")
    throw offload::config_error(
        "offload.wan.config.class",
        fmt::format("'{}' describes a VaceWanModel; load it with wan::load_vace_wan_model",
                    (dir / "config.json").string()));
  WanModel model(cfg, matmul_dtype);
  offload::load_state(*model, dir); // the error names the directory; float32 values converted as copied
  return model;
}

} // namespace wan

#include "wan/model_config.ipp" // NOLINT(bugprone-suspicious-include): torch-free definitions
