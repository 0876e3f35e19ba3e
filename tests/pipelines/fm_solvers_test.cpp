// Tests of pipelines/wan/fm_solvers.hpp, fm_solvers_unipc.hpp and sampler.hpp without golden data:
// numpy-linspace semantics, the training sigma table, the set-up text2video.py does, monotone
// timesteps and first/last sigmas, convergence on an exactly solvable flow, and every error
// (unknown solver, bad step counts and shifts, stepping before set-up or past the end, a
// timestep outside the schedule, unported options).
#include "wan/fm_solvers.hpp"
#include "wan/fm_solvers_unipc.hpp"
#include "wan/sampler.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <string>
#include <vector>

#include <offload/errors.hpp>

namespace {

/// True when `f` throws an offload::config_error with `id` whose what() contains every `parts`.
template <class F>
bool throws_config_error(F&& f, const std::string& id, const std::vector<std::string>& parts = {}) {
  try {
    f();
  } catch (const offload::config_error& e) {
    const std::string what = e.what();
    bool ok = e.id() == id;
    for (const auto& p : parts)
      ok = ok && what.find(p) != std::string::npos;
    if (!ok)
      BOOST_TEST_MESSAGE("unexpected error: " << what);
    return ok;
  }
  return false;
}

/// Runs a sampler on the flow with constant velocity v = noise - x0 from x = noise at the first
/// sigma s0, which every solver here integrates exactly: the result is noise - s0 * v.
torch::Tensor solve_linear_flow(wan::Sampler& sampler, const torch::Tensor& x0, const torch::Tensor& noise) {
  auto x = noise;
  const auto& timesteps = sampler.timesteps();
  for (int64_t i = 0; i < timesteps.size(0); ++i)
    x = sampler.step((noise - x0).unsqueeze(0), timesteps[i], x.unsqueeze(0)).squeeze(0);
  return x;
}

/// The first sigma of the schedule make_sampler(solver, steps, shift) uses.
double first_sigma(const std::string& solver, int steps, double shift) {
  if (solver == "unipc") {
    wan::FlowUniPCMultistepScheduler s;
    s.set_timesteps(steps, {}, shift);
    return s.sigmas[0].item<double>();
  }
  return static_cast<float>(wan::get_sampling_sigmas(steps, shift).front());
}

} // namespace

BOOST_AUTO_TEST_SUITE(fm_solvers)

BOOST_AUTO_TEST_CASE(np_linspace_matches_numpy) {
  auto y = wan::fm_detail::np_linspace(1.0, 0.0, 5);
  BOOST_TEST(y.scalar_type() == torch::kFloat64);
  BOOST_TEST(torch::equal(y, torch::tensor({1.0, 0.75, 0.5, 0.25, 0.0}, torch::kFloat64)));
  // the endpoint is exactly `stop`, one sample is `start`, zero samples is empty
  auto z = wan::fm_detail::np_linspace(0.999, 0.0, 51);
  BOOST_TEST(z[50].item<double>() == 0.0);
  BOOST_TEST(z[0].item<double>() == 0.999);
  BOOST_TEST(wan::fm_detail::np_linspace(2.0, 3.0, 1).item<double>() == 2.0);
  BOOST_TEST(wan::fm_detail::np_linspace(2.0, 3.0, 0).numel() == 0);
}

BOOST_AUTO_TEST_CASE(training_sigma_table) {
  wan::FlowUniPCMultistepScheduler sched;
  BOOST_TEST(sched.sigmas.scalar_type() == torch::kFloat32);
  BOOST_TEST(sched.sigmas.size(0) == 1000);
  // 1 - linspace(1, 1/1000, 1000)[::-1]: 0.999 (as float32) down to exactly 0
  BOOST_TEST(sched.sigma_max == static_cast<double>(static_cast<float>(1.0 - 0.001)));
  BOOST_TEST(sched.sigma_min == 0.0);
  BOOST_TEST(torch::all(sched.sigmas.slice(0, 1) <= sched.sigmas.slice(0, 0, -1)).item<bool>());
  wan::FlowDPMSolverMultistepScheduler dpm;
  BOOST_TEST(torch::equal(dpm.sigmas, sched.sigmas));
}

