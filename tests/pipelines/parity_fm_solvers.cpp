// Parity of the flow-matching solvers (pipelines/wan/fm_solvers{,_unipc}.hpp, sampler.hpp) with the
// official Python reference: the golden cases `sched_unipc` and `sched_dpmpp`. For every stored
// (steps, shift) sub-case of the manifest entry's `combos`, the scheduler is set up as the entry's
// `call` says (exactly the text2video.py loop with the DiT + CFG replaced by the fake model
// `0.5 * x - float32(t) / 1000`), and its timesteps (exact), sigmas, sampling sigmas (dpm++),
// whole latent trajectory, fed model outputs, converted x0 predictions and, for UniPC, the
// corrected samples are compared; make_sampler() must then reproduce the same trajectory bit for bit.
#include "wan/fm_solvers.hpp"
#include "wan/fm_solvers_unipc.hpp"
#include "wan/sampler.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "parity_harness.hpp"

namespace wt = wan::testing;

namespace {

/// The fake model of the golden cases: out = 0.5 * x - t.to(torch.float32) / 1000.0.
torch::Tensor fake_model(const torch::Tensor& x, const torch::Tensor& t) {
  return x * 0.5 - t.to(torch::kFloat32) / 1000.0;
}

/// "out.n{steps}_s{shift}" as the generator names sub-cases (shift 5.0 -> "s5").
std::string sub_case_prefix(int64_t steps, double shift) {
  if (shift == std::floor(shift))
    return fmt::format("out.n{}_s{}", steps, static_cast<int64_t>(shift));
  return fmt::format("out.n{}_s{}", steps, shift);
}

struct trajectory {
  std::vector<torch::Tensor> latents, model_outputs, x0_pred, corrected;
};

/// The golden loop over a concrete scheduler; records what the goldens store.
template <class Scheduler>
trajectory run(Scheduler& sched, const torch::Tensor& x_T) {
  trajectory tr;
  auto x = x_T;
  tr.latents.push_back(x);
  for (int64_t i = 0; i < sched.timesteps.size(0); ++i) {
    auto t = sched.timesteps[i]; // 0-dim int64
    auto m = fake_model(x, t);
    x = sched.step(m.unsqueeze(0), t, x.unsqueeze(0)).squeeze(0);
    tr.model_outputs.push_back(m);
    tr.latents.push_back(x);
    tr.x0_pred.push_back(sched.model_outputs.back().squeeze(0));
    if constexpr (std::is_same_v<Scheduler, wan::FlowUniPCMultistepScheduler>)
      tr.corrected.push_back(sched.last_sample.squeeze(0));
  }
  return tr;
}

/// The same loop through the pipelines' Sampler interface.
std::vector<torch::Tensor> run(wan::Sampler& sampler, const torch::Tensor& x_T) {
  std::vector<torch::Tensor> latents{x_T};
  auto x = x_T;
  const auto& timesteps = sampler.timesteps();
  for (int64_t i = 0; i < timesteps.size(0); ++i) {
    auto t = timesteps[i];
    x = sampler.step(fake_model(x, t).unsqueeze(0), t, x.unsqueeze(0)).squeeze(0);
    latents.push_back(x);
  }
  return latents;
}

/// Compares one sub-case and records the compared names.
void check(wt::golden_case& g, std::set<std::string>& seen, const std::string& name, const torch::Tensor& actual) {
  g.expect_close(name, actual);
  seen.insert(name);
}

void check_case(const char* case_name, bool unipc) {
  torch::NoGradGuard no_grad;
  wt::golden_case g(case_name);
  const auto& combos = g.entry().at("combos");
  BOOST_TEST_REQUIRE(combos.size() > 0u);
  const auto x_T = g.tensor("in.x_T"); // [16, 1, 2, 2]
  std::set<std::string> seen{"in.x_T"};

  for (const auto& combo : combos) {
    const auto steps = combo.at(0).get<int64_t>();
    const auto shift = combo.at(1).get<double>();
    const auto p = sub_case_prefix(steps, shift);
    BOOST_TEST_CONTEXT(case_name << " steps=" << steps << " shift=" << shift) {
      BOOST_TEST_REQUIRE(g.has(p + ".timesteps"), "no stored sub-case " << p);
      trajectory tr;
      if (unipc) {
        // FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        wan::FlowUniPCMultistepScheduler sched({.num_train_timesteps = 1000, .shift = 1.0});
        sched.set_timesteps(steps, {}, shift); // set_timesteps(steps, device=cpu, shift=shift)
        check(g, seen, p + ".timesteps", sched.timesteps);
        check(g, seen, p + ".sigmas", sched.sigmas);
        tr = run(sched, x_T);
        check(g, seen, p + ".corrected", torch::stack(tr.corrected));
      } else {
        wan::FlowDPMSolverMultistepScheduler sched({.num_train_timesteps = 1000, .shift = 1.0});
        const auto sampling_sigmas = wan::get_sampling_sigmas(steps, shift);
        check(g, seen, p + ".sampling_sigmas", torch::tensor(sampling_sigmas, torch::kFloat64));
        auto [timesteps, n] = wan::retrieve_timesteps(sched, {}, sampling_sigmas);
        BOOST_TEST(n == steps);
        check(g, seen, p + ".timesteps", timesteps);
        check(g, seen, p + ".sigmas", sched.sigmas);
        tr = run(sched, x_T);
      }
      check(g, seen, p + ".latents", torch::stack(tr.latents));
      check(g, seen, p + ".model_outputs", torch::stack(tr.model_outputs));
      check(g, seen, p + ".x0_pred", torch::stack(tr.x0_pred));

      // the pipelines' entry point sets up the same scheduler: same timesteps, same trajectory
      auto sampler = wan::make_sampler(unipc ? "unipc" : "dpm++", static_cast<int>(steps), shift);
      BOOST_TEST(torch::equal(sampler->timesteps(), g.tensor(p + ".timesteps")));
      BOOST_TEST(torch::equal(torch::stack(run(*sampler, x_T)), torch::stack(tr.latents)));
    }
  }
  // nothing recorded in the file is left unchecked
  for (const auto& name : g.names())
    BOOST_TEST(seen.count(name) == 1u, "golden tensor " << name << " was not compared");
}

} // namespace

BOOST_AUTO_TEST_SUITE(parity_fm_solvers)

BOOST_AUTO_TEST_CASE(sched_unipc) { check_case("sched_unipc", true); }

BOOST_AUTO_TEST_CASE(sched_dpmpp) { check_case("sched_dpmpp", false); }

BOOST_AUTO_TEST_SUITE_END()
