#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/image2video.py (WanI2V): image-to-video generation. The
/// image conditions the DiT twice: CLIP features (clip_fea) and `y` = cat(mask, VAE latent of the
/// image followed by zero frames).
///
/// Deliberate deviations: those of text2video.hpp (offload plan instead of `.to()` / `.cpu()`,
/// task name instead of config, params struct, token-id form, CPU-generator noise, host video),
/// and:
///  * The image is a tensor instead of a PIL image: uint8 [H, W, 3] (what PIL.Image.fromarray
///    receives; converted exactly like TF.to_tensor(img).sub_(0.5).div_(0.5)) or float [3, H, W]
///    already in [-1, 1].
///  * Stages: text_encode{t5}, clip_encode{clip}, vae_encode{vae}, denoise{dit} x steps,
///    decode{vae}.

#include "wan/text2video.hpp"

#include <array>
#include <cstdint>
#include <memory>
#include <string>

namespace wan {

/// Keyword arguments of WanI2V.generate (defaults as in the reference).
struct i2v_params {
  int64_t max_area = int64_t{720} * 1280;
  int64_t frame_num = 81;
  double shift = 5.0;
  std::string sample_solver = "unipc";
  int64_t sampling_steps = 40;
  double guide_scale = 5.0;
  std::string n_prompt;  ///< "" = config.sample_neg_prompt
  int64_t seed = -1;
};

namespace detail {

/// TF.to_tensor(img).sub_(0.5).div_(0.5) for uint8 [H, W, 3]; float [3, H, W] passes unchanged.
torch::Tensor image_to_tensor(const torch::Tensor& img);

/// Python float floor division `a // b` (float_floor_div: fmod, then floor with the 0.5 fix-up).
double py_floordiv(double a, double b);

/// (lat_h, lat_w) = round(sqrt(max_area * h / w) // stride // patch * patch), and the same for w.
std::pair<int64_t, int64_t> latent_hw(int64_t max_area, int64_t h, int64_t w,
                                      const std::array<int64_t, 3>& vae_stride,
                                      const std::array<int64_t, 3>& patch_size);

/// The conditioning mask: ones(1, frames, lat_h, lat_w) with `zero_from..zero_to` frames zeroed,
/// first frame repeated 4x, viewed [1, T, 4, h, w] and transposed -> [4, T, lat_h, lat_w].
torch::Tensor condition_mask(int64_t frames, int64_t zero_from, int64_t zero_to, int64_t lat_h,
                             int64_t lat_w);

/// F.interpolate(img[None], size=(h, w), mode='bicubic') (align_corners=False), transposed:
/// [3, H0, W0] -> [3, 1, h, w].
torch::Tensor resize_bicubic(const torch::Tensor& img, int64_t h, int64_t w);

/// The image-conditioned run shared by I2V and FLF2V, after the stages were planned and the
/// noise drawn: text_encode, clip_encode (`clip_images`: [3, H, W] each, on the host, one CLIP
/// batch), vae_encode (`vae_video` [3, F, h, w] on the host; `msk` [4, T, lat_h, lat_w] is
/// concatenated before the latent as `y`), the denoising loop with the image context, and decode.
/// Records clip_context, vae_encode_output, y, x0 and what text_encode_stage, sample and
/// decode_stage record.
struct image_conditioning {
  std::vector<torch::Tensor> clip_images;
  torch::Tensor vae_video;
  torch::Tensor msk;
};
struct sampling {
  std::string solver;
  int64_t steps = 0;
  double shift = 0;
  double guide_scale = 0;
  int64_t num_train_timesteps = 0;
  std::optional<torch::Dtype> autocast; ///< the DiT's compute dtype (dit_autocast)
};
torch::Tensor generate_image_conditioned(offload_run& run, const WanComponents& components,
                                         const prompt_source& prompt, const prompt_source& neg,
                                         torch::Tensor noise, const image_conditioning& cond,
                                         int64_t max_seq_len, const sampling& sampling,
                                         const recorder& record);

} // namespace detail

class WanI2V {
public:
  /// `task`: i2v-14B; `components` of kind "i2v".
  WanI2V(std::string task, std::shared_ptr<WanComponents> components, execution exec);
  WanI2V(const std::string& task, const std::filesystem::path& checkpoint_dir, execution exec,
         const component_options& options = {});
  virtual ~WanI2V() = default;

  /// Generates a video [3, F, h, w] in [-1, 1] (host) from a prompt and an image.
  torch::Tensor generate(const std::string& input_prompt, const torch::Tensor& img,
                         const i2v_params& params = {});
  /// The same from token ids (see WanT2V::generate).
  torch::Tensor generate(const torch::Tensor& prompt_ids, const torch::Tensor& neg_prompt_ids,
                         const torch::Tensor& img, const i2v_params& params = {});

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
  /// Intermediates: those of WanT2V plus image.0, clip_context, vae_encode_input.first,
  /// vae_encode_output, y.
  recorder record;

private:
  torch::Tensor run(const detail::prompt_source& prompt, const detail::prompt_source& neg,
                    const torch::Tensor& img, const i2v_params& params);
};

} // namespace wan
