// Port of Wan-Video/Wan2.1@9737cba, wan/text2video.py (WanT2V). Deviations: see text2video.hpp.
#include "wan/text2video.hpp"

#include <torch/torch.h>

#include "wan/sampler.hpp"

#include <offload/errors.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <cmath>
#include <utility>

namespace wan {

namespace detail {

void check_task(const std::string& task, std::initializer_list<std::string_view> prefixes,
                std::string_view pipeline) {
  (void)configs::wan_config(task); // unknown task: config_error naming the known ones
  for (auto p : prefixes)
    if (std::string_view(task).starts_with(p)) return;
  throw offload::config_error("offload.wan.pipeline.task",
                              fmt::format("task '{}' cannot run in {}; expected a task starting with {}", task,
                                          pipeline, fmt::join(prefixes, " or ")));
}

torch::Tensor sample(offload_run& run, const dit_call& model, torch::Tensor noise,
                     const std::vector<torch::Tensor>& context,
                     const std::vector<torch::Tensor>& context_null, const std::string& solver,
                     int64_t sampling_steps, double shift, double guide_scale,
                     int64_t num_train_timesteps, const recorder& record, std::optional<torch::Dtype> autocast) {
  std::optional<autocast_guard> compute_dtype;
  if (autocast) compute_dtype.emplace(*autocast);
  auto sample_scheduler = make_sampler(solver, static_cast<int>(sampling_steps), shift,
                                      static_cast<int>(num_train_timesteps));
  const torch::Tensor timesteps = sample_scheduler->timesteps(); // int64 [S] (host)
  note(record, "timesteps", timesteps);

  const torch::Device dit_device = run.device_of(DIT_COMPONENT);
  torch::Tensor latents = std::move(noise); // [C, T, h, w] on the DiT's device
  note(record, "latents.0", latents);
  for (int64_t i = 0; i < timesteps.size(0); ++i) {
    auto stage = run.enter("denoise");
    const torch::Tensor t = timesteps[i];                          // int64 []
    const torch::Tensor timestep = torch::stack({t}).to(dit_device); // int64 [1]

    const auto [noise_pred_cond, noise_pred_uncond] =
        stage.run([&] { return model(latents, timestep, context, context_null); }); // [C, T, h, w]
    const torch::Tensor noise_pred =
        noise_pred_uncond + guide_scale * (noise_pred_cond - noise_pred_uncond); // [C, T, h, w]

    const torch::Tensor temp_x0 =
        sample_scheduler->step(noise_pred.unsqueeze(0), t, latents.unsqueeze(0)); // [1, C, T, h, w]
    latents = temp_x0.squeeze(0);

    note(record, fmt::format("noise_pred_cond.{}", i), noise_pred_cond);
    note(record, fmt::format("noise_pred_uncond.{}", i), noise_pred_uncond);
    note(record, fmt::format("noise_pred.{}", i), noise_pred);
    note(record, fmt::format("latents.{}", i + 1), latents);
  }
  return latents;
}

std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>>
text_encode_stage(offload_run& run, const WanComponents& components, const prompt_source& prompt,
                  const prompt_source& neg, torch::Device target, const recorder& record) {
  std::vector<torch::Tensor> context, context_null;
  {
    auto stage = run.enter("text_encode");
    const torch::Device t5_device = run.device_of(T5_COMPONENT);
    auto both = stage.run([&] { return encode_prompts(*components.text_encoder, {prompt, neg}, t5_device, target); });
    context = std::move(both[0]);
    context_null = std::move(both[1]);
  }
  note(record, "context.cond", context[0]);
  note(record, "context.uncond", context_null[0]);
  return {std::move(context), std::move(context_null)};
}

std::vector<torch::Tensor> vae_encode(const WanComponents& components, const std::vector<torch::Tensor>& videos) {
  const auto tiling = components.vae_tiling();
  return tiling ? components.vae->encode(videos, *tiling) : components.vae->encode(videos);
}

std::vector<torch::Tensor> vae_decode(const WanComponents& components, const std::vector<torch::Tensor>& zs) {
  const auto tiling = components.vae_tiling();
  return tiling ? components.vae->decode(zs, *tiling) : components.vae->decode(zs);
}

torch::Tensor decode_stage(offload_run& run, const WanComponents& components, const torch::Tensor& x0,
                           const recorder& record) {
  torch::Tensor video;
  {
    auto stage = run.enter("decode");
    video = stage.run([&] { return vae_decode(components, {x0.to(run.device_of(VAE_COMPONENT))})[0]; });
    // video: [3, F, H, W]
  }
  run.finish();
  video = video.to(torch::kCPU);
  note(record, "video", video);
  return video;
}

} // namespace detail

WanT2V::WanT2V(std::string task_, std::shared_ptr<WanComponents> components_, execution exec_,
               std::string_view kind)
    : task(std::move(task_)), config(configs::wan_config(task)), components(std::move(components_)),
      exec(std::move(exec_)), num_train_timesteps(config.num_train_timesteps), vae_stride(config.vae_stride),
      patch_size(config.patch_size), sample_neg_prompt(config.sample_neg_prompt) {
  if (!components)
    throw offload::config_error("offload.wan.pipeline.components",
                                fmt::format("{}: components are null; load them with WanComponents::load", task));
  if (components->kind != kind)
    throw offload::config_error("offload.wan.pipeline.components",
                                fmt::format("task '{}' needs components of kind '{}', found '{}'", task, kind,
                                            components->kind));
}

WanT2V::WanT2V(std::string task_, std::shared_ptr<WanComponents> components_, execution exec_)
    : WanT2V(std::move(task_), std::move(components_), std::move(exec_), "t2v") {
  detail::check_task(task, {"t2v", "t2i"}, "WanT2V");
}

WanT2V::WanT2V(const std::string& task_, const std::filesystem::path& checkpoint_dir, execution exec_,
               const component_options& options)
    : WanT2V(task_,
             WanComponents::load("t2v", component_paths::official(checkpoint_dir, configs::wan_config(task_)),
                                 options),
             std::move(exec_)) {}

detail::prompt_source WanT2V::negative(const torch::Tensor& neg_prompt_ids, const std::string& n_prompt) const {
  if (neg_prompt_ids.defined()) return {std::nullopt, neg_prompt_ids};
  return {n_prompt.empty() ? sample_neg_prompt : n_prompt, {}};
}

torch::Tensor WanT2V::generate(const std::string& input_prompt, const t2v_params& params) {
  return run({input_prompt, {}}, negative({}, params.n_prompt), params);
}

torch::Tensor WanT2V::generate(const torch::Tensor& prompt_ids, const torch::Tensor& neg_prompt_ids,
                               const t2v_params& params) {
  return run({std::nullopt, prompt_ids}, negative(neg_prompt_ids, params.n_prompt), params);
}

torch::Tensor WanT2V::run(const detail::prompt_source& prompt, const detail::prompt_source& neg,
                          const t2v_params& params) {
  torch::NoGradGuard no_grad;
  detail::check_solver(params.sample_solver);
  // preprocess
  const int64_t F = params.frame_num;
  const std::array<int64_t, 4> target_shape{components->vae->model->cfg.z_dim, (F - 1) / vae_stride[0] + 1,
                                            params.size.second / vae_stride[1],
                                            params.size.first / vae_stride[2]};
  const int64_t seq_len =
      static_cast<int64_t>(std::ceil(static_cast<double>(target_shape[2] * target_shape[3]) /
                                     static_cast<double>(patch_size[1] * patch_size[2]) *
                                     static_cast<double>(target_shape[1]) / static_cast<double>(sp_size))) *
      sp_size;
  detail::note(record, "seq_len", torch::tensor(seq_len, torch::kLong));
  const int64_t seed = detail::resolve_seed(params.seed);

  generation_shape shape;
  shape.task = task;
  shape.width = static_cast<int>(params.size.first);
  shape.height = static_cast<int>(params.size.second);
  shape.frame_num = static_cast<int>(F);
  shape.sampling_steps = static_cast<int>(params.sampling_steps);
  shape.vae_tiling = vae_tiling_of(exec.policy);
  offload_run run(pipeline_stages(shape), *components, exec, observer);
  const torch::Device dit_device = run.device_of(DIT_COMPONENT);

  const auto [context, context_null] =
      detail::text_encode_stage(run, *components, prompt, neg, dit_device, record);

  torch::Tensor noise =
      detail::seeded_noise({target_shape[0], target_shape[1], target_shape[2], target_shape[3]}, seed)
          .to(dit_device); // [16, T, h, w]
  detail::note(record, "noise", noise);

  WanModel model = components->model;
  const detail::dit_call call = [&](const torch::Tensor& latent, const torch::Tensor& timestep,
                                    const std::vector<torch::Tensor>& ctx, const std::vector<torch::Tensor>& ctx_null) {
    auto out = model->forward_branches({latent}, timestep, {ctx, ctx_null}, seq_len);
    return std::pair{out[0][0], out[1][0]};
  };
  const torch::Tensor x0 = detail::sample(run, call, std::move(noise), context, context_null, params.sample_solver,
                                          params.sampling_steps, params.shift, params.guide_scale,
                                          num_train_timesteps, record, dit_autocast(exec, config, dit_device));
  detail::note(record, "x0", x0);
  return detail::decode_stage(run, *components, x0, record);
}

} // namespace wan
