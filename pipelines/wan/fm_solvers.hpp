// Port of Wan-Video/Wan2.1@9737cba, wan/utils/fm_solvers.py (get_sampling_sigmas,
// retrieve_timesteps, FlowDPMSolverMultistepScheduler: DPM-Solver++ for flow matching, the
// `dpm++` sample solver of the Wan pipelines).
//
// The numbers are produced exactly as the Python produces them: the training sigma table is
// built in numpy float64 and cast to a float32 tensor, set_timesteps works in numpy float64 and
// casts the sigmas to float32 and the timesteps (sigma * num_train_timesteps) to int64 by
// truncation; every step coefficient is a 0-dim float32 tensor computed with the same torch
// operations in the same order (numpy float64 steps are done with float64 torch tensors, which
// compute the same IEEE operations).
//
// Deliberate deviations:
//  * Options the reference accepts but cannot run, or that no Wan pipeline uses, are refused with
//    offload::config_error at construction instead of being half-ported:
//    use_dynamic_shifting (needs `mu`), thresholding, the sde-* algorithm types (need a noise
//    generator), final_sigmas_type "sigma_min" (the reference reads an attribute it never sets),
//    prediction types other than "flow_prediction". `lambda_min_clipped` and `variance_type` are
//    never read by the reference and are not ported.
//  * set_timesteps takes no `device` and keeps `timesteps` on the CPU (the pipelines move what
//    they need); retrieve_timesteps has no `timesteps` argument (neither flow scheduler accepts
//    custom timesteps: the reference raises). add_noise / scale_model_input / __len__ are not
//    ported (no Wan pipeline calls them).
//  * Errors the reference raises as ValueError/IndexError/assert (step before set_timesteps,
//    a timestep not in the schedule, stepping past the last timestep, steps < 1) are
//    offload::config_error with ids offload.wan.sampler.*.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace wan {

/// get_sampling_sigmas(sampling_steps, shift): numpy float64
/// `s = linspace(1, 0, steps + 1)[:steps]; shift * s / (1 + (shift - 1) * s)`.
std::vector<double> get_sampling_sigmas(int64_t sampling_steps, double shift);

namespace fm_detail {

/// numpy.linspace(start, stop, num) (endpoint=True) in float64, computed as numpy does:
/// `arange(num) * ((stop - start) / (num - 1)) + start`, last element set to `stop`.
torch::Tensor np_linspace(double start, double stop, int64_t num);

/// `shift * sigmas / (1 + (shift - 1) * sigmas)` with the torch operations Python performs
/// (float64 tensors stand for numpy arrays, float32 tensors for the scheduler's torch tensor).
torch::Tensor shift_sigmas(const torch::Tensor& sigmas, double shift);

/// The training schedule both flow schedulers build in __init__: float32 [num_train_timesteps]
/// sigmas, from `1 - linspace(1, 1/N, N)[::-1]` (float64, then float32), shifted unless
/// use_dynamic_shifting.
torch::Tensor training_sigmas(int64_t num_train_timesteps, double shift, bool use_dynamic_shifting);

/// What set_timesteps computes (identical in both flow schedulers with
/// use_dynamic_shifting=False and final_sigmas_type="zero"): float32 sigmas [S+1] (last 0) and
/// int64 timesteps [S].
struct flow_schedule {
  torch::Tensor sigmas;    // float32 [S + 1]
  torch::Tensor timesteps; // int64 [S]
};
flow_schedule flow_set_timesteps(std::optional<int64_t> num_inference_steps,
                                 const std::optional<std::vector<double>>& sigmas, double shift,
                                 double sigma_max, double sigma_min, int64_t num_train_timesteps,
                                 const char* scheduler);

/// index_for_timestep: position of `timestep` in `schedule_timesteps`, the second match when
/// there are several (the reference's rule for the very first step); config_error when absent.
int64_t index_for_timestep(const torch::Tensor& schedule_timesteps, const torch::Tensor& timestep,
                           const char* scheduler);

/// _sigma_to_alpha_sigma_t: (1 - sigma, sigma).
std::pair<torch::Tensor, torch::Tensor> sigma_to_alpha_sigma_t(const torch::Tensor& sigma);

} // namespace fm_detail

