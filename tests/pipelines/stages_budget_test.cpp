// The budget planner on the Wan presets (mock GPU): every chosen plan fits its budget in simulation,
// the predicted time never increases with the budget, an unlimited budget copies everything once and
// keeps it, and the compute model reproduces the H100 step times it was fitted to.
#include "wan/budget.hpp"
#include "wan/configs/configs.hpp"

#include <offload/testing/simulate.hpp>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <regex>

using namespace offload::literals;
using offload::device_id;

namespace {

const device_id gpu = device_id::mock(0);

offload::budget_options budget(std::optional<std::int64_t> device, std::optional<std::int64_t> pinned = std::nullopt,
                               std::optional<std::int64_t> host = std::nullopt) {
  return {.accelerator = gpu, .budgets = {.device = device, .pinned = pinned, .host = host}};
}

offload::testing::simulation_result simulate(const offload::budget_plan& r, const wan::generation_shape& shape,
                                             const offload::cost_model& cost) {
  return offload::testing::simulate(r.plan, wan::preset_components(shape.task),
                                    {.h2d_bytes_per_second = cost.h2d_pinned_bytes_per_second,
                                     .h2d_pageable_bytes_per_second = cost.h2d_pageable_bytes_per_second,
                                     .d2h_bytes_per_second = cost.d2h_bytes_per_second});
}

std::int64_t sim_peak(const offload::testing::simulation_result& s) {
  const auto it = s.peak_bytes.find(gpu);
  return it == s.peak_bytes.end() ? 0 : it->second;
}

double seconds_of(const std::vector<offload::stage>& stages, std::string_view name) {
  for (const auto& s : stages)
    if (s.name == name) return s.seconds;
  BOOST_FAIL("no stage " << name);
  return 0;
}

const wan::generation_shape t2v_1_3B{"t2v-1.3B", 832, 480, 81, 50};
const wan::generation_shape t2v_14B{"t2v-14B", 1280, 720, 81, 50};

} // namespace

BOOST_AUTO_TEST_SUITE(stages_budget)

