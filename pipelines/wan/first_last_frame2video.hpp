#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/first_last_frame2video.py (WanFLF2V): video generation
/// between a first and a last frame. CLIP features of both frames (clip_fea [2, 257, d] for one
/// sample) and `y` = cat(mask, VAE latent of [first, zeros, last]).
///
/// Deliberate deviations: those of image2video.hpp, and:
///  * As in the reference, the mask is built for 81 frames (`torch.ones(1, 81, ...)` is
///    hard-coded), so frame_num must be 81; other values throw offload::config_error up front
///    instead of failing in torch.concat.
///  * When the two frames differ in size, the last frame is center-cropped exactly as the
///    reference does it (TF.center_crop with the PIL (width, height) order it passes, zero padding
///    when the crop is larger).

#include "wan/image2video.hpp"

namespace wan {

/// Keyword arguments of WanFLF2V.generate (defaults as in the reference).
struct flf2v_params {
  int64_t max_area = int64_t{720} * 1280;
  int64_t frame_num = 81;
  double shift = 16.0;
  std::string sample_solver = "unipc";
  int64_t sampling_steps = 50;
  double guide_scale = 5.5;
  std::string n_prompt;  ///< "" = config.sample_neg_prompt
  int64_t seed = -1;
};

namespace detail {
/// torchvision.transforms.functional.center_crop(img [C, H, W], [crop_h, crop_w]).
torch::Tensor center_crop(const torch::Tensor& img, int64_t crop_h, int64_t crop_w);
} // namespace detail

class WanFLF2V {
public:
  /// `task`: flf2v-14B; `components` of kind "flf2v".
  WanFLF2V(std::string task, std::shared_ptr<WanComponents> components, execution exec);
  WanFLF2V(const std::string& task, const std::filesystem::path& checkpoint_dir, execution exec,
           const component_options& options = {});
  virtual ~WanFLF2V() = default;

  /// Generates a video [3, 81, h, w] in [-1, 1] (host). Frames: uint8 [H, W, 3] or float [3, H, W].
  torch::Tensor generate(const std::string& input_prompt, const torch::Tensor& first_frame,
                         const torch::Tensor& last_frame, const flf2v_params& params = {});
  /// The same from token ids (see WanT2V::generate).
  torch::Tensor generate(const torch::Tensor& prompt_ids, const torch::Tensor& neg_prompt_ids,
                         const torch::Tensor& first_frame, const torch::Tensor& last_frame,
                         const flf2v_params& params = {});

  std::string task;
  configs::WanConfig config;
  std::shared_ptr<WanComponents> components;
  execution exec;
  int64_t num_train_timesteps;
  std::array<int64_t, 3> vae_stride;
  std::array<int64_t, 3> patch_size;
  int64_t sp_size = 1;
  std::string sample_neg_prompt;
  stage_observer observer;
  /// Intermediates: those of WanI2V plus vae_encode_input.last (image.0 is the first frame).
  recorder record;

private:
  torch::Tensor run(const detail::prompt_source& prompt, const detail::prompt_source& neg,
                    const torch::Tensor& first_frame, const torch::Tensor& last_frame,
                    const flf2v_params& params);
};

} // namespace wan
