// Port of Wan-Video/Wan2.1@9737cba, wan/vace.py (WanVace). Deviations: see vace.hpp.
#include "wan/vace.hpp"

#include <torch/torch.h>

#include <offload/errors.hpp>

#include <fmt/format.h>

#include <cmath>
#include <utility>

namespace wan {

namespace F = torch::nn::functional;

namespace {

bool has_refs(const std::vector<ref_image_list>& refs, std::size_t i) { return i < refs.size() && !refs[i].empty(); }

void check_lengths(std::size_t a, const std::vector<ref_image_list>& refs, const char* what) {
  if (!refs.empty() && refs.size() != a)
    throw offload::config_error("offload.wan.vace.inputs",
                                fmt::format("WanVace::{}: expected one reference-image list per sample ({}), "
                                            "found {}",
                                            what, a, refs.size()));
}

} // namespace

WanVace::WanVace(std::string task_, std::shared_ptr<WanComponents> components_, execution exec_)
    : WanT2V(std::move(task_), std::move(components_), std::move(exec_), "vace") {
  detail::check_task(task, {"vace"}, "WanVace");
}

WanVace::WanVace(const std::string& task_, const std::filesystem::path& checkpoint_dir, execution exec_,
                 const component_options& options)
    : WanVace(task_,
              WanComponents::load("vace", component_paths::official(checkpoint_dir, configs::wan_config(task_)),
                                  options),
              std::move(exec_)) {}

std::vector<torch::Tensor> WanVace::vace_encode_frames(const std::vector<torch::Tensor>& frames_in,
                                                       const std::vector<ref_image_list>& ref_images,
                                                       const std::vector<torch::Tensor>& masks_in) {
  check_lengths(frames_in.size(), ref_images, "vace_encode_frames");
  std::vector<torch::Tensor> frames;
  for (const auto& f : frames_in) frames.push_back(f.to(vae_device_));

  std::vector<torch::Tensor> latents;
  if (masks_in.empty()) {
    latents = detail::vae_encode(*components, frames);
  } else {
    std::vector<torch::Tensor> inactive, reactive;
    for (std::size_t i = 0; i < frames.size(); ++i) {
      const auto m = torch::where(masks_in[i].to(vae_device_) > 0.5, 1.0, 0.0).to(torch::kFloat32);
      inactive.push_back(frames[i] * (1 - m) + 0 * m); // [3, F, H, W]
      reactive.push_back(frames[i] * m + 0 * (1 - m)); // [3, F, H, W]
    }
    inactive = detail::vae_encode(*components, inactive);
    reactive = detail::vae_encode(*components, reactive);
    for (std::size_t i = 0; i < frames.size(); ++i)
      latents.push_back(torch::cat({inactive[i], reactive[i]}, 0)); // [32, T, h, w]
  }

  std::vector<torch::Tensor> cat_latents;
  for (std::size_t i = 0; i < latents.size(); ++i) {
    torch::Tensor latent = latents[i];
    if (has_refs(ref_images, i)) {
      std::vector<torch::Tensor> refs;
      for (const auto& r : ref_images[i]) refs.push_back(r.to(vae_device_));
      std::vector<torch::Tensor> ref_latent = detail::vae_encode(*components, refs); // [16, 1, h, w] each
      if (!masks_in.empty())
        for (auto& u : ref_latent) u = torch::cat({u, torch::zeros_like(u)}, 0); // [32, 1, h, w]
      for (const auto& x : ref_latent)
        if (x.size(1) != 1)
          throw offload::config_error("offload.wan.vace.ref_images",
                                      fmt::format("a reference image must encode to one latent frame, found {}; "
                                                  "pass single images [3, 1, H, W]",
                                                  x.size(1)));
      ref_latent.push_back(latent);
      latent = torch::cat(ref_latent, 1); // [C, refs + T, h, w]
    }
    cat_latents.push_back(latent);
  }
  return cat_latents;
}

std::vector<torch::Tensor> WanVace::vace_encode_masks(const std::vector<torch::Tensor>& masks,
                                                      const std::vector<ref_image_list>& ref_images) const {
  check_lengths(masks.size(), ref_images, "vace_encode_masks");
  std::vector<torch::Tensor> result_masks;
  for (std::size_t i = 0; i < masks.size(); ++i) {
    torch::Tensor mask = masks[i];
    const int64_t depth = mask.size(1);
    const int64_t new_depth = (depth + 3) / vae_stride[0];
    const int64_t height = 2 * (mask.size(2) / (vae_stride[1] * 2));
    const int64_t width = 2 * (mask.size(3) / (vae_stride[2] * 2));

    // reshape
    mask = mask[0];                                                            // [F, H, W]
    mask = mask.view({depth, height, vae_stride[1], width, vae_stride[1]});  // [F, h, 8, w, 8]
    mask = mask.permute({2, 4, 0, 1, 3});                                      // [8, 8, F, h, w]
    mask = mask.reshape({vae_stride[1] * vae_stride[2], depth, height, width}); // [64, F, h, w]

    // interpolation (mode='nearest-exact', size given)
    mask = torch::_upsample_nearest_exact3d(mask.unsqueeze(0), at::IntArrayRef{new_depth, height, width},
                                            c10::nullopt)
               .squeeze(0); // [64, T, h, w]

    if (has_refs(ref_images, i)) {
      const auto length = static_cast<int64_t>(ref_images[i].size());
      const auto mask_pad = torch::zeros_like(mask.slice(1, 0, length));
      mask = torch::cat({mask_pad, mask}, 1); // [64, refs + T, h, w]
    }
    result_masks.push_back(mask);
  }
  return result_masks;
}

std::vector<torch::Tensor> WanVace::vace_latent(const std::vector<torch::Tensor>& z,
                                                const std::vector<torch::Tensor>& m) {
  std::vector<torch::Tensor> out;
  for (std::size_t i = 0; i < z.size() && i < m.size(); ++i) out.push_back(torch::cat({z[i], m[i].to(z[i].device())}, 0));
  return out;
}

WanVace::source WanVace::prepare_source(std::vector<std::optional<torch::Tensor>> src_video,
                                        std::vector<std::optional<torch::Tensor>> src_mask,
                                        std::vector<std::vector<std::optional<torch::Tensor>>> src_ref_images,
                                        int64_t num_frames, std::pair<int64_t, int64_t> image_size_wh,
                                        torch::Device device) const {
  if (src_mask.size() != src_video.size())
    throw offload::config_error("offload.wan.vace.inputs",
                                fmt::format("prepare_source: {} videos but {} masks; pass one (or None) each",
                                            src_video.size(), src_mask.size()));
  const std::pair<int64_t, int64_t> image_size{image_size_wh.second, image_size_wh.first}; // (h, w)
  source out;
  std::vector<std::pair<int64_t, int64_t>> image_sizes;
  for (std::size_t i = 0; i < src_video.size(); ++i) {
    torch::Tensor v, m;
    if (src_mask[i] && src_video[i]) {
      v = src_video[i]->to(device);
      m = torch::clamp((src_mask[i]->to(device).slice(0, 0, 1) + 1) / 2, 0, 1);
      image_sizes.emplace_back(v.size(2), v.size(3));
    } else if (!src_video[i]) {
      v = torch::zeros({3, num_frames, image_size.first, image_size.second}, torch::TensorOptions().device(device));
      m = torch::ones_like(v);
      image_sizes.push_back(image_size);
    } else {
      v = src_video[i]->to(device);
      m = torch::ones_like(v);
      image_sizes.emplace_back(v.size(2), v.size(3));
    }
    out.video.push_back(v);
    out.mask.push_back(m);
  }

  out.ref_images.resize(src_ref_images.size());
  for (std::size_t i = 0; i < src_ref_images.size(); ++i) {
    if (src_ref_images[i].empty()) continue;
    const auto [canvas_height, canvas_width] = i < image_sizes.size() ? image_sizes[i] : image_size;
    for (auto& ref : src_ref_images[i]) {
      if (!ref) continue;
      torch::Tensor ref_img = ref->unsqueeze(1); // [3, 1, h, w]
      if (ref_img.size(-2) != canvas_height || ref_img.size(-1) != canvas_width) {
        auto white_canvas = torch::ones({3, 1, canvas_height, canvas_width}, torch::TensorOptions().device(device));
        const double ref_height = static_cast<double>(ref_img.size(-2)), ref_width = static_cast<double>(ref_img.size(-1));
        const double scale = std::min(static_cast<double>(canvas_height) / ref_height,
                                      static_cast<double>(canvas_width) / ref_width);
        const auto new_height = static_cast<int64_t>(ref_height * scale);
        const auto new_width = static_cast<int64_t>(ref_width * scale);
        auto resized_image = F::interpolate(ref_img.squeeze(1).unsqueeze(0),
                                            F::InterpolateFuncOptions()
                                                .size(std::vector<int64_t>{new_height, new_width})
                                                .mode(torch::kBilinear)
                                                .align_corners(false))
                                 .squeeze(0)
                                 .unsqueeze(1); // [3, 1, nh, nw]
        const int64_t top = (canvas_height - new_height) / 2;
        const int64_t left = (canvas_width - new_width) / 2;
        white_canvas.slice(2, top, top + new_height).slice(3, left, left + new_width).copy_(resized_image);
        ref_img = white_canvas;
      }
      out.ref_images[i].push_back(ref_img.to(device));
    }
  }
  return out;
}

std::vector<torch::Tensor> WanVace::decode_latent(const std::vector<torch::Tensor>& zs,
                                                  const std::vector<ref_image_list>& ref_images) {
  check_lengths(zs.size(), ref_images, "decode_latent");
  std::vector<torch::Tensor> trimed_zs;
  for (std::size_t i = 0; i < zs.size(); ++i) {
    torch::Tensor z = zs[i];
    if (has_refs(ref_images, i)) z = z.slice(1, static_cast<int64_t>(ref_images[i].size())); // [C, T, h, w]
    trimed_zs.push_back(z.to(vae_device_));
  }
  return detail::vae_decode(*components, trimed_zs);
}

torch::Tensor WanVace::generate(const std::string& input_prompt, const std::vector<torch::Tensor>& input_frames,
                                const std::vector<torch::Tensor>& input_masks,
                                const std::vector<ref_image_list>& input_ref_images, const vace_params& params) {
  return run({input_prompt, {}}, negative({}, params.n_prompt), input_frames, input_masks, input_ref_images,
             params);
}

torch::Tensor WanVace::generate(const torch::Tensor& prompt_ids, const torch::Tensor& neg_prompt_ids,
                                const std::vector<torch::Tensor>& input_frames,
                                const std::vector<torch::Tensor>& input_masks,
                                const std::vector<ref_image_list>& input_ref_images, const vace_params& params) {
  return run({std::nullopt, prompt_ids}, negative(neg_prompt_ids, params.n_prompt), input_frames, input_masks,
             input_ref_images, params);
}

torch::Tensor WanVace::run(const detail::prompt_source& prompt, const detail::prompt_source& neg,
                           const std::vector<torch::Tensor>& input_frames,
                           const std::vector<torch::Tensor>& input_masks,
                           const std::vector<ref_image_list>& input_ref_images, const vace_params& params) {
  torch::NoGradGuard no_grad;
  detail::check_solver(params.sample_solver);
  if (input_frames.size() != 1 || input_masks.size() != 1)
    throw offload::config_error("offload.wan.vace.inputs",
                                fmt::format("WanVace::generate: expected one source video and one mask, found "
                                            "{} and {}; the reference samples one video per call (prepare_source "
                                            "gives an all-ones mask to a video without one)",
                                            input_frames.size(), input_masks.size()));
  check_lengths(input_frames.size(), input_ref_images, "generate");
  const int64_t seed = detail::resolve_seed(params.seed);
  const int64_t refs = has_refs(input_ref_images, 0) ? static_cast<int64_t>(input_ref_images[0].size()) : 0;

  generation_shape shape;
  shape.task = task;
  shape.width = static_cast<int>(input_frames[0].size(3));
  shape.height = static_cast<int>(input_frames[0].size(2));
  shape.frame_num = static_cast<int>(input_frames[0].size(1));
  shape.sampling_steps = static_cast<int>(params.sampling_steps);
  shape.ref_images = static_cast<int>(refs);
  shape.vae_tiling = vae_tiling_of(exec.policy);
  offload_run run(pipeline_stages(shape), *components, exec, observer);
  const torch::Device dit_device = run.device_of(DIT_COMPONENT);
  vae_device_ = run.device_of(VAE_COMPONENT);

  const auto [context, context_null] =
      detail::text_encode_stage(run, *components, prompt, neg, dit_device, record);

  // vace context encode. Only the context z is held through the denoise: the latents z0 and masks
  // m0 it is made of go once it is (the reference keeps them to the end of generate()).
  std::vector<torch::Tensor> z;
  std::vector<int64_t> target_shape;
  {
    std::vector<torch::Tensor> z0;
    {
      auto stage = run.enter("vae_encode");
      z0 = stage.run([&] { return vace_encode_frames(input_frames, input_ref_images, input_masks); });
    }
    const std::vector<torch::Tensor> m0 = vace_encode_masks(input_masks, input_ref_images);
    z = vace_latent(z0, m0);
    target_shape.assign(z0[0].sizes().begin(), z0[0].sizes().end());
  }
  for (auto& u : z) u = u.to(dit_device); // [96, refs + T, h, w]
  detail::note(record, "vace_context", z[0]);

  target_shape[0] = static_cast<int64_t>(static_cast<double>(target_shape[0]) / 2);
  torch::Tensor noise = detail::seeded_noise(target_shape, seed).to(dit_device); // [16, T', h, w]
  detail::note(record, "noise", noise);
  const int64_t seq_len =
      static_cast<int64_t>(std::ceil(static_cast<double>(target_shape[2] * target_shape[3]) /
                                     static_cast<double>(patch_size[1] * patch_size[2]) *
                                     static_cast<double>(target_shape[1]) / static_cast<double>(sp_size))) *
      sp_size;
  detail::note(record, "seq_len", torch::tensor(seq_len, torch::kLong));

  VaceWanModel model = components->vace_model;
  // Both guidance branches block-major (VaceWanModel::forward_branches): a streamed DiT moves each
  // block of `vace_blocks` and `blocks` once per step.
  const detail::dit_call call = [&](const torch::Tensor& latent, const torch::Tensor& timestep,
                                    const std::vector<torch::Tensor>& ctx, const std::vector<torch::Tensor>& ctx_null) {
    auto out = model->forward_branches({latent}, timestep, z, {ctx, ctx_null}, seq_len, params.context_scale);
    return std::pair{out[0][0], out[1][0]};
  };
  const torch::Tensor x0 = detail::sample(run, call, std::move(noise), context, context_null, params.sample_solver,
                                          params.sampling_steps, params.shift, params.guide_scale,
                                          num_train_timesteps, record, dit_autocast(exec, config, dit_device));
  detail::note(record, "x0", refs > 0 ? x0.slice(1, refs) : x0);

  torch::Tensor video;
  {
    auto stage = run.enter("decode");
    video = stage.run([&] { return decode_latent({x0}, input_ref_images)[0]; }); // [3, F, H, W]
  }
  run.finish();
  vae_device_ = torch::kCPU;
  video = video.to(torch::kCPU);
  detail::note(record, "video", video);
  return video;
}

} // namespace wan
