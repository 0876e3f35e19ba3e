// The budget planner on mock devices: the fastest policy within device, pinned and host budgets,
// checked against the scheduler's own plan and a simulation of it; the errors when nothing fits;
// the cost model file.
#include <offload/block_stream.hpp>
#include <offload/budget_planner.hpp>
#include <offload/cost_model.hpp>

#include <offload/testing/errors.hpp>
#include <offload/testing/simulate.hpp>

#include <boost/test/unit_test.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

using namespace offload::literals;
using offload::device_id;

namespace {

const device_id gpu = device_id::mock(0);

/// A three-stage pipeline: encoder, a repeated denoiser, decoder with a large workspace.
const std::vector<offload::component_info> comps = {{"enc", 6_GiB}, {"den", 4_GiB}, {"dec", 1_GiB}};
const std::vector<offload::stage> stages = {
    {"encode", {"enc"}, {{"enc", 1_GiB}}, 1, 0.5},
    {"denoise", {"den"}, {{"den", 2_GiB}}, 20, 1.0},
    {"decode", {"dec"}, {{"dec", 5_GiB}}, 1, 2.0},
};

offload::budget_options options(std::optional<std::int64_t> device, std::optional<std::int64_t> pinned = std::nullopt,
                                std::optional<std::int64_t> host = std::nullopt) {
  return {.accelerator = gpu, .budgets = {.device = device, .pinned = pinned, .host = host}};
}

/// Simulates the chosen plan with the cost model's bandwidths.
offload::testing::simulation_result simulate(const offload::budget_plan& r, const offload::cost_model& cost,
                                             const std::vector<offload::component_info>& c = comps) {
  return offload::testing::simulate(r.plan, c,
                                    {.h2d_bytes_per_second = cost.h2d_pinned_bytes_per_second,
                                     .h2d_pageable_bytes_per_second = cost.h2d_pageable_bytes_per_second,
                                     .d2h_bytes_per_second = cost.d2h_bytes_per_second});
}

std::int64_t sim_peak(const offload::testing::simulation_result& s) {
  const auto it = s.peak_bytes.find(gpu);
  return it == s.peak_bytes.end() ? 0 : it->second;
}

/// Copies of `name` to the device: onloads before a stage, and prefetches during the one before.
int onloads_of(const offload::plan& p, std::string_view name) {
  int n = 0;
  for (const auto& st : p.steps)
    for (const auto* list : {&st.before, &st.prefetch})
      for (const auto& a : *list) n += a.kind == offload::action_kind::onload && a.component == name;
  return n;
}

bool close(double a, double b) { return std::abs(a - b) <= 1e-9 * std::max(1.0, std::abs(b)); }

} // namespace

BOOST_AUTO_TEST_SUITE(budget_planner)

BOOST_AUTO_TEST_CASE(unlimited_budgets_give_the_all_resident_plan_pinned) {
  // Without cross-stage prefetch (below, it hides the later components' copies).
  auto opt = options(std::nullopt);
  opt.allow_prefetch = false;
  const auto r = offload::plan_for_budget(stages, comps, opt);
  const auto cost = offload::cost_model::defaults();
  for (const auto& c : comps) {
    const auto& cp = r.plan.policy.of(c.name);
    BOOST_TEST(!cp.execute_on.is_host(), c.name);
    BOOST_TEST((cp.load == offload::load_rule::init), c.name);
    BOOST_TEST((cp.evict == offload::evict_rule::never), c.name);
    BOOST_TEST((cp.memory == offload::host_memory::pinned), c.name);
    BOOST_TEST(onloads_of(r.plan, c.name) == 1, c.name);
  }
  BOOST_TEST(!r.plan.policy.evict_on_demand);
  BOOST_TEST(r.plan.fits());
  // Peak: every component + the largest workspace; time: compute + one pinned copy each.
  BOOST_TEST(r.device_peak_bytes == 11_GiB + 5_GiB);
  BOOST_TEST(close(r.predicted_seconds, 0.5 + 20 * 1.0 + 2.0 + cost.transfer_seconds(11_GiB, offload::host_memory::pinned)));
  const auto sim = simulate(r, cost);
  BOOST_TEST(sim_peak(sim) == r.device_peak_bytes);
  BOOST_TEST(close(sim.seconds, r.predicted_seconds));
}

BOOST_AUTO_TEST_CASE(prefetch_hides_the_copies_of_later_stages_where_the_budget_has_room) {
  const auto cost = offload::cost_model::defaults();
  auto pinned = [&](std::int64_t b) { return cost.transfer_seconds(b, offload::host_memory::pinned); };
  auto prefetched = [](const offload::plan& p, const char* stage) {
    std::vector<std::string> names;
    for (const auto& a : p.step(stage)->prefetch) names.push_back(a.component);
    return names;
  };
  // Unlimited: the encoder loads at init (nothing runs before it); the denoiser moves during the
  // encode (0.08 s behind 0.5 s), the decoder during the last denoising step. Only the encoder's
  // copy is exposed. Of the equally fast rules the denoiser takes the one with the lower peak: it
  // leaves after the denoise (the decode holds the encoder, the decoder and its workspace).
  const auto r = offload::plan_for_budget(stages, comps, options(std::nullopt));
  BOOST_TEST(r.plan.policy.str() == "dec=cuda:lazy:pinned,den=cuda:lazy:offload:pinned,enc=cuda:resident:pinned,prefetch");
  for (const auto& c : comps) BOOST_TEST(onloads_of(r.plan, c.name) == 1, c.name);
  BOOST_TEST(prefetched(r.plan, "encode") == std::vector<std::string>{"den"});
  BOOST_TEST(prefetched(r.plan, "denoise") == std::vector<std::string>{"dec"});
  BOOST_TEST(close(r.predicted_seconds, 22.5 + pinned(6_GiB)));
  BOOST_TEST(close(r.transfer_seconds, pinned(6_GiB)));
  BOOST_TEST(r.device_peak_bytes == 13_GiB); // denoise: encoder 6 + denoiser 4 + workspace 2 + decoder 1
  auto sim = simulate(r, cost);
  BOOST_TEST(sim_peak(sim) == r.device_peak_bytes);
  BOOST_TEST(close(sim.seconds, r.predicted_seconds), sim.seconds << " vs " << r.predicted_seconds);
  // 10 GiB: the encode (encoder 6 + workspace 1) has no room for the denoiser (4), whose copy is
  // exposed; the decoder still moves during the last denoising step.
  const auto ten = offload::plan_for_budget(stages, comps, options(10_GiB));
  BOOST_TEST(ten.plan.policy.prefetch);
  BOOST_TEST(prefetched(ten.plan, "encode").empty());
  BOOST_TEST(prefetched(ten.plan, "denoise") == std::vector<std::string>{"dec"});
  BOOST_TEST(close(ten.predicted_seconds, 22.5 + pinned(6_GiB) + pinned(4_GiB)));
  BOOST_TEST(ten.device_peak_bytes <= 10_GiB);
  sim = simulate(ten, cost);
  BOOST_TEST(sim_peak(sim) == ten.device_peak_bytes);
  BOOST_TEST(close(sim.seconds, ten.predicted_seconds), sim.seconds << " vs " << ten.predicted_seconds);
  // Without pinned memory nothing is prefetched: a pageable copy holds the host thread.
  const auto pageable = offload::plan_for_budget(stages, comps, options(std::nullopt, 0));
  BOOST_TEST(!pageable.plan.policy.prefetch);
  BOOST_TEST(close(pageable.predicted_seconds, 22.5 + cost.transfer_seconds(11_GiB, offload::host_memory::pageable)));
  // Turned off, the same budget loads everything at init: every copy exposed.
  auto off = options(std::nullopt);
  off.allow_prefetch = false;
  const auto no = offload::plan_for_budget(stages, comps, off);
  BOOST_TEST(!no.plan.policy.prefetch);
  BOOST_TEST(close(no.predicted_seconds, 22.5 + pinned(11_GiB)));
}

