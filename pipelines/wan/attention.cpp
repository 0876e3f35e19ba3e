// Port of Wan-Video/Wan2.1@9737cba, wan/modules/attention.py; see attention.hpp for semantics and
// deliberate deviations.
#include "wan/attention.hpp"

#include <offload/compat.hpp>
#include <offload/errors.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

namespace wan {
namespace {

std::vector<int64_t> host_lengths(const torch::Tensor& lens, int64_t b, int64_t max_len,
                                  const char* what) {
  if (!lens.defined()) return std::vector<int64_t>(static_cast<size_t>(b), max_len);
  if (lens.dim() != 1 || lens.size(0) != b)
    throw offload::config_error(
        "offload.wan.attention.bad_lengths",
        fmt::format("flash_attention: {} must be a 1-D tensor of {} lengths (one per batch "
                    "element), found shape {}; pass one length per batch element",
                    what, b, fmt::join(lens.sizes(), "x")));
  const auto cpu = lens.to(torch::kCPU, torch::kLong).contiguous();
  std::vector<int64_t> out(cpu.data_ptr<int64_t>(), cpu.data_ptr<int64_t>() + b);
  for (int64_t i = 0; i < b; ++i)
    if (out[static_cast<size_t>(i)] < 1 || out[static_cast<size_t>(i)] > max_len)
      throw offload::config_error(
          "offload.wan.attention.bad_lengths",
          fmt::format("flash_attention: {}[{}] = {} is outside [1, {}] (the padded length); "
                      "lengths must be positive and not exceed the padded sequence",
                      what, i, out[static_cast<size_t>(i)], max_len));
  return out;
}

/// Boolean [lq, lk] mask (true = attend) for causal / sliding-window attention with flash-attn's
/// bottom-right alignment; undefined when neither applies.
torch::Tensor local_mask(int64_t lq, int64_t lk, bool causal, std::array<int64_t, 2> window,
                         const torch::Device& device) {
  int64_t left = window[0], right = window[1];
  if (causal) right = 0;
  if (left < 0 && right < 0) return {};
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  auto i = torch::arange(lq, opts).unsqueeze(1) + (lk - lq); // [lq, 1] aligned query position
  auto j = torch::arange(lk, opts).unsqueeze(0);             // [1, lk]
  auto mask = torch::ones({lq, lk}, opts.dtype(torch::kBool));
  if (left >= 0) mask = mask & (j >= i - left);
  if (right >= 0) mask = mask & (j <= i + right);
  return mask; // [lq, lk]
}

/// softmax(q k^T * scale) v for q [1, N, Lq, C1], k [1, N, Lk, C1], v [1, N, Lk, C2].
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& mask, double scale) {
#if OFFLOAD_HAS_SDPA
  // Boolean mask: true = takes part in attention (SDPA's convention).
  const c10::optional<at::Tensor> attn_mask =
      mask.defined() ? c10::optional<at::Tensor>(mask) : c10::optional<at::Tensor>();
#if OFFLOAD_SDPA_HAS_SCALE
  auto out = at::scaled_dot_product_attention(q, k, v, attn_mask, 0.0, false, scale);
#else // LibTorch 2.0 has no `scale` argument: fold a non-default scale into q
  const double unit = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto out = at::scaled_dot_product_attention(scale == unit ? q : q * (scale / unit), k, v,
                                              attn_mask, 0.0, false);
#endif
#else
  auto s = torch::matmul(q, k.transpose(-2, -1)) * scale; // [1, N, Lq, Lk]
  if (mask.defined()) s = s.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  auto out = torch::matmul(torch::softmax(s, -1), v); // [1, N, Lq, C2]
#endif
  if (mask.defined()) {
    // A query row with no key to attend to is 0 (as in flash-attn), not NaN.
    auto any = mask.any(-1, /*keepdim=*/true); // [Lq, 1]
    out = out.masked_fill(any.logical_not(), 0);
  }
  return out;
}

} // namespace

