// Port of Wan-Video/Wan2.1@9737cba, wan/utils/fm_solvers.py; see fm_solvers.hpp for the
// deliberate deviations. Python expressions are quoted next to their C++ form; the operand order
// and association are those of the Python (left to right), since float32 results depend on them.
#include "wan/fm_solvers.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include <offload/errors.hpp>

namespace wan {

namespace fm_detail {

torch::Tensor np_linspace(double start, double stop, int64_t num) {
  if (num < 0)
    throw offload::config_error("offload.wan.sampler.steps",
                                fmt::format("linspace: expected a non-negative number of samples, got {}", num));
  auto y = torch::arange(num, torch::dtype(torch::kFloat64)); // [num] 0, 1, ..., num-1
  const int64_t div = num - 1;
  const double delta = stop - start;
  if (div > 0) {
    const double step = delta / static_cast<double>(div);
    if (step == 0.0)
      y = (y / static_cast<double>(div)) * delta; // numpy: y /= div; y = y * delta
    else
      y = y * step;
  } else {
    y = y * delta;
  }
  y = y + start;
  if (num > 1)
    y[num - 1] = stop;
  return y;
}

torch::Tensor shift_sigmas(const torch::Tensor& sigmas, double shift) {
  // shift * sigmas / (1 + (shift - 1) * sigmas)
  auto numerator = sigmas * shift;
  auto denominator = (sigmas * (shift - 1.0)) + 1.0;
  return numerator / denominator;
}

torch::Tensor training_sigmas(int64_t num_train_timesteps, double shift, bool use_dynamic_shifting) {
  // alphas = np.linspace(1, 1 / num_train_timesteps, num_train_timesteps)[::-1].copy()
  auto alphas = np_linspace(1.0, 1.0 / static_cast<double>(num_train_timesteps), num_train_timesteps)
                    .flip({0}); // float64 [N]
  // sigmas = 1.0 - alphas; torch.from_numpy(sigmas).to(dtype=torch.float32)
  auto sigmas = torch::rsub(alphas, 1.0).to(torch::kFloat32); // [N]
  if (!use_dynamic_shifting)
    sigmas = shift_sigmas(sigmas, shift);
  return sigmas;
}

flow_schedule flow_set_timesteps(std::optional<int64_t> num_inference_steps,
                                 const std::optional<std::vector<double>>& sigmas, double shift,
                                 double sigma_max, double sigma_min, int64_t num_train_timesteps,
                                 const char* scheduler) {
  torch::Tensor s; // float64 [S] (numpy array in the reference)
  if (sigmas) {
    if (sigmas->empty())
      throw offload::config_error(
          "offload.wan.sampler.steps",
          fmt::format("{}.set_timesteps: expected at least one sigma, got an empty list", scheduler));
    s = torch::tensor(*sigmas, torch::dtype(torch::kFloat64));
  } else {
    if (!num_inference_steps)
      throw offload::config_error(
          "offload.wan.sampler.steps",
          fmt::format("{}.set_timesteps: expected num_inference_steps or sigmas, got neither", scheduler));
    if (*num_inference_steps < 1)
      throw offload::config_error(
          "offload.wan.sampler.steps",
          fmt::format("{}.set_timesteps: expected num_inference_steps >= 1, got {}; pass the number "
                      "of denoising steps (sampling_steps)",
                      scheduler, *num_inference_steps));
    // np.linspace(self.sigma_max, self.sigma_min, num_inference_steps + 1).copy()[:-1]
    s = np_linspace(sigma_max, sigma_min, *num_inference_steps + 1).slice(0, 0, *num_inference_steps);
  }
  s = shift_sigmas(s, shift);
  // timesteps = sigmas * self.config.num_train_timesteps (float64)
  auto timesteps = s * num_train_timesteps;
  // np.concatenate([sigmas, [sigma_last]]).astype(np.float32), sigma_last = 0 ("zero")
  auto full = torch::cat({s, torch::zeros({1}, s.options())}).to(torch::kFloat32); // [S + 1]
  return {full, timesteps.to(torch::kInt64)};                                       // int64 [S], truncated
}

int64_t index_for_timestep(const torch::Tensor& schedule_timesteps, const torch::Tensor& timestep,
                           const char* scheduler) {
  auto indices = (schedule_timesteps == timestep.to(schedule_timesteps.device())).nonzero(); // [k, 1]
  if (indices.size(0) == 0)
    throw offload::config_error(
        "offload.wan.sampler.timestep",
        fmt::format("{}.step: timestep {} is not in the schedule (first {}, last {}); pass the "
                    "timesteps of set_timesteps in order",
                    scheduler, timestep.item<double>(), schedule_timesteps[0].item<int64_t>(),
                    schedule_timesteps[-1].item<int64_t>()));
  // the very first step takes the second match (or the only one)
  const int64_t pos = indices.size(0) > 1 ? 1 : 0;
  return indices[pos][0].item<int64_t>();
}

std::pair<torch::Tensor, torch::Tensor> sigma_to_alpha_sigma_t(const torch::Tensor& sigma) {
  return {torch::rsub(sigma, 1), sigma}; // 1 - sigma, sigma
}

} // namespace fm_detail

std::vector<double> get_sampling_sigmas(int64_t sampling_steps, double shift) {
  if (sampling_steps < 1)
    throw offload::config_error(
        "offload.wan.sampler.steps",
        fmt::format("get_sampling_sigmas: expected sampling_steps >= 1, got {}", sampling_steps));
  // sigma = np.linspace(1, 0, sampling_steps + 1)[:sampling_steps]
  auto sigma = fm_detail::np_linspace(1.0, 0.0, sampling_steps + 1).slice(0, 0, sampling_steps);
  sigma = fm_detail::shift_sigmas(sigma, shift); // [S] float64
  return {sigma.data_ptr<double>(), sigma.data_ptr<double>() + sigma.numel()};
}

namespace {

constexpr const char* kDpm = "FlowDPMSolverMultistepScheduler";

/// Python `a / t` for a float `a` and a tensor `t`: Tensor.__rtruediv__ = t.reciprocal() * a.
torch::Tensor rdiv(double a, const torch::Tensor& t) { return t.reciprocal() * a; }

[[noreturn]] void refuse_option(const std::string& what) {
  throw offload::config_error("offload.wan.sampler.config",
                              fmt::format("{}: {}", kDpm, what));
}

} // namespace

FlowDPMSolverMultistepScheduler::FlowDPMSolverMultistepScheduler(FlowDPMSolverMultistepSchedulerConfig config)
    : config_(std::move(config)) {
  if (config_.num_train_timesteps < 1)
    refuse_option(fmt::format("expected num_train_timesteps >= 1, got {}", config_.num_train_timesteps));
  if (config_.solver_order < 1)
    refuse_option(fmt::format("expected solver_order 1, 2 or 3, got {}", config_.solver_order));
  if (config_.prediction_type != "flow_prediction")
    refuse_option(fmt::format("prediction_type '{}' is not supported; expected 'flow_prediction'",
                              config_.prediction_type));
  if (config_.use_dynamic_shifting)
    refuse_option("use_dynamic_shifting=true is not ported (needs `mu`); construct with "
                  "use_dynamic_shifting=false and pass the shift");
  if (config_.thresholding)
    refuse_option("thresholding=true is not ported; construct with thresholding=false");
  // The reference accepts dpmsolver/sde-dpmsolver/sde-dpmsolver++/deis, then refuses every
  // algorithm but (sde-)dpmsolver++ with final_sigmas_type="zero"; the SDE variants need noise.
  if (config_.algorithm_type != "dpmsolver++")
    refuse_option(fmt::format("algorithm_type '{}' is not supported; expected 'dpmsolver++' (the "
                              "reference refuses the others with final_sigmas_type 'zero'; the sde "
                              "variants are not ported)",
                              config_.algorithm_type));
  if (config_.solver_type == "logrho" || config_.solver_type == "bh1" || config_.solver_type == "bh2")
    config_.solver_type = "midpoint";
  if (config_.solver_type != "midpoint" && config_.solver_type != "heun")
    refuse_option(fmt::format("solver_type '{}' is not implemented; expected 'midpoint' or 'heun'",
                              config_.solver_type));
  if (config_.final_sigmas_type != "zero")
    refuse_option(fmt::format("final_sigmas_type '{}' is not supported; expected 'zero'",
                              config_.final_sigmas_type));

  sigmas = fm_detail::training_sigmas(config_.num_train_timesteps, config_.shift,
                                      config_.use_dynamic_shifting); // float32 [N]
  timesteps = sigmas * config_.num_train_timesteps;                  // float32 [N]
  model_outputs.assign(static_cast<std::size_t>(config_.solver_order), torch::Tensor());
  sigma_min = sigmas[-1].item<double>();
  sigma_max = sigmas[0].item<double>();
}

void FlowDPMSolverMultistepScheduler::set_timesteps(std::optional<int64_t> num_inference_steps_,
                                                    const std::optional<std::vector<double>>& sigmas_,
                                                    std::optional<double> shift) {
  auto schedule = fm_detail::flow_set_timesteps(num_inference_steps_, sigmas_, shift.value_or(config_.shift),
                                                sigma_max, sigma_min, config_.num_train_timesteps, kDpm);
  sigmas = std::move(schedule.sigmas);
  timesteps = std::move(schedule.timesteps);
  num_inference_steps = timesteps.size(0);
  model_outputs.assign(static_cast<std::size_t>(config_.solver_order), torch::Tensor());
  lower_order_nums = 0;
  step_index_.reset();
  begin_index_.reset();
}

torch::Tensor FlowDPMSolverMultistepScheduler::convert_model_output(const torch::Tensor& model_output,
                                                                    const torch::Tensor& sample) const {
  // dpmsolver++ / flow_prediction: x0_pred = sample - sigma_t * model_output
  auto sigma_t = sigmas[*step_index_]; // 0-dim float32
  return sample - sigma_t * model_output;
}

torch::Tensor FlowDPMSolverMultistepScheduler::dpm_solver_first_order_update(const torch::Tensor& model_output,
                                                                             const torch::Tensor& sample) const {
  const int64_t i = *step_index_;
  auto [alpha_t, sigma_t] = fm_detail::sigma_to_alpha_sigma_t(sigmas[i + 1]);
  auto [alpha_s, sigma_s] = fm_detail::sigma_to_alpha_sigma_t(sigmas[i]);
  auto lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  auto lambda_s = torch::log(alpha_s) - torch::log(sigma_s);
  auto h = lambda_t - lambda_s;
  // x_t = (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * model_output
  return (sigma_t / sigma_s) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * model_output;
}

torch::Tensor FlowDPMSolverMultistepScheduler::multistep_dpm_solver_second_order_update(
    const std::vector<torch::Tensor>& model_output_list, const torch::Tensor& sample) const {
  const int64_t i = *step_index_;
  auto [alpha_t, sigma_t] = fm_detail::sigma_to_alpha_sigma_t(sigmas[i + 1]);
  auto [alpha_s0, sigma_s0] = fm_detail::sigma_to_alpha_sigma_t(sigmas[i]);
  auto [alpha_s1, sigma_s1] = fm_detail::sigma_to_alpha_sigma_t(sigmas[i - 1]);

  auto lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  auto lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
  auto lambda_s1 = torch::log(alpha_s1) - torch::log(sigma_s1);

  const auto& m0 = model_output_list[model_output_list.size() - 1];
  const auto& m1 = model_output_list[model_output_list.size() - 2];

  auto h = lambda_t - lambda_s0;
  auto h_0 = lambda_s0 - lambda_s1;
  auto r0 = h_0 / h;
  const auto& D0 = m0;
  auto D1 = rdiv(1.0, r0) * (m0 - m1);
  if (config_.solver_type == "midpoint") {
    // (sigma_t / sigma_s0) * sample - (alpha_t * (exp(-h) - 1.0)) * D0
    //   - 0.5 * (alpha_t * (exp(-h) - 1.0)) * D1
    return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * D0) -
           ((alpha_t * (torch::exp(-h) - 1.0)) * 0.5) * D1;
  }
  // heun: ... + (alpha_t * ((exp(-h) - 1.0) / h + 1.0)) * D1
  return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * D0) +
         (alpha_t * (((torch::exp(-h) - 1.0) / h) + 1.0)) * D1;
}