BOOST_AUTO_TEST_CASE(pinning_time_is_charged_when_the_cost_model_prices_it) {
  // Each component is copied once. Pinning at 4 GB/s costs 0.27 s per GiB, more than a pinned copy
  // saves (0.12 s per GiB) or prefetch hides: for one run nothing is pinned, nothing prefetched.
  auto opt = options(std::nullopt);
  opt.cost.pin_bytes_per_second = 4e9;
  const auto& cost = opt.cost;
  const auto one = offload::plan_for_budget(stages, comps, opt);
  for (const auto& c : comps)
    BOOST_TEST((one.plan.policy.of(c.name).memory == offload::host_memory::pageable), one.plan.policy.str());
  BOOST_TEST(!one.plan.policy.prefetch);
  BOOST_TEST(one.pinned_bytes == 0);
  BOOST_TEST(one.pin_seconds == 0.0);
  BOOST_TEST(close(one.predicted_seconds, 22.5 + cost.transfer_seconds(11_GiB, offload::host_memory::pageable)));
  // Spread over 10 runs it pays: every master pinned, the later copies prefetched (as with pinning
  // free), each run charged a tenth of the pinning.
  opt.runs = 10;
  const auto ten = offload::plan_for_budget(stages, comps, opt);
  BOOST_TEST(ten.plan.policy.str() == "dec=cuda:lazy:pinned,den=cuda:lazy:offload:pinned,enc=cuda:resident:pinned,prefetch");
  BOOST_TEST(ten.pinned_bytes == 11_GiB);
  BOOST_TEST(close(ten.pin_seconds, static_cast<double>(11_GiB) / 4e9 / 10));
  BOOST_TEST(close(ten.predicted_seconds, 22.5 + cost.transfer_seconds(6_GiB, offload::host_memory::pinned) + ten.pin_seconds));
  BOOST_TEST(ten.summary().find("(pinning 0.30 s)") != std::string::npos, ten.summary());
  BOOST_TEST(ten.json().find("\"pin_seconds\":") != std::string::npos);
  // The simulation runs the copies, not the pinning.
  const auto sim = simulate(ten, cost);
  BOOST_TEST(close(sim.seconds + ten.pin_seconds, ten.predicted_seconds), sim.seconds << " vs " << ten.predicted_seconds);
  opt.runs = 0;
  BOOST_TEST(offload::testing::error_id([&] { (void)offload::plan_for_budget(stages, comps, opt); }) ==
             "offload.config.runs");
}

BOOST_AUTO_TEST_CASE(prefetch_makes_pinning_pay_where_faster_copies_alone_would_not) {
  // Pinning at 8 GB/s costs 0.134 s per GiB. A pinned copy saves 0.123 s per GiB over a pageable
  // one: not enough. Prefetched, the pinned copy hides behind the stage before, which saves the
  // whole pageable copy, 0.143 s per GiB: enough. So the denoiser and the decoder are pinned and
  // prefetched, the encoder (loaded before the first stage, nothing to hide behind) is not. (The
  // planner once chose the pinned masters for the copy times without prefetch, pinned nothing, and
  // so never tried prefetch here; found by plan_properties.)
  auto opt = options(std::nullopt);
  opt.cost.pin_bytes_per_second = 8e9;
  const auto& cost = opt.cost;
  const double per_gib = static_cast<double>(1_GiB);
  BOOST_TEST(cost.pin_seconds(1_GiB) > (cost.transfer_seconds(1_GiB, offload::host_memory::pageable) -
                                         cost.transfer_seconds(1_GiB, offload::host_memory::pinned)));
  BOOST_TEST(cost.pin_seconds(1_GiB) < cost.transfer_seconds(1_GiB, offload::host_memory::pageable));
  const auto r = offload::plan_for_budget(stages, comps, opt);
  BOOST_TEST(r.plan.policy.str() == "dec=cuda:lazy:pinned,den=cuda:lazy:offload:pinned,enc=cuda:resident,prefetch");
  BOOST_TEST(r.pinned_bytes == 5_GiB);
  BOOST_TEST(close(r.predicted_seconds, 22.5 + cost.transfer_seconds(6_GiB, offload::host_memory::pageable) +
                                            5 * per_gib / 8e9));
  const auto sim = simulate(r, cost);
  BOOST_TEST(close(sim.seconds + r.pin_seconds, r.predicted_seconds), sim.seconds << " vs " << r.predicted_seconds);
  // Without prefetch nothing is worth pinning.
  opt.allow_prefetch = false;
  const auto off = offload::plan_for_budget(stages, comps, opt);
  BOOST_TEST(off.pinned_bytes == 0);
  BOOST_TEST(close(off.predicted_seconds, 22.5 + cost.transfer_seconds(11_GiB, offload::host_memory::pageable)));
  BOOST_TEST(r.predicted_seconds < off.predicted_seconds);
}

BOOST_AUTO_TEST_CASE(every_chosen_plan_fits_and_time_never_increases_with_the_budget) {
  const auto cost = offload::cost_model::defaults();
  for (const std::optional<std::int64_t> pinned : {std::optional<std::int64_t>{}, std::optional<std::int64_t>{2_GiB}}) {
    double previous = std::numeric_limits<double>::infinity();
    for (std::int64_t b = 1_GiB; b <= 20_GiB; b += 256_MiB) {
      const auto r = offload::plan_for_budget(stages, comps, options(b, pinned));
      const auto sim = simulate(r, cost);
      BOOST_TEST(r.plan.fits(), offload::format_bytes(b));
      BOOST_TEST(sim_peak(sim) <= b, offload::format_bytes(b) << ": " << r.plan.policy.str());
      BOOST_TEST(sim_peak(sim) == r.device_peak_bytes, offload::format_bytes(b));
      BOOST_TEST(close(sim.seconds, r.predicted_seconds), offload::format_bytes(b) << ": " << r.plan.policy.str());
      BOOST_TEST(r.predicted_seconds <= previous * (1 + 1e-12), offload::format_bytes(b));
      if (pinned) BOOST_TEST(r.pinned_bytes <= *pinned);
      previous = r.predicted_seconds;
    }
  }
}

