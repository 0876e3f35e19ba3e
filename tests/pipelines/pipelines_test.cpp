// The Wan pipelines under offload (pipelines/wan/components.hpp and the four pipelines): for every
// pipeline and every placement preset, on a mock GPU with the tiny golden-set models,
//  * every stage is entered through the executor and, inside it, every component is where the
//    plan's resident set says (checked by an observer at every stage repetition),
//  * the executor's audit runs at every stage boundary, and a tensor replaced behind offload's back
//    (the VAE's aux `mean`, the DiT's aux `freqs`) is caught there with a placement_error,
//  * the video is bit-identical to the run with every component on the host,
//  * after the run every component is home again, including after an error.
#include "wan/first_last_frame2video.hpp"
#include "wan/stages.hpp"
#include "wan/text2video.hpp"
#include "wan/vace.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <offload/errors.hpp>
#include <offload/offloadable.hpp>
#include <offload/testing/caching_host_allocator.hpp>
#include <offload/testing/host_memory_probe.hpp>
#include <offload/testing/mock_device.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>

#include "parity_harness.hpp"
#include "tiny_components.hpp"

namespace wt = wan::testing;
using offload::device_id;

namespace {

const device_id gpu = device_id::mock(0);

std::shared_ptr<wan::WanComponents> components(const std::string& kind) { return wt::tiny_components(kind); }

bool has_clip(const std::string& kind) { return kind == "i2v" || kind == "flf2v"; }

std::string host_policy(const std::string& kind) {
  return has_clip(kind) ? "t5=cpu,clip=cpu,dit=cpu,vae=cpu" : "t5=cpu,dit=cpu,vae=cpu";
}

const std::vector<std::string> presets = {
    "resident",
    "offload_model",
    "t5_cpu",
    "vae_cpu",
    "offload_model+t5_cpu",
    "offload_model+vae_cpu",
    "t5_cpu+vae_cpu",
    "offload_model+t5_cpu+vae_cpu",
    "evict_on_demand",
    "offload_model,evict_on_demand",
    // Cross-stage prefetch (pinned masters only): the VAE moves during the last denoising step;
    // the streamed DiT's footprint during the text encode (and the image encodes), but not the
    // VAE during a denoising step that streams the DiT.
    "offload_model+vae_cpu,pinned,prefetch",
    "t5=cuda:on_demand:pinned,dit=cuda:on_demand:stream=2:pinned,vae=cuda:on_demand:pinned,prefetch",
};

torch::Tensor generate(const std::string& kind, const wan::execution& exec, const wan::stage_observer& observer) {
  return wt::tiny_generate(kind, exec, observer);
}

torch::Tensor host_video(const std::string& kind) {
  static std::map<std::string, torch::Tensor> cache;
  if (auto it = cache.find(kind); it != cache.end()) return it->second;
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  return cache[kind] = generate(kind, {&devices, gpu, offload::parse_policy(host_policy(kind))}, {});
}

/// Asserts that every component is where the current stage's resident set puts it (what the stage
/// prefetches for the next one arrives at its last repetition).
void check_resident(const wan::WanComponents& comps, std::string_view stage, int repetition,
                    const offload::executor& ex, std::map<std::string, std::set<std::string>>& seen_on_gpu) {
  const auto* step = ex.get_plan().step(stage);
  BOOST_TEST_REQUIRE(step != nullptr, "stage " << stage << " is not in the plan");
  std::map<std::string, device_id> expected;
  for (const auto& [d, names] : step->resident)
    for (const auto& n : names) expected[n] = d;
  if (repetition < step->repeat)
    for (const auto& a : step->prefetch) expected[a.component] = device_id::cpu();
  for (auto* c : comps.components()) {
    const auto it = expected.find(c->name());
    const bool planned = it != expected.end();
    BOOST_TEST_REQUIRE(planned, "component " << c->name() << " missing from the plan");
    BOOST_TEST(c->location() == it->second, "stage " << stage << ": " << c->name() << " on "
                                                     << c->location().str() << ", plan says "
                                                     << it->second.str());
    if (!c->location().is_host()) seen_on_gpu[std::string(stage)].insert(c->name());
  }
  // The stage's own components are where they execute.
  for (const auto& u : step->uses) BOOST_TEST(comps.get(u).location() == ex.get_plan().execute_on.at(u));
}

void check_home(const wan::WanComponents& comps) {
  for (auto* c : comps.components()) BOOST_TEST(c->location().is_host(), c->name() << " is not home");
}

/// A mock capacity that forces evictions under evict_on_demand: the largest stage workspace plus
/// every component, minus half of the smallest component.
std::int64_t tight_capacity(const std::string& kind, const std::vector<offload::stage>& stages) {
  auto comps = components(kind);
  std::int64_t total = 0, smallest = std::numeric_limits<std::int64_t>::max(), ws = 0;
  for (const auto& i : comps->infos()) total += i.bytes, smallest = std::min(smallest, i.bytes);
  for (const auto& s : stages) {
    std::int64_t w = 0;
    for (const auto& x : s.workspace) w += x.bytes;
    ws = std::max(ws, w);
  }
  return ws + total - smallest / 2;
}

std::vector<offload::stage> stages_of(const std::string& kind) {
  wan::generation_shape s;
  s.sampling_steps = 2;
  if (kind == "t2v") s.task = "t2v-1.3B", s.width = 32, s.height = 32, s.frame_num = 5;
  if (kind == "i2v") s.task = "i2v-14B", s.width = 32, s.height = 16, s.frame_num = 5;
  if (kind == "flf2v") s.task = "flf2v-14B", s.width = 16, s.height = 16, s.frame_num = 81;
  if (kind == "vace") s.task = "vace-1.3B", s.width = 32, s.height = 32, s.frame_num = 5, s.ref_images = 1;
  return wan::pipeline_stages(s);
}

void run_all_presets(const std::string& kind) {
  const torch::Tensor reference = host_video(kind);
  for (const auto& preset : presets) {
    BOOST_TEST_CONTEXT(kind << " under '" << preset << "'") {
      offload::device_set devices;
      const bool eod = preset.find("evict_on_demand") != std::string::npos;
      offload::testing::mock_options mo;
      if (eod) mo.capacity = tight_capacity(kind, stages_of(kind));
      auto& mock = offload::testing::add_mock(devices, 0, mo);
      auto comps = components(kind);
      std::map<std::string, std::set<std::string>> on_gpu;
      std::vector<std::string> entered;
      std::optional<offload::plan> plan;
      const auto video = generate(kind, {&devices, gpu, offload::parse_policy(preset)},
                                  [&](std::string_view stage, int repetition, const offload::executor& ex) {
                                    if (repetition == 1) entered.emplace_back(stage);
                                    if (!plan) plan = ex.get_plan();
                                    check_resident(*comps, stage, repetition, ex, on_gpu);
                                  });
      BOOST_TEST(torch::equal(video, reference), "video differs from the all-host run");
      check_home(*comps);
      BOOST_TEST(mock.used() == 0);
      // Every planned stage ran, in order, through the executor.
      std::vector<std::string> planned;
      for (std::size_t i = 1; i < plan->steps.size(); ++i) planned.push_back(plan->steps[i].stage);
      BOOST_TEST(entered == planned, fmt::format("entered {} vs planned {}", fmt::join(entered, ","),
                                                 fmt::join(planned, ",")));
      // Something actually ran on the mock GPU, and the resident sets are those of the preset.
      BOOST_TEST(mock.transfers() > 0);
      if (preset == "resident") BOOST_TEST(on_gpu["denoise"].count("vae") == 1u); // everything stays
      if (preset.find("offload_model") != std::string::npos && preset.find("t5_cpu") == std::string::npos)
        BOOST_TEST(on_gpu["denoise"].count("t5") == 0u); // T5 left after text_encode
      if (preset.find("t5_cpu") != std::string::npos) BOOST_TEST(on_gpu["text_encode"].count("t5") == 0u);
      if (preset.find("vae_cpu") != std::string::npos) {
        if (preset.find("prefetch") == std::string::npos) {
          BOOST_TEST(on_gpu["denoise"].count("vae") == 0u);
        } else { // it arrives during the last denoising step (check_resident: not before)
          const auto& pre = plan->step("denoise")->prefetch;
          BOOST_TEST(std::any_of(pre.begin(), pre.end(), [](const offload::action& a) { return a.component == "vae"; }));
        }
      }
      if (preset.find("prefetch") != std::string::npos) {
        std::size_t prefetched = 0;
        for (const auto& s : plan->steps) prefetched += s.prefetch.size();
        BOOST_TEST(prefetched > 0u, "nothing was prefetched");
        if (preset.find("dit=cuda:on_demand:stream") != std::string::npos) // its blocks use the transfer stream
          BOOST_TEST(plan->step("denoise")->prefetch.empty());
        BOOST_TEST(mock.peak() == plan->peak_of(gpu));
        BOOST_TEST(mock.bytes_in() == plan->bytes_to_devices);
        BOOST_TEST(mock.copies_in_flight() == 0u);
      }
      if (eod) {
        bool evicted_on_demand = false;
        for (const auto& s : plan->steps)
          for (const auto& a : s.before)
            if (a.kind == offload::action_kind::evict && a.reason.find("on demand") != std::string::npos)
              evicted_on_demand = true;
        BOOST_TEST(evicted_on_demand, "the tight capacity forced no eviction on demand");
        BOOST_TEST(mock.peak() <= mo.capacity);
      }
    }
  }
}

/// Replaces a tensor behind offload's back during text_encode; the next stage boundary's audit
/// must throw placement_error naming it, and every component must be home afterwards.
void expect_tamper_caught(const std::string& kind, const std::string& what,
                          const std::function<void(wan::WanComponents&)>& tamper) {
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  auto comps = components(kind);
  bool tampered = false;
  try {
    (void)generate(kind, {&devices, gpu, offload::parse_policy("resident")},
                   [&](std::string_view stage, int, const offload::executor&) {
                     if (stage == "text_encode" && !tampered) tamper(*comps), tampered = true;
                   });
    BOOST_ERROR("no placement_error after replacing " << what);
  } catch (const offload::placement_error& e) {
    BOOST_TEST(std::string(e.what()).find(what) != std::string::npos, e.what());
    BOOST_TEST(std::string(e.what()).find("offload.placement.device_mismatch") != std::string::npos, e.what());
  }
  BOOST_TEST(tampered);
  check_home(*comps);
}

} // namespace

