// The sampler interface of the Wan pipelines: the `sample_solver` choice of
// Wan-Video/Wan2.1@9737cba, wan/text2video.py (and image2video.py, first_last_frame2video.py,
// vace.py), which build FlowUniPCMultistepScheduler (`unipc`, wan/utils/fm_solvers_unipc.py) or
// FlowDPMSolverMultistepScheduler (`dpm++`, wan/utils/fm_solvers.py) and call
// `sample_scheduler.step(noise_pred.unsqueeze(0), t, latents[0].unsqueeze(0), return_dict=False)[0]`
// once per timestep.
//
// Deviation: the reference's `else: raise NotImplementedError("Unsupported solver.")` is an
// offload::config_error naming the solver and the accepted ones; timesteps stay on the CPU.
#pragma once

#include <memory>
#include <string_view>

#include <torch/types.h>

namespace wan {

/// One denoising trajectory of a flow-matching solver, set up for a number of steps and a shift.
class Sampler {
public:
  virtual ~Sampler() = default;
  /// The scheduler's timesteps: int64 [S], on the CPU.
  virtual const torch::Tensor& timesteps() const = 0;
  /// sample_scheduler.step(model_output, timestep, sample, return_dict=False)[0]: `model_output`
  /// and `sample` are [1, C, F, H, W] (noise_pred.unsqueeze(0), latents[0].unsqueeze(0)),
  /// `timestep` the current entry of timesteps(); returns the sample at the next timestep.
  virtual torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                             const torch::Tensor& sample) = 0;
};

/// "unipc" or "dpm++" (else offload::config_error `offload.wan.sampler.unknown_solver` naming the
/// solver and the accepted ones), set up exactly as text2video.py does for sampling_steps and
/// shift: the scheduler is built with shift=1, use_dynamic_shifting=False; `unipc` then calls
/// set_timesteps(sampling_steps, shift=shift), `dpm++` retrieve_timesteps(sigmas=
/// get_sampling_sigmas(sampling_steps, shift)). sampling_steps < 1 or a non-positive shift is a
/// config_error (`offload.wan.sampler.steps` / `offload.wan.sampler.shift`).
///
/// **Example**
/// \code
/// auto sampler = wan::make_sampler("unipc", 50, 5.0);
/// for (int64_t i = 0; i < sampler->timesteps().size(0); ++i) {
///   auto t = sampler->timesteps()[i];
///   auto noise_pred = ...;                                     // [C, F, H, W]
///   latent = sampler->step(noise_pred.unsqueeze(0), t, latent.unsqueeze(0)).squeeze(0);
/// }
/// \endcode
std::unique_ptr<Sampler> make_sampler(std::string_view solver, int sampling_steps, double shift,
                                      int num_train_timesteps = 1000);

} // namespace wan
