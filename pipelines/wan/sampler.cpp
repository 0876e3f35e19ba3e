// The Wan pipelines' sampler choice (Wan-Video/Wan2.1@9737cba, wan/text2video.py, the
// `sample_solver` block of generate()); see sampler.hpp.
#include "wan/sampler.hpp"

#include <torch/torch.h>

#include <cmath>
#include <utility>

#include <fmt/format.h>

#include <offload/errors.hpp>

#include "wan/fm_solvers.hpp"
#include "wan/fm_solvers_unipc.hpp"

namespace wan {

namespace {

/// A Sampler over one of the flow schedulers (both expose `timesteps` and `step`).
template <class Scheduler>
class scheduler_sampler final : public Sampler {
public:
  explicit scheduler_sampler(Scheduler scheduler) : scheduler_(std::move(scheduler)) {}
  const torch::Tensor& timesteps() const override { return scheduler_.timesteps; }
  torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                     const torch::Tensor& sample) override {
    return scheduler_.step(model_output, timestep, sample);
  }

private:
  Scheduler scheduler_;
};

} // namespace

std::unique_ptr<Sampler> make_sampler(std::string_view solver, int sampling_steps, double shift,
                                      int num_train_timesteps) {
  if (solver != "unipc" && solver != "dpm++")
    throw offload::config_error(
        "offload.wan.sampler.unknown_solver",
        fmt::format("unsupported sample solver '{}'; expected 'unipc' or 'dpm++'", solver));
  if (sampling_steps < 1)
    throw offload::config_error(
        "offload.wan.sampler.steps",
        fmt::format("sample solver '{}': expected sampling_steps >= 1, got {}", solver, sampling_steps));
  if (!(shift > 0.0) || !std::isfinite(shift))
    throw offload::config_error(
        "offload.wan.sampler.shift",
        fmt::format("sample solver '{}': expected a finite shift > 0 (the configs use 3.0 to 16.0), got {}",
                    solver, shift));
  if (num_train_timesteps < 1)
    throw offload::config_error(
        "offload.wan.sampler.config",
        fmt::format("sample solver '{}': expected num_train_timesteps >= 1, got {}", solver,
                    num_train_timesteps));

  if (solver == "unipc") {
    // FlowUniPCMultistepScheduler(num_train_timesteps, shift=1, use_dynamic_shifting=False)
    FlowUniPCMultistepScheduler sched(
        {.num_train_timesteps = num_train_timesteps, .shift = 1.0, .use_dynamic_shifting = false});
    // sample_scheduler.set_timesteps(sampling_steps, device=self.device, shift=shift)
    sched.set_timesteps(sampling_steps, {}, shift);
    return std::make_unique<scheduler_sampler<FlowUniPCMultistepScheduler>>(std::move(sched));
  }
  // FlowDPMSolverMultistepScheduler(num_train_timesteps, shift=1, use_dynamic_shifting=False)
  FlowDPMSolverMultistepScheduler sched(
      {.num_train_timesteps = num_train_timesteps, .shift = 1.0, .use_dynamic_shifting = false});
  // sampling_sigmas = get_sampling_sigmas(sampling_steps, shift)
  // timesteps, _ = retrieve_timesteps(sample_scheduler, device=self.device, sigmas=sampling_sigmas)
  retrieve_timesteps(sched, {}, get_sampling_sigmas(sampling_steps, shift));
  return std::make_unique<scheduler_sampler<FlowDPMSolverMultistepScheduler>>(std::move(sched));
}

} // namespace wan
