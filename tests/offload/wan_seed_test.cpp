// The seed's result (Wan2.1's --vae_cpu plan and its 11.49 GiB test), reproduced without a GPU:
// Wan T2V-1.3B as components with its real sizes and the stage workspaces measured on an H100 with
// the official Python code at 832x480, 81 frames (../shared/tools/README.md).
#include <offload/stage_scheduler.hpp>

#include <offload/testing/simulate.hpp>

#include <boost/test/unit_test.hpp>

using namespace offload::literals;
using offload::device_id;

namespace {

const device_id gpu = device_id::mock(0);

const std::vector<offload::component_info> t2v_1_3B = {
    {"t5", 10.58_GiB}, {"dit", 5.29_GiB}, {"vae", 0.47_GiB}};

const std::vector<offload::stage> t2v_stages = {
    {"text_encode", {"t5"}, {{"t5", 0.28_GiB}}},
    {"denoise", {"dit"}, {{"dit", 2.06_GiB}}, 50},
    {"decode", {"vae"}, {{"vae", 8.28_GiB}}},
};

offload::plan plan_for(std::string_view policy, std::optional<std::int64_t> capacity) {
  return offload::schedule(t2v_stages, t2v_1_3B, offload::parse_policy(policy),
                           {.accelerator = gpu, .devices = {{gpu, capacity}}});
}

using names = std::vector<std::string>;
names resident(const offload::plan& p, std::string_view stage) {
  for (const auto& s : p.steps)
    if (s.stage == stage) {
      const auto it = s.resident.find(gpu);
      return it == s.resident.end() ? names{} : it->second;
    }
  BOOST_FAIL("no stage " << stage);
  return {};
}

std::string simulated_oom_stage(const offload::plan& p) {
  try {
    (void)offload::testing::simulate(p, t2v_1_3B);
  } catch (const offload::capacity_error& e) {
    return e.stage();
  }
  return "<fits>";
}

} // namespace

BOOST_AUTO_TEST_SUITE(seed_acceptance)

BOOST_AUTO_TEST_CASE(offload_model_alone_runs_out_of_memory_at_text_encode) {
  const auto p = plan_for("offload_model", 11.49_GiB);
  BOOST_TEST(!p.fits());
  BOOST_TEST(p.failure->stage == "text_encode");
  BOOST_TEST(p.failure->during == "onload t5");
  BOOST_TEST(simulated_oom_stage(p) == "text_encode"); // the mock's simulated out-of-memory
  BOOST_TEST(p.failure_message().find("policy 'offload_model,evict_on_demand' would fit") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(the_seed_flags_fit_on_11_49_GiB) {
  for (const char* text : {"offload_model+vae_cpu", "offload_model+t5_cpu", "offload_model+t5_cpu+vae_cpu"}) {
    const auto p = plan_for(text, 11.49_GiB);
    BOOST_TEST(p.fits(), text);
    BOOST_TEST(simulated_oom_stage(p) == "<fits>", text);
  }
}

BOOST_AUTO_TEST_CASE(eviction_on_demand_evicts_the_dit_before_t5_arrives) {
  const auto p = plan_for("offload_model,evict_on_demand", 11.49_GiB);
  BOOST_TEST(p.fits());
  const auto& te = *p.step("text_encode");
  BOOST_TEST_REQUIRE(te.before.size() == 2u);
  BOOST_TEST(te.before[0].kind == offload::action_kind::evict);
  BOOST_TEST(te.before[0].component == "dit");
  BOOST_TEST(te.before[0].reason.find("needed again at 'denoise'") != std::string::npos);
  BOOST_TEST(te.before[1].component == "t5");
  BOOST_TEST((resident(p, "text_encode") == names{"t5", "vae"})); // the VAE may stay: 11.33 GiB fits
  BOOST_TEST(simulated_oom_stage(p) == "<fits>");
}

BOOST_AUTO_TEST_CASE(unlimited_peaks_match_the_h100_measurements_within_3_percent) {
  const std::pair<const char*, double> measured[] = {{"resident", 24.63},
                                                      {"offload_model", 16.64},
                                                      {"offload_model+vae_cpu", 10.86},
                                                      {"offload_model+t5_cpu", 8.75},
                                                      {"offload_model+t5_cpu+vae_cpu", 8.75}};
  for (const auto& [text, gib] : measured) {
    const auto p = plan_for(text, std::nullopt);
    const auto sim = offload::testing::simulate(p, t2v_1_3B);
    const double planned = static_cast<double>(p.peak_of(gpu)) / offload::GiB;
    const double simulated = static_cast<double>(sim.peak_bytes.at(gpu)) / offload::GiB;
    BOOST_TEST_MESSAGE(text << ": planned " << planned << " GiB, simulated " << simulated << " GiB, measured "
                            << gib << " GiB");
    BOOST_TEST(std::abs(simulated - gib) / gib <= 0.03, text << " simulated " << simulated);
    BOOST_TEST(simulated == planned, text);
  }
}

BOOST_AUTO_TEST_CASE(resident_sets_per_stage_equal_the_seed_timelines) {
  // | stage | offload_model (reference) | offload_model + vae_cpu |
  const auto ref = plan_for("offload_model", std::nullopt);
  BOOST_TEST((resident(ref, "init") == names{"dit", "vae"}));
  BOOST_TEST((resident(ref, "text_encode") == names{"t5", "dit", "vae"}));
  BOOST_TEST((resident(ref, "denoise") == names{"dit", "vae"}));
  BOOST_TEST((resident(ref, "decode") == names{"vae"}));
  const auto vae_cpu = plan_for("offload_model+vae_cpu", std::nullopt);
  BOOST_TEST((resident(vae_cpu, "init") == names{"dit"}));
  BOOST_TEST((resident(vae_cpu, "text_encode") == names{"t5"}));
  BOOST_TEST((resident(vae_cpu, "denoise") == names{"dit"}));
  BOOST_TEST((resident(vae_cpu, "decode") == names{"vae"}));
  // The VAE goes back to the host after decode (the seed: "moved to GPU only for decode").
  BOOST_TEST(vae_cpu.step("decode")->after.size() == 1u);
  BOOST_TEST(vae_cpu.step("decode")->after[0].component == "vae");
}

BOOST_AUTO_TEST_SUITE_END()