BOOST_AUTO_TEST_SUITE(pipelines)

BOOST_AUTO_TEST_CASE(t2v_every_preset_matches_the_host_run) { run_all_presets("t2v"); }

BOOST_AUTO_TEST_CASE(i2v_every_preset_matches_the_host_run) { run_all_presets("i2v"); }

BOOST_AUTO_TEST_CASE(flf2v_every_preset_matches_the_host_run) { run_all_presets("flf2v"); }

BOOST_AUTO_TEST_CASE(vace_every_preset_matches_the_host_run) { run_all_presets("vace"); }

// On a CUDA build `:pinned` packs the masters into chunks and every copy reads a view of one; here
// a stand-in for LibTorch's pinned allocator does the same on the host (scoped_pinned_memory), so
// the executor, its prefetches, the block streams and store= run on packed masters: the videos must
// be those of the same policies with the masters left as they are, each pinned component's chunks
// exactly what the planner counts, and nothing kept cached once a policy lets them go.
BOOST_AUTO_TEST_CASE(packed_pinned_masters_give_the_same_videos_and_their_chunks_go_back) {
  const std::vector<std::string> policies = {
      "offload_model+vae_cpu,pinned,prefetch",
      "t5=cuda:on_demand:stream=1:pinned,dit=cuda:on_demand:stream=2:pinned,vae=cuda:on_demand:pinned,prefetch",
      "t5=cpu,dit=cuda:on_demand:stream=2:store=bf16:pinned,vae=cuda:on_demand:pinned", // last: one-way
  };
  for (const std::string kind : {"t2v", "i2v", "vace"}) {
    // Fresh components: store= converts them for good.
    const auto plain = wt::load_tiny_components(kind);
    const auto packed = wt::load_tiny_components(kind);
    offload::testing::caching_host_allocator pinned;
    for (const auto& text : policies) {
      BOOST_TEST_CONTEXT(kind << " under '" << text << "'") {
        const auto policy = offload::parse_policy(text);
        offload::device_set plain_devices, packed_devices;
        offload::testing::add_mock(plain_devices, 0);
        auto& mock = offload::testing::add_mock(packed_devices, 0);
        const auto expected = wt::tiny_generate(kind, {&plain_devices, gpu, policy}, {}, plain);
        torch::Tensor video;
        {
          offload::testing::scoped_pinned_memory source(pinned);
          video = wt::tiny_generate(kind, {&packed_devices, gpu, policy}, {}, packed);
        }
        BOOST_TEST(torch::equal(video, expected), "the video differs from the run on unpacked masters");
        check_home(*packed);
        BOOST_TEST(mock.used() == 0);
        std::int64_t chunks = 0;
        for (auto* c : packed->components()) {
          const bool pins = policy.of(c->name()).memory == offload::host_memory::pinned;
          BOOST_TEST(c->pinned_host_bytes() == (pins ? offload::info_of(*c).pinned_bytes : 0), c->name());
          BOOST_TEST(plain->get(c->name()).pinned_host_bytes() == 0, c->name()); // the flag alone
          chunks += c->pinned_host_bytes();
        }
        BOOST_TEST(chunks > 0);
        BOOST_TEST(pinned.in_use() == chunks);
        BOOST_TEST(pinned.cached() == 0); // chunks let go of (store=, a component no longer pinned) went back
      }
    }
    // A policy that pins nothing: every chunk goes back to the system.
    offload::device_set devices;
    offload::testing::add_mock(devices, 0);
    {
      offload::testing::scoped_pinned_memory source(pinned);
      (void)wt::tiny_generate(kind, {&devices, gpu, offload::parse_policy("resident")}, {}, packed);
    }
    BOOST_TEST(pinned.reserved() == 0, kind);
    BOOST_TEST(pinned.peak_reserved() > 0, kind);
  }
}