torch::Tensor FlowDPMSolverMultistepScheduler::multistep_dpm_solver_third_order_update(
    const std::vector<torch::Tensor>& model_output_list, const torch::Tensor& sample) const {
  const int64_t i = *step_index_;
  auto [alpha_t, sigma_t] = fm_detail::sigma_to_alpha_sigma_t(sigmas[i + 1]);
  auto [alpha_s0, sigma_s0] = fm_detail::sigma_to_alpha_sigma_t(sigmas[i]);
  auto [alpha_s1, sigma_s1] = fm_detail::sigma_to_alpha_sigma_t(sigmas[i - 1]);
  auto [alpha_s2, sigma_s2] = fm_detail::sigma_to_alpha_sigma_t(sigmas[i - 2]);

  auto lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  auto lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
  auto lambda_s1 = torch::log(alpha_s1) - torch::log(sigma_s1);
  auto lambda_s2 = torch::log(alpha_s2) - torch::log(sigma_s2);

  const std::size_t n = model_output_list.size();
  const auto& m0 = model_output_list[n - 1];
  const auto& m1 = model_output_list[n - 2];
  const auto& m2 = model_output_list[n - 3];

  auto h = lambda_t - lambda_s0;
  auto h_0 = lambda_s0 - lambda_s1;
  auto h_1 = lambda_s1 - lambda_s2;
  auto r0 = h_0 / h;
  auto r1 = h_1 / h;
  const auto& D0 = m0;
  auto D1_0 = rdiv(1.0, r0) * (m0 - m1);
  auto D1_1 = rdiv(1.0, r1) * (m1 - m2);
  auto D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1);
  auto D2 = rdiv(1.0, r0 + r1) * (D1_0 - D1_1);
  // (sigma_t / sigma_s0) * sample - (alpha_t * (exp(-h) - 1.0)) * D0
  //   + (alpha_t * ((exp(-h) - 1.0) / h + 1.0)) * D1
  //   - (alpha_t * ((exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2
  return (((sigma_t / sigma_s0) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * D0) +
          (alpha_t * (((torch::exp(-h) - 1.0) / h) + 1.0)) * D1) -
         (alpha_t * ((((torch::exp(-h) - 1.0) + h) / torch::pow(h, 2)) - 0.5)) * D2;
}

