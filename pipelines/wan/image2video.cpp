// Port of Wan-Video/Wan2.1@9737cba, wan/image2video.py (WanI2V). Deviations: see image2video.hpp.
#include "wan/image2video.hpp"

#include <torch/torch.h>

#include <offload/errors.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <cmath>
#include <utility>

namespace wan {

namespace F = torch::nn::functional;

namespace detail {

torch::Tensor image_to_tensor(const torch::Tensor& img) {
  if (img.scalar_type() == torch::kByte) {
    if (img.dim() != 3 || img.size(2) != 3)
      throw offload::config_error("offload.wan.image",
                                  fmt::format("image: expected uint8 [H, W, 3] (RGB), found [{}]",
                                              fmt::join(img.sizes(), ", ")));
    // TF.to_tensor: HWC uint8 -> CHW float / 255; then .sub_(0.5).div_(0.5)
    return img.permute({2, 0, 1}).contiguous().to(torch::kFloat32).div(255).sub_(0.5).div_(0.5); // [3, H, W]
  }
  if (img.dim() != 3 || img.size(0) != 3 || !img.is_floating_point())
    throw offload::config_error("offload.wan.image",
                                fmt::format("image: expected uint8 [H, W, 3] or float [3, H, W] in [-1, 1], "
                                            "found {} [{}]",
                                            c10::toString(img.scalar_type()), fmt::join(img.sizes(), ", ")));
  return img;
}

double py_floordiv(double a, double b) {
  double mod = std::fmod(a, b);
  double div = (a - mod) / b;
  if (mod != 0.0) {
    if ((b < 0) != (mod < 0)) div -= 1.0;
  }
  double floordiv = 0.0;
  if (div != 0.0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, a / b);
  }
  return floordiv;
}

std::pair<int64_t, int64_t> latent_hw(int64_t max_area, int64_t h, int64_t w,
                                      const std::array<int64_t, 3>& vae_stride,
                                      const std::array<int64_t, 3>& patch_size) {
  const double aspect_ratio = static_cast<double>(h) / static_cast<double>(w);
  const double area = static_cast<double>(max_area);
  auto lat = [&](double side, int64_t stride, int64_t patch) {
    const double v = py_floordiv(py_floordiv(side, static_cast<double>(stride)), static_cast<double>(patch)) *
                     static_cast<double>(patch);
    return static_cast<int64_t>(std::nearbyint(v)); // round(): half to even
  };
  return {lat(std::sqrt(area * aspect_ratio), vae_stride[1], patch_size[1]),
          lat(std::sqrt(area / aspect_ratio), vae_stride[2], patch_size[2])};
}

torch::Tensor condition_mask(int64_t frames, int64_t zero_from, int64_t zero_to, int64_t lat_h,
                             int64_t lat_w) {
  auto msk = torch::ones({1, frames, lat_h, lat_w});             // [1, F, h, w]
  msk.slice(1, zero_from, zero_to).zero_();
  msk = torch::cat({torch::repeat_interleave(msk.slice(1, 0, 1), 4, 1), msk.slice(1, 1)}, 1); // [1, F+3, h, w]
  msk = msk.view({1, msk.size(1) / 4, 4, lat_h, lat_w});          // [1, T, 4, h, w]
  return msk.transpose(1, 2)[0];                                  // [4, T, h, w]
}

torch::Tensor resize_bicubic(const torch::Tensor& img, int64_t h, int64_t w) {
  return F::interpolate(img.unsqueeze(0), F::InterpolateFuncOptions()
                                              .size(std::vector<int64_t>{h, w})
                                              .mode(torch::kBicubic)
                                              .align_corners(false))
      .transpose(0, 1); // [3, 1, h, w]
}

torch::Tensor generate_image_conditioned(offload_run& run, const WanComponents& components,
                                         const prompt_source& prompt, const prompt_source& neg,
                                         torch::Tensor noise, const image_conditioning& cond,
                                         int64_t max_seq_len, const sampling& sampling,
                                         const recorder& record) {
  const torch::Device dit_device = run.device_of(DIT_COMPONENT);
  const auto [context, context_null] = text_encode_stage(run, components, prompt, neg, dit_device, record);

  torch::Tensor clip_context;
  {
    auto stage = run.enter("clip_encode");
    const torch::Device clip_device = run.device_of(CLIP_COMPONENT);
    clip_context = stage.run([&] {
      std::vector<torch::Tensor> videos;
      for (const auto& image : cond.clip_images) videos.push_back(image.to(clip_device).unsqueeze(1));
      return components.clip->visual(videos).to(dit_device); // [n, 257, d]
    });
  }
  note(record, "clip_context", clip_context);

  torch::Tensor y;
  {
    auto stage = run.enter("vae_encode");
    y = stage.run([&] { return vae_encode(components, {cond.vae_video.to(run.device_of(VAE_COMPONENT))})[0]; });
    // y: [16, T, lat_h, lat_w]
  }
  note(record, "vae_encode_output", y);
  y = torch::cat({cond.msk.to(y.device()), y}).to(dit_device); // [20, T, lat_h, lat_w]
  note(record, "y", y);

  WanModel model = components.model;
  const dit_call call = [&](const torch::Tensor& latent, const torch::Tensor& timestep,
                            const std::vector<torch::Tensor>& ctx, const std::vector<torch::Tensor>& ctx_null) {
    auto out = model->forward_branches({latent}, timestep, {{ctx[0]}, {ctx_null[0]}}, max_seq_len, clip_context, {y});
    return std::pair{out[0][0], out[1][0]};
  };
  const torch::Tensor x0 = sample(run, call, std::move(noise), context, context_null, sampling.solver, sampling.steps,
                                  sampling.shift, sampling.guide_scale, sampling.num_train_timesteps, record,
                                  sampling.autocast);
  note(record, "x0", x0);
  return decode_stage(run, components, x0, record);
}

} // namespace detail