// `dit=...:store=bf16` with the DiT loaded in bf16 (component_options::dit_matmul_storage, what
// wan_generate asks for such a policy): the component is what the policy's conversion makes of the
// float32 load, to the byte, the conversion then copies nothing, and the videos are the same.
BOOST_AUTO_TEST_CASE(a_dit_loaded_in_its_storage_dtype_gives_the_videos_of_the_converted_one) {
  const auto policy = offload::parse_policy("t5=cpu,dit=cuda:on_demand:stream=2:store=bf16,vae=cuda:on_demand");
  BOOST_TEST((wan::dit_matmul_storage_of(policy) == std::optional<torch::Dtype>(torch::kBFloat16)));
  BOOST_TEST(!wan::dit_matmul_storage_of(offload::parse_policy("offload_model")).has_value());
  for (const std::string kind : {"t2v", "i2v", "vace"}) {
    BOOST_TEST_CONTEXT(kind) {
      const auto converted = wt::load_tiny_components(kind);
      const auto loaded = wt::load_tiny_components(kind, torch::kBFloat16);
      auto& dit = loaded->get("dit");
      const auto converted_info = offload::info_of(converted->get("dit"));
      const auto loaded_info = offload::info_of(dit);
      BOOST_REQUIRE(converted_info.stored_as(offload::storage_dtype::bf16) != nullptr);
      const auto& stored = *converted_info.stored_as(offload::storage_dtype::bf16);
      BOOST_TEST(dit.bytes() == stored.bytes);
      BOOST_TEST(loaded_info.pinned_as(offload::storage_dtype::native) == stored.pinned_bytes);
      BOOST_TEST((loaded_info.blocks == stored.blocks));
      BOOST_REQUIRE(loaded_info.stored_as(offload::storage_dtype::bf16) != nullptr);
      BOOST_TEST((*loaded_info.stored_as(offload::storage_dtype::bf16) == stored));
      std::vector<const void*> before;
      for (const auto& p : loaded->model->parameters()) before.push_back(p.data_ptr());
      dit.set_storage(offload::storage_dtype::bf16); // nothing left to convert
      std::size_t i = 0;
      for (const auto& p : loaded->model->parameters()) BOOST_TEST(p.data_ptr() == before[i++]);
      offload::device_set converted_devices, loaded_devices;
      offload::testing::add_mock(converted_devices, 0);
      offload::testing::add_mock(loaded_devices, 0);
      const auto expected = wt::tiny_generate(kind, {&converted_devices, gpu, policy}, {}, converted);
      const auto video = wt::tiny_generate(kind, {&loaded_devices, gpu, policy}, {}, loaded);
      BOOST_TEST(torch::equal(video, expected), "the video differs from the one of the DiT converted by the policy");
      const auto a = converted->model->named_parameters(), b = loaded->model->named_parameters();
      for (const auto& p : a) BOOST_TEST(torch::equal(p.value(), b[p.key()]), p.key());
    }
  }
}

