// Properties of the scheduler and the budget planner on random pipelines, checked against the
// mock-device simulation (the executor running the plan) and, for the planner, against a brute-force
// search of its whole policy space:
//
// - scheduler: a plan that fits runs in simulation with exactly its planned peak and predicted time,
//   and keeps fitting on a larger device; a plan that does not fit runs out of memory there too.
// - planner: its choice fits every budget; its simulation takes the predicted time (plus the share of
//   pinning) at the predicted peak; no policy of its space that fits the budgets is faster; when it
//   finds nothing, no such policy exists.
//
// The cases come from a fixed seed, so a failure reproduces; each failure prints its pipeline, the
// budgets and the policies involved. OFFLOAD_PROPERTY_CASES=N multiplies the number of cases and
// OFFLOAD_PROPERTY_SEED=S changes the seed, for longer searches by hand (docs/robustness.md).
#include <offload/block_stream.hpp>
#include <offload/budget_planner.hpp>
#include <offload/stage_scheduler.hpp>

#include <offload/testing/simulate.hpp>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "random_cases.hpp"

using namespace offload::literals;
using offload::device_id;

namespace {

const device_id gpu = device_id::mock(0);

struct pipeline {
  std::vector<offload::component_info> comps;
  std::vector<offload::stage> stages;
};

using offload_test::cases;
using offload_test::random_source;
using offload_test::seed;

struct pipeline_options {
  int min_components = 2, max_components = 4;
  bool blocks = true;  ///< components may declare block lists
  bool storage = true; ///< components may offer an exact bf16 storage
  int max_storage = 4; ///< at most this many components offer it
  int min_blocks = 2, max_blocks = 12; ///< block lists of this many blocks
  bool first_has_blocks = false;       ///< the first component always declares a block list
};

/// 2-4 stages over 2-4 components of 64 MiB to 8 GiB, each stage using one or two of them with a
/// workspace of up to 4 GiB, repeated up to 12 times, 1 ms to 2 s per repetition.
pipeline random_pipeline(random_source& r, const pipeline_options& o) {
  pipeline p;
  const int n = r.uniform(o.min_components, o.max_components);
  int stored = 0;
  for (int c = 0; c < n; ++c) {
    offload::component_info info{std::string(1, static_cast<char>('a' + c)), r.mib(64, 8192)};
    // Half the time its masters take 0-5% more pinned (packed into power-of-two chunks).
    const auto packed = [&](std::int64_t bytes) { return r.chance(0.5) ? bytes + bytes * r.uniform(0, 5) / 100 : 0; };
    info.pinned_bytes = packed(info.bytes);
    if (o.blocks && ((c == 0 && o.first_has_blocks) || r.chance(0.5))) {
      // Blocks of equal size taking 50-90% of it, and maybe a host table of up to 10%.
      const int count = r.uniform(o.min_blocks, o.max_blocks);
      const std::int64_t block = info.bytes * r.uniform(50, 90) / 100 / count / 256 * 256;
      offload::block_layout layout{std::vector<std::int64_t>(static_cast<std::size_t>(count), block), block,
                                   r.chance(0.3) ? info.bytes * r.uniform(1, 10) / 100 / 256 * 256 : 0};
      info.blocks = layout;
    }
    if (o.storage && stored < o.max_storage && r.chance(0.35)) {
      ++stored;
      offload::stored_size half{offload::storage_dtype::bf16, info.bytes / 2, std::nullopt, true};
      half.pinned_bytes = packed(half.bytes);
      if (info.blocks) {
        half.blocks = *info.blocks;
        for (auto& b : half.blocks->block_bytes) b /= 2;
        half.blocks->slot_bytes /= 2;
        half.blocks->host_bytes /= 2;
      }
      info.storage.push_back(half);
    }
    p.comps.push_back(info);
  }
  const int m = r.uniform(2, 4);
  for (int s = 0; s < m; ++s) {
    offload::stage st;
    st.name = "s" + std::to_string(s);
    const int first = r.uniform(0, n - 1);
    st.uses.push_back(p.comps[static_cast<std::size_t>(first)].name);
    if (r.chance(0.35)) {
      const int second = r.uniform(0, n - 1);
      if (second != first) st.uses.push_back(p.comps[static_cast<std::size_t>(second)].name);
    }
    for (const auto& u : st.uses)
      if (r.chance(0.8)) st.workspace.push_back({u, r.mib(64, 4096)});
    st.repeat = r.chance(0.5) ? 1 : r.uniform(2, 12);
    st.seconds = r.log_uniform(1e-3, 2.0);
    p.stages.push_back(st);
  }
  return p;
}

std::string describe(const pipeline& p) {
  std::string out = "components:";
  for (const auto& c : p.comps) {
    out += fmt::format(" {}={}", c.name, c.bytes);
    if (c.blocks)
      out += fmt::format("[{}x{} host {}]", c.blocks->count(), c.blocks->block_bytes.front(), c.blocks->host_bytes);
    if (!c.storage.empty()) out += "(bf16)";
    if (c.pinned_bytes > 0) out += fmt::format("(pinned {})", c.pinned_bytes);
  }
  out += "; stages:";
  for (const auto& s : p.stages) {
    out += fmt::format(" {}(", s.name);
    for (const auto& u : s.uses) out += u + " ";
    for (const auto& w : s.workspace) out += fmt::format("ws {}={} ", w.component, w.bytes);
    out += fmt::format("x{} {:.6g}s)", s.repeat, s.seconds);
  }
  return out;
}

std::string text(const std::optional<std::int64_t>& b) { return b ? std::to_string(*b) : std::string("unlimited"); }

bool close(double a, double b) { return std::abs(a - b) <= 1e-9 * std::max(1.0, std::abs(b)); }

std::int64_t sim_peak(const offload::testing::simulation_result& s) {
  const auto it = s.peak_bytes.find(gpu);
  return it == s.peak_bytes.end() ? 0 : it->second;
}

/// Any policy of the grammar for these components (host or accelerator, each rule, pinned or not,
/// streamed with 1-3 slots, stored in bf16 where offered), evict-on-demand and prefetch at random.
offload::placement_policy random_policy(random_source& r, const pipeline& p) {
  offload::placement_policy pol;
  for (const auto& c : p.comps) {
    offload::component_policy cp;
    if (r.chance(0.2)) cp.execute_on = offload::target::host();
    cp.load = r.chance(0.5) ? offload::load_rule::init : offload::load_rule::first_use;
    cp.evict = std::array{offload::evict_rule::never, offload::evict_rule::after_use,
                          offload::evict_rule::when_idle}[static_cast<std::size_t>(r.uniform(0, 2))];
    cp.memory = r.chance(0.5) ? offload::host_memory::pinned : offload::host_memory::pageable;
    if (c.blocks && r.chance(0.5)) {
      cp.stream.slots = r.uniform(1, 3);
      cp.stream.prefetch = r.uniform(0, cp.stream.slots - 1);
    }
    if (!c.storage.empty() && r.chance(0.5)) cp.store = offload::storage_dtype::bf16;
    pol.components[c.name] = cp;
  }
  pol.evict_on_demand = r.chance(0.3);
  pol.prefetch = r.chance(0.5);
  return pol.set_label(pol.str());
}

/// A cost model with random bandwidths, host speed and pinning rate (unset half the time).
offload::cost_model random_cost(random_source& r) {
  auto cost = offload::cost_model::defaults();
  cost.h2d_pinned_bytes_per_second = r.log_uniform(20e9, 60e9);
  cost.h2d_pageable_bytes_per_second = r.log_uniform(3e9, 15e9);
  cost.d2h_bytes_per_second = cost.h2d_pinned_bytes_per_second;
  cost.host_flops_per_second = cost.accelerator_flops_per_second / r.log_uniform(1.5, 500);
  if (r.chance(0.5)) cost.pin_bytes_per_second = r.log_uniform(2e9, 10e9);
  return cost;
}

/// Device budget (unlimited 15% of the time), pinned (unlimited half the time, else up to 16 GiB)
/// and host (unlimited 60% of the time, else 4-40 GiB).
offload::memory_budgets random_budgets(random_source& r) {
  offload::memory_budgets b;
  if (!r.chance(0.15)) b.device = r.mib(512, 24576);
  if (r.chance(0.5)) b.pinned = r.chance(0.2) ? 0 : r.mib(64, 16384);
  if (r.chance(0.4)) b.host = r.mib(4096, 40960);
  return b;
}

/// Planner options on the mock GPU: random budgets, cost model and runs per process.
offload::budget_options random_options(random_source& r) {
  offload::budget_options opt;
  opt.accelerator = gpu;
  opt.budgets = random_budgets(r);
  opt.cost = random_cost(r);
  opt.runs = r.chance(0.5) ? 1 : r.uniform(2, 10);
  return opt;
}

std::string describe(const offload::memory_budgets& b, const offload::cost_model& cost, int runs) {
  return fmt::format("budgets device {} pinned {} host {}; cost {}; runs {}", text(b.device), text(b.pinned),
                     text(b.host), cost.json(), runs);
}

/// The master bytes of `c` as the policy stores it.
std::int64_t master_bytes(const offload::component_info& c, const offload::placement_policy& pol) {
  const auto& cp = pol.of(c.name);
  if (cp.store == offload::storage_dtype::native || cp.execute_on.is_host()) return c.bytes;
  return c.stored_as(cp.store)->bytes;
}

/// The host bytes of `c`'s master under the policy: as stored, packed into chunks when pinned.
std::int64_t held_bytes(const offload::component_info& c, const offload::placement_policy& pol) {
  const auto& cp = pol.of(c.name);
  if (cp.memory != offload::host_memory::pinned) return master_bytes(c, pol);
  return c.pinned_as(cp.execute_on.is_host() ? offload::storage_dtype::native : cp.store);
}

/// Host memory of a policy: every master as stored (pinned ones packed), plus the largest workspace
/// of the stages on the host.
std::int64_t host_peak(const pipeline& p, const offload::placement_policy& pol) {
  std::int64_t masters = 0, ws = 0;
  for (const auto& c : p.comps) masters += held_bytes(c, pol);
  for (const auto& s : p.stages) {
    std::int64_t here = 0;
    for (const auto& w : s.workspace) here += pol.of(w.component).execute_on.is_host() ? w.bytes : 0;
    ws = std::max(ws, here);
  }
  return masters + ws;
}

/// Pinned host memory of a policy: the masters it pins, as stored, packed.
std::int64_t pinned_bytes(const pipeline& p, const offload::placement_policy& pol) {
  std::int64_t n = 0;
  for (const auto& c : p.comps)
    if (pol.of(c.name).memory == offload::host_memory::pinned) n += held_bytes(c, pol);
  return n;
}

/// Per step, the seconds the block copies of `plan` add, as the planner prices them
/// (docs/planner.md), recomputed here from the plan's actions with the runtime's slot model: from a
/// pageable master every copy; from a pinned one what the slot model adds to the stage's compute
/// (its accelerator seconds spread over the blocks by bytes, copies at the pinned bandwidth), but
/// at least a full copy of the blocks a stage brings in for the first time since the onload.
std::vector<double> block_copy_seconds(const offload::plan& plan, const pipeline& p, const offload::cost_model& cost) {
  std::vector<double> out(plan.steps.size(), 0.0);
  for (const auto& c : p.comps) {
    const auto& cp = plan.policy.of(c.name);
    if (!cp.stream.enabled() || cp.execute_on.is_host()) continue;
    const auto* stored = c.stored_as(cp.store);
    const offload::block_layout& layout = stored ? *stored->blocks : *c.blocks;
    std::optional<offload::detail::slot_schedule> slots; // while resident
    bool fresh = false;
    auto apply = [&](const std::vector<offload::action>& actions) {
      for (const auto& a : actions) {
        if (a.component != c.name) continue;
        if (a.kind == offload::action_kind::evict) slots.reset();
        if (a.kind == offload::action_kind::onload) {
          slots.emplace(static_cast<int>(layout.count()), cp.stream.slots, cp.stream.prefetch);
          fresh = true;
        }
      }
    };
    for (std::size_t s = 0; s < plan.steps.size(); ++s) {
      apply(plan.steps[s].before);
      if (s > 0 && slots && std::count(p.stages[s - 1].uses.begin(), p.stages[s - 1].uses.end(), c.name)) {
        const auto& st = p.stages[s - 1];
        std::vector<double> compute;
        for (const auto b : layout.block_bytes)
          compute.push_back(st.seconds * static_cast<double>(b) / static_cast<double>(layout.total()));
        std::int64_t bytes = 0;
        const double added = slots->run_passes_timed(st.repeat, layout, cost.h2d_pinned_bytes_per_second, compute,
                                                     true, bytes) -
                             st.seconds * st.repeat;
        BOOST_TEST(bytes == plan.steps[s].streamed_bytes.at(c.name), c.name << " in " << st.name);
        if (cp.memory == offload::host_memory::pinned)
          out[s] += std::max(added, fresh ? cost.transfer_seconds(layout.total(), offload::host_memory::pinned) : 0.0);
        else
          out[s] += cost.transfer_seconds(bytes, offload::host_memory::pageable);
        fresh = false;
      }
      apply(plan.steps[s].prefetch);
      apply(plan.steps[s].after);
    }
  }
  return out;
}

/// The time of a plan by simulation: its stages slowed down where a component they use executes on
/// the host, its copies at the cost model's bandwidths, its block copies as the planner prices them
/// (block_copy_seconds); plus the pinning of its masters per run.
double simulated_seconds(offload::plan plan, const pipeline& p, const offload::cost_model& cost, int runs,
                         std::int64_t* peak = nullptr) {
  const auto blocks = block_copy_seconds(plan, p, cost);
  for (std::size_t s = 1; s < plan.steps.size(); ++s) {
    bool host = false;
    for (const auto& u : p.stages[s - 1].uses) host = host || plan.execute_on.at(u).is_host();
    plan.steps[s].seconds = cost.compute_seconds(p.stages[s - 1].seconds, host);
    plan.steps[s].stream_seconds = blocks[s];
  }
  const auto sim = offload::testing::simulate(plan, p.comps,
                                              {.h2d_bytes_per_second = cost.h2d_pinned_bytes_per_second,
                                               .h2d_pageable_bytes_per_second = cost.h2d_pageable_bytes_per_second,
                                               .d2h_bytes_per_second = cost.d2h_bytes_per_second});
  if (peak) *peak = sim_peak(sim);
  return sim.seconds + cost.pin_seconds(pinned_bytes(p, plan.policy)) / runs;
}

offload::plan schedule_on(const pipeline& p, const offload::placement_policy& pol, std::optional<std::int64_t> capacity,
                          double bytes_per_second) {
  return offload::schedule(p.stages, p.comps, pol,
                           {.accelerator = gpu,
                            .devices = {{gpu, capacity, bytes_per_second, bytes_per_second}},
                            .suggest = false});
}

} // namespace

