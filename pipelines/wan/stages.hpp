#pragma once
/// \file
/// The Wan pipelines as the offload scheduler sees them: components (`t5`, `clip`, `dit`, `vae`)
/// with their sizes, and each task's stages in the reference's order with workspace estimates as
/// functions of size and frame count. Used to plan a run (wan_generate --dry_run needs no weights)
/// and by the pipelines themselves.
///
/// Not a port of one reference file: it describes wan/text2video.py, image2video.py,
/// first_last_frame2video.py and vace.py (Wan-Video/Wan2.1@9737cba) to the scheduler.
///
/// ## Component sizes (preset_components)
/// Parameter counts are analytic (the ports' parameter_count), times the bytes per element the
/// reference stores them in: T5 bfloat16 (t5_dtype), DiT float32 (WanModel.from_pretrained's
/// default), VAE float32, CLIP visual tower float16 (clip_dtype). Pinned bytes pack the ports'
/// analytic tensor lists as offloadable packs loaded masters (detail/pinned_arena.hpp).
///
/// ## Workspace models (pipeline_stages), and how each was derived
/// Calibrated on the official Python reference on an H100 (torch 2.11, T2V-1.3B, 832x480, 81
/// frames: text encode 0.28 GiB with T5 on the GPU, denoise 2.06 GiB, VAE decode 8.28 GiB;
/// T2V-14B 1280x720x81 peaks at 69.0 GiB with offload_model):
/// - text_encode: constant 0.28 GiB (text_len is fixed at 512, batch 1), on T5's device.
/// - denoise: activations of one DiT forward scale with tokens x width: `k_dit * seq_len * dim`,
///   seq_len = T_lat * (H/16) * (W/16); k_dit = 2.06 GiB / (32760 tokens * 1536) ~ 44 bytes. Check
///   against 14B at 720p: 75600 tokens * 5120 * k_dit = 15.9 GiB, + DiT 53.2 + VAE 0.47 = 69.5 GiB
///   vs 69.0 measured (+0.8%). That is the reference's (generation_shape::reference_activations).
///   This port computes the same operations holding fewer values at once (RoPE in chunks, each
///   temporary freed when used), so its activations are modelled from its own block, measured on
///   LibTorch's CUDA allocator: the larger of its attention phase (20 bytes per token x width) and
///   its FFN phase (10.05 + 2 x ffn_dim / dim), its input included (dit_block_bytes_per_token_dim),
///   + 4 bytes for the other guidance branch's float32 residual stream (both branches go through a
///   block before the next). T2V-1.3B: 21.72 + 4; T2V-14B: 20.05 + 4.
///   VACE adds, per branch, its control stream c ([L, dim] float32) and the hint in flight ([L, dim]
///   bf16: after_proj's output under bf16 storage or autocast; added to x in float32):
///   `k_vace = 2 branches x (4 + 2) = 12` bytes per token x width (a whole VACE-1.3B forward on the
///   allocator measured 0.25% below the model, tests/cuda/dit_activations.cpp; 16, with float32
///   hints, was 9.8% above). VaceWanModel runs each VACE block
///   right before the block that adds its hint, so the hints never pile up (the reference holds
///   all of them: num VACE layers x [L, dim] per call).
///   Around the forward the denoise holds what every step reads (denoise_held_bytes): the
///   sampler's float32 latents (the latents, UniPC's last sample and its two model outputs), the
///   task's conditioning (I2V and FLF2V: `y`, 4 + 16 channels; VACE: its context, vace_in_dim
///   channels), the text contexts (2 x [text_len, text_dim] in t5_dtype) and the DiT's embedded
///   contexts (2 x [text_len + 257 per CLIP image, dim], float32 at most).
/// - decode: the VAE decodes one latent frame at a time, so its activations scale with the pixel
///   count, not the frame count: `k_vae * H * W` plus the decoded video (3 x F x H x W float32);
///   k_vae = (8.28 GiB - 0.36 GiB video) / (832 * 480) ~ 21.3 KB per pixel.
///   With a VaeTiling (generation_shape::vae_tiling, wan/vae_tiling.hpp) the decoder runs one
///   spatial tile at a time: `k_vae * tile_pixels` (tile_pixels = min(8 tile_latent_h, H) x
///   min(8 tile_latent_w, W); the overlap lies inside the tile) plus the full output video (the
///   blend accumulator), one tile of decoded video (the weighted tile being added) and the blend
///   weight sum (H x W float32). A tiling whose tile covers the frame runs the untiled decode and
///   is modelled as untiled. See decode_workspace_bytes and docs/pipelines/wan.md.
/// - vae_encode (i2v, flf2v, vace): not measured; the encoder also works chunk by chunk at full
///   resolution with the same channel widths, so the decode constant is used, plus the input
///   video (VACE encodes two: inactive and reactive). With a VaeTiling the encoder runs one
///   spatial tile at a time: `k_vae * tile_pixels` plus the input videos, one tile of input (the
///   slice the encoder makes contiguous) and the latent blend (accumulator and weights, 2 x 16 x
///   T_lat x H/8 x W/8 float32). See encode_workspace_bytes.
/// - clip_encode: not measured; a ViT-H/14 at 224x224 (257 tokens) in float16: 64 MiB.
/// - every stage of this port's model (not the reference's) also carries cuBLAS's workspace,
///   32 MiB (workspace_constants::library_workspace_bytes).