// What the denoise holds between two DiT forwards, measured on the host: the live bytes before each
// `denoise` stage (the previous step's temporaries are gone, the forward has not begun). From the
// third step on, UniPC holds the latents, its last sample and two model outputs
// (wan::workspace_constants::sampler_latents, part of the plan's denoise workspace), DPM++ one fewer;
// the noise the loop started from is gone (sample() takes it by value), and after the loop only the
// final latents remain, in the noise's place.
BOOST_AUTO_TEST_CASE(the_denoise_holds_the_sampler_latents_and_lets_the_noise_go) {
  const auto comps = components("t2v");
  const std::int64_t latent_bytes = std::int64_t{16} * 3 * 8 * 8 * 4; // [16, (9 - 1) / 4 + 1, 64 / 8, 64 / 8] float32
  for (const auto& [solver, held] : {std::pair{std::string("unipc"), wan::workspace_constants::sampler_latents},
                                     std::pair{std::string("dpm++"), wan::workspace_constants::sampler_latents - 1}}) {
    BOOST_TEST_CONTEXT(solver) {
      offload::device_set devices;
      offload::testing::add_mock(devices, 0);
      std::vector<std::int64_t> denoise_live;
      std::int64_t decode_live = -1;
      offload::testing::host_memory_probe probe;
      wan::execution exec{&devices, gpu, offload::parse_policy(host_policy("t2v"))};
      exec.before_stage = [&](std::string_view stage) {
        if (stage == "denoise") denoise_live.push_back(probe.current());
        if (stage == "decode") decode_live = probe.current();
      };
      wan::WanT2V pipe("t2v-1.3B", comps, exec);
      wan::t2v_params p;
      p.size = {64, 64};
      p.frame_num = 9;
      p.sampling_steps = 5;
      p.sample_solver = solver;
      p.seed = 11;
      (void)pipe.generate(torch::tensor({17, 250, 3, 99, 1}, torch::kLong), torch::tensor({42, 7, 1}, torch::kLong), p);
      BOOST_REQUIRE(denoise_live.size() == 5u);
      // Before the first step: the noise is the latents.
      for (std::size_t i = 2; i < denoise_live.size(); ++i)
        BOOST_TEST(denoise_live[i] - denoise_live[0] == (held - 1) * latent_bytes, "step " << i);
      // After the loop: the final latents in the noise's place (the scheduler's few bytes of
      // timesteps and sigmas are gone too); the noise still held would be one latent more.
      BOOST_TEST(std::abs(decode_live - denoise_live[0]) < latent_bytes / 4, decode_live << " vs " << denoise_live[0]);
    }
  }
}

