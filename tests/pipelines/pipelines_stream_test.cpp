// Block streaming of the DiT through whole pipelines (T2V, I2V, FLF2V) on a mock GPU with the tiny
// golden-set models: the video is bit-identical to the all-host run; each denoising step copies
// every block once for both CFG branches (block-major forward_branches), not once per branch; no
// allocation per step beyond the stage workspace; the mock moves exactly the bytes the plan
// predicts and peaks where the plan says. VACE streams its vace_blocks and blocks interleaved.
#include "wan/components.hpp"
#include "wan/stages.hpp"
#include "wan/t5.hpp"
#include "wan/vace_model.hpp"

#include <offload/testing/errors.hpp>
#include <offload/testing/mock_device.hpp>

#include <boost/test/unit_test.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include "tiny_components.hpp"

#include <offload/offloadable.hpp>
#include <offload/stage_scheduler.hpp>
#include <offload/units.hpp>

#include <algorithm>

namespace wt = wan::testing;
using offload::device_id;

namespace {

const device_id gpu = device_id::mock(0);

std::string host_policy(const std::string& kind) {
  return kind == "t2v" || kind == "vace" ? "t5=cpu,dit=cpu,vae=cpu" : "t5=cpu,clip=cpu,dit=cpu,vae=cpu";
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
  // VACE streams its vace_blocks too, each just before the block that adds its hint.
  const std::int64_t vace_layers = kind == "vace" ? static_cast<std::int64_t>(comps->vace_model->vace_layers.size()) : 0;
  BOOST_TEST_REQUIRE(layout->count() == comps->model->num_layers + vace_layers);
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
BOOST_AUTO_TEST_CASE(vace_streamed_dit_matches_the_host_run) { run_streamed("vace"); }

BOOST_AUTO_TEST_CASE(vace_block_order_interleaves_the_hints) {
  // Each VACE block runs right before the main block that adds its hint: the order the forward
  // acquires its blocks, recorded through the component's stream on a mock GPU.
  auto comps = wt::tiny_components("vace");
  const auto& m = comps->vace_model;
  const auto order = m->block_order();
  BOOST_TEST(order.size() == static_cast<std::size_t>(m->num_layers) + m->vace_layers.size());
  for (std::size_t n = 0; n < m->vace_layers.size(); ++n) {
    const auto vace = std::find(order.begin(), order.end(), fmt::format("vace_blocks.{}", n));
    const auto main = std::find(order.begin(), order.end(), fmt::format("blocks.{}", m->vace_layers[n]));
    BOOST_REQUIRE((vace != order.end()));
    BOOST_REQUIRE((main != order.end()));
    BOOST_TEST(std::distance(vace, main) == 1, "vace_blocks." << n << " is not right before blocks." << m->vace_layers[n]);
  }
  // A config whose VACE layers are not ascending still runs VACE block n-1 before block n: block 0
  // needs hint 1, so VACE blocks 0 and 1 both run before it.
  wan::WanModelConfig cfg = m->config;
  cfg.num_layers = 3;
  cfg.vace_layers = std::vector<int64_t>{2, 0};
  wan::VaceWanModel odd(cfg);
  BOOST_TEST((odd->block_order() ==
              std::vector<std::string>{"vace_blocks.0", "vace_blocks.1", "blocks.0", "blocks.1", "blocks.2"}));
  BOOST_TEST((wan::dit_block_layout(cfg, 4).count() == 5));
}

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
  // VACE-14B: 40 blocks and 8 VACE blocks (vace_layers 0, 5, ..., 35), each a block plus
  // after_proj (and before_proj for layer 0).
  const auto vace14 = wan::preset_components("vace-14B")[1];
  BOOST_REQUIRE(vace14.blocks.has_value());
  BOOST_TEST(vace14.blocks->count() == 48);
  BOOST_TEST(vace14.blocks->block_bytes[0] == (351'394'304LL + 2 * (5120LL * 5120 + 5120)) * 4); // vace_blocks.0
  BOOST_TEST(vace14.blocks->block_bytes[1] == 351'394'304LL * 4);                                 // blocks.0
  BOOST_TEST(vace14.blocks->block_bytes[6] == (351'394'304LL + 5120LL * 5120 + 5120) * 4);        // vace_blocks.1

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

BOOST_AUTO_TEST_CASE(t5_streamed_matches_the_host_run) {
  // T5 streams its blocks; the prompt and the negative prompt go through each block together, so
  // the text encode copies every block once.
  const torch::Tensor reference = host_video("t2v");
  auto comps = wt::tiny_components("t2v");
  const auto layout = comps->t5_component->blocks();
  BOOST_REQUIRE(layout.has_value());
  BOOST_TEST(layout->count() == static_cast<std::int64_t>(comps->text_encoder->model->blocks->size()));
  BOOST_TEST((wan::t5_block_layout(comps->text_encoder->model->config, 4) == *layout));
  // The token embedding stays on the host while T5 streams: neither on the device nor copied.
  const auto& table = comps->text_encoder->model->token_embedding->weight;
  BOOST_TEST(layout->host_bytes == static_cast<std::int64_t>(table.nbytes()));
  for (const std::string policy : {"t5=mock:0:on_demand:stream=1,dit=cpu,vae=cpu", "offload_model,t5=cuda:on_demand:stream=2:pinned"}) {
    BOOST_TEST_CONTEXT(policy) {
      offload::device_set devices;
      auto& mock = offload::testing::add_mock(devices, 0);
      std::optional<offload::plan> plan;
      std::int64_t before = -1, after = -1;
      const auto video = wt::tiny_generate("t2v", {&devices, gpu, offload::parse_policy(policy)},
                                           [&](std::string_view stage, int, const offload::executor& ex) {
                                             if (!plan) plan = ex.get_plan();
                                             if (stage == "text_encode") before = mock.bytes_in();
                                             if (stage == "denoise" && after < 0) after = mock.bytes_in();
                                           });
      BOOST_TEST(torch::equal(video, reference), "video differs from the all-host run");
      BOOST_REQUIRE(plan.has_value());
      BOOST_TEST(mock.bytes_in() == plan->bytes_to_devices);
      BOOST_TEST(mock.peak() == plan->peak_of(gpu));
      BOOST_TEST(mock.used() == 0);
      const int slots = plan->policy.of("t5").stream.slots;
      BOOST_TEST(plan->device_bytes.at("t5") == comps->t5_component->bytes() - layout->total() - layout->host_bytes +
                                                     std::min<std::int64_t>(slots, layout->count()) * layout->slot_bytes);
      if (slots < layout->count()) {
        BOOST_TEST(plan->step("text_encode")->streamed_bytes.at("t5") == layout->total());
        // What the text encode copied after entering: every block once, for both prompts.
        BOOST_TEST(after - before == layout->total());
      }
    }
  }
  // umT5-XXL in bf16, the preset: 24 blocks; streamed, its token embedding (256384 x 4096) stays
  // on the host and only the final norm (4096) moves whole.
  const auto t5 = wan::preset_components("t2v-1.3B")[0];
  BOOST_REQUIRE(t5.blocks.has_value());
  BOOST_TEST(t5.blocks->count() == 24);
  BOOST_TEST(t5.blocks->host_bytes == 256'384LL * 4096 * 2);
  BOOST_TEST(t5.blocks->streamed_rest(t5.bytes) == 4096 * 2);
}

BOOST_AUTO_TEST_SUITE_END()

// Storage dtype (`dit=...:store=bf16`) and the tiled VAE (`vae=...:tile=N:overlap=M`) as policy
// options through whole pipelines on a mock GPU with the tiny golden-set models.
BOOST_AUTO_TEST_SUITE(pipelines_storage_tiling)

BOOST_AUTO_TEST_CASE(dit_storage_sizes_match_the_analytic_model) {
  for (const std::string kind : {"t2v", "i2v", "flf2v", "vace"}) {
    BOOST_TEST_CONTEXT(kind) {
      auto comps = wt::tiny_components(kind);
      const auto& cfg = comps->model->config;
      BOOST_TEST(wan::dit_stored_size(cfg, offload::storage_dtype::native).bytes == comps->dit_component->bytes());
      // Pinned: the analytic tensor list packs as the loaded masters do.
      BOOST_TEST(wan::dit_stored_size(cfg, offload::storage_dtype::native).pinned_bytes ==
                 offload::info_of(*comps->dit_component).pinned_bytes);
      const auto sizes = comps->dit_component->storage_sizes();
      BOOST_REQUIRE(sizes.size() == 2u);
      for (const auto& s : sizes) {
        const auto analytic = wan::dit_stored_size(cfg, s.dtype);
        BOOST_TEST(s.bytes == analytic.bytes, offload::to_string(s.dtype));
        BOOST_TEST(s.pinned_bytes == analytic.pinned_bytes, offload::to_string(s.dtype));
        BOOST_TEST(s.pinned_bytes >= s.bytes, offload::to_string(s.dtype));
        BOOST_TEST((s.blocks == analytic.blocks), offload::to_string(s.dtype));
        // bf16 is the autocast dtype (param_dtype): exact, so the budget planner may choose it.
        BOOST_TEST(s.exact == analytic.exact, offload::to_string(s.dtype));
        BOOST_TEST(s.exact == (s.dtype == offload::storage_dtype::bf16), offload::to_string(s.dtype));
        BOOST_TEST(s.bytes < comps->dit_component->bytes());
      }
    }
  }
  // t2v-14B by hand: a block's matmul weights (q, k, v, o, ffn) are 351,332,864 parameters, its
  // norms and modulation 61,440; bf16 storage halves the first.
  const auto t2v14 = wan::preset_components("t2v-14B");
  const auto* bf16 = t2v14[1].stored_as(offload::storage_dtype::bf16);
  BOOST_REQUIRE(bf16 != nullptr);
  BOOST_REQUIRE(bf16->blocks.has_value());
  BOOST_TEST(bf16->blocks->block_bytes[0] == 351'332'864LL * 2 + 61'440LL * 4);
  BOOST_TEST(wan::preset_components("t2v-14B")[2].tileable);
  BOOST_TEST(!wan::preset_components("t2v-14B")[1].tileable);
  BOOST_TEST_MESSAGE("t2v-14B DiT: float32 " << offload::format_bytes(t2v14[1].bytes) << ", matmul weights in bf16 "
                                             << offload::format_bytes(bf16->bytes));
  // Pinned (packed into power-of-two chunks), the preset DiTs and T5 take under 3% more than their
  // bytes (t2v-14B's DiT 2.4%, T5 0.4%); the VAE and CLIP give no tensor list and count their bytes.
  for (const char* task : {"t2v-1.3B", "t2v-14B", "i2v-14B"})
    for (const auto& c : wan::preset_components(task)) {
      const auto ratio = static_cast<double>(c.pinned_as(offload::storage_dtype::native)) / static_cast<double>(c.bytes);
      BOOST_TEST_MESSAGE(task << " " << c.name << ": " << offload::format_bytes(c.bytes) << ", pinned "
                              << offload::format_bytes(c.pinned_as(offload::storage_dtype::native)) << " ("
                              << ratio << "x)");
      BOOST_TEST(ratio >= 1.0);
      if (c.name == "dit" || c.name == "t5") BOOST_TEST(ratio < 1.03, task << " " << c.name);
    }
}

BOOST_AUTO_TEST_CASE(vae_and_clip_sizes_match_the_analytic_model) {
  // What preset_components gives the planner for the VAE and CLIP (bytes, and pinned bytes packed
  // from the analytic tensor lists) is what their loaded components hold and pin.
  for (const std::string kind : {"t2v", "i2v"}) {
    BOOST_TEST_CONTEXT(kind) {
      auto comps = wt::tiny_components(kind);
      const auto vae = wan::vae_component_info(comps->vae->model->cfg, comps->vae->dtype);
      const auto vae_loaded = offload::info_of(*comps->vae_component);
      BOOST_TEST(vae.bytes == vae_loaded.bytes);
      BOOST_TEST(vae.pinned_bytes == vae_loaded.pinned_bytes);
      BOOST_TEST(vae.tileable == vae_loaded.tileable);
      BOOST_TEST(vae.name == vae_loaded.name);
      BOOST_TEST(comps->clip_component.operator bool() == (kind == "i2v"));
      if (!comps->clip_component) continue;
      const auto clip = wan::clip_component_info(comps->clip->model->config, comps->clip->dtype);
      const auto clip_loaded = offload::info_of(*comps->clip_component);
      BOOST_TEST(clip.bytes == clip_loaded.bytes);
      BOOST_TEST(clip.pinned_bytes == clip_loaded.pinned_bytes);
      BOOST_TEST(clip.name == clip_loaded.name);
    }
  }
  // The presets: the official VAE (float32) and CLIP visual tower (float16, clip_dtype), packed.
  const auto comps = wan::preset_components("i2v-14B");
  auto find = [&](std::string_view name) {
    const auto it = std::find_if(comps.begin(), comps.end(), [&](const auto& c) { return c.name == name; });
    BOOST_REQUIRE(it != comps.end());
    return *it;
  };
  const auto vae = find(wan::VAE_COMPONENT);
  BOOST_TEST(vae.bytes == (126'892'531LL + 2LL * 16) * 4);
  BOOST_TEST(vae.pinned_bytes ==
             wan::vae_component_info(wan::WanVAEConfig::video_vae(), torch::kFloat).pinned_bytes);
  BOOST_TEST(vae.pinned_bytes >= vae.bytes);
  BOOST_TEST(vae.tileable);
  const auto clip = find(wan::CLIP_COMPONENT);
  BOOST_TEST(clip.bytes == 632'076'800LL * 2);
  BOOST_TEST(clip.pinned_bytes ==
             wan::clip_component_info(wan::CLIPConfig::clip_xlm_roberta_vit_h_14(), torch::kHalf).pinned_bytes);
  BOOST_TEST(clip.pinned_bytes >= clip.bytes);
}

BOOST_AUTO_TEST_CASE(bf16_storage_equals_autocast_bit_for_bit) {
  // Fresh components: the bf16 run converts the DiT's masters for good.
  auto comps = wt::load_tiny_components("t2v");
  auto run = [&](const std::string& policy, std::optional<torch::Dtype> autocast,
                 std::optional<offload::plan>* plan_out) {
    offload::device_set devices;
    auto& mock = offload::testing::add_mock(devices, 0);
    wan::execution exec{&devices, gpu, offload::parse_policy(policy)};
    exec.autocast = autocast;
    std::optional<offload::plan> plan;
    auto video = wt::tiny_generate("t2v", exec, [&](std::string_view, int, const offload::executor& ex) {
      if (!plan) plan = ex.get_plan();
    }, comps);
    BOOST_TEST(mock.used() == 0);
    if (plan_out) {
      *plan_out = plan;
      BOOST_REQUIRE(plan.has_value());
      BOOST_TEST(mock.bytes_in() == plan->bytes_to_devices);
      BOOST_TEST(mock.peak() == plan->peak_of(gpu));
    }
    return video;
  };
  const std::int64_t fp32_bytes = comps->dit_component->bytes();
  const auto autocast = run("offload_model", torch::kBFloat16, nullptr);
  const auto float32 = run("offload_model", std::nullopt, nullptr);
  BOOST_TEST(!torch::equal(autocast, float32)); // autocast is in effect
  std::optional<offload::plan> plan;
  const auto stored = run("offload_model,dit=cuda:on_demand:stream=1:store=bf16", torch::kBFloat16, &plan);
  BOOST_TEST(torch::equal(stored, autocast), "bf16 storage differs from fp32 storage under autocast(bf16)");
  const auto sizes = comps->dit_component->storage_sizes();
  BOOST_REQUIRE(!sizes.empty());
  const auto* bf16 = &sizes.front();
  BOOST_TEST(plan->component_bytes.at("dit") == bf16->bytes);
  BOOST_TEST(comps->dit_component->bytes() == bf16->bytes);
  BOOST_TEST(bf16->bytes < fp32_bytes);
  // The matmul weights are bf16 now; modulation, norms, time embedding and head stay float32.
  auto& reg = dynamic_cast<offload::offloadable<wan::WanModel>&>(*comps->dit_component).tensors();
  BOOST_TEST((reg.master("blocks.0.ffn.0.weight").scalar_type() == torch::kBFloat16));
  BOOST_TEST((reg.master("blocks.0.self_attn.q.bias").scalar_type() == torch::kBFloat16));
  BOOST_TEST((reg.master("patch_embedding.weight").scalar_type() == torch::kBFloat16));
  BOOST_TEST((reg.master("blocks.0.modulation").scalar_type() == torch::kFloat32));
  BOOST_TEST((reg.master("time_embedding.0.weight").scalar_type() == torch::kFloat32));
  BOOST_TEST((reg.master("head.head.weight").scalar_type() == torch::kFloat32));
  // Stored in bf16, the DiT computes its matmuls in bf16 even without the guard: the same numbers.
  const auto unguarded = run("offload_model,dit=cuda:on_demand:stream=2", std::nullopt, &plan);
  BOOST_TEST(torch::equal(unguarded, autocast));
}

BOOST_AUTO_TEST_CASE(tiled_vae_policy_decodes_through_tiles) {
  auto comps = wt::tiny_components("t2v");
  const torch::Tensor untiled = host_video("t2v");
  // The tiny run: 32x32 pixels, a 4x4 latent. Tiles of 2 latent px overlapping by 1, and tiles
  // that cover the latent (the untiled path, bit-identical).
  for (const auto& [policy, covers] : std::vector<std::pair<std::string, bool>>{
           {"t5=cpu,dit=cpu,vae=mock:0:on_demand:tile=2:overlap=1", false}, {"t5=cpu,dit=cpu,vae=mock:0:tile=4", true}}) {
    BOOST_TEST_CONTEXT(policy) {
      offload::device_set devices;
      auto& mock = offload::testing::add_mock(devices, 0);
      std::optional<offload::plan> plan;
      torch::Tensor x0;
      const auto video = wt::tiny_generate(
          "t2v", {&devices, gpu, offload::parse_policy(policy)},
          [&](std::string_view, int, const offload::executor& ex) {
            if (!plan) plan = ex.get_plan();
          },
          comps, [&](const std::string& name, const torch::Tensor& v) {
            if (name == "x0") x0 = v.clone();
          });
      BOOST_REQUIRE(plan.has_value());
      BOOST_REQUIRE(x0.defined());
      const auto tiling = wan::vae_tiling_of(offload::parse_policy(policy));
      BOOST_REQUIRE(tiling.has_value());
      // The plan carries the tiled decode workspace; the mock peaks where the plan says.
      BOOST_TEST(plan->step("decode")->workspace_bytes.at(gpu) ==
                 wan::decode_workspace_bytes(32, 32, 5, tiling) + wan::workspace_constants::library_workspace_bytes);
      BOOST_TEST(mock.peak() == plan->peak_of(gpu));
      // The video is the tiled decode of the run's latents.
      const auto direct = comps->vae->decode({x0}, *tiling)[0];
      BOOST_TEST(torch::equal(video, direct));
      BOOST_TEST(torch::equal(video, untiled) == covers);
      const double rel = ((video - untiled).norm() / untiled.norm()).item<double>();
      BOOST_TEST_MESSAGE(policy << ": rel-L2 against the untiled decode " << rel);
      // The VAE component forgets nothing: back home with its tiling.
      BOOST_TEST(comps->vae_tiling().has_value());
    }
  }
  // The next run without tile options decodes untiled again.
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  BOOST_TEST(torch::equal(wt::tiny_generate("t2v", {&devices, gpu, offload::parse_policy(host_policy("t2v"))}), untiled));
  BOOST_TEST(!comps->vae_tiling().has_value());
}

BOOST_AUTO_TEST_CASE(tiled_vae_policy_encodes_through_tiles) {
  // VACE encodes its control videos (inactive and reactive) and reference image through the
  // policy's tiles too: the plan carries the tiled encode workspace, and the mock peaks there.
  auto comps = wt::tiny_components("vace");
  const std::string policy = "t5=cpu,dit=cpu,vae=mock:0:on_demand:tile=2:overlap=1";
  offload::device_set devices;
  auto& mock = offload::testing::add_mock(devices, 0);
  std::optional<offload::plan> plan;
  const auto video = wt::tiny_generate("vace", {&devices, gpu, offload::parse_policy(policy)},
                                       [&](std::string_view, int, const offload::executor& ex) {
                                         if (!plan) plan = ex.get_plan();
                                       },
                                       comps);
  BOOST_REQUIRE(plan.has_value());
  const auto tiling = wan::vae_tiling_of(offload::parse_policy(policy));
  BOOST_REQUIRE(tiling.has_value());
  const auto encode = wan::encode_workspace_bytes(32, 32, 5, 2, tiling);
  BOOST_TEST(plan->step("vae_encode")->workspace_bytes.at(gpu) == encode + wan::workspace_constants::library_workspace_bytes);
  BOOST_TEST(encode < wan::encode_workspace_bytes(32, 32, 5, 2));
  BOOST_TEST(mock.peak() == plan->peak_of(gpu));
  BOOST_TEST(mock.used() == 0);
  // The tiled run differs from the untiled one (the encode's and decode's tiles), finitely.
  BOOST_TEST(torch::isfinite(video).all().item<bool>());
  BOOST_TEST(!torch::equal(video, host_video("vace")));
}

BOOST_AUTO_TEST_SUITE_END()
