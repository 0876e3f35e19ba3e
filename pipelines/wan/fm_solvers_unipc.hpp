// Port of Wan-Video/Wan2.1@9737cba, wan/utils/fm_solvers_unipc.py
// (FlowUniPCMultistepScheduler: UniPC for flow matching, the default `unipc` sample solver of the
// Wan pipelines).
//
// Numerics as in fm_solvers.hpp: float32 sigma table built as the Python builds it, numpy
// float64 steps in set_timesteps, step coefficients as 0-dim float32 tensors computed with the
// same torch operations in the same order (torch.linalg.solve / einsum included).
//
// Deliberate deviations:
//  * Refused with offload::config_error at construction: use_dynamic_shifting (needs `mu`),
//    thresholding, solver_p (another scheduler as predictor), final_sigmas_type other than
//    "zero" (the reference's "sigma_min" reads an attribute it never sets), prediction types
//    other than "flow_prediction". predict_x0=false is ported.
//  * set_timesteps takes no `device` (timesteps stay on the CPU); add_noise /
//    scale_model_input / __len__ are not ported (no Wan pipeline calls them).
//  * ValueError / IndexError / assert of the reference (step before set_timesteps, a timestep not
//    in the schedule, stepping past the last timestep, steps < 1) are offload::config_error with
//    ids offload.wan.sampler.*.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

namespace wan {

/// Constructor arguments of FlowUniPCMultistepScheduler (defaults as in the reference).
struct FlowUniPCMultistepSchedulerConfig {
  int64_t num_train_timesteps = 1000;
  int64_t solver_order = 2;
  std::string prediction_type = "flow_prediction"; ///< only "flow_prediction"
  double shift = 1.0;
  bool use_dynamic_shifting = false;               ///< must be false (see deviations)
  bool thresholding = false;                       ///< must be false (see deviations)
  bool predict_x0 = true;
  std::string solver_type = "bh2";                 ///< "bh1", "bh2" ("midpoint", "heun", "logrho" -> "bh2")
  bool lower_order_final = true;
  std::vector<int64_t> disable_corrector = {};
  std::string final_sigmas_type = "zero";          ///< only "zero"
};

/// UniPC multistep scheduler for flow matching (`FlowUniPCMultistepScheduler`).
///
/// **Example** (as wan/text2video.py sets it up for `unipc`)
/// \code
/// wan::FlowUniPCMultistepScheduler sched({.num_train_timesteps = 1000, .shift = 1});
/// sched.set_timesteps(50, {}, /*shift=*/5.0);
/// for (int64_t i = 0; i < sched.timesteps.size(0); ++i)
///   latent = sched.step(noise_pred.unsqueeze(0), sched.timesteps[i], latent.unsqueeze(0)).squeeze(0);
/// \endcode
class FlowUniPCMultistepScheduler {
public:
  explicit FlowUniPCMultistepScheduler(FlowUniPCMultistepSchedulerConfig config = {});

  [[nodiscard]] const FlowUniPCMultistepSchedulerConfig& config() const noexcept { return config_; }
  [[nodiscard]] std::optional<int64_t> step_index() const noexcept { return step_index_; }
  [[nodiscard]] std::optional<int64_t> begin_index() const noexcept { return begin_index_; }
  void set_begin_index(int64_t begin_index = 0) { begin_index_ = begin_index; }

  /// set_timesteps(num_inference_steps, sigmas=..., shift=...); `shift` defaults to config().shift.
  void set_timesteps(std::optional<int64_t> num_inference_steps = {},
                     const std::optional<std::vector<double>>& sigmas = {},
                     std::optional<double> shift = {});

  /// x0 prediction (predict_x0) or noise prediction at step_index.
  [[nodiscard]] torch::Tensor convert_model_output(const torch::Tensor& model_output,
                                                   const torch::Tensor& sample) const;
  /// UniP (B(h) version) from step_index to step_index + 1, of the given order.
  [[nodiscard]] torch::Tensor multistep_uni_p_bh_update(const torch::Tensor& model_output,
                                                        const torch::Tensor& sample, int64_t order) const;
  /// UniC (B(h) version): corrects `this_sample` (at step_index) using `this_model_output`.
  [[nodiscard]] torch::Tensor multistep_uni_c_bh_update(const torch::Tensor& this_model_output,
                                                        const torch::Tensor& last_sample,
                                                        const torch::Tensor& this_sample, int64_t order) const;
  [[nodiscard]] int64_t index_for_timestep(const torch::Tensor& timestep) const;

  /// step(model_output, timestep, sample, return_dict=False)[0]: the sample at the next timestep.
  torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                     const torch::Tensor& sample);

  // State, named and kept as in the Python (read by the parity tests).
  torch::Tensor sigmas;                      ///< float32 [S + 1] after set_timesteps
  torch::Tensor timesteps;                   ///< int64 [S] after set_timesteps
  std::optional<int64_t> num_inference_steps;
  std::vector<torch::Tensor> model_outputs;  ///< solver_order entries; undefined = None
  std::vector<torch::Tensor> timestep_list;  ///< solver_order entries; undefined = None
  int64_t lower_order_nums = 0;
  int64_t this_order = 0;
  torch::Tensor last_sample;                 ///< undefined = None
  double sigma_min = 0.0;
  double sigma_max = 0.0;

private:
  FlowUniPCMultistepSchedulerConfig config_;
  std::optional<int64_t> step_index_;
  std::optional<int64_t> begin_index_;

  void init_step_index(const torch::Tensor& timestep);
};

} // namespace wan