BOOST_AUTO_TEST_CASE(audit_catches_an_aux_tensor_replaced_by_hand) {
  expect_tamper_caught("t2v", "vae.mean", [](wan::WanComponents& c) { c.vae->mean = c.vae->mean.clone(); });
  expect_tamper_caught("i2v", "dit.freqs", [](wan::WanComponents& c) { c.model->freqs = c.model->freqs.clone(); });
}

BOOST_AUTO_TEST_CASE(audit_catches_a_weight_replaced_by_hand) {
  expect_tamper_caught("vace", "dit.patch_embedding.weight", [](wan::WanComponents& c) {
    c.model->patch_embedding->weight.set_data(c.model->patch_embedding->weight.clone());
  });
}

BOOST_AUTO_TEST_CASE(a_plan_that_does_not_fit_is_refused_before_anything_moves) {
  offload::device_set devices;
  offload::testing::mock_options mo;
  mo.capacity = 1024; // bytes
  auto& mock = offload::testing::add_mock(devices, 0, mo);
  try {
    (void)generate("t2v", {&devices, gpu, offload::parse_policy("resident")}, {});
    BOOST_ERROR("no capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(std::string(e.what()).find("does not fit") != std::string::npos, e.what());
  }
  BOOST_TEST(mock.transfers() == 0);
  check_home(*components("t2v"));
}

BOOST_AUTO_TEST_CASE(components_declare_their_aux_tensors) {
  for (const std::string kind : {"t2v", "i2v", "flf2v", "vace"}) {
    auto comps = components(kind);
    BOOST_TEST(comps->components().size() == (has_clip(kind) ? 4u : 3u));
    auto& vae = dynamic_cast<offload::offloadable<wan::WanVAE_>&>(comps->get("vae"));
    BOOST_TEST(vae.tensors().master("mean").equal(comps->vae->mean));
    BOOST_TEST(vae.tensors().master("std").equal(comps->vae->std));
    auto& dit = dynamic_cast<offload::offloadable<wan::WanModel>&>(comps->get("dit"));
    BOOST_TEST(dit.tensors().master("freqs").scalar_type() == torch::kComplexDouble);
    BOOST_CHECK_THROW((void)comps->get("nope"), offload::config_error);
  }
}

BOOST_AUTO_TEST_CASE(bad_arguments_are_config_errors) {
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  const wan::execution exec{&devices, gpu, offload::parse_policy("resident")};
  BOOST_CHECK_THROW(wan::WanT2V("i2v-14B", components("t2v"), exec), offload::config_error);
  BOOST_CHECK_THROW(wan::WanI2V("i2v-14B", components("t2v"), exec), offload::config_error);
  BOOST_CHECK_THROW(wan::WanT2V("t2v-9B", components("t2v"), exec), offload::config_error);
  wan::WanT2V pipe("t2v-1.3B", components("t2v"), exec);
  wan::t2v_params p;
  p.size = {32, 32};
  p.frame_num = 5;
  p.sample_solver = "euler";
  BOOST_CHECK_THROW(pipe.generate(torch::tensor({1}, torch::kLong), torch::tensor({1}, torch::kLong), p),
                    offload::config_error);
  // No tokenizer in the golden layout: the string form says so.
  p.sample_solver = "unipc";
  BOOST_CHECK_THROW(pipe.generate("a cat", p), offload::config_error);
  check_home(*components("t2v"));
  wan::WanFLF2V flf("flf2v-14B", components("flf2v"), exec);
  wan::flf2v_params fp;
  fp.frame_num = 5;
  auto img = torch::zeros({16, 16, 3}, torch::kByte);
  BOOST_CHECK_THROW(flf.generate(torch::tensor({1}, torch::kLong), torch::tensor({1}, torch::kLong), img, img, fp),
                    offload::config_error);
}

BOOST_AUTO_TEST_CASE(helpers_follow_the_reference) {
  // Python: round(np.sqrt(4096 * 50 / 84) // 8 // 2 * 2) = 6, round(np.sqrt(4096 * 84 / 50) // 8 // 2 * 2) = 10
  const auto [h, w] = wan::detail::latent_hw(4096, 50, 84, {4, 8, 8}, {1, 2, 2});
  BOOST_TEST(h == 6);
  BOOST_TEST(w == 10);
  BOOST_TEST(wan::detail::py_floordiv(7.5, 2.0) == 3.0);
  BOOST_TEST(wan::detail::py_floordiv(-7.5, 2.0) == -4.0);
  // msk: first frame 4x, then zeros -> [4, T, h, w], first latent frame all ones
  const auto msk = wan::detail::condition_mask(5, 1, 5, 2, 2);
  BOOST_TEST(msk.sizes().vec() == std::vector<int64_t>({4, 2, 2, 2}));
  BOOST_TEST(msk.select(1, 0).eq(1).all().item<bool>());
  BOOST_TEST(msk.select(1, 1).eq(0).all().item<bool>());
  // token ids padded like the umT5 tokenizer output
  const auto [ids, mask] = wan::detail::pad_ids(torch::tensor({5, 6, 1}, torch::kLong), 8);
  BOOST_TEST(ids.sizes().vec() == std::vector<int64_t>({1, 8}));
  BOOST_TEST(mask.sum().item<int64_t>() == 3);
  BOOST_TEST(ids[0][2].item<int64_t>() == 1);
  BOOST_TEST(ids[0][3].item<int64_t>() == 0);
  // noise: the CPU generator, reproducible
  BOOST_TEST(torch::equal(wan::detail::seeded_noise({2, 3}, 42), wan::detail::seeded_noise({2, 3}, 42)));
  // center_crop pads with zeros when the crop is larger
  const auto c = wan::detail::center_crop(torch::ones({3, 4, 4}), 6, 4);
  BOOST_TEST(c.sizes().vec() == std::vector<int64_t>({3, 6, 4}));
  BOOST_TEST(c.sum().item<double>() == 48.0);
}

BOOST_AUTO_TEST_CASE(vace_prepare_source_and_masks_follow_the_reference) {
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  wan::WanVace pipe("vace-1.3B", components("vace"), {&devices, gpu, offload::parse_policy("resident")});
  // no video: zeros and an all-ones mask of the requested size; a smaller reference image is
  // resized onto a white canvas; a video with a [-1, 1] mask maps it to [0, 1]
  const auto src = pipe.prepare_source({std::nullopt, torch::zeros({3, 5, 32, 32})},
                                       {std::nullopt, torch::full({3, 5, 32, 32}, -1.0)},
                                       {{torch::zeros({3, 16, 32})}, {}}, 5, {32, 16}, torch::kCPU);
  BOOST_TEST(src.video[0].sizes().vec() == std::vector<int64_t>({3, 5, 16, 32}));
  BOOST_TEST(src.mask[0].eq(1).all().item<bool>());
  BOOST_TEST(src.mask[1].sizes().vec() == std::vector<int64_t>({1, 5, 32, 32}));
  BOOST_TEST(src.mask[1].eq(0).all().item<bool>());
  BOOST_TEST_REQUIRE(src.ref_images[0].size() == 1u);
  BOOST_TEST(src.ref_images[0][0].sizes().vec() == std::vector<int64_t>({3, 1, 16, 32}));
  BOOST_TEST(src.ref_images[1].empty());
  const auto ref = torch::ones({3, 1, 40, 32}).neg();
  const auto fitted = pipe.prepare_source({torch::zeros({3, 5, 32, 32})}, {std::nullopt}, {{ref.squeeze(1)}}, 5,
                                          {32, 32}, torch::kCPU);
  const auto& canvas = fitted.ref_images[0][0]; // 40x32 scaled by 0.8 -> 32x25, centred, white border
  BOOST_TEST(canvas.sizes().vec() == std::vector<int64_t>({3, 1, 32, 32}));
  BOOST_TEST(canvas.select(3, 0).eq(1).all().item<bool>());
  BOOST_TEST(canvas.select(3, 16).eq(-1).all().item<bool>());
  // masks: 8x8 space-to-depth, temporal nearest-exact resize, one zero frame per reference image
  const auto m = pipe.vace_encode_masks({torch::ones({1, 5, 32, 32})}, {{ref}});
  BOOST_TEST(m[0].sizes().vec() == std::vector<int64_t>({64, 3, 4, 4}));
  BOOST_TEST(m[0].select(1, 0).eq(0).all().item<bool>());
  BOOST_TEST(m[0].slice(1, 1).eq(1).all().item<bool>());
}

BOOST_AUTO_TEST_SUITE_END()

// Soak: 100 generations in one process on one mock GPU under alternating placement presets, as a
// long-lived server would run them. After each, the mock's bytes are back at the baseline (0) and
// every component is home; the video is bit-identical to the all-host run; host memory (resident
// set size) does not grow between the 10th and the 100th generation beyond allocator noise.
namespace {

std::int64_t resident_set_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * 4096;
}

} // namespace