BOOST_AUTO_TEST_SUITE(plan_properties)

BOOST_AUTO_TEST_CASE(scheduled_plans_run_in_simulation_as_planned) {
  // One bandwidth for every copy (the scheduler prices pinned and pageable alike; the planner's
  // pricing of the two is checked below).
  const double bw = 25e9;
  random_source r(seed(0x5eed0001));
  int fitted = 0, refused = 0, out_of_memory = 0, prefetched = 0, on_demand = 0;
  const int n = cases(400);
  for (int i = 0; i < n; ++i) {
    const pipeline p = random_pipeline(r, {});
    const offload::placement_policy pol = random_policy(r, p);
    const std::optional<std::int64_t> capacity =
        r.chance(0.15) ? std::nullopt : std::optional<std::int64_t>(r.mib(512, 24576));
    const std::string where = fmt::format("case {}: {}; policy {}; capacity {}", i, describe(p), pol.str(), text(capacity));
    offload::plan plan;
    try {
      plan = schedule_on(p, pol, capacity, bw);
    } catch (const offload::config_error&) {
      ++refused; // e.g. `store` or `stream` on a component that offers none: the grammar's checks
      continue;
    }
    if (plan.fits()) {
      ++fitted;
      if (capacity) BOOST_TEST(plan.peak_of(gpu) <= *capacity, where);
      offload::testing::simulation_result sim;
      try {
        sim = offload::testing::simulate(plan, p.comps, {.h2d_bytes_per_second = bw, .d2h_bytes_per_second = bw});
      } catch (const offload::error& e) {
        BOOST_ERROR(where << ": the plan fits but its simulation failed: " << e.what());
        continue;
      }
      BOOST_TEST(sim_peak(sim) == plan.peak_of(gpu), where << ": simulated peak " << sim_peak(sim) << ", planned "
                                                          << plan.peak_of(gpu) << "\n" << plan.table());
      BOOST_TEST(close(sim.seconds, plan.predicted_seconds), where << ": simulated " << sim.seconds << " s, predicted "
                                                                  << plan.predicted_seconds << " s");
      for (const auto& st : plan.steps) prefetched += !st.prefetch.empty();
      on_demand += pol.evict_on_demand;
      // More memory never makes it fail.
      if (capacity) {
        BOOST_TEST(schedule_on(p, pol, *capacity * 2, bw).fits(), where << ": does not fit at twice the capacity");
        BOOST_TEST(schedule_on(p, pol, std::nullopt, bw).fits(), where << ": does not fit without a limit");
      }
    } else {
      ++out_of_memory;
      BOOST_TEST(capacity.has_value(), where);
      BOOST_TEST(plan.failure->needed > plan.failure->available, where);
      // The executor runs it until the mock device runs out, in the same stage.
      try {
        (void)offload::testing::simulate(plan, p.comps, {.h2d_bytes_per_second = bw, .d2h_bytes_per_second = bw});
        BOOST_ERROR(where << ": the plan does not fit (" << plan.failure_message() << ") but its simulation ran");
      } catch (const offload::capacity_error& e) {
        BOOST_TEST(e.stage() == plan.failure->stage, where << ": " << e.what());
      }
    }
  }
  BOOST_TEST_MESSAGE(fmt::format("{} cases: {} fit ({} with prefetches, {} evict on demand), {} out of memory, {} refused",
                                 n, fitted, prefetched, on_demand, out_of_memory, refused));
  // Not vacuous: every outcome occurs often.
  BOOST_TEST(fitted >= n / 4);
  BOOST_TEST(out_of_memory >= n / 10);
  BOOST_TEST(prefetched >= n / 20);
  BOOST_TEST(on_demand >= n / 20);
}

