// Port of Wan-Video/Wan2.1@9737cba, wan/utils/fm_solvers_unipc.py; see fm_solvers_unipc.hpp for
// the deliberate deviations. Python expressions are quoted next to their C++ form; operand order
// and association are those of the Python (left to right), since float32 results depend on them.
#include "wan/fm_solvers_unipc.hpp"

#include <torch/torch.h>

#include <algorithm>

#include <fmt/format.h>

#include <offload/errors.hpp>

#include "wan/fm_solvers.hpp"

namespace wan {

namespace {

constexpr const char* kUniPC = "FlowUniPCMultistepScheduler";

[[noreturn]] void refuse_option(const std::string& what) {
  throw offload::config_error("offload.wan.sampler.config", fmt::format("{}: {}", kUniPC, what));
}

/// lambda = log(alpha) - log(sigma) of a sigma table entry.
torch::Tensor lambda_of(const torch::Tensor& sigma) {
  auto [alpha, s] = fm_detail::sigma_to_alpha_sigma_t(sigma);
  return torch::log(alpha) - torch::log(s);
}

/// The B(h) coefficients both UniP and UniC compute from h, the order and rks.
struct bh_terms {
  torch::Tensor hh, h_phi_1, B_h;
  torch::Tensor R; // float32 [order, order]
  torch::Tensor b; // float32 [order]
};

/// R and b on `device`, the sample's: the reference builds them with torch.tensor(..., device=device)
/// and solves there. The sigma table, and so h and the rks, stay on the host.
bh_terms bh_coefficients(const torch::Tensor& h, const std::vector<torch::Tensor>& rk_list, int64_t order,
                         bool predict_x0, const std::string& solver_type, const torch::Device& device) {
  // rks.append(1.0); rks = torch.tensor(rks, device=device)
  std::vector<torch::Tensor> rk_values(rk_list);
  rk_values.push_back(torch::ones({}, h.options()));
  auto rks = torch::stack(rk_values).to(device); // [order]

  bh_terms t;
  t.hh = predict_x0 ? -h : h;
  t.h_phi_1 = torch::expm1(t.hh);          // h\phi_1(h) = e^h - 1
  auto h_phi_k = t.h_phi_1 / t.hh - 1;
  int64_t factorial_i = 1;
  t.B_h = solver_type == "bh1" ? t.hh : torch::expm1(t.hh);

  std::vector<torch::Tensor> R, b;
  for (int64_t i = 1; i <= order; ++i) {
    R.push_back(torch::pow(rks, i - 1));
    b.push_back((h_phi_k * factorial_i) / t.B_h);
    factorial_i *= i + 1;
    h_phi_k = h_phi_k / t.hh - 1.0 / static_cast<double>(factorial_i);
  }
  t.R = torch::stack(R);            // [order, order]
  t.b = torch::stack(b).to(device); // [order]: b = torch.tensor(b, device=device)
  return t;
}

} // namespace

FlowUniPCMultistepScheduler::FlowUniPCMultistepScheduler(FlowUniPCMultistepSchedulerConfig config)
    : config_(std::move(config)) {
  if (config_.solver_type == "midpoint" || config_.solver_type == "heun" || config_.solver_type == "logrho")
    config_.solver_type = "bh2";
  if (config_.solver_type != "bh1" && config_.solver_type != "bh2")
    refuse_option(fmt::format("solver_type '{}' is not implemented; expected 'bh1' or 'bh2'", config_.solver_type));
  if (config_.num_train_timesteps < 1)
    refuse_option(fmt::format("expected num_train_timesteps >= 1, got {}", config_.num_train_timesteps));
  if (config_.solver_order < 1)
    refuse_option(fmt::format("expected solver_order >= 1, got {}", config_.solver_order));
  if (config_.prediction_type != "flow_prediction")
    refuse_option(fmt::format("prediction_type '{}' is not supported; expected 'flow_prediction'",
                              config_.prediction_type));
  if (config_.use_dynamic_shifting)
    refuse_option("use_dynamic_shifting=true is not ported (needs `mu`); construct with "
                  "use_dynamic_shifting=false and pass the shift");
  if (config_.thresholding)
    refuse_option("thresholding=true is not ported; construct with thresholding=false");
  if (config_.final_sigmas_type != "zero")
    refuse_option(fmt::format("final_sigmas_type '{}' is not supported; expected 'zero'",
                              config_.final_sigmas_type));

  sigmas = fm_detail::training_sigmas(config_.num_train_timesteps, config_.shift,
                                      config_.use_dynamic_shifting); // float32 [N]
  timesteps = sigmas * config_.num_train_timesteps;                  // float32 [N]
  model_outputs.assign(static_cast<std::size_t>(config_.solver_order), torch::Tensor());
  timestep_list.assign(static_cast<std::size_t>(config_.solver_order), torch::Tensor());
  sigma_min = sigmas[-1].item<double>();
  sigma_max = sigmas[0].item<double>();
}

void FlowUniPCMultistepScheduler::set_timesteps(std::optional<int64_t> num_inference_steps_,
                                                const std::optional<std::vector<double>>& sigmas_,
                                                std::optional<double> shift) {
  auto schedule = fm_detail::flow_set_timesteps(num_inference_steps_, sigmas_, shift.value_or(config_.shift),
                                                sigma_max, sigma_min, config_.num_train_timesteps, kUniPC);
  sigmas = std::move(schedule.sigmas);
  timesteps = std::move(schedule.timesteps);
  num_inference_steps = timesteps.size(0);
  model_outputs.assign(static_cast<std::size_t>(config_.solver_order), torch::Tensor());
  lower_order_nums = 0;
  last_sample = torch::Tensor();
  step_index_.reset();
  begin_index_.reset();
}

torch::Tensor FlowUniPCMultistepScheduler::convert_model_output(const torch::Tensor& model_output,
                                                                const torch::Tensor& sample) const {
  auto sigma_t = sigmas[*step_index_]; // 0-dim float32
  if (config_.predict_x0)
    return sample - sigma_t * model_output; // x0_pred
  return sample - torch::rsub(sigma_t, 1) * model_output; // epsilon = sample - (1 - sigma_t) * model_output
}

torch::Tensor FlowUniPCMultistepScheduler::multistep_uni_p_bh_update(const torch::Tensor& /*model_output*/,
                                                                     const torch::Tensor& sample,
                                                                     int64_t order) const {
  const auto& model_output_list = model_outputs;
  const std::size_t n = model_output_list.size();
  const auto& m0 = model_output_list[n - 1];
  const auto& x = sample;
  const int64_t idx = *step_index_;

  auto [alpha_t, sigma_t] = fm_detail::sigma_to_alpha_sigma_t(sigmas[idx + 1]);
  auto [alpha_s0, sigma_s0] = fm_detail::sigma_to_alpha_sigma_t(sigmas[idx]);
  auto lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  auto lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
  auto h = lambda_t - lambda_s0;

  std::vector<torch::Tensor> rks, D1s;
  for (int64_t i = 1; i < order; ++i) {
    const int64_t si = idx - i;
    const auto& mi = model_output_list[n - 1 - static_cast<std::size_t>(i)];
    auto lambda_si = lambda_of(sigmas[si]);
    auto rk = (lambda_si - lambda_s0) / h;
    rks.push_back(rk);
    D1s.push_back((mi - m0) / rk);
  }
  auto t = bh_coefficients(h, rks, order, config_.predict_x0, config_.solver_type, x.device());

  torch::Tensor D1, rhos_p;
  if (!D1s.empty()) {
    D1 = torch::stack(D1s, 1); // [B, K, C, ...]
    // for order 2, we use a simplified version
    if (order == 2)
      rhos_p = torch::tensor({0.5}, x.options());
    else
      rhos_p = torch::linalg_solve(t.R.slice(0, 0, -1).slice(1, 0, -1), t.b.slice(0, 0, -1)).to(x.scalar_type());
  }

  torch::Tensor x_t;
  if (config_.predict_x0) {
    // x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
    auto x_t_ = (sigma_t / sigma_s0) * x - (alpha_t * t.h_phi_1) * m0;
    if (D1.defined())
      x_t = x_t_ - (alpha_t * t.B_h) * torch::einsum("k,bkc...->bc...", {rhos_p, D1});
    else
      x_t = x_t_ - (alpha_t * t.B_h) * 0; // pred_res = 0
  } else {
    auto x_t_ = (alpha_t / alpha_s0) * x - (sigma_t * t.h_phi_1) * m0;
    if (D1.defined())
      x_t = x_t_ - (sigma_t * t.B_h) * torch::einsum("k,bkc...->bc...", {rhos_p, D1});
    else
      x_t = x_t_ - (sigma_t * t.B_h) * 0;
  }
  return x_t.to(x.scalar_type());
}

torch::Tensor FlowUniPCMultistepScheduler::multistep_uni_c_bh_update(const torch::Tensor& this_model_output,
                                                                     const torch::Tensor& last_sample_,
                                                                     const torch::Tensor& /*this_sample*/,
                                                                     int64_t order) const {
  const auto& model_output_list = model_outputs;
  const std::size_t n = model_output_list.size();
  const auto& m0 = model_output_list[n - 1];
  const auto& x = last_sample_;
  const auto& model_t = this_model_output;
  const int64_t idx = *step_index_;

  auto [alpha_t, sigma_t] = fm_detail::sigma_to_alpha_sigma_t(sigmas[idx]);
  auto [alpha_s0, sigma_s0] = fm_detail::sigma_to_alpha_sigma_t(sigmas[idx - 1]);
  auto lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  auto lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
  auto h = lambda_t - lambda_s0;

  std::vector<torch::Tensor> rks, D1s;
  for (int64_t i = 1; i < order; ++i) {
    const int64_t si = idx - (i + 1);
    const auto& mi = model_output_list[n - 1 - static_cast<std::size_t>(i)];
    auto lambda_si = lambda_of(sigmas[si]);
    auto rk = (lambda_si - lambda_s0) / h;
    rks.push_back(rk);
    D1s.push_back((mi - m0) / rk);
  }
  auto t = bh_coefficients(h, rks, order, config_.predict_x0, config_.solver_type, x.device());

  torch::Tensor D1;
  if (!D1s.empty())
    D1 = torch::stack(D1s, 1); // [B, K, C, ...]

  // for order 1, we use a simplified version
  torch::Tensor rhos_c = order == 1 ? torch::tensor({0.5}, x.options())
                                    : torch::linalg_solve(t.R, t.b).to(x.scalar_type()); // [order]

  auto D1_t = model_t - m0;
  auto last_term = rhos_c[-1] * D1_t;
  // corr_res + rhos_c[-1] * D1_t, with corr_res = 0 (a Python int) when there is no D1s
  auto correction = D1.defined()
                        ? torch::einsum("k,bkc...->bc...", {rhos_c.slice(0, 0, -1), D1}) + last_term
                        : last_term + 0;
  torch::Tensor x_t;
  if (config_.predict_x0) {
    auto x_t_ = (sigma_t / sigma_s0) * x - (alpha_t * t.h_phi_1) * m0;
    x_t = x_t_ - (alpha_t * t.B_h) * correction;
  } else {
    auto x_t_ = (alpha_t / alpha_s0) * x - (sigma_t * t.h_phi_1) * m0;
    x_t = x_t_ - (sigma_t * t.B_h) * correction;
  }
  return x_t.to(x.scalar_type());
}

int64_t FlowUniPCMultistepScheduler::index_for_timestep(const torch::Tensor& timestep) const {
  return fm_detail::index_for_timestep(timesteps, timestep, kUniPC);
}

void FlowUniPCMultistepScheduler::init_step_index(const torch::Tensor& timestep) {
  step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(timestep);
}

torch::Tensor FlowUniPCMultistepScheduler::step(const torch::Tensor& model_output, const torch::Tensor& timestep,
                                                const torch::Tensor& sample) {
  if (!num_inference_steps)
    throw offload::config_error("offload.wan.sampler.not_set",
                                fmt::format("{}.step: the number of inference steps is not set; call "
                                            "set_timesteps before step",
                                            kUniPC));
  if (!step_index_)
    init_step_index(timestep);
  const int64_t n = timesteps.size(0);
  const int64_t idx = *step_index_;
  if (idx >= n)
    throw offload::config_error(
        "offload.wan.sampler.exhausted",
        fmt::format("{}.step: all {} steps of the schedule are done (step index {}); call "
                    "set_timesteps again for a new trajectory",
                    kUniPC, n, idx));

  const auto& disabled = config_.disable_corrector;
  const bool use_corrector = idx > 0 &&
                             std::find(disabled.begin(), disabled.end(), idx - 1) == disabled.end() &&
                             last_sample.defined();

  auto model_output_convert = convert_model_output(model_output, sample);
  torch::Tensor current = sample;
  if (use_corrector)
    current = multistep_uni_c_bh_update(model_output_convert, last_sample, current, this_order);

  for (std::size_t i = 0; i + 1 < model_outputs.size(); ++i) {
    model_outputs[i] = model_outputs[i + 1];
    timestep_list[i] = timestep_list[i + 1];
  }
  model_outputs.back() = model_output_convert;
  timestep_list.back() = timestep;

  const int64_t order = config_.lower_order_final ? std::min(config_.solver_order, n - idx)
                                                  : config_.solver_order;
  this_order = std::min(order, lower_order_nums + 1); // warmup for multistep

  last_sample = current;
  auto prev_sample = multistep_uni_p_bh_update(model_output, current, this_order);

  if (lower_order_nums < config_.solver_order)
    lower_order_nums += 1;

  // upon completion increase step index by one
  step_index_ = idx + 1;
  return prev_sample;
}

} // namespace wan