BOOST_AUTO_TEST_SUITE(pipelines_soak)

BOOST_AUTO_TEST_CASE(one_hundred_generations_return_to_baseline) {
  const torch::Tensor reference = host_video("t2v");
  offload::device_set devices;
  auto& mock = offload::testing::add_mock(devices, 0);
  auto comps = components("t2v");
  std::int64_t rss_warm = 0, transfers = 0;
  int mismatches = 0;
  const char* runs_env = std::getenv("OFFLOAD_SOAK_RUNS"); // longer soaks by hand
  const int runs = runs_env != nullptr ? std::max(100, std::atoi(runs_env)) : 100;
  for (int i = 0; i < runs; ++i) {
    const std::string& preset = presets[static_cast<std::size_t>(i) % presets.size()];
    const auto before = mock.transfers();
    const auto video = generate("t2v", {&devices, gpu, offload::parse_policy(preset)}, {});
    if (!torch::equal(video, reference)) ++mismatches;
    BOOST_TEST_REQUIRE(mock.used() == 0, "generation " << i << " under '" << preset << "' left " << mock.used()
                                                       << " bytes on the mock GPU");
    for (auto* c : comps->components())
      BOOST_TEST_REQUIRE(c->location().is_host(), "generation " << i << ": " << c->name() << " is not home");
    transfers += mock.transfers() - before;
    mock.clear_transfer_log(); // the test double logs every copy; that log is not the library's memory
    if (i == 9) rss_warm = resident_set_bytes();
    if ((i + 1) % 50 == 0) BOOST_TEST_MESSAGE("soak: after " << i + 1 << " generations RSS " << resident_set_bytes());
  }
  const std::int64_t growth = resident_set_bytes() - rss_warm;
  BOOST_TEST_MESSAGE("soak: " << runs << " generations, " << transfers << " transfers, RSS after 10: " << rss_warm
                                               << " bytes, growth to " << runs << ": " << growth << " bytes");
  BOOST_TEST(mismatches == 0);
  BOOST_TEST(transfers > 0);
  // The tiny components total ~5 MiB; a leak of even one component copy per generation would add
  // ~450 MiB over 90 generations.
  BOOST_TEST(growth < 16 * 1024 * 1024,
             "host memory grew by " << growth << " bytes over " << runs - 10 << " generations");
}

BOOST_AUTO_TEST_SUITE_END()