BOOST_AUTO_TEST_CASE(the_planner_s_choice_fits_its_budgets_and_simulates_as_predicted) {
  random_source r(seed(0x5eed0002));
  int planned = 0, nothing_fits = 0, prefetching = 0, streaming = 0, on_host = 0, stored = 0;
  const int n = cases(250);
  for (int i = 0; i < n; ++i) {
    const pipeline p = random_pipeline(r, {});
    offload::budget_options opt = random_options(r);
    opt.allow_prefetch = !r.chance(0.2);
    opt.allow_evict_on_demand = !r.chance(0.2);
    opt.allow_host_execution = !r.chance(0.3); // tight budgets then need streaming
    if (r.chance(0.3)) {
      // Tight: below the largest component with the largest workspace.
      std::int64_t largest = 0, ws = 0;
      for (const auto& c : p.comps) largest = std::max(largest, c.bytes);
      for (const auto& st : p.stages)
        for (const auto& w : st.workspace) ws = std::max(ws, w.bytes);
      opt.budgets.device = (largest + ws) * r.uniform(30, 100) / 100;
    }
    opt.allow_exact_storage = !r.chance(0.2);
    const std::string where = fmt::format("case {}: {}; {}", i, describe(p), describe(opt.budgets, opt.cost, opt.runs));
    offload::budget_plan b;
    try {
      b = offload::plan_for_budget(p.stages, p.comps, opt);
    } catch (const offload::capacity_error& e) {
      BOOST_TEST(e.id() == "offload.capacity.no_placement_fits", where << ": " << e.what());
      ++nothing_fits;
      continue;
    }
    ++planned;
    const auto& pol = b.plan.policy;
    const std::string chosen = where + "; chosen " + pol.str();
    BOOST_TEST(b.plan.fits(), chosen);
    BOOST_TEST(b.device_peak_bytes == b.plan.peak_of(gpu), chosen);
    if (opt.budgets.device) BOOST_TEST(b.device_peak_bytes <= *opt.budgets.device, chosen);
    // Pinned and host memory, counted here from the policy.
    BOOST_TEST(b.pinned_bytes == pinned_bytes(p, pol), chosen);
    if (opt.budgets.pinned) BOOST_TEST(b.pinned_bytes <= *opt.budgets.pinned, chosen);
    BOOST_TEST(b.host_peak_bytes == host_peak(p, pol), chosen);
    if (opt.budgets.host) BOOST_TEST(b.host_peak_bytes <= *opt.budgets.host, chosen);
    BOOST_TEST(close(b.predicted_seconds, b.compute_seconds + b.transfer_seconds), chosen);
    BOOST_TEST(close(b.pin_seconds, opt.cost.pin_seconds(b.pinned_bytes) / opt.runs), chosen);
    // The simulation: the same peak, the predicted time.
    std::int64_t peak = 0;
    const double seconds = simulated_seconds(b.plan, p, opt.cost, opt.runs, &peak);
    BOOST_TEST(peak == b.device_peak_bytes, chosen);
    BOOST_TEST(close(seconds, b.predicted_seconds), chosen << ": simulated " << seconds << " s, predicted "
                                                           << b.predicted_seconds << " s\n" << b.plan.table());
    prefetching += pol.prefetch;
    bool s = false, h = false, st = false;
    for (const auto& c : p.comps) {
      s = s || pol.of(c.name).stream.enabled();
      h = h || pol.of(c.name).execute_on.is_host();
      st = st || pol.of(c.name).store != offload::storage_dtype::native;
    }
    streaming += s, on_host += h, stored += st;
  }
  BOOST_TEST_MESSAGE(fmt::format("{} cases: {} planned ({} prefetch, {} stream, {} execute on the host, {} store "
                                 "in bf16), {} fit no placement",
                                 n, planned, prefetching, streaming, on_host, stored, nothing_fits));
  BOOST_TEST(planned >= n / 2);
  BOOST_TEST(nothing_fits >= 1);
  BOOST_TEST(prefetching >= n / 20);
  BOOST_TEST(streaming >= n / 30);
  BOOST_TEST(on_host >= n / 20);
  BOOST_TEST(stored >= n / 20);
}