BOOST_AUTO_TEST_CASE(on_a_tight_budget_components_leave_and_the_time_stays_minimal) {
  // 8 GiB: the encoder (6 + 1) cannot share the device; the decoder's 5 GiB workspace neither.
  const auto r = offload::plan_for_budget(stages, comps, options(8_GiB, 0));
  const auto cost = offload::cost_model::defaults();
  BOOST_TEST(r.plan.fits());
  for (const auto& c : comps) {
    BOOST_TEST(!r.plan.policy.of(c.name).execute_on.is_host(), c.name);
    BOOST_TEST(onloads_of(r.plan, c.name) == 1, c.name); // each copied once: no time lost
  }
  BOOST_TEST(r.pinned_bytes == 0);
  BOOST_TEST(close(r.predicted_seconds, 22.5 + cost.transfer_seconds(11_GiB, offload::host_memory::pageable)));
  // encode: enc + its workspace + the decoder, which may stay (it fits exactly).
  BOOST_TEST(r.device_peak_bytes == 8_GiB);
  BOOST_TEST(sim_peak(simulate(r, cost)) == 8_GiB);
}

BOOST_AUTO_TEST_CASE(the_pinned_budget_pins_what_saves_the_most) {
  const auto cost = offload::cost_model::defaults();
  // Unlimited device: everything resident, each copied once; pin what fits and saves most.
  const auto five = offload::plan_for_budget(stages, comps, options(std::nullopt, 5_GiB));
  BOOST_TEST((five.plan.policy.of("den").memory == offload::host_memory::pinned)); // 4 + 1 GiB
  BOOST_TEST((five.plan.policy.of("dec").memory == offload::host_memory::pinned));
  BOOST_TEST((five.plan.policy.of("enc").memory == offload::host_memory::pageable));
  BOOST_TEST(five.pinned_bytes == 5_GiB);
  const auto six = offload::plan_for_budget(stages, comps, options(std::nullopt, 6_GiB));
  BOOST_TEST((six.plan.policy.of("enc").memory == offload::host_memory::pinned)); // 6 GiB saves more than 5
  BOOST_TEST(six.pinned_bytes == 6_GiB);
  BOOST_TEST(six.predicted_seconds < five.predicted_seconds);
  BOOST_TEST(close(six.transfer_seconds, cost.transfer_seconds(6_GiB, offload::host_memory::pinned) +
                                             cost.transfer_seconds(5_GiB, offload::host_memory::pageable)));
}

BOOST_AUTO_TEST_CASE(pinned_masters_count_at_their_packed_size_in_the_pinned_and_host_budgets) {
  // Pinned, masters take their power-of-two chunks (component_info::pinned_bytes): here enc 6.5
  // GiB for its 6, den 4.25 for its 4; dec says nothing (its bytes).
  auto c = comps;
  c[0].pinned_bytes = 6_GiB + 512_MiB;
  c[1].pinned_bytes = 4_GiB + 256_MiB;
  // 6 GiB no longer holds enc pinned: den and dec are, in 5.25 GiB.
  const auto six = offload::plan_for_budget(stages, c, options(std::nullopt, 6_GiB));
  BOOST_TEST((six.plan.policy.of("enc").memory == offload::host_memory::pageable), six.plan.policy.str());
  BOOST_TEST((six.plan.policy.of("den").memory == offload::host_memory::pinned));
  BOOST_TEST((six.plan.policy.of("dec").memory == offload::host_memory::pinned));
  BOOST_TEST(six.pinned_bytes == 5_GiB + 256_MiB);
  BOOST_TEST(six.host_peak_bytes == 11_GiB + 256_MiB); // the masters, den's in its chunks
  // 6.5 GiB does, and enc saves the most.
  const auto more = offload::plan_for_budget(stages, c, options(std::nullopt, 6_GiB + 512_MiB));
  BOOST_TEST((more.plan.policy.of("enc").memory == offload::host_memory::pinned), more.plan.policy.str());
  BOOST_TEST(more.pinned_bytes == 6_GiB + 512_MiB);
  BOOST_TEST(more.host_peak_bytes == 11_GiB + 512_MiB);
  // The host budget holds the chunks too: 11.25 GiB leaves enc pageable although pinned memory is
  // unlimited.
  const auto host = offload::plan_for_budget(stages, c, options(std::nullopt, std::nullopt, 11_GiB + 256_MiB));
  BOOST_TEST((host.plan.policy.of("enc").memory == offload::host_memory::pageable), host.plan.policy.str());
  BOOST_TEST(host.pinned_bytes == 5_GiB + 256_MiB);
  BOOST_TEST(host.host_peak_bytes == 11_GiB + 256_MiB);
  // Without the packed sizes, 6 GiB pins enc (the_pinned_budget_pins_what_saves_the_most).
  const auto plain = offload::plan_for_budget(stages, comps, options(std::nullopt, 6_GiB));
  BOOST_TEST((plain.plan.policy.of("enc").memory == offload::host_memory::pinned));
  BOOST_TEST(plain.host_peak_bytes == 11_GiB);
}

BOOST_AUTO_TEST_CASE(host_execution_when_the_device_cannot_hold_a_stage) {
  // 6 GiB: encode needs 7 GiB on the device, so the encoder executes on the host, slowed down.
  auto opt = options(6_GiB);
  opt.cost.host_flops_per_second = opt.cost.accelerator_flops_per_second / 100; // 100x slower
  const auto r = offload::plan_for_budget(stages, comps, opt);
  BOOST_TEST(r.plan.policy.of("enc").execute_on.is_host());
  BOOST_TEST(!r.plan.policy.of("den").execute_on.is_host());
  BOOST_TEST(!r.plan.policy.of("dec").execute_on.is_host());
  BOOST_TEST(close(r.compute_seconds, 0.5 * 100 + 20 + 2));
  BOOST_TEST(r.plan.step("encode")->seconds == 50.0); // the plan carries the slowed-down stage
  BOOST_TEST(r.host_peak_bytes == 11_GiB + 1_GiB);   // masters + the encoder's workspace on the host
  const auto sim = simulate(r, opt.cost);
  BOOST_TEST(sim_peak(sim) <= 6_GiB);
  BOOST_TEST(close(sim.seconds, r.predicted_seconds));
}