torch::Tensor flash_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& q_lens, const torch::Tensor& k_lens,
                              double dropout_p, std::optional<double> softmax_scale,
                              std::optional<double> q_scale, bool causal,
                              std::array<int64_t, 2> window_size) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || k.size(0) != q.size(0) ||
      v.size(0) != q.size(0) || k.size(1) != v.size(1) || k.size(2) != v.size(2) ||
      k.size(3) != q.size(3) || q.size(2) % k.size(2) != 0)
    throw offload::config_error(
        "offload.wan.attention.bad_shapes",
        fmt::format("flash_attention: expected q [B, Lq, Nq, C1], k [B, Lk, Nk, C1], "
                    "v [B, Lk, Nk, C2] with Nq divisible by Nk, found q {}, k {}, v {}",
                    fmt::join(q.sizes(), "x"), fmt::join(k.sizes(), "x"),
                    fmt::join(v.sizes(), "x")));
  if (dropout_p != 0.0)
    throw offload::config_error("offload.wan.attention.dropout",
                                fmt::format("flash_attention: dropout_p = {} is not supported "
                                            "(inference port); pass 0",
                                            dropout_p));
  const int64_t b = q.size(0), lq = q.size(1), lk = k.size(1), nq = q.size(2), nk = k.size(2);
  const auto out_dtype = q.scalar_type();
  const double scale = softmax_scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));

  // The reference computes in v's dtype after its half() step: q = q.to(v.dtype), k = k.to(v.dtype).
  auto qq = q.to(v.scalar_type());
  auto kk = k.to(v.scalar_type());
  if (q_scale) qq = qq * *q_scale;

  auto qt = qq.transpose(1, 2);                 // [B, Nq, Lq, C1]
  auto kt = kk.transpose(1, 2);                 // [B, Nk, Lk, C1]
  auto vt = v.transpose(1, 2);                  // [B, Nk, Lk, C2]
  if (nq != nk) {                               // GQA: each k/v head serves nq/nk query heads
    kt = kt.repeat_interleave(nq / nk, 1);      // [B, Nq, Lk, C1]
    vt = vt.repeat_interleave(nq / nk, 1);      // [B, Nq, Lk, C2]
  }

  const auto klens = host_lengths(k_lens, b, lk, "k_lens");
  const auto qlens = host_lengths(q_lens, b, lq, "q_lens");
  bool full = true;
  for (int64_t i = 0; i < b; ++i)
    full = full && klens[static_cast<size_t>(i)] == lk && qlens[static_cast<size_t>(i)] == lq;

  torch::Tensor out; // [B, Nq, Lq, C2]
  if (full) {
    out = attend(qt, kt, vt, local_mask(lq, lk, causal, window_size, q.device()), scale);
  } else {
    std::vector<torch::Tensor> rows;
    rows.reserve(static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) {
      const int64_t ql = qlens[static_cast<size_t>(i)], kl = klens[static_cast<size_t>(i)];
      using torch::indexing::Slice;
      auto qi = qt.slice(0, i, i + 1).slice(2, 0, ql); // [1, Nq, ql, C1]
      auto ki = kt.slice(0, i, i + 1).slice(2, 0, kl); // [1, Nq, kl, C1]  keys cut to k_lens[b]
      auto vi = vt.slice(0, i, i + 1).slice(2, 0, kl); // [1, Nq, kl, C2]
      auto oi = attend(qi, ki, vi, local_mask(ql, kl, causal, window_size, q.device()), scale);
      if (ql < lq) // query rows past q_lens[b] are zero
        oi = torch::cat({oi, oi.new_zeros({1, nq, lq - ql, oi.size(3)})}, 2);
      rows.push_back(oi);
    }
    out = torch::cat(rows, 0);
  }
  return out.transpose(1, 2).to(out_dtype); // [B, Lq, Nq, C2]
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& q_lens, const torch::Tensor& k_lens, double dropout_p,
                        std::optional<double> softmax_scale, std::optional<double> q_scale,
                        bool causal, std::array<int64_t, 2> window_size) {
  return flash_attention(q, k, v, q_lens, k_lens, dropout_p, softmax_scale, q_scale, causal,
                         window_size);
}

} // namespace wan