namespace {

/// Every policy of the planner's space for `p`: per component the host, or the accelerator with
/// each load and evict rule, pinned or pageable, stored natively or in each exact storage, whole or
/// (with two blocks or more) streamed through one slot without prefetch, or 2, 3, 4, 6, 8 or 12
/// slots below its block count or as many as it has blocks with 1 block prefetched; evict-on-demand
/// with resident or lazy
/// components (native, whole, never evicted by rule); each with and without cross-stage prefetch.
std::vector<offload::placement_policy> planner_space(const pipeline& p) {
  std::vector<std::vector<offload::component_policy>> per(p.comps.size()), lazy(p.comps.size());
  const std::pair<offload::load_rule, offload::evict_rule> rules[] = {
      {offload::load_rule::init, offload::evict_rule::never},
      {offload::load_rule::first_use, offload::evict_rule::never},
      {offload::load_rule::init, offload::evict_rule::after_use},
      {offload::load_rule::first_use, offload::evict_rule::after_use},
      {offload::load_rule::init, offload::evict_rule::when_idle},
      {offload::load_rule::first_use, offload::evict_rule::when_idle}};
  for (std::size_t c = 0; c < p.comps.size(); ++c) {
    const offload::component_policy host{offload::target::host()};
    per[c].push_back(host);
    lazy[c].push_back(host);
    std::vector<offload::storage_dtype> stores{offload::storage_dtype::native};
    for (const auto& st : p.comps[c].storage)
      if (st.exact) stores.push_back(st.dtype);
    for (const auto& [load, evict] : rules)
      for (const auto store : stores) {
        const auto* stored = p.comps[c].stored_as(store);
        const auto& blocks = stored ? stored->blocks : p.comps[c].blocks;
        if (!blocks || blocks->count() < 2) continue;
        const int n = static_cast<int>(blocks->count());
        std::vector<offload::stream_options> streams{{1, 0}};
        for (const int k : {2, 3, 4, 6, 8, 12})
          if (k < n) streams.push_back({k, 1});
        streams.push_back({n, 1});
        for (const auto stream : streams)
          for (const auto memory : {offload::host_memory::pageable, offload::host_memory::pinned}) {
            offload::component_policy cp{offload::target::accelerator(), load, evict, memory, stream};
            cp.store = store;
            per[c].push_back(cp);
          }
      }
    for (const auto memory : {offload::host_memory::pageable, offload::host_memory::pinned}) {
      for (const auto& [load, evict] : rules)
        for (const auto store : stores) {
          offload::component_policy cp{offload::target::accelerator(), load, evict, memory};
          cp.store = store;
          per[c].push_back(cp);
        }
      for (const auto load : {offload::load_rule::init, offload::load_rule::first_use})
        lazy[c].push_back({offload::target::accelerator(), load, offload::evict_rule::never, memory});
    }
  }
  std::vector<offload::placement_policy> out;
  for (const bool on_demand : {false, true}) {
    const auto& options = on_demand ? lazy : per;
    std::vector<std::size_t> pick(p.comps.size(), 0);
    for (;;) {
      for (const bool prefetch : {false, true}) {
        offload::placement_policy pol;
        for (std::size_t c = 0; c < p.comps.size(); ++c) pol.components[p.comps[c].name] = options[c][pick[c]];
        pol.evict_on_demand = on_demand;
        pol.prefetch = prefetch;
        out.push_back(pol.set_label(pol.str()));
      }
      std::size_t c = 0;
      while (c < pick.size() && ++pick[c] == options[c].size()) pick[c++] = 0;
      if (c == pick.size()) break;
    }
  }
  return out;
}

/// What the brute-force comparisons met.
struct brute_force_tally {
  int cases = 0, compared = 0, none = 0, prefetched = 0, pinned_some = 0, streamed = 0, pageable_streams = 0,
      more_slots = 0, one_slot = 0;
  std::size_t policies = 0;
  [[nodiscard]] std::string str() const {
    return fmt::format("{} cases, {} policies scheduled: {} compared ({} with prefetch, {} pinning, {} streaming: {} "
                       "from pageable masters, {} with more than 2 slots, {} with one), {} where nothing fits",
                       cases, policies, compared, prefetched, pinned_some, streamed, pageable_streams, more_slots, one_slot,
                       none);
  }
};

/// Brute force: every policy of the planner's space for `p`, scheduled under the device budget,
/// kept when it fits every budget, timed by simulation. The planner's choice must take the least
/// time, and the planner must find a placement exactly when one exists. Block copies are timed as
/// the planner prices them (block_copy_seconds).
void compare_with_brute_force(const pipeline& p, const offload::budget_options& opt, const std::string& where,
                              brute_force_tally& tally) {
  ++tally.cases;
  double best = std::numeric_limits<double>::infinity();
  std::string best_policy;
  for (const auto& pol : planner_space(p)) {
    if (!opt.allow_host_execution &&
        std::any_of(p.comps.begin(), p.comps.end(), [&](const auto& c) { return pol.of(c.name).execute_on.is_host(); }))
      continue;
    ++tally.policies;
    const offload::plan plan = offload::schedule(p.stages, p.comps, pol,
                                                 {.accelerator = gpu,
                                                  .devices = {{gpu, opt.budgets.device}},
                                                  .suggest = false});
    if (!plan.fits()) continue;
    if (opt.budgets.pinned && pinned_bytes(p, pol) > *opt.budgets.pinned) continue;
    if (opt.budgets.host && host_peak(p, pol) > *opt.budgets.host) continue;
    const double t = simulated_seconds(plan, p, opt.cost, opt.runs);
    if (t < best) best = t, best_policy = pol.str();
  }
  try {
    const auto b = offload::plan_for_budget(p.stages, p.comps, opt);
    BOOST_TEST(std::isfinite(best), where << ": the planner chose " << b.plan.policy.str()
                                          << ", which no policy of the brute force matches");
    const double t = simulated_seconds(b.plan, p, opt.cost, opt.runs);
    BOOST_TEST(close(t, b.predicted_seconds), where << ": chosen " << b.plan.policy.str() << " simulates in " << t
                                                    << " s, predicted " << b.predicted_seconds << " s");
    BOOST_TEST(t <= best * (1 + 1e-9), where << ": chosen " << b.plan.policy.str() << " takes " << t << " s; "
                                              << best_policy << " takes " << best << " s");
    ++tally.compared;
    tally.prefetched += b.plan.policy.prefetch;
    tally.pinned_some += b.pinned_bytes > 0;
    bool s = false, pageable = false, more = false, one = false;
    for (const auto& c : p.comps)
      if (const auto& cp = b.plan.policy.of(c.name); cp.stream.enabled()) {
        s = true;
        pageable = pageable || cp.memory == offload::host_memory::pageable;
        more = more || cp.stream.slots > 2;
        one = one || cp.stream.slots == 1;
      }
    tally.streamed += s, tally.pageable_streams += pageable, tally.more_slots += more, tally.one_slot += one;
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(!std::isfinite(best), where << ": the planner found nothing (" << e.what() << "), but " << best_policy
                                           << " fits in " << best << " s");
    ++tally.none;
  }
}

} // namespace