BOOST_AUTO_TEST_CASE(evict_on_demand_is_chosen_when_it_saves_a_copy) {
  // a is used by s1 and s3, c needs room at s4: static rules copy a twice (it leaves after s1, as
  // s2 does not use it); evicting on demand keeps it until c arrives.
  const std::vector<offload::component_info> abc = {{"a", 4_GiB}, {"b", 1_GiB}, {"c", 5_GiB}};
  const std::vector<offload::stage> st = {{"s1", {"a"}, {}, 1, 1.0},
                                          {"s2", {"b"}, {}, 1, 1.0},
                                          {"s3", {"a"}, {}, 1, 1.0},
                                          {"s4", {"c"}, {}, 1, 1.0}};
  // Without prefetch (with it, the second copy of a hides behind s2 and both plans take as long).
  auto opt = options(8_GiB);
  opt.allow_prefetch = false;
  const auto r = offload::plan_for_budget(st, abc, opt);
  BOOST_TEST(r.plan.policy.evict_on_demand);
  BOOST_TEST(r.plan.policy.str() == "a=cuda:resident:pinned,b=cuda:resident:pinned,c=cuda:resident:pinned,evict_on_demand");
  BOOST_TEST(onloads_of(r.plan, "a") == 1);
  const auto& s4 = *r.plan.step("s4");
  BOOST_TEST_REQUIRE(s4.before.size() == 2u);
  BOOST_TEST(s4.before[0].component == "a");
  BOOST_TEST((s4.before[0].kind == offload::action_kind::evict));
  BOOST_TEST(r.device_peak_bytes == 6_GiB); // b + c at s4; a + b before
  const auto sim = simulate(r, offload::cost_model::defaults(), abc);
  BOOST_TEST(sim_peak(sim) == 6_GiB);
  BOOST_TEST(close(sim.seconds, r.predicted_seconds));
  // Without it the same budget costs one more copy of a.
  auto no_eod = opt;
  no_eod.allow_evict_on_demand = false;
  const auto s = offload::plan_for_budget(st, abc, no_eod);
  BOOST_TEST(onloads_of(s.plan, "a") == 2);
  BOOST_TEST(s.predicted_seconds > r.predicted_seconds);
}

BOOST_AUTO_TEST_CASE(nothing_fits_names_the_binding_stage_and_the_shortfall) {
  auto opt = options(5_GiB);
  opt.allow_host_execution = false;
  try {
    (void)offload::plan_for_budget(stages, comps, opt);
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    // The least device memory: each component only during its stage; encode needs 6 + 1 GiB.
    BOOST_TEST(e.id() == "offload.capacity.no_placement_fits");
    BOOST_TEST(e.stage() == "encode");
    BOOST_TEST(e.device() == "mock:0");
    BOOST_TEST(e.needed() == 7_GiB);
    BOOST_TEST(e.available() == 5_GiB);
    const std::string m = e.what();
    BOOST_TEST(m.find("in stage 'encode' (enc 6.00 GiB + workspace 1.00 GiB), short by 2.00 GiB") != std::string::npos, m);
    BOOST_TEST(m.find("a device budget of at least 7.00 GiB") != std::string::npos, m);
    BOOST_TEST(m.find("the components of stage 'encode' alone need 6.00 GiB") != std::string::npos, m);
  }
  // 6.5 GiB: a smaller workspace would do.
  opt.budgets.device = 6_GiB + 512_MiB;
  try {
    (void)offload::plan_for_budget(stages, comps, opt);
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.needed() - e.available() == 512_MiB);
    BOOST_TEST(std::string(e.what()).find("a workspace in stage 'encode' smaller by 512.00 MiB") != std::string::npos);
  }
  // The suggested device budget fits.
  opt.budgets.device = 7_GiB;
  BOOST_TEST(offload::plan_for_budget(stages, comps, opt).plan.fits());
}