/// Constructor arguments of FlowDPMSolverMultistepScheduler (defaults as in the reference).
struct FlowDPMSolverMultistepSchedulerConfig {
  int64_t num_train_timesteps = 1000;
  int64_t solver_order = 2;                          ///< 1, 2 or 3
  std::string prediction_type = "flow_prediction";   ///< only "flow_prediction"
  double shift = 1.0;
  bool use_dynamic_shifting = false;                 ///< must be false (see deviations)
  bool thresholding = false;                         ///< must be false (see deviations)
  std::string algorithm_type = "dpmsolver++";        ///< "dpmsolver++", "dpmsolver" ("deis" -> "dpmsolver++")
  std::string solver_type = "midpoint";              ///< "midpoint", "heun" ("logrho", "bh1", "bh2" -> "midpoint")
  bool lower_order_final = true;
  bool euler_at_final = false;
  std::string final_sigmas_type = "zero";            ///< only "zero"
};

/// DPM-Solver(++) multistep scheduler for flow matching (`FlowDPMSolverMultistepScheduler`).
///
/// **Example** (as wan/text2video.py sets it up for `dpm++`)
/// \code
/// wan::FlowDPMSolverMultistepScheduler sched({.num_train_timesteps = 1000, .shift = 1});
/// auto [timesteps, n] = wan::retrieve_timesteps(sched, {}, wan::get_sampling_sigmas(50, 5.0));
/// for (int64_t i = 0; i < n; ++i)
///   latent = sched.step(noise_pred.unsqueeze(0), timesteps[i], latent.unsqueeze(0)).squeeze(0);
/// \endcode
class FlowDPMSolverMultistepScheduler {
public:
  explicit FlowDPMSolverMultistepScheduler(FlowDPMSolverMultistepSchedulerConfig config = {});

  [[nodiscard]] const FlowDPMSolverMultistepSchedulerConfig& config() const noexcept { return config_; }
  [[nodiscard]] std::optional<int64_t> step_index() const noexcept { return step_index_; }
  [[nodiscard]] std::optional<int64_t> begin_index() const noexcept { return begin_index_; }
  void set_begin_index(int64_t begin_index = 0) { begin_index_ = begin_index; }

  /// set_timesteps(num_inference_steps, sigmas=..., shift=...): exactly one of
  /// num_inference_steps / sigmas is needed (sigmas wins, as in the reference); `shift`
  /// defaults to config().shift.
  void set_timesteps(std::optional<int64_t> num_inference_steps = {},
                     const std::optional<std::vector<double>>& sigmas = {},
                     std::optional<double> shift = {});

  /// The data (x0) prediction (dpmsolver++) or noise prediction (dpmsolver) at step_index.
  [[nodiscard]] torch::Tensor convert_model_output(const torch::Tensor& model_output,
                                                   const torch::Tensor& sample) const;
  [[nodiscard]] torch::Tensor dpm_solver_first_order_update(const torch::Tensor& model_output,
                                                            const torch::Tensor& sample) const;
  [[nodiscard]] torch::Tensor multistep_dpm_solver_second_order_update(
      const std::vector<torch::Tensor>& model_output_list, const torch::Tensor& sample) const;
  [[nodiscard]] torch::Tensor multistep_dpm_solver_third_order_update(
      const std::vector<torch::Tensor>& model_output_list, const torch::Tensor& sample) const;
  [[nodiscard]] int64_t index_for_timestep(const torch::Tensor& timestep) const;

  /// step(model_output, timestep, sample, return_dict=False)[0]: the sample at the next timestep.
  torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                     const torch::Tensor& sample);

  // State, named and kept as in the Python (read by the parity tests).
  torch::Tensor sigmas;                      ///< float32 [S + 1] after set_timesteps
  torch::Tensor timesteps;                   ///< int64 [S] after set_timesteps
  std::optional<int64_t> num_inference_steps;
  std::vector<torch::Tensor> model_outputs;  ///< solver_order entries; undefined = None
  int64_t lower_order_nums = 0;
  double sigma_min = 0.0;
  double sigma_max = 0.0;

private:
  FlowDPMSolverMultistepSchedulerConfig config_;
  std::optional<int64_t> step_index_;
  std::optional<int64_t> begin_index_;

  void init_step_index(const torch::Tensor& timestep);
};

/// retrieve_timesteps(scheduler, num_inference_steps, sigmas=sigmas): calls set_timesteps and
/// returns (scheduler.timesteps, number of inference steps).
template <class Scheduler>
std::pair<torch::Tensor, int64_t> retrieve_timesteps(Scheduler& scheduler,
                                                     std::optional<int64_t> num_inference_steps,
                                                     const std::optional<std::vector<double>>& sigmas = {}) {
  if (sigmas) {
    scheduler.set_timesteps({}, sigmas);
    return {scheduler.timesteps, scheduler.timesteps.size(0)};
  }
  scheduler.set_timesteps(num_inference_steps);
  return {scheduler.timesteps, num_inference_steps.value_or(scheduler.timesteps.size(0))};
}

} // namespace wan