BOOST_AUTO_TEST_CASE(sampling_sigmas) {
  const auto s = wan::get_sampling_sigmas(4, 1.0);
  BOOST_TEST(s == std::vector<double>({1.0, 0.75, 0.5, 0.25}), boost::test_tools::per_element());
  const auto shifted = wan::get_sampling_sigmas(50, 5.0);
  BOOST_TEST(shifted.size() == 50u);
  BOOST_TEST(shifted.front() == 1.0);
  BOOST_TEST(shifted.back() == 5.0 * 0.02 / (1.0 + 4.0 * 0.02), boost::test_tools::tolerance(1e-15));
}

BOOST_AUTO_TEST_CASE(timesteps_monotone_first_and_last_sigma) {
  for (const char* solver : {"unipc", "dpm++"}) {
    for (int steps : {1, 2, 3, 10, 50}) {
      for (double shift : {1.0, 3.0, 5.0, 16.0}) {
        BOOST_TEST_CONTEXT(solver << " steps=" << steps << " shift=" << shift) {
          auto sampler = wan::make_sampler(solver, steps, shift);
          const auto& t = sampler->timesteps();
          BOOST_TEST(t.scalar_type() == torch::kInt64);
          BOOST_TEST(t.device().is_cpu());
          BOOST_TEST(t.dim() == 1);
          BOOST_TEST(t.size(0) == steps);
          if (steps > 1)
            BOOST_TEST(torch::all(t.slice(0, 1) <= t.slice(0, 0, -1)).item<bool>());
          // unipc starts at sigma_max = 0.999 (any shift keeps it below 1), dpm++ at sigma 1
          BOOST_TEST(t[0].item<int64_t>() == (std::string(solver) == "unipc" ? 999 : 1000));
          BOOST_TEST(t[-1].item<int64_t>() >= 0);
        }
      }
    }
  }
  wan::FlowUniPCMultistepScheduler unipc;
  unipc.set_timesteps(50, {}, 5.0);
  BOOST_TEST(unipc.sigmas.size(0) == 51);
  BOOST_TEST(unipc.sigmas[-1].item<float>() == 0.0f);
  BOOST_TEST(unipc.sigmas[0].item<float>() < 1.0f);
  wan::FlowDPMSolverMultistepScheduler dpm;
  auto [timesteps, n] = wan::retrieve_timesteps(dpm, {}, wan::get_sampling_sigmas(50, 5.0));
  BOOST_TEST(n == 50);
  BOOST_TEST(dpm.sigmas[0].item<float>() == 1.0f);
  BOOST_TEST(dpm.sigmas[-1].item<float>() == 0.0f);
  BOOST_TEST(torch::equal(timesteps, dpm.timesteps));
}

BOOST_AUTO_TEST_CASE(solves_a_linear_flow) {
  torch::manual_seed(0);
  const auto x0 = torch::randn({16, 2, 3, 4});
  const auto noise = torch::randn({16, 2, 3, 4});
  for (const char* solver : {"unipc", "dpm++"}) {
    for (int steps : {1, 5, 20}) {
      BOOST_TEST_CONTEXT(solver << " steps=" << steps) {
        auto sampler = wan::make_sampler(solver, steps, 5.0);
        auto x = solve_linear_flow(*sampler, x0, noise);
        BOOST_TEST(x.sizes() == x0.sizes());
        const auto expected = noise - first_sigma(solver, steps, 5.0) * (noise - x0);
        BOOST_TEST((x - expected).abs().max().item<double>() < 1e-5);
      }
    }
  }
  // the third-order DPM-Solver++ path and UniPC of order 3 solve it as well
  for (int order : {1, 3}) {
    BOOST_TEST_CONTEXT("order " << order) {
      wan::FlowDPMSolverMultistepScheduler dpm({.solver_order = order});
      dpm.set_timesteps({}, wan::get_sampling_sigmas(20, 3.0));
      wan::FlowUniPCMultistepScheduler unipc({.solver_order = order});
      unipc.set_timesteps(20, {}, 3.0);
      auto xd = noise, xu = noise;
      for (int64_t i = 0; i < 20; ++i) {
        xd = dpm.step((noise - x0).unsqueeze(0), dpm.timesteps[i], xd.unsqueeze(0)).squeeze(0);
        xu = unipc.step((noise - x0).unsqueeze(0), unipc.timesteps[i], xu.unsqueeze(0)).squeeze(0);
      }
      BOOST_TEST((xd - x0).abs().max().item<double>() < 1e-5); // dpm++ starts at sigma 1
      const auto expected_u = noise - unipc.sigmas[0].item<double>() * (noise - x0);
      BOOST_TEST((xu - expected_u).abs().max().item<double>() < 1e-5);
    }
  }
}

