// wan_plan_bench: how long the budget planner takes on the whole Wan pipelines, plus a simulation of
// the chosen plan with 50 denoising steps on a mock GPU. Prints figures; asserts nothing about time.
//
//   wan_plan_bench [iterations]     (default 20)
#include "wan/budget.hpp"

#include <offload/testing/simulate.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

struct stats {
  double median = 0, max = 0;
};

stats summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.back()};
}

} // namespace

int run(int argc, char** argv) {
  const int iterations = argc > 1 ? std::max(1, std::stoi(argv[1])) : 20;
  const auto gpu = offload::device_id::mock(0);
  const std::vector<wan::generation_shape> shapes = {
      {"t2v-1.3B", 832, 480, 81, 50}, {"t2v-14B", 1280, 720, 81, 50}, {"i2v-14B", 1280, 720, 81, 50},
      {"vace-14B", 1280, 720, 81, 50}};
  const std::vector<std::optional<std::int64_t>> budgets = {8 * offload::GiB, 12 * offload::GiB, 24 * offload::GiB,
                                                            48 * offload::GiB, 80 * offload::GiB, std::nullopt};
  std::cout << fmt::format("budget planner on the Wan pipelines: plan + simulate 50 steps, {} iterations each\n",
                           iterations);
  std::cout << fmt::format("{:<10} {:>10}  {:>9} {:>9}  {:>9} {:>9}  {:>10} {:>8}  {:>10}  {}\n", "task", "budget",
                           "plan ms", "plan max", "sim ms", "sim max", "placements", "runs", "predicted", "policy");
  double worst = 0;
  for (const auto& shape : shapes)
    for (const auto& b : budgets) {
      const offload::budget_options opt{.accelerator = gpu, .budgets = {.device = b, .pinned = 16 * offload::GiB}};
      const auto comps = wan::preset_components(shape.task);
      std::vector<double> plan_ms, sim_ms, total_ms;
      std::optional<offload::budget_plan> last;
      for (int i = 0; i < iterations; ++i) {
        const auto t0 = clock_type::now();
        auto r = wan::plan_generation(shape, opt);
        const double p = ms_since(t0);
        const auto t1 = clock_type::now();
        const auto sim = offload::testing::simulate(r.plan, comps);
        const double s = ms_since(t1);
        if (sim.peak_bytes.count(gpu) && b && sim.peak_bytes.at(gpu) > *b) {
          std::cerr << "simulated peak above the budget: " << r.plan.policy.str() << "\n";
          return 1;
        }
        plan_ms.push_back(p);
        sim_ms.push_back(s);
        total_ms.push_back(p + s);
        last = std::move(r);
      }
      const auto ps = summarize(plan_ms), ss = summarize(sim_ms), ts = summarize(total_ms);
      worst = std::max(worst, ts.max);
      std::cout << fmt::format("{:<10} {:>10}  {:>9.3f} {:>9.3f}  {:>9.3f} {:>9.3f}  {:>10} {:>8}  {:>9.1f}s  {}\n",
                               shape.task, b ? offload::format_bytes(*b) : "unlimited", ps.median, ps.max, ss.median,
                               ss.max, last->placements_considered, last->schedules_run, last->predicted_seconds,
                               last->plan.policy.str());
    }
  std::cout << fmt::format("slowest plan + simulation: {:.3f} ms\n", worst);
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "wan_plan_bench: error: " << e.what() << '\n';
    return 1;
  }
}
