// Block streaming of the DiT through whole pipelines (T2V, I2V, FLF2V) on a mock GPU with the tiny
// golden-set models: the video is bit-identical to the all-host run; each denoising step copies
// every block once for both CFG branches (block-major forward_branches), not once per branch; no
// allocation per step beyond the stage workspace; the mock moves exactly the bytes the plan
// predicts and peaks where the plan says; VACE (whose blocks are not streamed) is refused.
#include "wan/components.hpp"
#include "wan/stages.hpp"

#include <offload/testing/errors.hpp>
#include <offload/testing/mock_device.hpp>

#include <boost/test/unit_test.hpp>
#include <torch/torch.h>

#include "tiny_components.hpp"

#include <offload/stage_scheduler.hpp>
#include <offload/units.hpp>

namespace wt = wan::testing;
using offload::device_id;

namespace {

const device_id gpu = device_id::mock(0);

std::string host_policy(const std::string& kind) {
  return kind == "t2v" ? "t5=cpu,dit=cpu,vae=cpu" : "t5=cpu,clip=cpu,dit=cpu,vae=cpu";
}

torch::Tensor host_video(const std::string& kind) {
  static std::map<std::string, torch::Tensor> cache;
  if (auto it = cache.find(kind); it != cache.end()) return it->second;
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  return cache[kind] = wt::tiny_generate(kind, {&devices, gpu, offload::parse_policy(host_policy(kind))});
}


void run_streamed(const std::string& kind) {
  const torch::Tensor reference = host_video(kind);
  auto comps = wt::tiny_components(kind);
  const auto layout = comps->dit_component->blocks();
  BOOST_TEST_REQUIRE(layout.has_value());
  BOOST_TEST_REQUIRE(layout->count() == comps->model->num_layers);
  // The analytic layout the planner uses for preset sizes equals the loaded model's.
  BOOST_TEST((wan::dit_block_layout(comps->model->config, 4) == *layout));
  for (const std::string policy :
       {"dit=mock:0:stream=1", "offload_model,dit=cuda:on_demand:stream=1",
        "offload_model+vae_cpu,dit=cuda:on_demand:stream=2:prefetch=1:pinned", "t5_cpu,dit=cuda:stream=1:pinned"}) {
    BOOST_TEST_CONTEXT(kind << " under '" << policy << "'") {
      offload::device_set devices;
      auto& mock = offload::testing::add_mock(devices, 0);
      std::optional<offload::plan> plan;
      std::vector<std::int64_t> denoise_bytes, denoise_allocations;
      const auto video = wt::tiny_generate(kind, {&devices, gpu, offload::parse_policy(policy)},
                                           [&](std::string_view stage, int, const offload::executor& ex) {
                                             if (!plan) plan = ex.get_plan();
                                             if (stage != "denoise") return;
                                             denoise_bytes.push_back(mock.bytes_in());
                                             denoise_allocations.push_back(mock.allocations());
                                           });
      BOOST_TEST(torch::equal(video, reference), "video differs from the all-host run");
      BOOST_TEST(mock.used() == 0);
      for (auto* c : comps->components()) BOOST_TEST(c->location().is_host(), c->name() << " is not home");
      BOOST_REQUIRE(plan.has_value());
      const int slots = plan->policy.of("dit").stream.slots;
      const auto* denoise = plan->step("denoise");
      BOOST_REQUIRE(denoise != nullptr);
      // The plan: the DiT's footprint is all but its blocks plus the slots; with fewer slots than
      // blocks every step streams every block once.
      BOOST_TEST(plan->device_bytes.at("dit") ==
                 comps->dit_component->bytes() - layout->total() + std::min<std::int64_t>(slots, layout->count()) * layout->slot_bytes);
      if (slots < layout->count()) BOOST_TEST(denoise->streamed_bytes.at("dit") == denoise->repeat * layout->total());
      // The mock: exactly the planned bytes and peak.
      BOOST_TEST(mock.bytes_in() == plan->bytes_to_devices);
      BOOST_TEST(mock.peak() == plan->peak_of(gpu));
      // One step between the first two denoise entries: every block once for both branches
      // (cond and uncond), and one allocation (the stage workspace), no slot allocation.
      BOOST_REQUIRE(denoise_bytes.size() == 2u);
      if (slots < layout->count()) BOOST_TEST(denoise_bytes[1] - denoise_bytes[0] == layout->total());
      BOOST_TEST(denoise_allocations[1] - denoise_allocations[0] == 1);
    }
  }
}

} // namespace