int64_t FlowDPMSolverMultistepScheduler::index_for_timestep(const torch::Tensor& timestep) const {
  return fm_detail::index_for_timestep(timesteps, timestep, kDpm);
}

void FlowDPMSolverMultistepScheduler::init_step_index(const torch::Tensor& timestep) {
  step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(timestep);
}

torch::Tensor FlowDPMSolverMultistepScheduler::step(const torch::Tensor& model_output,
                                                    const torch::Tensor& timestep, const torch::Tensor& sample) {
  if (!num_inference_steps)
    throw offload::config_error("offload.wan.sampler.not_set",
                                fmt::format("{}.step: the number of inference steps is not set; call "
                                            "set_timesteps before step",
                                            kDpm));
  if (!step_index_)
    init_step_index(timestep);
  const int64_t n = timesteps.size(0);
  const int64_t idx = *step_index_;
  if (idx >= n)
    throw offload::config_error(
        "offload.wan.sampler.exhausted",
        fmt::format("{}.step: all {} steps of the schedule are done (step index {}); call "
                    "set_timesteps again for a new trajectory",
                    kDpm, n, idx));

  // Improve numerical stability for small number of steps
  const bool lower_order_final =
      (idx == n - 1) && (config_.euler_at_final || (config_.lower_order_final && n < 15) ||
                         config_.final_sigmas_type == "zero");
  const bool lower_order_second = (idx == n - 2) && config_.lower_order_final && n < 15;

  auto converted = convert_model_output(model_output, sample);
  for (std::size_t i = 0; i + 1 < model_outputs.size(); ++i)
    model_outputs[i] = model_outputs[i + 1];
  model_outputs.back() = converted;

  // Upcast to avoid precision issues when computing prev_sample
  auto sample_f32 = sample.to(torch::kFloat32);

  torch::Tensor prev_sample;
  if (config_.solver_order == 1 || lower_order_nums < 1 || lower_order_final)
    prev_sample = dpm_solver_first_order_update(converted, sample_f32);
  else if (config_.solver_order == 2 || lower_order_nums < 2 || lower_order_second)
    prev_sample = multistep_dpm_solver_second_order_update(model_outputs, sample_f32);
  else
    prev_sample = multistep_dpm_solver_third_order_update(model_outputs, sample_f32);

  if (lower_order_nums < config_.solver_order)
    lower_order_nums += 1;

  // Cast sample back to expected dtype
  prev_sample = prev_sample.to(converted.scalar_type());
  step_index_ = idx + 1;
  return prev_sample;
}

} // namespace wan
