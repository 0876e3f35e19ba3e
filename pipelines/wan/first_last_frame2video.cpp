// Port of Wan-Video/Wan2.1@9737cba, wan/first_last_frame2video.py (WanFLF2V). Deviations: see
// first_last_frame2video.hpp.
#include "wan/first_last_frame2video.hpp"

#include <torch/torch.h>

#include <offload/errors.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace wan {

namespace detail {

torch::Tensor center_crop(const torch::Tensor& img_in, int64_t crop_h, int64_t crop_w) {
  torch::Tensor img = img_in; // [C, H, W]
  int64_t ih = img.size(-2), iw = img.size(-1);
  if (crop_w > iw || crop_h > ih) {
    const int64_t l = crop_w > iw ? (crop_w - iw) / 2 : 0, t = crop_h > ih ? (crop_h - ih) / 2 : 0;
    const int64_t r = crop_w > iw ? (crop_w - iw + 1) / 2 : 0, b = crop_h > ih ? (crop_h - ih + 1) / 2 : 0;
    img = torch::constant_pad_nd(img, {l, r, t, b}, 0);
    ih = img.size(-2), iw = img.size(-1);
    if (crop_w == iw && crop_h == ih) return img;
  }
  const auto top = static_cast<int64_t>(std::nearbyint(static_cast<double>(ih - crop_h) / 2.0));
  const auto left = static_cast<int64_t>(std::nearbyint(static_cast<double>(iw - crop_w) / 2.0));
  return img.slice(-2, top, top + crop_h).slice(-1, left, left + crop_w);
}

} // namespace detail

WanFLF2V::WanFLF2V(std::string task_, std::shared_ptr<WanComponents> components_, execution exec_)
    : task(std::move(task_)), config(configs::wan_config(task)), components(std::move(components_)),
      exec(std::move(exec_)), num_train_timesteps(config.num_train_timesteps), vae_stride(config.vae_stride),
      patch_size(config.patch_size), sample_neg_prompt(config.sample_neg_prompt) {
  detail::check_task(task, {"flf2v"}, "WanFLF2V");
  if (!components || components->kind != "flf2v")
    throw offload::config_error("offload.wan.pipeline.components",
                                fmt::format("task '{}' needs components of kind 'flf2v', found '{}'", task,
                                            components ? components->kind : std::string("none")));
}

WanFLF2V::WanFLF2V(const std::string& task_, const std::filesystem::path& checkpoint_dir, execution exec_,
                   const component_options& options)
    : WanFLF2V(task_,
               WanComponents::load("flf2v", component_paths::official(checkpoint_dir, configs::wan_config(task_)),
                                   options),
               std::move(exec_)) {}

torch::Tensor WanFLF2V::generate(const std::string& input_prompt, const torch::Tensor& first_frame,
                                 const torch::Tensor& last_frame, const flf2v_params& params) {
  const std::string n = params.n_prompt.empty() ? sample_neg_prompt : params.n_prompt;
  return run({input_prompt, {}}, {n, {}}, first_frame, last_frame, params);
}

torch::Tensor WanFLF2V::generate(const torch::Tensor& prompt_ids, const torch::Tensor& neg_prompt_ids,
                                 const torch::Tensor& first_frame, const torch::Tensor& last_frame,
                                 const flf2v_params& params) {
  detail::prompt_source neg{std::nullopt, neg_prompt_ids};
  if (!neg_prompt_ids.defined()) neg = {params.n_prompt.empty() ? sample_neg_prompt : params.n_prompt, {}};
  return run({std::nullopt, prompt_ids}, neg, first_frame, last_frame, params);
}

torch::Tensor WanFLF2V::run(const detail::prompt_source& prompt, const detail::prompt_source& neg,
                            const torch::Tensor& first_in, const torch::Tensor& last_in,
                            const flf2v_params& params) {
  torch::NoGradGuard no_grad;
  detail::check_solver(params.sample_solver);
  if (params.frame_num != 81)
    throw offload::config_error("offload.wan.flf2v.frame_num",
                                fmt::format("WanFLF2V: frame_num {} is not supported; the reference builds its "
                                            "conditioning mask for 81 frames, so frame_num must be 81",
                                            params.frame_num));
  const torch::Tensor first_frame = detail::image_to_tensor(first_in); // [3, H1, W1]
  torch::Tensor last_frame = detail::image_to_tensor(last_in);         // [3, H2, W2]
  detail::note(record, "image.0", first_frame);

  const int64_t F = params.frame_num;
  const auto [lat_h, lat_w] =
      detail::latent_hw(params.max_area, first_frame.size(1), first_frame.size(2), vae_stride, patch_size);
  const int64_t first_frame_h = lat_h * vae_stride[1];
  const int64_t first_frame_w = lat_w * vae_stride[2];
  if (first_frame.sizes() != last_frame.sizes()) {
    // PIL sizes are (width, height)
    const double w1 = static_cast<double>(first_frame.size(2)), h1 = static_cast<double>(first_frame.size(1));
    const double w2 = static_cast<double>(last_frame.size(2)), h2 = static_cast<double>(last_frame.size(1));
    const double ratio = std::max(w1 / w2, h1 / h2);
    const auto s0 = static_cast<int64_t>(std::nearbyint(w2 * ratio));
    const auto s1 = static_cast<int64_t>(std::nearbyint(h2 * ratio));
    last_frame = detail::center_crop(last_frame, s0, s1); // the reference passes (w, h) as (h, w)
  }

  int64_t max_seq_len = ((F - 1) / vae_stride[0] + 1) * lat_h * lat_w / (patch_size[1] * patch_size[2]);
  max_seq_len = static_cast<int64_t>(std::ceil(static_cast<double>(max_seq_len) / static_cast<double>(sp_size))) * sp_size;
  detail::note(record, "seq_len", torch::tensor(max_seq_len, torch::kLong));

  const int64_t seed = detail::resolve_seed(params.seed);

  generation_shape shape;
  shape.task = task;
  shape.width = static_cast<int>(first_frame_w);
  shape.height = static_cast<int>(first_frame_h);
  shape.frame_num = static_cast<int>(F);
  shape.sampling_steps = static_cast<int>(params.sampling_steps);
  shape.vae_tiling = vae_tiling_of(exec.policy);
  offload_run run(pipeline_stages(shape), *components, exec, observer);
  const torch::Device dit_device = run.device_of(DIT_COMPONENT);

  torch::Tensor noise = detail::seeded_noise({16, (F - 1) / 4 + 1, lat_h, lat_w}, seed).to(dit_device);
  detail::note(record, "noise", noise);

  const torch::Tensor video =
      torch::cat({detail::resize_bicubic(first_frame, first_frame_h, first_frame_w),
                  torch::zeros({3, F - 2, first_frame_h, first_frame_w}),
                  detail::resize_bicubic(last_frame, first_frame_h, first_frame_w)},
                 1); // [3, F, h, w]
  detail::note(record, "vae_encode_input.first", video.select(1, 0));
  detail::note(record, "vae_encode_input.last", video.select(1, F - 1));
  // The reference's mask is built for 81 frames whatever frame_num is (first_last_frame2video.py).
  const detail::image_conditioning cond{
      {first_frame, last_frame}, video, detail::condition_mask(81, 1, 80, lat_h, lat_w)};
  return detail::generate_image_conditioned(
      run, *components, prompt, neg, std::move(noise), cond, max_seq_len,
      {params.sample_solver, params.sampling_steps, params.shift, params.guide_scale, num_train_timesteps,
       dit_autocast(exec, config, dit_device)},
      record);
}

} // namespace wan