BOOST_AUTO_TEST_CASE(the_host_budget_binds_host_execution_and_the_masters) {
  // Device 6 GiB: encode must run on the host, whose workspace needs 11 + 1 GiB of host memory.
  try {
    (void)offload::plan_for_budget(stages, comps, options(6_GiB, std::nullopt, 11_GiB + 512_MiB));
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.stage() == "encode");
    const std::string m = e.what();
    BOOST_TEST(m.find("a device budget of at least 7.00 GiB") != std::string::npos, m);
    BOOST_TEST(m.find("a host budget of at least 12.00 GiB (running enc on the host)") != std::string::npos, m);
  }
  BOOST_TEST(offload::plan_for_budget(stages, comps, options(6_GiB, std::nullopt, 12_GiB)).plan.fits());
  // The masters alone exceed the host budget: stage 'init' on the host.
  try {
    (void)offload::plan_for_budget(stages, comps, options(std::nullopt, std::nullopt, 10_GiB));
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.stage() == "init");
    BOOST_TEST(e.device() == "cpu");
    BOOST_TEST(e.needed() - e.available() == 1_GiB);
    BOOST_TEST(std::string(e.what()).find("a host budget of at least 11.00 GiB") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(the_json_report_carries_the_policy_and_prediction) {
  const auto r = offload::plan_for_budget(stages, comps, options(8_GiB, 1_GiB));
  const std::string j = r.json();
  BOOST_TEST(j.find("\"planner\":{\"policy\":\"" + r.plan.policy.str() + "\"") != std::string::npos, j);
  BOOST_TEST(j.find("\"budgets\":{\"device\":8589934592,\"pinned\":1073741824,\"host\":null}") != std::string::npos, j);
  BOOST_TEST(r.summary().find(r.plan.policy.str()) != std::string::npos);
  // The chosen policy's text parses back to the same policy and plans alike.
  const auto again = offload::schedule(stages, comps, offload::parse_policy(r.plan.policy.str()),
                                       {.accelerator = gpu, .devices = {{gpu, 8_GiB}}});
  BOOST_TEST(again.peak_of(gpu) == r.device_peak_bytes);
}

/// An 11 GiB denoiser: 10 blocks of 1 GiB (slot 1 GiB) and 1 GiB of the rest, after a 2 GiB
/// encoder; its 20 denoising steps each pass through every block.
const offload::component_info streamed_den{"den", 11_GiB,
                                           offload::block_layout{std::vector<std::int64_t>(10, 1_GiB), 1_GiB}};
const std::vector<offload::component_info> enc_den = {{"enc", 2_GiB}, streamed_den};
const std::vector<offload::stage> encode_denoise = {{"encode", {"enc"}, {{"enc", 1_GiB}}, 1, 0.5},
                                                    {"denoise", {"den"}, {{"den", 2_GiB}}, 20, 1.0}};

/// The stages of `encode_denoise` with `step` seconds per denoising step.
std::vector<offload::stage> encode_denoise_at(double step) {
  return {{"encode", {"enc"}, {{"enc", 1_GiB}}, 1, 0.5}, {"denoise", {"den"}, {{"den", 2_GiB}}, 20, step}};
}

/// What the runtime's slot model adds to the compute of 20 denoising steps of `step` seconds (a
/// tenth per block) when the 10 blocks of `blocks` stream through `slots` slots, one block
/// prefetched, from a pinned master.
double slot_model_added(int slots, double step, const offload::block_layout& blocks, const offload::cost_model& cost) {
  offload::detail::slot_schedule model(10, slots, 1);
  std::int64_t bytes = 0;
  const double timed = model.run_passes_timed(20, blocks, cost.h2d_pinned_bytes_per_second,
                                              std::vector<double>(10, step / 10), true, bytes);
  return timed - 20 * step;
}

/// What the planner prices the block copies of `streamed_den` with `slots` slots (one block
/// prefetched) at over 20 denoising steps of `step` seconds, from a pinned master: what the
/// runtime's slot model adds to the compute, but at least one full copy of its 10 blocks (each
/// is brought in once after the onload, as a whole onload would copy it).
double pinned_block_seconds(int slots, double step, const offload::cost_model& cost) {
  return std::max(slot_model_added(slots, step, *streamed_den.blocks, cost),
                  cost.transfer_seconds(10_GiB, offload::host_memory::pinned));
}

BOOST_AUTO_TEST_CASE(streaming_is_chosen_when_the_whole_denoiser_does_not_fit) {
  // On a 6 GiB device the denoiser fits only streamed: the rest + its 2 GiB workspace leave room
  // for 3 slots. With one block prefetched, 3 slots keep one block from some steps to the next.
  const auto& c = enc_den;
  const auto& st = encode_denoise;
  const auto cost = offload::cost_model::defaults();
  const auto r = offload::plan_for_budget(st, c, options(6_GiB));
  const auto& cp = r.plan.policy.of("den");
  BOOST_TEST(!cp.execute_on.is_host());
  BOOST_TEST((cp.stream == offload::stream_options{3, 1}));
  BOOST_TEST((cp.memory == offload::host_memory::pinned));
  BOOST_TEST(r.plan.fits());
  BOOST_TEST(r.device_peak_bytes == 6_GiB);
  BOOST_TEST(r.plan.device_bytes.at("den") == 4_GiB);
  // The first step copies the 10 blocks, the later ones 8 or 9 (the slot that is free keeps a
  // block for the next step: 10, 8, 9, 9, 9, 8, 9, 9, 9, 8, ...; 176 in 20 steps against 200 with
  // two slots). From pinned memory those copies overlap the blocks' compute (0.1 s each against
  // 0.02 s per copy), except where a step must wait for its first block: the planner prices them at
  // what the slot model adds (15 copies), at least the first step's 10. Plus one pinned copy of the
  // encoder and one of the rest.
  BOOST_TEST(!r.plan.policy.prefetch);
  const std::int64_t blocks = 176_GiB;
  BOOST_TEST(r.plan.step("denoise")->streamed_bytes.at("den") == blocks);
  const double copies = pinned_block_seconds(3, 1.0, cost);
  BOOST_TEST(close(copies, cost.transfer_seconds(15_GiB, offload::host_memory::pinned)), copies);
  const double expected = 0.5 + 20 * 1.0 + cost.transfer_seconds(3_GiB, offload::host_memory::pinned) + copies;
  BOOST_TEST(close(r.predicted_seconds, expected), r.predicted_seconds << " vs " << expected);
  BOOST_TEST(close(r.plan.step("denoise")->stream_seconds, copies));
  // The simulation reproduces the prediction and the peak (streamed footprint, plan_step::stream_seconds).
  const auto sim = simulate(r, cost, c);
  BOOST_TEST(sim_peak(sim) == r.device_peak_bytes);
  BOOST_TEST(close(sim.seconds, r.predicted_seconds), sim.seconds << " vs " << r.predicted_seconds);
  // The scheduler's own plan of the chosen policy peaks where the planner says, and with the
  // pinned bandwidth it times the block copies as the planner does (beyond the first step's).
  const auto again = offload::schedule(st, c, offload::parse_policy(r.plan.policy.str()),
                                       {.accelerator = gpu, .devices = {{gpu, std::nullopt, cost.h2d_pinned_bytes_per_second}}});
  BOOST_TEST(again.peak_of(gpu) == r.device_peak_bytes);
  BOOST_TEST(close(again.step("denoise")->stream_seconds, copies));

  // Without streaming, the denoiser runs on the host: slower.
  auto no_stream = options(6_GiB);
  no_stream.allow_streaming = false;
  const auto h = offload::plan_for_budget(st, c, no_stream);
  BOOST_TEST(h.plan.policy.of("den").execute_on.is_host());
  BOOST_TEST(h.predicted_seconds > r.predicted_seconds);
  // With room for the whole denoiser, nothing is streamed (the copies would only cost time).
  const auto roomy = offload::plan_for_budget(st, c, options(20_GiB));
  BOOST_TEST(!roomy.plan.policy.of("den").stream.enabled());
}

/// Plans `encode_denoise` at `step` seconds per denoising step for device budgets of 5 to 12 GiB,
/// where the whole denoiser does not fit (its 11 GiB + 2 GiB of workspace), and checks each choice
/// against the slot model. The rest (1 GiB) and the workspace (2 GiB) leave budget - 3 GiB for
/// slots of 1 GiB; of the planner's slot counts (2, 3, 4, 6, 8, 10, each with one block
/// prefetched; one slot without is slower wherever two fit) that fit, it takes the fewest
/// whose block copies cost the least (pinned_block_seconds): more slots only where they hide or
/// save copies. Returns the slots per budget.
std::vector<int> check_slots_against_the_slot_model(double step) {
  const auto cost = offload::cost_model::defaults();
  const auto st = encode_denoise_at(step);
  std::vector<int> chosen;
  for (std::int64_t b = 5_GiB; b <= 12_GiB; b += 1_GiB) {
    const auto where = fmt::format("{} s per step, {}", step, offload::format_bytes(b));
    const auto r = offload::plan_for_budget(st, enc_den, options(b));
    const auto& cp = r.plan.policy.of("den");
    BOOST_TEST_REQUIRE(!cp.execute_on.is_host(), where);
    BOOST_TEST_REQUIRE(cp.stream.enabled(), where << ": " << r.plan.policy.str());
    BOOST_TEST((cp.memory == offload::host_memory::pinned), where);
    const int room = static_cast<int>((b - 3_GiB) / 1_GiB);
    int slots = 0;
    double least = std::numeric_limits<double>::infinity();
    for (const int k : {2, 3, 4, 6, 8, 10})
      if (k <= room) {
        const double t = pinned_block_seconds(k, step, cost);
        if (t < least * (1 - 1e-12)) least = t, slots = k;
      }
    BOOST_TEST((cp.stream == offload::stream_options{slots, 1}), where << ": " << r.plan.policy.str());
    // The bytes of the runtime's slot decisions over the 20 steps.
    offload::detail::slot_schedule model(10, slots, 1);
    BOOST_TEST(r.plan.step("denoise")->streamed_bytes.at("den") == model.run_passes(20, *streamed_den.blocks), where);
    // Compute, the encoder's copy, the rest's unless it moved during the encode, the blocks'.
    BOOST_TEST(close(r.predicted_seconds,
                     0.5 + 20 * step + cost.transfer_seconds(2_GiB, offload::host_memory::pinned) +
                         (r.plan.policy.prefetch ? 0.0 : cost.transfer_seconds(1_GiB, offload::host_memory::pinned)) +
                         least),
               where << ": " << r.predicted_seconds);
    BOOST_TEST(r.device_peak_bytes <= b, where);
    const auto sim = simulate(r, cost, enc_den);
    BOOST_TEST(sim_peak(sim) == r.device_peak_bytes, where);
    BOOST_TEST(close(sim.seconds, r.predicted_seconds), where << ": " << sim.seconds << " vs " << r.predicted_seconds);
    chosen.push_back(slots);
  }
  // Below 5 GiB two slots do not fit, one does: the denoiser streams through it without prefetch,
  // each copy waiting for the block before it to compute, so all 200 copies count in full.
  const auto one = offload::plan_for_budget(st, enc_den, options(5_GiB - 1));
  BOOST_TEST((one.plan.policy.of("den").stream == offload::stream_options{1, 0}), one.plan.policy.str());
  BOOST_TEST(one.plan.step("denoise")->streamed_bytes.at("den") == 200_GiB);
  BOOST_TEST(close(one.predicted_seconds, 0.5 + 20 * step + cost.transfer_seconds(203_GiB, offload::host_memory::pinned)),
             one.predicted_seconds);
  BOOST_TEST(one.device_peak_bytes == 4_GiB);
  // Below 4 GiB not even one slot fits beside the rest and the workspace: it runs on the host.
  BOOST_TEST(offload::plan_for_budget(st, enc_den, options(4_GiB - 1)).plan.policy.of("den").execute_on.is_host());
  // From 14 GiB on the whole denoiser fits and moves during the encode.
  const auto whole = offload::plan_for_budget(st, enc_den, options(14_GiB));
  BOOST_TEST(!whole.plan.policy.of("den").stream.enabled(), whole.plan.policy.str());
  BOOST_TEST(whole.plan.policy.prefetch);
  return chosen;
}

BOOST_AUTO_TEST_CASE(more_slots_only_where_they_hide_more_copies) {
  // 1 s per step: a block computes for 0.1 s, its copy takes 0.02 s, so from pinned memory the
  // copies hide except where a step waits for its first block. 2 slots wait every step, 3 and 4
  // in 15 of 20, 6 only once per block (the floor: each block's first copy). So the slots stop
  // at 6 and the peak stays below the budget from 10 GiB on: memory the copies would not repay.
  const auto slots = check_slots_against_the_slot_model(1.0);
  BOOST_TEST(slots == (std::vector<int>{2, 3, 3, 3, 6, 6, 6, 6}), fmt::format("{}", fmt::join(slots, " ")));
  const auto cost = offload::cost_model::defaults();
  BOOST_TEST(close(pinned_block_seconds(3, 1.0, cost), pinned_block_seconds(4, 1.0, cost)));
  BOOST_TEST(close(pinned_block_seconds(6, 1.0, cost), pinned_block_seconds(10, 1.0, cost)));
  // At 13 GiB the whole denoiser would fit, but it cannot move during the encode (2 + 1 + 11 GiB);
  // streamed in 6 slots its rest does, and its blocks' first copies cost what the whole copy
  // would: faster, at an 11 GiB peak.
  const auto r = offload::plan_for_budget(encode_denoise, enc_den, options(13_GiB));
  BOOST_TEST((r.plan.policy.of("den").stream == offload::stream_options{6, 1}), r.plan.policy.str());
  BOOST_TEST(r.plan.policy.prefetch);
  BOOST_TEST(r.device_peak_bytes == 11_GiB);
  BOOST_TEST(close(r.predicted_seconds, 20.5 + cost.transfer_seconds(12_GiB, offload::host_memory::pinned)),
             r.predicted_seconds);
  auto whole = options(13_GiB);
  whole.allow_streaming = false;
  const auto w = offload::plan_for_budget(encode_denoise, enc_den, whole);
  BOOST_TEST(close(w.predicted_seconds, 20.5 + cost.transfer_seconds(13_GiB, offload::host_memory::pinned)),
             w.predicted_seconds);
}

BOOST_AUTO_TEST_CASE(the_slot_count_grows_with_the_budget_where_copies_show) {
  // 0.05 s per step: a block computes for 5 ms, its copy takes 20 ms; copies cannot hide, and each
  // slot more keeps more blocks from one step to the next. The planner takes the most slots that
  // fit, and each slot more is faster.
  const auto slots = check_slots_against_the_slot_model(0.05);
  BOOST_TEST(slots == (std::vector<int>{2, 3, 4, 4, 6, 6, 8, 8}), fmt::format("{}", fmt::join(slots, " ")));
  const auto cost = offload::cost_model::defaults();
  for (std::size_t i = 1; i < slots.size(); ++i)
    if (slots[i] > slots[i - 1])
      BOOST_TEST(pinned_block_seconds(slots[i], 0.05, cost) < pinned_block_seconds(slots[i - 1], 0.05, cost));
}

BOOST_AUTO_TEST_CASE(a_master_too_large_to_pin_streams_from_pageable_memory) {
  // A pinned budget below the denoiser's 11 GiB: its blocks stream from pageable memory, each
  // copy holding the host (nothing overlaps), instead of the denoiser running on the host.
  const auto cost = offload::cost_model::defaults();
  const auto pinned = offload::plan_for_budget(encode_denoise, enc_den, options(6_GiB));
  const auto r = offload::plan_for_budget(encode_denoise, enc_den, options(6_GiB, 10_GiB));
  const auto& cp = r.plan.policy.of("den");
  BOOST_TEST(!cp.execute_on.is_host());
  BOOST_TEST((cp.stream == offload::stream_options{3, 1}));
  BOOST_TEST((cp.memory == offload::host_memory::pageable));
  BOOST_TEST((r.plan.policy.of("enc").memory == offload::host_memory::pinned)); // 2 GiB fits the budget
  BOOST_TEST(r.pinned_bytes == 2_GiB);
  const std::int64_t blocks = 176_GiB; // as pinned
  const double expected = 0.5 + 20 * 1.0 + cost.transfer_seconds(2_GiB, offload::host_memory::pinned) +
                          cost.transfer_seconds(1_GiB + blocks, offload::host_memory::pageable);
  BOOST_TEST(close(r.predicted_seconds, expected), r.predicted_seconds << " vs " << expected);
  BOOST_TEST(r.predicted_seconds > pinned.predicted_seconds);
  const auto sim = simulate(r, cost, enc_den);
  BOOST_TEST(sim_peak(sim) == r.device_peak_bytes);
  BOOST_TEST(close(sim.seconds, r.predicted_seconds), sim.seconds << " vs " << r.predicted_seconds);
  // Nothing to pin at all: the same stream, the encoder's copy pageable too.
  const auto none = offload::plan_for_budget(encode_denoise, enc_den, options(6_GiB, 0));
  BOOST_TEST(none.plan.policy.of("den").stream.enabled());
  BOOST_TEST(none.pinned_bytes == 0);
  BOOST_TEST(none.predicted_seconds > r.predicted_seconds);
}

/// A 12 GiB denoiser (10 blocks of 1 GiB + 2 GiB of the rest) whose storage rule offers bf16 (6 GiB:
/// blocks of 512 MiB, the rest 1 GiB) and fp16 (the same sizes); `exact_bf16`: bf16 computes the
/// same bits (stored_size::exact).
offload::component_info stored_denoiser(bool exact_bf16) {
  offload::component_info den{"den", 12_GiB, offload::block_layout{std::vector<std::int64_t>(10, 1_GiB), 1_GiB}};
  const offload::block_layout half{std::vector<std::int64_t>(10, 512_MiB), 512_MiB};
  den.storage = {{offload::storage_dtype::bf16, 6_GiB, half, exact_bf16},
                 {offload::storage_dtype::fp16, 6_GiB, half, false}};
  return den;
}

BOOST_AUTO_TEST_CASE(exact_storage_is_chosen_where_it_saves_memory_or_copies) {
  const std::vector<offload::stage> st = {{"encode", {"enc"}, {{"enc", 1_GiB}}, 1, 0.5},
                                          {"denoise", {"den"}, {{"den", 2_GiB}}, 20, 1.0}};
  const auto cost = offload::cost_model::defaults();
  const double pinned = cost.h2d_pinned_bytes_per_second;
  const std::vector<offload::component_info> c = {{"enc", 2_GiB}, stored_denoiser(true)};

  // 9 GiB: the whole native denoiser (12 + 2 GiB) cannot stay; stored in bf16 it can (6 + 2 GiB),
  // which beats streaming it natively. The encoder leaves after use to make room (it is copied
  // once either way); the denoiser moves during the encode (prefetch: its 0.12 s copy hides behind
  // 0.5 s), so the peak is in encode: 2 + 6 + 1 GiB of workspace.
  const auto r = offload::plan_for_budget(st, c, options(9_GiB));
  const auto& cp = r.plan.policy.of("den");
  BOOST_TEST(!cp.execute_on.is_host());
  BOOST_TEST((cp.store == offload::storage_dtype::bf16), r.plan.policy.str());
  BOOST_TEST(!cp.stream.enabled(), r.plan.policy.str());
  BOOST_TEST(r.plan.fits());
  BOOST_TEST(r.device_peak_bytes == 2_GiB + 6_GiB + 1_GiB);
  BOOST_TEST(r.plan.step("denoise")->peak_bytes.at(gpu) == 6_GiB + 2_GiB);
  BOOST_TEST(onloads_of(r.plan, "den") == 1);
  BOOST_TEST(r.plan.step("encode")->prefetch.size() == 1u);
  BOOST_TEST(close(r.predicted_seconds, 0.5 + 20 * 1.0 + static_cast<double>(2_GiB) / pinned), r.predicted_seconds);
  BOOST_TEST(r.pinned_bytes == 8_GiB); // the stored master is what is pinned
  const auto sim = simulate(r, cost, c);
  BOOST_TEST(sim_peak(sim) == r.device_peak_bytes);
  BOOST_TEST(close(sim.seconds, r.predicted_seconds), sim.seconds << " vs " << r.predicted_seconds);
  // The policy text parses back and plans alike.
  const auto again = offload::schedule(st, c, offload::parse_policy(r.plan.policy.str()), {.accelerator = gpu});
  BOOST_TEST(again.peak_of(gpu) == r.device_peak_bytes);

  // 5 GiB: even stored it streams, moving half the bytes of a native stream per block (which
  // would need 2 + 2 + 2 = 6 GiB in denoise with 2 slots anyway). 4 slots of 512 MiB would fit
  // (1 GiB of the rest + 2 GiB + 2 GiB workspace = 5 GiB in denoise), but from pinned memory a
  // block's copy (0.01 s) hides behind a block's compute (0.1 s) with 3 slots as well as with 4:
  // in the slot model both wait for a block in 15 of the 20 steps. Equal times: the lower peak
  // wins, 3 slots, 4.5 GiB, copying 176 blocks in 20 steps (152 with 4).
  const auto s = offload::plan_for_budget(st, c, options(5_GiB));
  const auto& sp = s.plan.policy.of("den");
  BOOST_TEST((sp.store == offload::storage_dtype::bf16), s.plan.policy.str());
  BOOST_TEST((sp.stream == offload::stream_options{3, 1}), s.plan.policy.str());
  BOOST_TEST(s.plan.device_bytes.at("den") == 2_GiB + 512_MiB);
  BOOST_TEST(s.plan.step("denoise")->streamed_bytes.at("den") == 176 * 512_MiB);
  BOOST_TEST(s.device_peak_bytes == 4_GiB + 512_MiB);
  BOOST_TEST(s.plan.step("denoise")->peak_bytes.at(gpu) == 4_GiB + 512_MiB);
  const offload::block_layout half{std::vector<std::int64_t>(10, 512_MiB), 512_MiB};
  const double copy = static_cast<double>(512_MiB) / pinned;
  const double added3 = slot_model_added(3, 1.0, half, cost), added4 = slot_model_added(4, 1.0, half, cost);
  BOOST_TEST(close(added3, 15 * copy), added3);
  BOOST_TEST(close(added4, 15 * copy), added4);
  BOOST_TEST(close(s.plan.step("denoise")->stream_seconds, 15 * copy));
  BOOST_TEST(close(s.predicted_seconds, 0.5 + 20 * 1.0 + (2_GiB + 1_GiB) / pinned + 15 * copy), s.predicted_seconds);

  // Unlimited, without prefetch: resident either way; the one copy at init is halved, so bf16 wins
  // on time. With prefetch the copy hides behind the encode either way (0.24 s native), so the tie
  // goes to the native storage, one step closer to all-resident.
  auto unlimited = options(std::nullopt);
  unlimited.allow_prefetch = false;
  const auto u = offload::plan_for_budget(st, c, unlimited);
  BOOST_TEST((u.plan.policy.of("den").store == offload::storage_dtype::bf16), u.plan.policy.str());
  BOOST_TEST((u.plan.policy.of("den").evict == offload::evict_rule::never));
  const auto up = offload::plan_for_budget(st, c, options(std::nullopt));
  BOOST_TEST(up.plan.policy.str() == "den=cuda:lazy:pinned,enc=cuda:resident:pinned,prefetch");
  BOOST_TEST(close(up.predicted_seconds, 0.5 + 20 * 1.0 + static_cast<double>(2_GiB) / pinned), up.predicted_seconds);

  // A storage that is not exact is never chosen: the 12 GiB denoiser streams natively on 9 GiB.
  const std::vector<offload::component_info> inexact = {{"enc", 2_GiB}, stored_denoiser(false)};
  const auto n = offload::plan_for_budget(st, inexact, options(9_GiB));
  BOOST_TEST((n.plan.policy.of("den").store == offload::storage_dtype::native), n.plan.policy.str());
  BOOST_TEST(n.plan.policy.of("den").stream.enabled(), n.plan.policy.str());
  BOOST_TEST(n.predicted_seconds > r.predicted_seconds);
  // Nor when exact storage is turned off: the same plan as the inexact one.
  auto off = options(9_GiB);
  off.allow_exact_storage = false;
  const auto o = offload::plan_for_budget(st, c, off);
  BOOST_TEST(o.plan.policy.str() == n.plan.policy.str());
  BOOST_TEST(close(o.predicted_seconds, n.predicted_seconds));
}

BOOST_AUTO_TEST_CASE(exact_storage_counts_in_the_host_and_pinned_budgets) {
  const std::vector<offload::stage> st = {{"encode", {"enc"}, {{"enc", 1_GiB}}, 1, 0.5},
                                          {"denoise", {"den"}, {{"den", 2_GiB}}, 20, 1.0}};
  const std::vector<offload::component_info> c = {{"enc", 2_GiB}, stored_denoiser(true)};
  // Host memory for the masters: 2 + 12 GiB natively, 2 + 6 stored. With 10 GiB the denoiser
  // must be stored, so it must execute on the accelerator (host execution keeps it native).
  const auto r = offload::plan_for_budget(st, c, options(std::nullopt, std::nullopt, 10_GiB));
  BOOST_TEST((r.plan.policy.of("den").store == offload::storage_dtype::bf16), r.plan.policy.str());
  BOOST_TEST(r.host_peak_bytes == 8_GiB);
  // 7 GiB of host memory fit no placement; the message asks for the stored masters' 8 GiB.
  try {
    (void)offload::plan_for_budget(st, c, options(std::nullopt, std::nullopt, 7_GiB));
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.device() == "cpu");
    BOOST_TEST(e.needed() == 8_GiB);
    BOOST_TEST(std::string(e.what()).find("a host budget of at least 8.00 GiB") != std::string::npos, e.what());
  }
  // Streaming pins the whole master: 6 GiB stored fits a 6 GiB pinned budget, 12 native would not.
  const auto p = offload::plan_for_budget(st, c, options(5_GiB, 6_GiB));
  BOOST_TEST(p.plan.policy.of("den").stream.enabled(), p.plan.policy.str());
  BOOST_TEST((p.plan.policy.of("den").store == offload::storage_dtype::bf16));
  BOOST_TEST(p.pinned_bytes == 6_GiB);
}

