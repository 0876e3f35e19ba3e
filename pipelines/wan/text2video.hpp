#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/text2video.py (WanT2V): text-to-video (and, with
/// frame_num = 1, text-to-image) generation with classifier-free guidance.
///
/// Deliberate deviations:
///  * No `.to(device)` / `.cpu()` on models: the components (components.hpp) are placed by an
///    offload plan for the given placement policy and every stage is entered through the
///    executor (`text_encode`, `denoise` x steps, `decode`). The policy replaces the reference's
///    `offload_model` and `t5_cpu` flags (presets `offload_model`, `t5_cpu`, `vae_cpu`).
///    Activations move to the execution device of the component that consumes them.
///  * The constructor takes the task name (`t2v-1.3B`, `t2v-14B`, `t2i-14B`) instead of the
///    config object: the config is configs::wan_config(task) and the task names the stages.
///  * generate() takes its keyword arguments as `t2v_params` (defaults as in the reference), and
///    has a token-id form (what the golden set stores) beside the prompt-string form.
///  * The seeded noise is drawn on the CPU generator (torch.Generator('cpu').manual_seed(seed))
///    and moved to the DiT's device; the reference draws on the GPU generator when it runs there.
///  * The video is returned on the host.
///  * No sequence parallelism / FSDP (sp_size = 1).

#include "wan/components.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace wan {

/// Keyword arguments of WanT2V.generate (defaults as in the reference).
struct t2v_params {
  std::pair<int64_t, int64_t> size{1280, 720}; ///< (width, height)
  int64_t frame_num = 81;                      ///< 4n + 1 (1 = an image)
  double shift = 5.0;
  std::string sample_solver = "unipc";         ///< 'unipc' or 'dpm++'
  int64_t sampling_steps = 50;
  double guide_scale = 5.0;
  std::string n_prompt;                        ///< "" = config.sample_neg_prompt
  int64_t seed = -1;                           ///< -1 = random
};

namespace detail {

/// The denoising model call of both CFG branches: latent [C, T, h, w], timestep int64 [1], context,
/// context_null -> {noise_pred_cond, noise_pred_uncond} [C, T, h, w]. Everything on the DiT's
/// device. WanModel runs the two branches block-major (forward_branches): the same numbers as two
/// forward() calls, and a streamed DiT moves each block once per step.
using dit_call = std::function<std::pair<torch::Tensor, torch::Tensor>(
    const torch::Tensor& latent, const torch::Tensor& timestep, const std::vector<torch::Tensor>& context,
    const std::vector<torch::Tensor>& context_null)>;

/// The sampling loop shared by the pipelines: scheduler set-up (unipc / dpm++), per step one
/// `denoise` stage with the cond and uncond calls, CFG, scheduler step. `noise` on the DiT's
/// device, taken by value: moved in, it is freed once the scheduler lets go of it (UniPC: its
/// second step), so the denoise holds workspace_constants::sampler_latents latents. The model calls run under autocast_guard(*autocast) when given (dit_autocast). Records timesteps, latents.i, noise_pred_cond.i, noise_pred_uncond.i, noise_pred.i.
torch::Tensor sample(offload_run& run, const dit_call& model, torch::Tensor noise,
                     const std::vector<torch::Tensor>& context,
                     const std::vector<torch::Tensor>& context_null, const std::string& solver,
                     int64_t sampling_steps, double shift, double guide_scale,
                     int64_t num_train_timesteps, const recorder& record,
                     std::optional<torch::Dtype> autocast = std::nullopt);

/// The `text_encode` stage shared by the pipelines: the prompt and the negative prompt through T5
/// on its execution device, the contexts moved to `target` (the DiT's device). Records
/// context.cond and context.uncond.
std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>>
text_encode_stage(offload_run& run, const WanComponents& components, const prompt_source& prompt,
                  const prompt_source& neg, torch::Device target, const recorder& record);

/// components.vae->encode / decode, tiled when the policy tiles the VAE (`vae=...:tile=N`,
/// WanComponents::vae_tiling).
std::vector<torch::Tensor> vae_encode(const WanComponents& components, const std::vector<torch::Tensor>& videos);
std::vector<torch::Tensor> vae_decode(const WanComponents& components, const std::vector<torch::Tensor>& zs);

/// The `decode` stage and the end of the run shared by T2V, I2V and FLF2V: x0 [16, T, h, w]
/// through the VAE on its execution device, run.finish(); returns the video [3, F, H, W] on the
/// host and records it as `video`.
torch::Tensor decode_stage(offload_run& run, const WanComponents& components, const torch::Tensor& x0,
                           const recorder& record);

/// Records when `record` is set.
inline void note(const recorder& record, const std::string& name, const torch::Tensor& value) {
  if (record) record(name, value);
}

/// Throws config_error unless `task` starts with one of `prefixes` (and is a WAN_CONFIGS task).
void check_task(const std::string& task, std::initializer_list<std::string_view> prefixes,
                std::string_view pipeline);

} // namespace detail

class WanT2V {
public:
  /// `task`: t2v-1.3B, t2v-14B or t2i-14B; `components` of kind "t2v".
  WanT2V(std::string task, std::shared_ptr<WanComponents> components, execution exec);
  /// Loads the components from `checkpoint_dir` (official layout).
  WanT2V(const std::string& task, const std::filesystem::path& checkpoint_dir, execution exec,
         const component_options& options = {});
  virtual ~WanT2V() = default;

  /// Generates a video [3, F, H, W] in [-1, 1] (on the host) from a prompt.
  torch::Tensor generate(const std::string& input_prompt, const t2v_params& params = {});
  /// The same from token ids (int64 [n], EOS included, unpadded); an undefined
  /// `neg_prompt_ids` means params.n_prompt (or the config's negative prompt) through the tokenizer.
  torch::Tensor generate(const torch::Tensor& prompt_ids, const torch::Tensor& neg_prompt_ids,
                         const t2v_params& params = {});

  std::string task;
  configs::WanConfig config;
  std::shared_ptr<WanComponents> components;
  execution exec;
  int64_t num_train_timesteps;
  std::array<int64_t, 3> vae_stride;
  std::array<int64_t, 3> patch_size;
  int64_t sp_size = 1;
  std::string sample_neg_prompt;

  /// Optional: called inside every stage (tests check placements here).
  stage_observer observer;
  /// Optional: receives the intermediates (context.cond/uncond, seq_len, noise, timesteps,
  /// latents.i, noise_pred_cond.i, noise_pred_uncond.i, noise_pred.i, x0, video).
  recorder record;

protected:
  WanT2V(std::string task, std::shared_ptr<WanComponents> components, execution exec,
         std::string_view kind);
  detail::prompt_source negative(const torch::Tensor& neg_prompt_ids, const std::string& n_prompt) const;

private:
  torch::Tensor run(const detail::prompt_source& prompt, const detail::prompt_source& neg,
                    const t2v_params& params);
};

} // namespace wan