WanI2V::WanI2V(std::string task_, std::shared_ptr<WanComponents> components_, execution exec_)
    : task(std::move(task_)), config(configs::wan_config(task)), components(std::move(components_)),
      exec(std::move(exec_)), num_train_timesteps(config.num_train_timesteps), vae_stride(config.vae_stride),
      patch_size(config.patch_size), sample_neg_prompt(config.sample_neg_prompt) {
  detail::check_task(task, {"i2v"}, "WanI2V");
  if (!components || components->kind != "i2v")
    throw offload::config_error("offload.wan.pipeline.components",
                                fmt::format("task '{}' needs components of kind 'i2v', found '{}'", task,
                                            components ? components->kind : std::string("none")));
}

WanI2V::WanI2V(const std::string& task_, const std::filesystem::path& checkpoint_dir, execution exec_,
               const component_options& options)
    : WanI2V(task_,
             WanComponents::load("i2v", component_paths::official(checkpoint_dir, configs::wan_config(task_)),
                                 options),
             std::move(exec_)) {}

torch::Tensor WanI2V::generate(const std::string& input_prompt, const torch::Tensor& img,
                               const i2v_params& params) {
  const std::string n = params.n_prompt.empty() ? sample_neg_prompt : params.n_prompt;
  return run({input_prompt, {}}, {n, {}}, img, params);
}

torch::Tensor WanI2V::generate(const torch::Tensor& prompt_ids, const torch::Tensor& neg_prompt_ids,
                               const torch::Tensor& img, const i2v_params& params) {
  detail::prompt_source neg{std::nullopt, neg_prompt_ids};
  if (!neg_prompt_ids.defined()) neg = {params.n_prompt.empty() ? sample_neg_prompt : params.n_prompt, {}};
  return run({std::nullopt, prompt_ids}, neg, img, params);
}

torch::Tensor WanI2V::run(const detail::prompt_source& prompt, const detail::prompt_source& neg,
                          const torch::Tensor& img_in, const i2v_params& params) {
  torch::NoGradGuard no_grad;
  detail::check_solver(params.sample_solver);
  const torch::Tensor img = detail::image_to_tensor(img_in); // [3, H, W] (host)
  detail::note(record, "image.0", img);

  const int64_t F = params.frame_num;
  const auto [lat_h, lat_w] = detail::latent_hw(params.max_area, img.size(1), img.size(2), vae_stride, patch_size);
  const int64_t h = lat_h * vae_stride[1];
  const int64_t w = lat_w * vae_stride[2];

  int64_t max_seq_len = ((F - 1) / vae_stride[0] + 1) * lat_h * lat_w / (patch_size[1] * patch_size[2]);
  max_seq_len = static_cast<int64_t>(std::ceil(static_cast<double>(max_seq_len) / static_cast<double>(sp_size))) * sp_size;
  detail::note(record, "seq_len", torch::tensor(max_seq_len, torch::kLong));

  const int64_t seed = detail::resolve_seed(params.seed);

  generation_shape shape;
  shape.task = task;
  shape.width = static_cast<int>(w);
  shape.height = static_cast<int>(h);
  shape.frame_num = static_cast<int>(F);
  shape.sampling_steps = static_cast<int>(params.sampling_steps);
  shape.vae_tiling = vae_tiling_of(exec.policy);
  offload_run run(pipeline_stages(shape), *components, exec, observer);
  const torch::Device dit_device = run.device_of(DIT_COMPONENT);

  torch::Tensor noise = detail::seeded_noise({16, (F - 1) / 4 + 1, lat_h, lat_w}, seed).to(dit_device);
  detail::note(record, "noise", noise);

  const torch::Tensor video = torch::cat({detail::resize_bicubic(img, h, w), torch::zeros({3, F - 1, h, w})},
                                         1); // [3, F, h, w]
  detail::note(record, "vae_encode_input.first", video.select(1, 0));
  const detail::image_conditioning cond{{img}, video, detail::condition_mask(F, 1, F, lat_h, lat_w)};
  return detail::generate_image_conditioned(
      run, *components, prompt, neg, std::move(noise), cond, max_seq_len,
      {params.sample_solver, params.sampling_steps, params.shift, params.guide_scale, num_train_timesteps,
       dit_autocast(exec, config, dit_device)},
      record);
}

} // namespace wan