BOOST_AUTO_TEST_CASE(tiles_are_the_users_and_carried_into_every_policy) {
  offload::component_info dec{"dec", 1_GiB};
  dec.tileable = true;
  const std::vector<offload::component_info> c = {{"enc", 6_GiB}, {"den", 4_GiB}, dec};
  auto opt = options(8_GiB);
  opt.tiles["dec"] = offload::tile_options{32, 8};
  const auto r = offload::plan_for_budget(stages, c, opt);
  BOOST_TEST((r.plan.policy.of("dec").tile == offload::tile_options{32, 8}), r.plan.policy.str());
  BOOST_TEST(r.plan.policy.str().find("tile=32:overlap=8") != std::string::npos, r.plan.policy.str());
  // Without tiles the same stages plan alike but for the option.
  const auto u = offload::plan_for_budget(stages, c, options(8_GiB));
  BOOST_TEST(!u.plan.policy.of("dec").tile.enabled());
  BOOST_TEST(u.device_peak_bytes == r.device_peak_bytes);
  // Tiles for a component that does not run tiled, or that does not exist, are config errors.
  auto bad = options(8_GiB);
  bad.tiles["den"] = offload::tile_options{32, 8};
  BOOST_CHECK_EXCEPTION(offload::plan_for_budget(stages, c, bad), offload::config_error,
                        [](const offload::config_error& e) { return e.id() == "offload.config.not_tileable"; });
  auto unknown = options(8_GiB);
  unknown.tiles["vae"] = offload::tile_options{32, 8};
  BOOST_CHECK_EXCEPTION(offload::plan_for_budget(stages, c, unknown), offload::config_error, [](const offload::config_error& e) {
    return e.id() == "offload.config.unknown_component" &&
           std::string(e.what()).find("(enc, den, dec)") != std::string::npos;
  });
}

