#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/modules/attention.py (`flash_attention`, `attention`).
///
/// Semantics are those of the varlen flash-attn call the reference makes, computed in the input
/// precision:
///   * q [B, Lq, Nq, C1], k [B, Lk, Nk, C1], v [B, Lk, Nk, C2], Nq divisible by Nk (GQA groups);
///   * keys/values of batch element b are cut to `k_lens[b]` (the reference packs
///     `cat([u[:len] for u in k])`); no k_lens = all Lk keys;
///   * softmax(q k^T * softmax_scale) v, softmax_scale defaulting to 1/sqrt(C1), q_scale multiplies q;
///   * causal / window_size masks with flash-attn's bottom-right alignment;
///   * output [B, Lq, Nq, C2] in q's input dtype.
///
/// Kernels: `at::scaled_dot_product_attention` where LibTorch has it (OFFLOAD_HAS_SDPA, LibTorch 2.x),
/// an equivalent math path (softmax(q k^T * scale) v) on LibTorch 1.13. Both honour k_lens.
///
/// Deliberate deviations:
///   * The official function casts q/k/v to bf16 (`dtype=torch.bfloat16`) because the CUDA kernel
///     needs a half type; here attention runs in the dtype of v (q and k are cast to it, as the
///     reference does after its half() step). Callers that want the bf16 rounding cast first.
///   * `q_lens`: the reference packs queries to q_lens and then fails to unflatten unless every
///     length is Lq; here query rows at or past q_lens[b] are computed against nothing and are zero.
///   * `attention()` (the reference's non-flash fallback silently drops the padding masks) is the
///     same function as flash_attention here: masks are always honoured.
///   * dropout_p must be 0 (inference only); `deterministic` / `version` have no meaning here.

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <optional>

namespace wan {

/// flash_attention(q, k, v, q_lens, k_lens, dropout_p, softmax_scale, q_scale, causal, window_size).
/// An undefined tensor stands for Python's None. `k_lens` / `q_lens` are int tensors [B] on any
/// device (they are read on the host).
torch::Tensor flash_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& q_lens = {}, const torch::Tensor& k_lens = {},
                              double dropout_p = 0.0, std::optional<double> softmax_scale = {},
                              std::optional<double> q_scale = {}, bool causal = false,
                              std::array<int64_t, 2> window_size = {-1, -1});

/// The reference's `attention()` entry point; identical to flash_attention here (see the file comment).
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& q_lens = {}, const torch::Tensor& k_lens = {},
                        double dropout_p = 0.0, std::optional<double> softmax_scale = {},
                        std::optional<double> q_scale = {}, bool causal = false,
                        std::array<int64_t, 2> window_size = {-1, -1});

} // namespace wan