#include <offload/stage.hpp>

#include <c10/core/ScalarType.h>

#include "wan/vae_tiling.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace wan {

struct WanModelConfig;
struct T5Config;
struct WanVAEConfig;
namespace clip {
struct CLIPConfig;
}

/// Component names of the Wan pipelines; policies and presets use them.
inline constexpr std::string_view T5_COMPONENT = "t5";
inline constexpr std::string_view CLIP_COMPONENT = "clip";
inline constexpr std::string_view DIT_COMPONENT = "dit";
inline constexpr std::string_view VAE_COMPONENT = "vae";

/// What a generation looks like to the planner.
struct generation_shape {
  std::string task;   ///< t2v-1.3B, t2v-14B, t2i-14B, i2v-14B, flf2v-14B, vace-1.3B, vace-14B
  int width = 832;
  int height = 480;
  int frame_num = 81;
  int sampling_steps = 50;
  int ref_images = 0; ///< VACE reference images (each adds one latent frame)
  /// Spatially tiled VAE decode and encode (WanVAE::decode(zs, tiling), WanVAE::encode(videos,
  /// tiling): what `vae=...:tile=N` runs); nullopt = untiled. The decode and vae_encode stages'
  /// workspaces depend on it.
  std::optional<VaeTiling> vae_tiling = std::nullopt;
  /// Model the official Python reference's denoise activations (to compare with its
  /// measurements) instead of this port's (the default; see workspace_constants).
  bool reference_activations = false;
};

/// Component sizes of a task's preset models as the reference stores them, without weights, with
/// their pinned (packed) bytes. Every DiT (VACE's: its `vace_blocks` and `blocks` in block order)
/// and T5 carry their block layouts (they can be streamed: `dit=cuda:stream=K`,
/// `t5=cuda:stream=K`); every DiT offers bf16 and fp16 storage of its matmul weights
/// (`dit=cuda:store=bf16`); the VAE runs tiled (`vae=cuda:tile=32`).
std::vector<offload::component_info> preset_components(std::string_view task);

/// The layout of a DiT's `blocks` stored with `element_size` bytes per element, its matmul weights
/// with `matmul_element_size` (0: the same; 2 for `store=bf16`): every block's bytes and the slot
/// that holds one (tensors aligned to 256 bytes), equal to what the loaded model's component
/// declares. VACE: the `vace_blocks` and `blocks` in VaceWanModel::block_order().
offload::block_layout dit_block_layout(const WanModelConfig& cfg, std::int64_t element_size,
                                       std::int64_t matmul_element_size = 0);

/// The layout of a T5 encoder's `blocks` stored with `element_size` bytes per element (umT5-XXL in
/// bf16: 24 blocks of 0.41 GiB; its token embedding, 2 GiB, stays on the host while streaming:
/// host_bytes), equal to what the loaded encoder's component declares.
offload::block_layout t5_block_layout(const T5Config& cfg, std::int64_t element_size);

/// The size of a float32 DiT with its matmul weights (the storage rule's tensors) stored as
/// `dtype`: bytes (its RoPE table `freqs` included), block layout and pinned bytes (packed into
/// power-of-two chunks), equal to the loaded model's component storage_sizes(). `native`: as
/// built, float32. Exact (stored_size::exact) for dit_exact_storage().
offload::stored_size dit_stored_size(const WanModelConfig& cfg, offload::storage_dtype dtype);

