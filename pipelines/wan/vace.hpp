#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/vace.py (WanVace): video generation controlled by source
/// frames, masks and reference images (the VACE control branch of VaceWanModel). The helpers
/// vace_encode_frames, vace_encode_masks, vace_latent, prepare_source and decode_latent are ported
/// with the reference's names and math.
///
/// Deliberate deviations: those of text2video.hpp (WanVace derives from WanT2V as in the
/// reference), and:
///  * prepare_source takes tensors instead of file paths: a source video is what
///    VaceVideoProcessor.load_video(_pair) returns ([3, F, H, W] in [-1, 1]; masks [C, F, H, W] in
///    [-1, 1], mapped to [0, 1] from their first channel as the reference does), a reference image
///    is TF.to_tensor(img).sub_(0.5).div_(0.5) ([3, H, W]). Frame sampling / resizing of video
///    files (vace_processor.py, decord) is not ported, hence neither is the area / seq_len check
///    that only configures it.
///  * generate() does not read `size` / `frame_num` (the reference does not either: the latent
///    shape comes from the source frames); they are not parameters here.
///  * WanVaceMP (multi-process) is not ported.
///  * Stages: text_encode{t5}, vae_encode{vae} (vace_encode_frames), denoise{dit} x steps,
///    decode{vae} (decode_latent).

#include "wan/text2video.hpp"

#include <optional>
#include <vector>

namespace wan {

/// Keyword arguments of WanVace.generate (defaults as in the reference).
struct vace_params {
  double context_scale = 1.0;
  double shift = 5.0;
  std::string sample_solver = "unipc";
  int64_t sampling_steps = 50;
  double guide_scale = 5.0;
  std::string n_prompt;  ///< "" = config.sample_neg_prompt
  int64_t seed = -1;
};

/// Reference images of one sample (none: an empty list stands for None).
using ref_image_list = std::vector<torch::Tensor>;

class WanVace : public WanT2V {
public:
  /// `task`: vace-1.3B or vace-14B; `components` of kind "vace".
  WanVace(std::string task, std::shared_ptr<WanComponents> components, execution exec);
  WanVace(const std::string& task, const std::filesystem::path& checkpoint_dir, execution exec,
          const component_options& options = {});

  /// frames: [3, F, H, W] each; ref_images: per frame list, [3, 1, H, W] each (an empty list =
  /// None); masks: [1, F, H, W] each or empty (None). -> [C, T(+refs), h, w] each.
  std::vector<torch::Tensor> vace_encode_frames(const std::vector<torch::Tensor>& frames,
                                                const std::vector<ref_image_list>& ref_images,
                                                const std::vector<torch::Tensor>& masks = {});
  /// masks: [1, F, H, W] each -> [64, T(+refs), H/8, W/8] (8x8 space-to-depth, nearest-exact
  /// temporal resize, zero rows in front for the reference images).
  std::vector<torch::Tensor> vace_encode_masks(const std::vector<torch::Tensor>& masks,
                                               const std::vector<ref_image_list>& ref_images = {}) const;
  /// cat([z, m], dim=0) per sample.
  static std::vector<torch::Tensor> vace_latent(const std::vector<torch::Tensor>& z,
                                                const std::vector<torch::Tensor>& m);
  /// The tensor part of the reference's prepare_source (see the header comment). `image_size` is
  /// (width, height) as in the reference. Inputs are replaced in place and returned.
  struct source {
    std::vector<torch::Tensor> video, mask;
    std::vector<ref_image_list> ref_images;
  };
  source prepare_source(std::vector<std::optional<torch::Tensor>> src_video,
                        std::vector<std::optional<torch::Tensor>> src_mask,
                        std::vector<std::vector<std::optional<torch::Tensor>>> src_ref_images,
                        int64_t num_frames, std::pair<int64_t, int64_t> image_size,
                        torch::Device device) const;
  /// Drops the reference-image latent frames, then vae.decode.
  std::vector<torch::Tensor> decode_latent(const std::vector<torch::Tensor>& zs,
                                           const std::vector<ref_image_list>& ref_images = {});

  /// Generates a video [3, F, H, W] in [-1, 1] (host). input_frames / input_masks: one
  /// [3, F, H, W] / [1, F, H, W] per sample (batch 1 as in the reference), input_ref_images one
  /// list per sample.
  torch::Tensor generate(const std::string& input_prompt, const std::vector<torch::Tensor>& input_frames,
                         const std::vector<torch::Tensor>& input_masks,
                         const std::vector<ref_image_list>& input_ref_images, const vace_params& params = {});
  /// The same from token ids (see WanT2V::generate).
  torch::Tensor generate(const torch::Tensor& prompt_ids, const torch::Tensor& neg_prompt_ids,
                         const std::vector<torch::Tensor>& input_frames,
                         const std::vector<torch::Tensor>& input_masks,
                         const std::vector<ref_image_list>& input_ref_images, const vace_params& params = {});

private:
  torch::Tensor run(const detail::prompt_source& prompt, const detail::prompt_source& neg,
                    const std::vector<torch::Tensor>& input_frames, const std::vector<torch::Tensor>& input_masks,
                    const std::vector<ref_image_list>& input_ref_images, const vace_params& params);
  torch::Device vae_device_ = torch::kCPU; ///< during a run: the VAE's execution device
};

} // namespace wan