// The pipelines keep the schedule (sigmas, timesteps) on the host and the latents on the DiT's
// device. Every step must then compute on the latents' device, as the reference does (it builds
// UniPC's R and b with device=sample.device): a 1-d tensor left on the host fails there. The meta
// device stands in for a GPU on CI: its tensors refuse to mix with the host's as CUDA's do (UniPC
// solved R b = rhos on the host and failed from its third step of five until the fix).
BOOST_AUTO_TEST_CASE(every_step_computes_on_the_device_of_the_latents) {
  for (const std::string solver : {"unipc", "dpm++"}) {
    BOOST_TEST_CONTEXT(solver) {
      auto sampler = wan::make_sampler(solver, 5, 5.0, 1000);
      const auto meta = torch::TensorOptions().device(torch::kMeta);
      auto x = torch::empty({1, 16, 2, 4, 4}, meta);
      const auto timesteps = sampler->timesteps();
      BOOST_TEST(timesteps.device().is_cpu());
      for (int64_t i = 0; i < timesteps.size(0); ++i) {
        BOOST_REQUIRE_NO_THROW(x = sampler->step(torch::empty_like(x), timesteps[i], x));
        BOOST_TEST(x.device().is_meta(), "step " << i);
        BOOST_TEST((x.sizes() == c10::IntArrayRef{1, 16, 2, 4, 4}));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(unknown_solver_is_a_config_error) {
  BOOST_TEST(throws_config_error([] { (void)wan::make_sampler("euler", 50, 5.0); },
                                 "offload.wan.sampler.unknown_solver", {"'euler'", "'unipc'", "'dpm++'"}));
  BOOST_TEST(throws_config_error([] { (void)wan::make_sampler("", 50, 5.0); },
                                 "offload.wan.sampler.unknown_solver"));
}

BOOST_AUTO_TEST_CASE(bad_step_counts_and_shifts) {
  for (const char* solver : {"unipc", "dpm++"}) {
    BOOST_TEST(throws_config_error([&] { (void)wan::make_sampler(solver, 0, 5.0); },
                                   "offload.wan.sampler.steps", {"sampling_steps >= 1", "got 0"}));
    BOOST_TEST(throws_config_error([&] { (void)wan::make_sampler(solver, -3, 5.0); },
                                   "offload.wan.sampler.steps", {"got -3"}));
    BOOST_TEST(throws_config_error([&] { (void)wan::make_sampler(solver, 10, 0.0); },
                                   "offload.wan.sampler.shift"));
    BOOST_TEST(throws_config_error([&] { (void)wan::make_sampler(solver, 10, std::nan("")); },
                                   "offload.wan.sampler.shift"));
  }
  BOOST_TEST(throws_config_error([] { (void)wan::get_sampling_sigmas(0, 5.0); }, "offload.wan.sampler.steps"));
  wan::FlowUniPCMultistepScheduler unipc;
  BOOST_TEST(throws_config_error([&] { unipc.set_timesteps(0); }, "offload.wan.sampler.steps"));
  BOOST_TEST(throws_config_error([&] { unipc.set_timesteps(); }, "offload.wan.sampler.steps", {"neither"}));
  wan::FlowDPMSolverMultistepScheduler dpm;
  BOOST_TEST(throws_config_error([&] { dpm.set_timesteps({}, std::vector<double>{}); },
                                 "offload.wan.sampler.steps", {"empty"}));
}

BOOST_AUTO_TEST_CASE(stepping_past_the_end_or_before_set_up) {
  const auto x = torch::zeros({1, 4, 1, 2, 2});
  for (const char* solver : {"unipc", "dpm++"}) {
    BOOST_TEST_CONTEXT(solver) {
      auto sampler = wan::make_sampler(solver, 3, 5.0);
      for (int64_t i = 0; i < 3; ++i)
        (void)sampler->step(x, sampler->timesteps()[i], x);
      BOOST_TEST(throws_config_error([&] { (void)sampler->step(x, sampler->timesteps()[2], x); },
                                     "offload.wan.sampler.exhausted", {"all 3 steps"}));
    }
  }
  wan::FlowUniPCMultistepScheduler unipc;
  BOOST_TEST(throws_config_error([&] { (void)unipc.step(x, torch::tensor(999), x); },
                                 "offload.wan.sampler.not_set", {"set_timesteps"}));
  wan::FlowDPMSolverMultistepScheduler dpm;
  BOOST_TEST(throws_config_error([&] { (void)dpm.step(x, torch::tensor(999), x); },
                                 "offload.wan.sampler.not_set", {"set_timesteps"}));
}

BOOST_AUTO_TEST_CASE(timestep_outside_the_schedule) {
  const auto x = torch::zeros({1, 4, 1, 2, 2});
  auto sampler = wan::make_sampler("unipc", 3, 5.0);
  BOOST_TEST(throws_config_error([&] { (void)sampler->step(x, torch::tensor(int64_t{1234}), x); },
                                 "offload.wan.sampler.timestep", {"1234", "not in the schedule"}));
}

BOOST_AUTO_TEST_CASE(first_step_index_follows_the_reference) {
  // the first step() finds its index from the timestep (second match when repeated)
  wan::FlowUniPCMultistepScheduler unipc;
  unipc.set_timesteps(10, {}, 3.0);
  const auto x = torch::zeros({1, 4, 1, 2, 2});
  (void)unipc.step(x, unipc.timesteps[4], x);
  BOOST_TEST(unipc.step_index().value() == 5);
  wan::FlowDPMSolverMultistepScheduler dpm;
  dpm.set_timesteps({}, std::vector<double>{1.0, 0.5, 0.5, 0.25});
  BOOST_TEST(dpm.timesteps[1].item<int64_t>() == dpm.timesteps[2].item<int64_t>());
  (void)dpm.step(x, torch::tensor(int64_t{500}), x);
  BOOST_TEST(dpm.step_index().value() == 3);
  // set_begin_index overrides the search
  wan::FlowDPMSolverMultistepScheduler begin;
  begin.set_timesteps(4);
  begin.set_begin_index(2);
  (void)begin.step(x, begin.timesteps[0], x);
  BOOST_TEST(begin.step_index().value() == 3);
}

BOOST_AUTO_TEST_CASE(unported_options_are_refused) {
  BOOST_TEST(throws_config_error([] { wan::FlowUniPCMultistepScheduler s({.thresholding = true}); },
                                 "offload.wan.sampler.config", {"thresholding"}));
  BOOST_TEST(throws_config_error([] { wan::FlowUniPCMultistepScheduler s({.solver_type = "bh3"}); },
                                 "offload.wan.sampler.config", {"'bh3'"}));
  BOOST_TEST(throws_config_error(
      [] { wan::FlowUniPCMultistepScheduler s({.use_dynamic_shifting = true}); }, "offload.wan.sampler.config",
      {"use_dynamic_shifting"}));
  BOOST_TEST(throws_config_error([] { wan::FlowDPMSolverMultistepScheduler s({.algorithm_type = "dpmsolver"}); },
                                 "offload.wan.sampler.config", {"'dpmsolver'"}));
  BOOST_TEST(throws_config_error(
      [] { wan::FlowDPMSolverMultistepScheduler s({.final_sigmas_type = "sigma_min"}); },
      "offload.wan.sampler.config", {"'sigma_min'"}));
  BOOST_TEST(throws_config_error(
      [] { wan::FlowDPMSolverMultistepScheduler s({.prediction_type = "epsilon"}); },
      "offload.wan.sampler.config", {"'epsilon'"}));
  // the reference maps the diffusers aliases
  wan::FlowUniPCMultistepScheduler u({.solver_type = "midpoint"});
  BOOST_TEST(u.config().solver_type == "bh2");
  wan::FlowDPMSolverMultistepScheduler d({.solver_type = "bh2"});
  BOOST_TEST(d.config().solver_type == "midpoint");
}

BOOST_AUTO_TEST_SUITE_END()