/// The `vae` component of WanVAE_(cfg) stored as `dtype`, without weights: its bytes (the
/// parameters and the latent statistics `mean` and `std`, z_dim each) and pinned bytes (the same
/// tensors packed into power-of-two chunks), equal to the loaded component's (offload::info_of).
/// Tileable.
offload::component_info vae_component_info(const WanVAEConfig& cfg, c10::ScalarType dtype);

/// The `clip` component of XLMRobertaCLIP(cfg) (the visual tower) stored as `dtype`, without
/// weights: bytes and pinned bytes, equal to the loaded component's (offload::info_of).
offload::component_info clip_component_info(const clip::CLIPConfig& cfg, c10::ScalarType dtype);

/// The storage dtype of the DiT's matmul weights that computes the same bits as float32 storage on
/// CUDA: the pipelines run the DiT under autocast(param_dtype) there (dit_autocast), which casts
/// those weights to param_dtype per op; param_dtype is bf16 in every Wan config. So the budget
/// planner may store the DiT so (stored_size::exact). Elsewhere (a mock device, the host, or
/// execution::autocast = float32) the pipelines compute in float32, and the storage changes results.
offload::storage_dtype dit_exact_storage();

/// The stages of the task in the reference's order with workspace estimates (see the file comment).
std::vector<offload::stage> pipeline_stages(const generation_shape& shape);

/// Device workspace in bytes of the VAE decode of `frame_num` frames of `width x height`:
/// `vae_bytes_per_pixel * W * H + video` untiled (video = 3 x frame_num x H x W float32), and
/// with `tiling` (one that does not cover the latent [H/8, W/8]):
/// `vae_bytes_per_pixel * tile_pixels + video + 3 x frame_num x tile_pixels x 4 + W x H x 4`
/// with tile_pixels = min(8 tile_latent_h, H) x min(8 tile_latent_w, W). Throws
/// offload::config_error for an invalid tiling (VaeTiling::validate).
std::int64_t decode_workspace_bytes(int width, int height, int frame_num,
                                    const std::optional<VaeTiling>& tiling = std::nullopt);

/// Device workspace in bytes of the VAE encode of `videos` videos of `frame_num` frames of
/// `width x height` (VACE encodes 2): `vae_bytes_per_pixel * W * H + videos x video` untiled, and
/// with `tiling` (one that does not cover the latent [H/8, W/8]): `vae_bytes_per_pixel *
/// tile_pixels + videos x video + 3 x frame_num x tile_pixels x 4 + 2 x 16 x T_lat x H/8 x W/8 x 4`
/// (T_lat = (frame_num - 1) / 4 + 1). Throws offload::config_error for an invalid tiling.
std::int64_t encode_workspace_bytes(int width, int height, int frame_num, int videos,
                                    const std::optional<VaeTiling>& tiling = std::nullopt);

/// Number of DiT tokens for a shape (the reference's seq_len before padding).
std::int64_t dit_tokens(const generation_shape& shape);

/// Device bytes this port's denoise holds through a DiT forward besides the forward's own
/// activations, on the DiT's device: workspace_constants::sampler_latents float32 latents of
/// [16, T_lat (+ ref_images), H/8, W/8]; the conditioning every forward reads, float32 over the same
/// frames (I2V, FLF2V: `y`, 4 + 16 channels; VACE: the context, vace_in_dim channels); the text
/// contexts, 2 x text_len x text_dim in t5_dtype; the CLIP features (I2V 1, FLF2V 2 images of
/// 257 x 1280 float32 at most); and the DiT's embedded contexts, 2 branches x (text_len + 257 per
/// CLIP image) x dim float32 at most. Part of the `denoise` workspace of pipeline_stages (not with
/// generation_shape::reference_activations, whose calibration holds the reference's own).
std::int64_t denoise_held_bytes(const generation_shape& shape);

/// This port's DiT block at its peak under the GPU's dtypes, bytes per token x width, its input
/// included: max(workspace_constants::dit_attention_bytes_per_token_dim,
/// dit_ffn_base_bytes_per_token_dim + 2 x ffn_dim / dim).
double dit_block_bytes_per_token_dim(const WanModelConfig& cfg);