BOOST_AUTO_TEST_CASE(bad_inputs_are_config_errors) {
  BOOST_CHECK_THROW(offload::plan_for_budget(stages, comps, options(-1)), offload::config_error);
  auto opt = options(8_GiB);
  opt.cost.h2d_pageable_bytes_per_second = 0;
  BOOST_CHECK_THROW(offload::plan_for_budget(stages, comps, opt), offload::config_error);
  const std::vector<offload::stage> bad = {{"x", {"nope"}, {}}};
  BOOST_CHECK_THROW(offload::plan_for_budget(bad, comps, options(8_GiB)), offload::config_error);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(cost_model_file)

BOOST_AUTO_TEST_CASE(save_and_load_round_trip) {
  auto c = offload::cost_model::defaults();
  c.h2d_pinned_bytes_per_second = 24.5e9;
  c.host_flops_per_second = 3.25e10;
  c.host = "test host";
  c.sources["host_flops_per_second"] = "measured: fp32 matmul 1024^3";
  const auto file = std::filesystem::temp_directory_path() / "offload_cost_model_test.json";
  c.save(file);
  const auto d = offload::cost_model::load(file);
  BOOST_TEST(d.h2d_pinned_bytes_per_second == 24.5e9);
  BOOST_TEST(d.host_flops_per_second == 3.25e10);
  BOOST_TEST(d.h2d_pageable_bytes_per_second == c.h2d_pageable_bytes_per_second);
  BOOST_TEST(d.host == "test host");
  BOOST_TEST(d.sources.at("host_flops_per_second") == "measured: fp32 matmul 1024^3");
  BOOST_TEST(!d.pin_bytes_per_second); // unset stays unset
  // The pinning rate, when measured, round-trips too; a non-positive one is refused.
  c.pin_bytes_per_second = 3.5e9;
  c.save(file);
  BOOST_TEST(offload::cost_model::load(file).pin_bytes_per_second.value_or(0) == 3.5e9);
  std::filesystem::remove(file);
  BOOST_TEST(offload::testing::error_id([] {
               (void)offload::cost_model::parse(R"({"format":"offload.cost_model/1","pin_bytes_per_second":0})");
             }) == "offload.config.cost_model_value");
}

BOOST_AUTO_TEST_CASE(left_out_figures_keep_their_defaults_and_bad_ones_are_named) {
  const auto c = offload::cost_model::parse(R"({"format":"offload.cost_model/1","host_flops_per_second":5e10})");
  BOOST_TEST(c.host_flops_per_second == 5e10);
  BOOST_TEST(c.h2d_pinned_bytes_per_second == offload::cost_model::defaults().h2d_pinned_bytes_per_second);
  BOOST_TEST(c.sources.at("h2d_pinned_bytes_per_second").starts_with("default:"));
  BOOST_TEST(c.sources.at("host_flops_per_second") == "given (no source recorded)");
  auto message = [](std::string_view text) {
    try {
      (void)offload::cost_model::parse(text, "cost.json");
    } catch (const offload::config_error& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  BOOST_TEST(message(R"({"h2d_pined_bytes_per_second":1e9})").find("cost.json: unknown key 'h2d_pined_bytes_per_second'") != std::string::npos);
  BOOST_TEST(message(R"({"host_flops_per_second":-1})").find("'host_flops_per_second' is -1; expected a positive number") != std::string::npos);
  BOOST_TEST(message(R"({"host_flops_per_second":"fast"})").find("is a string; expected a number") != std::string::npos);
  BOOST_TEST(message(R"({"format":"other/2"})").find("format 'other/2'") != std::string::npos);
  BOOST_TEST(message("{").find("expected JSON") != std::string::npos);
  BOOST_CHECK_THROW(offload::cost_model::load("/nonexistent/cost.json"), offload::config_error);
}

BOOST_AUTO_TEST_SUITE_END()
