#pragma once
/// \file
/// Wan generations for offload's budget planner (offload/budget_planner.hpp): the compute time of
/// every stage from its analytic work, and the planner for one generation with advice in Wan's
/// terms (frame count, size) when nothing fits.
///
/// ## Work per stage (stage_flops), and how each figure was derived
/// Multiply-accumulates count 2 FLOPs. Seconds on the accelerator = FLOPs / the cost model's
/// `accelerator_flops_per_second`; the H100 default (4.5e14) is the geometric-mean fit of the two
/// measured step times below.
/// - denoise, per step: two DiT forwards (classifier-free guidance, run one after the other), each
///   `2 P L` for the linear layers (P parameters, L tokens) + `4 L^2 d n` for self-attention
///   (QK^T and AV; d = dim, n = layers) + `4 L t d n` for cross-attention to the t = 512 text
///   tokens. T2V-1.3B at 832x480x81 (L = 32760): 5.88e14 FLOPs, 1.31 s predicted vs 1.45 s
///   measured (-10%); T2V-14B at 1280x720x81 (L = 75600): 1.37e16 FLOPs, 30.5 s vs 26-29 s
///   (+5% to +17%).
/// - decode: proportional to pixels x frames; the constant is the H100 measurement (3.3 s at
///   832x480x81) times the default throughput, so the default predicts exactly 3.3 s there.
/// - vae_encode (i2v, flf2v, vace): not measured; the encoder is taken to cost what the decoder
///   costs for the same video (twice for vace, which encodes the inactive and reactive videos).
/// - text_encode: two umT5-XXL encoder passes (prompt, negative prompt) over 512 tokens, `2 P t`.
/// - clip_encode: one ViT-H/14 pass over 257 tokens per input image, `2 P 257`.

#include "wan/stages.hpp"

#include <offload/budget_planner.hpp>
#include <offload/cost_model.hpp>

#include <string>
#include <vector>

namespace wan {

/// Constants of the compute model (see the file comment).
struct compute_constants {
  /// The H100's effective throughput on the Wan DiT: equal to offload::cost_model's default.
  static constexpr double h100_flops_per_second = 4.5e14;
  /// VAE decode work per output pixel and frame: 3.3 s on the H100 at 832x480x81.
  static constexpr double vae_flops_per_pixel_frame = 3.3 * h100_flops_per_second / (832.0 * 480.0 * 81.0);
  static constexpr double text_tokens = 512;
  static constexpr double clip_tokens = 257;
};

/// Work of one repetition of a stage.
struct stage_work {
  std::string stage;
  double flops = 0;
};

/// The work of each stage of pipeline_stages(shape), in the same order.
std::vector<stage_work> stage_flops(const generation_shape& shape);

/// pipeline_stages(shape) with every stage's `seconds` = its FLOPs / cost.accelerator_flops_per_second.
std::vector<offload::stage> timed_pipeline_stages(const generation_shape& shape, const offload::cost_model& cost);

/// The fastest placement of the task's preset components (preset_components) for the shape within
/// the budgets. With shape.vae_tiling the VAE runs tiled in every policy considered (the chosen
/// policy carries `vae=...:tile=N:overlap=M`; the stages carry the tiled workspaces). The DiT may be
/// stored in bf16 (dit_exact_storage) when options.allow_exact_storage. When none fits, the
/// planner's capacity_error is rethrown with Wan advice added: the largest frame count and the
/// largest supported size (smaller than the shape's) that would fit, and whether the VAE in tiles
/// of 32 latent pixels would.
offload::budget_plan plan_generation(const generation_shape& shape, const offload::budget_options& options);

/// The policy's tile option for a square VaeTiling (`tile=N:overlap=M`); config_error
/// `offload.wan.budget.tiling` for a non-square one.
offload::tile_options tile_options_of(const VaeTiling& tiling);

} // namespace wan