BOOST_AUTO_TEST_CASE(no_policy_of_the_planner_s_space_is_faster_than_its_choice) {
  random_source r(seed(0x5eed0003));
  brute_force_tally tally;
  const int n = cases(40);
  for (int i = 0; i < n; ++i) {
    const bool three = i % 4 == 3;
    // Few blocks: the slot counts multiply the streamed policies (the next test streams more).
    const pipeline p = random_pipeline(r, {.min_components = three ? 3 : 2, .max_components = three ? 3 : 2,
                                           .max_storage = 1, .max_blocks = 3});
    offload::budget_options opt = random_options(r);
    if (r.chance(0.2)) opt.budgets.host = r.mib(1024, 16384); // tight: sometimes not even the masters fit
    compare_with_brute_force(p, opt, fmt::format("case {}: {}; {}", i, describe(p), describe(opt.budgets, opt.cost, opt.runs)),
                             tally);
  }
  BOOST_TEST_MESSAGE(tally.str());
  BOOST_TEST(tally.compared >= n / 2);
  BOOST_TEST(tally.none >= 1);
  BOOST_TEST(tally.prefetched >= n / 10);
  BOOST_TEST(tally.pinned_some >= n / 4);
}

BOOST_AUTO_TEST_CASE(no_streamed_policy_of_the_planner_s_space_is_faster_than_its_choice) {
  // The same brute force where streaming matters: the first of two components always has 4-8
  // blocks, the device budget leaves the largest workspace and 20-120% of its size (and half the
  // time the other component's), the pinned budget is often below it, and host execution is often
  // not allowed.
  random_source r(seed(0x5eed0004));
  brute_force_tally tally;
  const int n = cases(30);
  for (int i = 0; i < n; ++i) {
    const pipeline p = random_pipeline(r, {.min_components = 2, .max_components = 2, .max_storage = 1,
                                           .min_blocks = 4, .max_blocks = 8, .first_has_blocks = true});
    offload::budget_options opt = random_options(r);
    const std::int64_t a = p.comps.front().bytes;
    std::int64_t workspace = 0;
    for (const auto& st : p.stages) {
      std::int64_t w = 0;
      for (const auto& ws : st.workspace) w += ws.bytes;
      workspace = std::max(workspace, w);
    }
    opt.budgets.device = workspace + a * r.uniform(20, 120) / 100 + (r.chance(0.5) ? p.comps.back().bytes : 0);
    if (r.chance(0.5)) opt.budgets.pinned = a * r.uniform(0, 120) / 100;
    opt.allow_host_execution = r.chance(0.5);
    compare_with_brute_force(p, opt, fmt::format("case {}: {}; {}", i, describe(p), describe(opt.budgets, opt.cost, opt.runs)),
                             tally);
  }
  BOOST_TEST_MESSAGE(tally.str());
  BOOST_TEST(tally.compared >= n / 2);
  BOOST_TEST(tally.streamed >= n / 4);
  BOOST_TEST(tally.pageable_streams >= n / 15);
  BOOST_TEST(tally.more_slots >= n / 10);
}

BOOST_AUTO_TEST_SUITE_END()
