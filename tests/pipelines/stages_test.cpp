#include "wan/stages.hpp"
#include "wan/model.hpp"

#include <offload/stage_scheduler.hpp>
#include <offload/testing/simulate.hpp>

#include <boost/test/unit_test.hpp>

using offload::device_id;

namespace {

double gib(std::int64_t b) { return static_cast<double>(b) / offload::GiB; }

std::int64_t bytes_of(const std::vector<offload::component_info>& v, std::string_view name) {
  for (const auto& c : v)
    if (c.name == name) return c.bytes;
  BOOST_FAIL("no component " << name);
  return 0;
}

std::int64_t workspace_of(const std::vector<offload::stage>& v, std::string_view stage) {
  for (const auto& s : v)
    if (s.name == stage) return s.workspace.at(0).bytes;
  BOOST_FAIL("no stage " << stage);
  return 0;
}

double planned_peak(const wan::generation_shape& shape, std::string_view policy) {
  const auto gpu = device_id::mock(0);
  const auto p = offload::schedule(wan::pipeline_stages(shape), wan::preset_components(shape.task),
                                   offload::parse_policy(policy), {.accelerator = gpu});
  return gib(p.peak_of(gpu));
}

} // namespace

BOOST_AUTO_TEST_SUITE(stages)

BOOST_AUTO_TEST_CASE(preset_component_sizes_equal_the_reference_storage) {
  const auto t2v = wan::preset_components("t2v-1.3B");
  BOOST_TEST(bytes_of(t2v, "t5") == 5'680'910'336LL * 2);    // umT5-XXL encoder, bf16
  // fp32, plus the RoPE table `freqs` the component moves with it: complex128 [1024, head_dim / 2 = 64].
  const std::int64_t freqs = std::int64_t{1024} * 64 * 16;
  BOOST_TEST(bytes_of(t2v, "dit") == 1'418'996'800LL * 4 + freqs);
  // fp32, plus the latent statistics `mean` and `std` (16 channels each) the component moves with it.
  BOOST_TEST(bytes_of(t2v, "vae") == (126'892'531LL + 2LL * 16) * 4);
  BOOST_TEST(std::abs(gib(bytes_of(t2v, "t5")) - 10.58) < 0.01);
  BOOST_TEST(std::abs(gib(bytes_of(t2v, "dit")) - 5.29) < 0.01);
  BOOST_TEST(std::abs(gib(bytes_of(t2v, "vae")) - 0.47) < 0.01);
  BOOST_TEST(t2v.size() == 3u);
  const auto i2v = wan::preset_components("i2v-14B");
  BOOST_TEST(bytes_of(i2v, "clip") == 632'076'800LL * 2);    // visual tower, fp16
  BOOST_TEST(bytes_of(wan::preset_components("t2v-14B"), "dit") == 14'288'491'584LL * 4 + freqs); // head_dim 128 too
  BOOST_CHECK_THROW(wan::preset_components("t2v-2B"), offload::config_error);
}

BOOST_AUTO_TEST_CASE(workspaces_reproduce_the_h100_measurements) {
  wan::generation_shape reference{"t2v-1.3B", 832, 480, 81, 50};
  reference.reference_activations = true;
  const auto st = wan::pipeline_stages(reference);
  BOOST_TEST(st.size() == 3u);
  BOOST_TEST(st[1].repeat == 50);
  BOOST_TEST(wan::dit_tokens({"t2v-1.3B", 832, 480, 81, 50}) == 32760);
  BOOST_TEST(std::abs(gib(workspace_of(st, "text_encode")) - 0.28) < 1e-3);
  BOOST_TEST(std::abs(gib(workspace_of(st, "denoise")) - 2.06) < 1e-3);
  BOOST_TEST(std::abs(gib(workspace_of(st, "decode")) - 8.28) < 1e-3);
  // This port's denoise: its block's measured peak, where T2V-1.3B's FFN binds (10.05 + 2 x 8960 /
  // 1536 bytes per token x width), plus the other guidance branch's float32 residual stream
  // (block-major); T2V-14B's FFN (13824 / 5120) is narrower: its attention phase binds.
  // And what the denoise holds around the forward (wan::denoise_held_bytes): four float32 latents
  // [16, 21, 60, 104], the text contexts (2 x [512, 4096] bf16) and the DiT's embedded contexts
  // (2 x [512, 1536] float32). Every stage of this port's model carries cuBLAS's 32 MiB.
  const std::int64_t lib = std::int64_t{32} << 20;
  BOOST_TEST(wan::workspace_constants::library_workspace_bytes == lib);
  const auto port = wan::pipeline_stages({"t2v-1.3B", 832, 480, 81, 50});
  BOOST_TEST(workspace_of(port, "text_encode") == workspace_of(st, "text_encode") + lib);
  BOOST_TEST(workspace_of(port, "decode") == workspace_of(st, "decode") + lib);
  const std::int64_t held13 = 4LL * 16 * 21 * 60 * 104 * 4 + 2LL * 512 * 4096 * 2 + 2LL * 512 * 1536 * 4;
  BOOST_TEST(wan::denoise_held_bytes({"t2v-1.3B", 832, 480, 81, 50}) == held13);
  BOOST_TEST(std::abs(workspace_of(port, "denoise") - (10.05 + 2.0 * 8960 / 1536 + 4.0) * 32760 * 1536 - held13 - lib) < 1e3);
  BOOST_TEST(wan::dit_block_bytes_per_token_dim(wan::model_config("t2v-14B")) ==
             wan::workspace_constants::dit_attention_bytes_per_token_dim);
  const auto port14 = wan::pipeline_stages({"t2v-14B", 1280, 720, 81, 50});
  const std::int64_t held14 = 4LL * 16 * 21 * 90 * 160 * 4 + 2LL * 512 * 4096 * 2 + 2LL * 512 * 5120 * 4;
  BOOST_TEST(wan::denoise_held_bytes({"t2v-14B", 1280, 720, 81, 50}) == held14);
  BOOST_TEST(std::abs(workspace_of(port14, "denoise") -
                      (wan::workspace_constants::dit_attention_bytes_per_token_dim + 4.0) * 75600 * 5120 - held14 - lib) < 1e3);
  // I2V and FLF2V add `y` (4 + 16 channels), the CLIP features and their embedding (257 tokens an
  // image); VACE its context (96 channels over the reference image's latent frame too).
  BOOST_TEST(wan::denoise_held_bytes({"i2v-14B", 832, 480, 81, 40}) ==
             (4LL * 16 + 20) * 21 * 60 * 104 * 4 + 2LL * 512 * 4096 * 2 + 257LL * 1280 * 4 + 2LL * (512 + 257) * 5120 * 4);
  BOOST_TEST(wan::denoise_held_bytes({"flf2v-14B", 832, 480, 81, 40}) ==
             (4LL * 16 + 20) * 21 * 60 * 104 * 4 + 2LL * 512 * 4096 * 2 + 2LL * 257 * 1280 * 4 +
                 2LL * (512 + 2 * 257) * 5120 * 4);
  wan::generation_shape vace{"vace-1.3B", 832, 480, 81, 50};
  vace.ref_images = 1;
  BOOST_TEST(wan::denoise_held_bytes(vace) ==
             (4LL * 16 + 96) * 22 * 60 * 104 * 4 + 2LL * 512 * 4096 * 2 + 2LL * 512 * 1536 * 4);
  BOOST_TEST(workspace_of(port, "denoise") < workspace_of(st, "denoise"));
  // Smaller videos need less: the decode scales with pixels, the DiT with tokens.
  const auto small = wan::pipeline_stages({"t2v-1.3B", 480, 832, 17, 50});
  BOOST_TEST(workspace_of(small, "denoise") < workspace_of(st, "denoise"));
  const auto i2v = wan::pipeline_stages({"i2v-14B", 832, 480, 81, 40});
  BOOST_TEST(i2v.size() == 5u);
  BOOST_TEST(i2v[1].name == "clip_encode");
  BOOST_TEST(i2v[2].name == "vae_encode");
  BOOST_TEST(wan::pipeline_stages({"vace-1.3B", 832, 480, 81, 50})[1].name == "vae_encode");
}

BOOST_AUTO_TEST_CASE(planned_peaks_match_every_measured_configuration) {
  // T2V-1.3B 832x480x81 (within 3%), and T2V-14B 1280x720x81 with offload_model (within 5%).
  // The reference's activations: these are its measurements.
  wan::generation_shape s13{"t2v-1.3B", 832, 480, 81, 50};
  s13.reference_activations = true;
  const std::pair<const char*, double> measured[] = {{"resident", 24.63}, {"offload_model", 16.64},
                                                      {"offload_model+vae_cpu", 10.86},
                                                      {"offload_model+t5_cpu", 8.75},
                                                      {"offload_model+t5_cpu+vae_cpu", 8.75}};
  for (const auto& [policy, gib_measured] : measured) {
    const double p = planned_peak(s13, policy);
    BOOST_TEST_MESSAGE(policy << ": planned " << p << " GiB, measured " << gib_measured);
    BOOST_TEST(std::abs(p - gib_measured) / gib_measured <= 0.03, policy << " " << p);
  }
  wan::generation_shape s14{"t2v-14B", 1280, 720, 81, 50};
  s14.reference_activations = true;
  for (const char* policy : {"offload_model", "offload_model+t5_cpu"}) {
    const double p = planned_peak(s14, policy);
    BOOST_TEST_MESSAGE(policy << " (14B): planned " << p << " GiB, measured 69.0");
    BOOST_TEST(std::abs(p - 69.0) / 69.0 <= 0.05, policy << " " << p);
  }
}

BOOST_AUTO_TEST_CASE(bad_shapes_and_sizes_are_refused) {
  BOOST_CHECK_THROW(wan::pipeline_stages({"t2v-1.3B", 832, 480, 80, 50}), offload::config_error);
  BOOST_CHECK_THROW(wan::pipeline_stages({"t2v-1.3B", 830, 480, 81, 50}), offload::config_error);
  BOOST_TEST((wan::parse_size("832*480") == std::pair{832, 480}));
  try {
    wan::parse_size("832x480");
    BOOST_FAIL("expected config_error");
  } catch (const offload::config_error& e) {
    BOOST_TEST(std::string(e.what()).find("expected '*' between width and height") != std::string::npos);
  }
  BOOST_CHECK_THROW(wan::parse_size("832*"), offload::config_error);
}

BOOST_AUTO_TEST_SUITE_END()