BOOST_AUTO_TEST_CASE(budgets_from_2_to_80_GiB_fit_in_simulation_and_time_never_increases) {
  const auto cost = offload::cost_model::defaults();
  for (const auto& shape : {t2v_1_3B, t2v_14B, wan::generation_shape{"i2v-14B", 832, 480, 81, 40}}) {
    for (const std::optional<std::int64_t> pinned : {std::optional<std::int64_t>{}, std::optional<std::int64_t>{8_GiB}}) {
      double previous = std::numeric_limits<double>::infinity();
      for (std::int64_t b = 2_GiB; b <= 80_GiB; b += 1_GiB) {
        const auto r = wan::plan_generation(shape, budget(b, pinned));
        const auto sim = simulate(r, shape, cost);
        const auto where = shape.task + " at " + offload::format_bytes(b) + ": " + r.plan.policy.str();
        BOOST_TEST(r.plan.fits(), where);
        BOOST_TEST(sim_peak(sim) <= b, where);
        BOOST_TEST(sim_peak(sim) == r.device_peak_bytes, where);
        BOOST_TEST(std::abs(sim.seconds - r.predicted_seconds) <= 1e-9 * r.predicted_seconds, where);
        BOOST_TEST(r.predicted_seconds <= previous * (1 + 1e-12), where);
        if (pinned) BOOST_TEST(r.pinned_bytes <= *pinned, where);
        previous = r.predicted_seconds;
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(an_unlimited_budget_keeps_everything_resident) {
  for (const auto& task : wan::configs::wan_tasks()) {
    wan::generation_shape shape{task, 832, 480, task.starts_with("t2i") ? 1 : 81, 50};
    auto no_prefetch = budget(std::nullopt);
    no_prefetch.allow_prefetch = false;
    const auto resident = wan::plan_generation(shape, no_prefetch);
    const auto r = wan::plan_generation(shape, budget(std::nullopt));
    for (const auto& c : wan::preset_components(task)) {
      // Without prefetch everything loads at init; with it, what a later stage uses may arrive
      // during the stage before (lazy): either way nothing leaves.
      const auto& cp = resident.plan.policy.of(c.name);
      BOOST_TEST(!cp.execute_on.is_host(), task << " " << c.name);
      BOOST_TEST((cp.load == offload::load_rule::init && cp.evict == offload::evict_rule::never), task << " " << c.name);
      const auto& pp = r.plan.policy.of(c.name);
      BOOST_TEST(!pp.execute_on.is_host(), task << " " << c.name);
      BOOST_TEST((pp.evict == offload::evict_rule::never), task << " " << c.name);
      int copies = 0;
      for (const auto& st : r.plan.steps)
        for (const auto* list : {&st.before, &st.prefetch})
          for (const auto& a : *list) copies += a.kind == offload::action_kind::onload && a.component == c.name;
      BOOST_TEST(copies == 1, task << " " << c.name);
    }
    BOOST_TEST(!r.plan.policy.evict_on_demand, task);
    BOOST_TEST(r.predicted_seconds <= resident.predicted_seconds, task);
    // Each copied once: the host masters, but for the tables a streamed component keeps at home
    // (T5 streams: its token embedding stays on the host, so it copies less than whole).
    for (const auto* p : {&resident, &r}) {
      std::int64_t copied = p->plan.peak_of(device_id::cpu());
      for (const auto& c : wan::preset_components(task))
        if (p->plan.policy.of(c.name).stream.enabled()) copied -= c.blocks->host_bytes;
      BOOST_TEST(p->plan.bytes_to_devices == copied, task);
    }
  }
  // T2V-1.3B: T5 streams during the text encode, so nothing is prefetched into it (its transfer
  // stream carries T5's blocks); the VAE moves during the last denoising step, which hides its copy.
  {
    const auto cost = offload::cost_model::defaults();
    auto no_prefetch = budget(std::nullopt);
    no_prefetch.allow_prefetch = false;
    const auto resident = wan::plan_generation(t2v_1_3B, no_prefetch);
    const auto r = wan::plan_generation(t2v_1_3B, budget(std::nullopt));
    BOOST_TEST(r.plan.policy.prefetch, r.plan.policy.str());
    BOOST_TEST(r.plan.step("text_encode")->prefetch.empty());
    const auto& pre = r.plan.step("denoise")->prefetch;
    BOOST_TEST_REQUIRE(pre.size() == 1u);
    BOOST_TEST(pre[0].component == "vae");
    const auto vae = wan::preset_components("t2v-1.3B")[2];
    BOOST_REQUIRE(vae.name == "vae");
    BOOST_TEST(std::abs((resident.predicted_seconds - r.predicted_seconds) -
                        cost.transfer_seconds(vae.bytes, offload::host_memory::pinned)) < 1e-9);
    BOOST_TEST(r.device_peak_bytes == resident.device_peak_bytes);
  }
  // T2V-1.3B as the reference holds it (float32 DiT, nothing streamed, everything loaded at init):
  // the resident preset's peak (24.63 GiB measured).
  auto reference_storage = budget(std::nullopt);
  reference_storage.allow_exact_storage = false;
  reference_storage.allow_streaming = false;
  reference_storage.allow_prefetch = false;
  const auto r = wan::plan_generation(t2v_1_3B, reference_storage);
  BOOST_TEST(std::abs(static_cast<double>(r.device_peak_bytes) / offload::GiB - 24.63) / 24.63 <= 0.03);
  BOOST_TEST((r.plan.policy.of("dit").store == offload::storage_dtype::native));
  // With exact storage the DiT is stored as autocast computes it (bf16 matmul weights): the same
  // bits, one smaller copy, and a peak lower by exactly what bf16 saves.
  auto exact = budget(std::nullopt);
  exact.allow_streaming = false;
  exact.allow_prefetch = false;
  const auto e = wan::plan_generation(t2v_1_3B, exact);
  BOOST_TEST((e.plan.policy.of("dit").store == offload::storage_dtype::bf16), e.plan.policy.str());
  BOOST_TEST(e.predicted_seconds < r.predicted_seconds);
  const auto dit = wan::preset_components("t2v-1.3B")[1];
  BOOST_REQUIRE(dit.name == "dit");
  BOOST_TEST(r.device_peak_bytes - e.device_peak_bytes == dit.bytes - dit.stored_as(offload::storage_dtype::bf16)->bytes);
}

BOOST_AUTO_TEST_CASE(the_seed_card_keeps_every_stage_on_the_gpu) {
  // 11.49 GiB (the seed's RTX 4080): no stage needs the host, each model is copied once.
  const auto r = wan::plan_generation(t2v_1_3B, budget(11.49_GiB, 0));
  for (const auto& c : wan::preset_components("t2v-1.3B")) {
    BOOST_TEST(!r.plan.policy.of(c.name).execute_on.is_host(), c.name);
    int onloads = 0;
    for (const auto& st : r.plan.steps)
      for (const auto& a : st.before) onloads += a.kind == offload::action_kind::onload && a.component == c.name;
    BOOST_TEST(onloads == 1, c.name);
  }
  BOOST_TEST(r.device_peak_bytes <= 11.49_GiB);
  // Everything fits whole, yet T5 streams (through two slots, from pageable memory: nothing is
  // pinned): its token embedding stays on the host, so it copies less than whole.
  BOOST_TEST((r.plan.policy.of("t5").stream == offload::stream_options{2, 1}), r.plan.policy.str());
  BOOST_TEST((r.plan.policy.of("t5").memory == offload::host_memory::pageable), r.plan.policy.str());
  BOOST_TEST(!r.plan.policy.of("dit").stream.enabled(), r.plan.policy.str());
  // 8 GiB: T5 (10.58 GiB) cannot fit whole: it streams its blocks through two slots instead of
  // running on the host; the decode (8.78 GiB) cannot fit: the VAE runs on the host.
  const auto small = wan::plan_generation(t2v_1_3B, budget(8_GiB));
  BOOST_TEST(!small.plan.policy.of("t5").execute_on.is_host());
  BOOST_TEST((small.plan.policy.of("t5").stream == offload::stream_options{2, 1}));
  BOOST_TEST((small.plan.policy.of("t5").memory == offload::host_memory::pinned));
  BOOST_TEST(small.plan.policy.of("vae").execute_on.is_host());
  BOOST_TEST(!small.plan.policy.of("dit").execute_on.is_host());
  BOOST_TEST(small.device_peak_bytes <= 8_GiB);
  BOOST_TEST(small.predicted_seconds > r.predicted_seconds);
  // Without streaming, T5 runs on the host, which the cost model prices slower.
  auto no_stream = budget(8_GiB);
  no_stream.allow_streaming = false;
  const auto host_t5 = wan::plan_generation(t2v_1_3B, no_stream);
  BOOST_TEST(host_t5.plan.policy.of("t5").execute_on.is_host());
  BOOST_TEST(host_t5.predicted_seconds > small.predicted_seconds);
}

BOOST_AUTO_TEST_CASE(the_compute_model_reproduces_the_h100_step_times) {
  const auto cost = offload::cost_model::defaults();
  BOOST_TEST(cost.accelerator_flops_per_second == wan::compute_constants::h100_flops_per_second);
  const auto s13 = wan::timed_pipeline_stages(t2v_1_3B, cost);
  BOOST_TEST_MESSAGE("T2V-1.3B: " << seconds_of(s13, "denoise") << " s/step (1.45 measured), decode "
                                  << seconds_of(s13, "decode") << " s (3.3)");
  BOOST_TEST(std::abs(seconds_of(s13, "denoise") - 1.45) / 1.45 <= 0.12);
  BOOST_TEST(std::abs(seconds_of(s13, "decode") - 3.3) <= 1e-9);
  const auto s14 = wan::timed_pipeline_stages(t2v_14B, cost);
  BOOST_TEST_MESSAGE("T2V-14B 720p: " << seconds_of(s14, "denoise") << " s/step (26-29 measured)");
  BOOST_TEST(seconds_of(s14, "denoise") >= 26 * 0.88);
  BOOST_TEST(seconds_of(s14, "denoise") <= 29 * 1.12);
  // Work scales as the model says: fewer frames, less work per step.
  const auto fewer = wan::timed_pipeline_stages({"t2v-1.3B", 832, 480, 41, 50}, cost);
  BOOST_TEST(seconds_of(fewer, "denoise") < seconds_of(s13, "denoise"));
  // A faster accelerator takes less time, in proportion.
  auto fast = cost;
  fast.accelerator_flops_per_second *= 2;
  BOOST_TEST(std::abs(seconds_of(wan::timed_pipeline_stages(t2v_1_3B, fast), "denoise") * 2 - seconds_of(s13, "denoise")) <= 1e-9);
}

BOOST_AUTO_TEST_CASE(nothing_fits_names_stage_shortfall_and_a_shape_that_fits) {
  // T2V-14B 720p on 60 GiB without host execution, in the reference's float32 storage: streamed
  // through two slots, the DiT fits.
  auto opt = budget(60_GiB);
  opt.allow_host_execution = false;
  opt.allow_exact_storage = false;
  {
    const auto streamed = wan::plan_generation(t2v_14B, opt);
    BOOST_TEST(streamed.plan.policy.of("dit").stream.enabled());
    BOOST_TEST(streamed.device_peak_bytes <= 60_GiB);
  }
  // Without streaming it cannot: the DiT (53.2 GiB) and its denoise workspace.
  opt.allow_streaming = false;
  try {
    (void)wan::plan_generation(t2v_14B, opt);
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    const std::string m = e.what();
    BOOST_TEST_MESSAGE(m);
    BOOST_TEST(e.stage() == "denoise");
    BOOST_TEST(e.available() == 60_GiB);
    BOOST_TEST(e.needed() > 60_GiB);
    BOOST_TEST(m.find("short by " + offload::format_bytes(e.needed() - e.available())) != std::string::npos, m);
    BOOST_TEST(m.find("a device budget of at least " + offload::format_bytes(e.needed())) != std::string::npos, m);
    // The advice is right: the frame count it names fits, four more frames do not.
    std::smatch f;
    BOOST_TEST_REQUIRE(std::regex_search(m, f, std::regex("; ([0-9]+) frames \\(of 81\\) fit at 1280x720")), m);
    const int frames = std::stoi(f[1]);
    auto shape = t2v_14B;
    shape.frame_num = frames;
    BOOST_TEST(wan::plan_generation(shape, opt).plan.fits());
    shape.frame_num = frames + 4;
    BOOST_CHECK_THROW(wan::plan_generation(shape, opt), offload::capacity_error);
    BOOST_TEST(m.find("size 832*480 fits with 81 frames") != std::string::npos, m);
    // And so is the device budget it names.
    opt.budgets.device = e.needed();
    BOOST_TEST(wan::plan_generation(t2v_14B, opt).plan.fits());
  }
  // T2V-1.3B on 8 GiB without host execution: T5 streams, but the decode (8.78 GiB with cuBLAS's
  // workspace) cannot fit and
  // no shape helps (the decode's workspace follows the frame size, and 832x480 is the smallest).
  auto small = budget(8_GiB);
  small.allow_host_execution = false;
  try {
    (void)wan::plan_generation(t2v_1_3B, small);
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    const std::string m = e.what();
    BOOST_TEST(e.stage() == "decode");
    BOOST_TEST(m.find("t5=cuda:offload:stream=2:prefetch=1") != std::string::npos, m);
    BOOST_TEST(m.find("a device budget of at least 8.78 GiB") != std::string::npos, m);
    BOOST_TEST(m.find("no smaller frame count or supported size of task t2v-1.3B fits") != std::string::npos, m);
  }
  // Without streaming, T5 alone (10.58 GiB) binds at text encode.
  small.allow_streaming = false;
  try {
    (void)wan::plan_generation(t2v_1_3B, small);
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    const std::string m = e.what();
    BOOST_TEST(e.stage() == "text_encode");
    BOOST_TEST(m.find("the components of stage 'text_encode' alone need 10.58 GiB") != std::string::npos, m);
    BOOST_TEST(m.find("no smaller frame count or supported size of task t2v-1.3B fits") != std::string::npos, m);
  }
}

BOOST_AUTO_TEST_CASE(t2v_14B_720p_on_12_GiB_streams_the_bf16_dit_and_tiles_when_told) {
  const auto cost = offload::cost_model::defaults();
  // Untiled: the DiT streams in bf16 (exact); the decode (its workspace alone exceeds 12 GiB)
  // runs on the host.
  const auto r = wan::plan_generation(t2v_14B, budget(12_GiB));
  const auto& dit = r.plan.policy.of("dit");
  BOOST_TEST(!dit.execute_on.is_host(), r.plan.policy.str());
  BOOST_TEST(dit.stream.enabled(), r.plan.policy.str());
  BOOST_TEST((dit.store == offload::storage_dtype::bf16), r.plan.policy.str());
  BOOST_TEST(r.plan.policy.of("vae").execute_on.is_host(), r.plan.policy.str());
  BOOST_TEST(!r.plan.policy.of("vae").tile.enabled());
  BOOST_TEST(r.device_peak_bytes <= 12_GiB);
  BOOST_TEST(wan::decode_workspace_bytes(1280, 720, 81) > 12_GiB);
  // Tiles are the user's: with them the decode runs on the GPU, and the chosen policy carries them.
  auto tiled = t2v_14B;
  tiled.vae_tiling = wan::VaeTiling::square(32, 8);
  const auto t = wan::plan_generation(tiled, budget(12_GiB));
  BOOST_TEST(!t.plan.policy.of("vae").execute_on.is_host(), t.plan.policy.str());
  BOOST_TEST((t.plan.policy.of("vae").tile == offload::tile_options{32, 8}), t.plan.policy.str());
  BOOST_TEST(t.plan.policy.of("dit").stream.enabled(), t.plan.policy.str());
  BOOST_TEST((t.plan.policy.of("dit").store == offload::storage_dtype::bf16), t.plan.policy.str());
  BOOST_TEST(t.device_peak_bytes <= 12_GiB);
  BOOST_TEST(t.predicted_seconds < r.predicted_seconds);
  BOOST_TEST(t.plan.step("decode")->workspace_bytes.at(gpu) ==
             wan::decode_workspace_bytes(1280, 720, 81, tiled.vae_tiling) + wan::workspace_constants::library_workspace_bytes);
  const auto sim = simulate(t, tiled, cost);
  BOOST_TEST(sim_peak(sim) == t.device_peak_bytes);
  BOOST_TEST(std::abs(sim.seconds - t.predicted_seconds) <= 1e-9 * t.predicted_seconds);
  BOOST_TEST_MESSAGE("t2v-14B 1280x720x81 on 12 GiB: '" << r.plan.policy.str() << "' " << r.predicted_seconds << " s, peak "
                     << offload::format_bytes(r.device_peak_bytes) << "; tiled '" << t.plan.policy.str() << "' "
                     << t.predicted_seconds << " s, peak " << offload::format_bytes(t.device_peak_bytes));
  // With 16 GiB of pinned memory (the 27 GiB bf16 DiT's master does not fit it) the DiT still
  // streams, from pageable memory: slower than pinned, days faster than on the host.
  const auto pageable = wan::plan_generation(t2v_14B, budget(12_GiB, 16_GiB));
  const auto& pd = pageable.plan.policy.of("dit");
  BOOST_TEST(!pd.execute_on.is_host(), pageable.plan.policy.str());
  BOOST_TEST(pd.stream.enabled(), pageable.plan.policy.str());
  BOOST_TEST((pd.memory == offload::host_memory::pageable), pageable.plan.policy.str());
  BOOST_TEST(pageable.pinned_bytes <= 16_GiB);
  BOOST_TEST(pageable.device_peak_bytes <= 12_GiB);
  BOOST_TEST(pageable.predicted_seconds > r.predicted_seconds);
  auto no_stream = budget(12_GiB, 16_GiB);
  no_stream.allow_streaming = false;
  const auto on_host = wan::plan_generation(t2v_14B, no_stream);
  BOOST_TEST(on_host.plan.policy.of("dit").execute_on.is_host(), on_host.plan.policy.str());
  BOOST_TEST(on_host.predicted_seconds > 10 * pageable.predicted_seconds);
  const auto psim = simulate(pageable, t2v_14B, cost);
  BOOST_TEST(sim_peak(psim) == pageable.device_peak_bytes);
  BOOST_TEST(std::abs(psim.seconds - pageable.predicted_seconds) <= 1e-9 * pageable.predicted_seconds);
  BOOST_TEST_MESSAGE("t2v-14B 1280x720x81 on 12 GiB, 16 GiB pinned: '" << pageable.plan.policy.str() << "' "
                     << pageable.predicted_seconds << " s, peak " << offload::format_bytes(pageable.device_peak_bytes)
                     << "; without streaming " << on_host.predicted_seconds << " s");
  // A non-square tiling cannot be a policy option.
  auto odd = t2v_14B;
  odd.vae_tiling = wan::VaeTiling{32, 16, 4};
  BOOST_CHECK_THROW(wan::plan_generation(odd, budget(12_GiB)), offload::config_error);
}

BOOST_AUTO_TEST_CASE(when_only_tiles_would_fit_the_advice_says_so) {
  // T2V-1.3B on 4 GiB with 20 GiB of host memory: the untiled decode binds; tiled, it fits.
  try {
    (void)wan::plan_generation(t2v_1_3B, budget(4_GiB, std::nullopt, 20_GiB));
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    const std::string m = e.what();
    BOOST_TEST(e.stage() == "decode");
    BOOST_TEST(m.find("; the VAE run in tiles fits (policy option 'vae=...:tile=32:overlap=8'") != std::string::npos, m);
  }
  auto tiled = t2v_1_3B;
  tiled.vae_tiling = wan::VaeTiling::square(32, 8);
  const auto t = wan::plan_generation(tiled, budget(4_GiB, std::nullopt, 20_GiB));
  BOOST_TEST(t.device_peak_bytes <= 4_GiB);
  BOOST_TEST((t.plan.policy.of("vae").tile == offload::tile_options{32, 8}));
  // Already tiled, no such advice (17 GiB of host memory: the DiT's denoise cannot run there).
  try {
    (void)wan::plan_generation(tiled, budget(1_GiB, std::nullopt, 17_GiB));
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(std::string(e.what()).find("run in tiles") == std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_SUITE_END()