/// "832*480" -> {832, 480} (generate.py's W*H); offload::config_error on bad text.
std::pair<int, int> parse_size(std::string_view text);

/// Workspace constants of the models above, in bytes (exposed for tests and the planner).
struct workspace_constants {
  static constexpr double text_encode_bytes = 0.28 * 1073741824.0;
  static constexpr double dit_bytes_per_token_dim = 2.06 * 1073741824.0 / (32760.0 * 1536.0);
  static constexpr double vae_bytes_per_pixel =
      (8.28 * 1073741824.0 - 3.0 * 81 * 480 * 832 * 4) / (832.0 * 480.0);
  static constexpr double clip_encode_bytes = 64.0 * 1048576.0;
  /// Activations of this port's DiT block against the reference order's at the same shape, under
  /// the GPU's compute dtypes, measured on the CPU (tests/pipelines/activation_memory_test.cpp,
  /// which checks that the ratio stays at or below this value): a guard against a change that
  /// holds more. The stage model itself takes the block measured on LibTorch's CUDA allocator
  /// (dit_block_bytes_per_token_dim).
  static const double dit_activation_ratio; // defined in stages.cpp
  /// This port's DiT block at its peak under the GPU's dtypes, per token x width, its input
  /// included: the larger of its attention phase and its FFN phase (dit_block_bytes_per_token_dim).
  /// Measured with LibTorch 2.6's CUDA caching allocator on the fake CUDA runtime
  /// (tests/cuda/dit_activations.cpp, which checks both against the allocator on a CUDA device):
  /// the attention phase holds 20.0 at the widths of T2V-1.3B and T2V-14B alike (20.01 and 20.00),
  /// + 0.05 for values per token (a few bytes a token: norm statistics, the attention's softmax
  /// statistics).
  static constexpr double dit_attention_bytes_per_token_dim = 20.05;
  /// The FFN phase: the block's input and running sum (float32), the FFN's input (bf16), and its
  /// hidden activations (bf16, 2 x ffn_dim / dim), + 0.05 as in the attention phase for values per
  /// token (the layer norms' statistics, 8 bytes a token): 10.05 + 2 x ffn_dim / dim (T2V-1.3B:
  /// 21.72, measured 21.67, which binds; T2V-14B: 15.45).
  static constexpr double dit_ffn_base_bytes_per_token_dim = 10.05;
  /// Block-major guidance (both branches through a block before the next, forward_branches) keeps
  /// the other branch's residual stream, float32 [L, dim], which the reference (one branch after
  /// the other) does not hold.
  static constexpr double branch_residual_bytes_per_token_dim = 4.0;
  /// VACE's control stream (float32) and hint in flight (bf16 on the GPU), per guidance branch
  /// (see above; checked against the allocator by cuda_dit_activations).
  static constexpr double vace_bytes_per_token_dim = 2 * (4.0 + 2.0);
  /// Float32 latents the sampler holds through a DiT forward (denoise_held_bytes): the latents, and
  /// FlowUniPCMultistepScheduler's last sample and model outputs (solver_order 2) from its third
  /// step on; FlowDPMSolverMultistepScheduler holds one fewer. The noise the loop starts from is
  /// not among them: sample() takes it by value and the scheduler lets go of it at its second step.
  static constexpr int sampler_latents = 4;
  /// Tokens of one CLIP image feature (ViT-H/14 at 224 x 224: 256 patches + the class token).
  static constexpr int clip_tokens_per_image = 257;
  /// cuBLAS's workspace, in every stage of this port's model: LibTorch 2.x takes it from the CUDA
  /// caching allocator at the compute stream's first matmul and keeps it for the process (measured
  /// on the fake CUDA runtime as an sm 9.0 card: 32 MiB, CUBLAS_WORKSPACE_CONFIG's default
  /// `:4096:8` there; `:4096:2:16:8`, 8.125 MiB, on older cards, so an upper bound). Every stage
  /// carries it because whichever stage runs the first matmul on the device leaves it allocated
  /// for the stages after; the calibrated stages (text_encode, the VAE's) may count it twice.
  static constexpr std::int64_t library_workspace_bytes = std::int64_t{32} << 20;
};

} // namespace wan