BOOST_AUTO_TEST_SUITE(pipelines_stream)

BOOST_AUTO_TEST_CASE(t2v_streamed_dit_matches_the_host_run) { run_streamed("t2v"); }
BOOST_AUTO_TEST_CASE(i2v_streamed_dit_matches_the_host_run) { run_streamed("i2v"); }

BOOST_AUTO_TEST_CASE(preset_dit_layouts_and_streamed_plans) {
  // t2v-14B, by hand: dim 5120, ffn 13824, qk_norm, cross_attn_norm: 351,394,304 parameters a block.
  const auto t2v14 = wan::preset_components("t2v-14B");
  const auto& dit = t2v14[1];
  BOOST_REQUIRE(dit.name == "dit");
  BOOST_REQUIRE(dit.blocks.has_value());
  BOOST_TEST(dit.blocks->count() == 40);
  BOOST_TEST(dit.blocks->block_bytes[0] == 351'394'304LL * 4);
  BOOST_TEST(dit.blocks->slot_bytes >= dit.blocks->block_bytes[0]);
  BOOST_TEST(dit.blocks->slot_bytes - dit.blocks->block_bytes[0] < 256 * 24);
  BOOST_TEST(dit.bytes - dit.blocks->total() > 0);
  BOOST_TEST(!wan::preset_components("vace-14B")[1].blocks.has_value());

  // T2V-14B 1280x720x81, T5 on the host, the DiT streamed through 2 slots: the DiT's device
  // footprint is all but its blocks plus two slots, and the 50 steps stream 50 x its blocks.
  wan::generation_shape shape;
  shape.task = "t2v-14B", shape.width = 1280, shape.height = 720, shape.frame_num = 81, shape.sampling_steps = 50;
  const auto plan = offload::schedule(wan::pipeline_stages(shape), t2v14,
                                      offload::parse_policy("offload_model+t5_cpu,dit=cuda:on_demand:stream=2:pinned"),
                                      {.accelerator = gpu});
  BOOST_TEST(plan.device_bytes.at("dit") == dit.bytes - dit.blocks->total() + 2 * dit.blocks->slot_bytes);
  BOOST_TEST(plan.step("denoise")->streamed_bytes.at("dit") == 50 * dit.blocks->total());
  const std::int64_t denoise_ws = plan.step("denoise")->workspace_bytes.at(gpu);
  const std::int64_t vae = t2v14[2].bytes; // offload_model leaves the VAE resident
  BOOST_REQUIRE(t2v14[2].name == "vae");
  BOOST_TEST(plan.step("denoise")->peak_bytes.at(gpu) == plan.device_bytes.at("dit") + vae + denoise_ws);
  BOOST_TEST_MESSAGE("t2v-14B 1280x720x81 streamed: dit on device "
                     << offload::format_bytes(plan.device_bytes.at("dit")) << ", denoise peak "
                     << offload::format_bytes(plan.step("denoise")->peak_bytes.at(gpu)) << ", run peak "
                     << offload::format_bytes(plan.peak_of(gpu)) << ", streamed "
                     << offload::format_bytes(plan.step("denoise")->streamed_bytes.at("dit")));
}

BOOST_AUTO_TEST_CASE(vace_refuses_streaming) {
  offload::device_set devices;
  auto& mock = offload::testing::add_mock(devices, 0);
  BOOST_TEST(offload::testing::error_id([&] {
               (void)wt::tiny_generate("vace", {&devices, gpu, offload::parse_policy("dit=cuda:stream=1")});
             }) == "offload.config.not_streamable");
  BOOST_TEST(mock.used() == 0);
  BOOST_TEST(mock.transfers() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
