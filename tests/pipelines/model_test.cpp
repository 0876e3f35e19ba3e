// Tests of pipelines/wan/{model,vace_model,attention}.hpp and pipelines/wan/configs/: presets,
// analytic parameter counts, key sets against the golden manifest, config.json parsing, strict
// loading, RoPE placement, attention masking and the compute-dtype rule.
#include "wan/model.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <limits>
#include <set>
#include <string>

#include <unistd.h>

#include <fmt/format.h>

#include <offload/errors.hpp>
#include <offload/state_dict.hpp>
#include <offload/testing/errors.hpp>
#include <offload/testing/host_memory_probe.hpp>

#include "parity_harness.hpp"
#include "wan/attention.hpp"
#include "wan/configs/configs.hpp"
#include "wan/vace_model.hpp"

namespace fs = std::filesystem;
namespace wt = wan::testing;

namespace {

int64_t numel_sum(torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  for (const auto& b : m.buffers()) n += b.numel();
  return n;
}

std::set<std::string> module_keys(torch::nn::Module& m) {
  std::set<std::string> keys;
  for (const auto& p : m.named_parameters()) keys.insert(p.key());
  for (const auto& b : m.named_buffers()) keys.insert(b.key());
  return keys;
}

/// Builds the model a config describes (WanModel or VaceWanModel) and returns it type-erased.
std::shared_ptr<torch::nn::Module> build(const wan::WanModelConfig& cfg) {
  if (cfg.model_type == "vace") return wan::VaceWanModel(cfg).ptr();
  return wan::WanModel(cfg).ptr();
}

/// A fresh empty directory under the system temp dir, removed at scope exit.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() /
           fmt::format("wan_model_test_{}_{}", static_cast<long>(::getpid()), counter++);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write_file(const fs::path& p, const std::string& text) {
  std::ofstream(p) << text;
}

/// Small configs of every model family (shapes of the presets, tiny widths).
std::vector<wan::WanModelConfig> tiny_variants() {
  std::vector<wan::WanModelConfig> out;
  for (const char* task : {"t2v-1.3B", "i2v-14B", "flf2v-14B", "vace-1.3B", "vace-14B"}) {
    auto c = wan::model_config(task);
    c.dim = 24;
    c.num_heads = 2;
    c.ffn_dim = 40;
    c.freq_dim = 16;
    c.text_dim = 12;
    c.clip_dim = 20;
    if (c.model_type == "vace") {
      c.num_layers = std::string(task) == "vace-14B" ? 7 : 4;
      c.vace_layers = std::string(task) == "vace-14B" ? std::vector<int64_t>{0, 5}
                                                      : std::optional<std::vector<int64_t>>{};
    } else {
      c.num_layers = 2;
    }
    out.push_back(c);
  }
  auto bare = wan::model_config("i2v-14B"); // no qk norm, no cross-attn norm
  bare.dim = 16;
  bare.num_heads = 4;
  bare.ffn_dim = 8;
  bare.freq_dim = 8;
  bare.text_dim = 8;
  bare.clip_dim = 8;
  bare.num_layers = 1;
  bare.qk_norm = false;
  bare.cross_attn_norm = false;
  out.push_back(bare);
  return out;
}

const char* const kGoldenModels[] = {"t2v", "i2v", "flf2v", "vace"};

/// Reference attention with an explicit boolean mask, in float64: q [B, Lq, N, D].
torch::Tensor masked_reference(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& allow /*[B,Lq,Lk]*/) {
  auto qd = q.to(torch::kDouble).transpose(1, 2), kd = k.to(torch::kDouble).transpose(1, 2),
       vd = v.to(torch::kDouble).transpose(1, 2);
  auto s = torch::matmul(qd, kd.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(3)));
  s = s.masked_fill(allow.unsqueeze(1).logical_not(), -std::numeric_limits<double>::infinity());
  return torch::matmul(torch::softmax(s, -1), vd).transpose(1, 2).to(q.scalar_type());
}

} // namespace

BOOST_AUTO_TEST_SUITE(model)

// ------------------------------------------------------------------------------------------------
// configs
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(config_presets_transcribe_the_reference) {
  namespace cfg = wan::configs;
  const auto t2v13 = cfg::t2v_1_3B();
  BOOST_TEST(t2v13.name == "Config: Wan T2V 1.3B");
  BOOST_TEST(t2v13.dim == 1536);
  BOOST_TEST(t2v13.ffn_dim == 8960);
  BOOST_TEST(t2v13.num_heads == 12);
  BOOST_TEST(t2v13.num_layers == 30);
  BOOST_TEST(t2v13.text_len == 512);
  BOOST_TEST(t2v13.num_train_timesteps == 1000);
  BOOST_TEST(t2v13.sample_fps == 16);
  BOOST_TEST((t2v13.t5_dtype == c10::ScalarType::BFloat16));
  BOOST_TEST((t2v13.param_dtype == c10::ScalarType::BFloat16));
  BOOST_TEST((t2v13.vae_stride == std::array<int64_t, 3>{4, 8, 8}));
  BOOST_TEST(!t2v13.clip_dtype.has_value());

  const auto t2v14 = cfg::t2v_14B();
  BOOST_TEST(t2v14.dim == 5120);
  BOOST_TEST(t2v14.ffn_dim == 13824);
  BOOST_TEST(t2v14.num_heads == 40);
  BOOST_TEST(t2v14.num_layers == 40);

  const auto i2v = cfg::i2v_14B();
  BOOST_TEST((i2v.clip_dtype == c10::ScalarType::Half));
  BOOST_TEST(i2v.clip_model == "clip_xlm_roberta_vit_h_14");
  BOOST_TEST(i2v.sample_neg_prompt == "镜头晃动，" + cfg::wan_shared_cfg().sample_neg_prompt);
  const auto flf = cfg::flf2v_14B();
  BOOST_TEST(flf.name == "Config: Wan FLF2V 14B");
  BOOST_TEST(flf.sample_neg_prompt == "镜头切换，" + i2v.sample_neg_prompt);
  BOOST_TEST(cfg::t2i_14B().dim == 5120);

  BOOST_TEST(cfg::WAN_CONFIGS().size() == 7u);
  BOOST_TEST(cfg::wan_config("vace-1.3B").name == "Config: Wan T2V 1.3B");
  BOOST_TEST(cfg::wan_config("vace-14B").name == "Config: Wan T2V 14B");
  BOOST_TEST((cfg::SIZE_CONFIGS().at("832*480") == std::pair<int64_t, int64_t>{832, 480}));
  BOOST_TEST(cfg::MAX_AREA_CONFIGS().at("720*1280") == 921600);
  BOOST_TEST(cfg::MAX_AREA_CONFIGS().size() == 4u);
  BOOST_TEST(cfg::SUPPORTED_SIZES().at("t2i-14B").size() == cfg::SIZE_CONFIGS().size());
  BOOST_TEST(cfg::SUPPORTED_SIZES().at("t2v-1.3B").front() == "480*832");
  for (const auto& task : cfg::wan_tasks()) BOOST_TEST(cfg::SUPPORTED_SIZES().count(task) == 1u);

  try {
    (void)cfg::wan_config("t2v-2B");
    BOOST_FAIL("expected config_error");
  } catch (const offload::config_error& e) {
    BOOST_TEST(e.id() == "offload.wan.config.unknown_task");
    BOOST_TEST(std::string(e.what()).find("'t2v-2B'") != std::string::npos);
    BOOST_TEST(std::string(e.what()).find("vace-14B") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(model_config_presets) {
  const auto t2v = wan::wan_t2v_1_3B();
  BOOST_TEST(t2v.model_type == "t2v");
  BOOST_TEST(t2v.in_dim == 16);
  BOOST_TEST(t2v.text_dim == 4096);
  BOOST_TEST(t2v.text_len == 512);
  const auto i2v = wan::wan_i2v_14B();
  BOOST_TEST(i2v.model_type == "i2v");
  BOOST_TEST(i2v.in_dim == 36);
  BOOST_TEST(i2v.clip_dim == 1280);
  BOOST_TEST(wan::wan_flf2v_14B().model_type == "flf2v");
  BOOST_TEST(wan::wan_t2i_14B().model_type == "t2v");
  const auto v13 = wan::wan_vace_1_3B();
  BOOST_TEST(v13.resolved_vace_layers().size() == 15u);
  BOOST_TEST(v13.resolved_vace_in_dim() == 96);
  BOOST_TEST((wan::wan_vace_14B().resolved_vace_layers() ==
              std::vector<int64_t>{0, 5, 10, 15, 20, 25, 30, 35}));
}

// ------------------------------------------------------------------------------------------------
// parameter counts and key sets
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(parameter_count_official_presets) {
  BOOST_TEST(wan::parameter_count(wan::wan_t2v_1_3B()) == 1'418'996'800);
  BOOST_TEST(wan::parameter_count(wan::wan_t2v_14B()) == 14'288'491'584);
  BOOST_TEST(wan::parameter_count(wan::wan_t2i_14B()) == 14'288'491'584);
  // No official figures: consistency only (construction at small sizes is checked below).
  const auto i2v = wan::parameter_count(wan::wan_i2v_14B());
  const auto flf = wan::parameter_count(wan::wan_flf2v_14B());
  const auto v13 = wan::parameter_count(wan::wan_vace_1_3B());
  const auto v14 = wan::parameter_count(wan::wan_vace_14B());
  BOOST_TEST_MESSAGE(fmt::format("i2v-14B {} flf2v-14B {} vace-1.3B {} vace-14B {}", i2v, flf, v13,
                                 v14));
  BOOST_TEST(flf - i2v == wan::FIRST_LAST_FRAME_CONTEXT_TOKEN_NUMBER * 1280);
  BOOST_TEST(i2v > wan::parameter_count(wan::wan_t2v_14B()));
  BOOST_TEST(v13 > wan::parameter_count(wan::wan_t2v_1_3B()));
  BOOST_TEST(v14 > wan::parameter_count(wan::wan_t2v_14B()));
}

BOOST_AUTO_TEST_CASE(parameter_count_equals_construction) {
  for (const char* name : kGoldenModels) {
    BOOST_TEST_CONTEXT(name) {
      const auto cfg = wan::from_config_json(wt::checkpoint_path(name) / "config.json");
      auto m = build(cfg);
      const auto expected =
          wt::manifest_entry(fmt::format("checkpoints/{}/diffusion_pytorch_model.safetensors", name))
              .at("num_params")
              .get<int64_t>();
      BOOST_TEST(wan::parameter_count(cfg) == numel_sum(*m));
      BOOST_TEST(wan::parameter_count(cfg) == expected);
    }
  }
  for (const auto& cfg : tiny_variants()) {
    BOOST_TEST_CONTEXT(cfg.model_type << " qk_norm=" << cfg.qk_norm << " layers=" << cfg.num_layers) {
      auto m = build(cfg);
      BOOST_TEST(wan::parameter_count(cfg) == numel_sum(*m));
      // Tensor by tensor (what the pinned size packs): the same sizes as the module's parameters.
      std::vector<int64_t> listed, built;
      for (const auto& t : wan::dit_tensors(cfg)) listed.push_back(t.numel);
      for (const auto& p : m->parameters()) built.push_back(p.numel());
      std::sort(listed.begin(), listed.end());
      std::sort(built.begin(), built.end());
      BOOST_TEST(listed == built, boost::test_tools::per_element());
    }
  }
}

BOOST_AUTO_TEST_CASE(key_sets_equal_golden_checkpoints) {
  for (const char* name : kGoldenModels) {
    BOOST_TEST_CONTEXT(name) {
      const auto cfg = wan::from_config_json(wt::checkpoint_path(name) / "config.json");
      auto m = build(cfg);
      const auto& keys =
          wt::manifest_entry(fmt::format("checkpoints/{}/diffusion_pytorch_model.safetensors", name))
              .at("keys");
      std::set<std::string> golden;
      for (const auto& [k, spec] : keys.items()) golden.insert(k);
      const auto mine = module_keys(*m);
      BOOST_TEST(mine.size() == golden.size());
      for (const auto& k : golden) BOOST_TEST(mine.count(k) == 1u, "missing " << k);
      for (const auto& k : mine) BOOST_TEST(golden.count(k) == 1u, "unexpected " << k);
      for (const auto& p : m->named_parameters())
        if (keys.contains(p.key()))
          BOOST_TEST(p.value().sizes().vec() == keys.at(p.key()).at("shape").get<std::vector<int64_t>>(),
                     boost::test_tools::per_element());
      BOOST_TEST(mine.count("freqs") == 0u); // plain tensor, not a buffer
    }
  }
}

// ------------------------------------------------------------------------------------------------
// config.json and loading
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(from_config_json_reads_golden_configs) {
  const auto t2v = wan::from_config_json(wt::checkpoint_path("t2v") / "config.json");
  BOOST_TEST(t2v.model_type == "t2v");
  BOOST_TEST(t2v.dim == 128);
  BOOST_TEST(t2v.text_len == 32);
  BOOST_TEST(t2v.text_dim == 64);
  const auto flf = wan::from_config_json(wt::checkpoint_path("flf2v") / "config.json");
  BOOST_TEST(flf.clip_dim == 64);
  BOOST_TEST(flf.text_len == 512);
  const auto vace = wan::from_config_json(wt::checkpoint_path("vace") / "config.json");
  BOOST_TEST(vace.model_type == "vace");
  BOOST_TEST((vace.resolved_vace_layers() == std::vector<int64_t>{0, 2}));
  BOOST_TEST(vace.resolved_vace_in_dim() == 96);
}

BOOST_AUTO_TEST_CASE(from_config_json_errors_name_the_problem) {
  temp_dir d;
  auto expect = [&](const std::string& json, const std::string& id, const std::string& needle) {
    write_file(d.path / "config.json", json);
    try {
      (void)wan::from_config_json(d.path / "config.json");
      BOOST_ERROR("no error for " << json);
    } catch (const offload::config_error& e) {
      BOOST_TEST(e.id() == id);
      BOOST_TEST(std::string(e.what()).find(needle) != std::string::npos, e.what());
    }
  };
  expect(R"({"dim": 64, "num_heads": 2, "foo_bar": 1})", "offload.wan.config.unknown_keys", "foo_bar");
  expect(R"({"dim": "64"})", "offload.wan.config.type", "'dim'");
  expect(R"({"model_type": "t3v"})", "offload.wan.config.invalid", "t3v");
  expect(R"({"dim": 60, "num_heads": 7})", "offload.wan.config.invalid", "num_heads");
  expect(R"({"model_type": "vace", "num_layers": 4, "vace_layers": [1, 2]})",
         "offload.wan.config.invalid", "vace_layers");
  expect(R"({"_class_name": "UNet"})", "offload.wan.config.class", "UNet");
  expect("{not json", "offload.wan.config.parse", "config.json");
  BOOST_CHECK_THROW(wan::from_config_json(d.path / "missing.json"), offload::config_error);
  // Found by the fuzzer (tests/fuzz, target config): a deeply nested value overflowed the stack
  // while the type error was formatted; nesting is now refused while parsing.
  expect(R"({"dim": )" + std::string(200000, '[') + std::string(200000, ']') + "}",
         "offload.wan.config.parse", "nested deeper than 16 levels");
  expect(R"({"patch_size": [[[1]], 2, 2]})", "offload.wan.config.type", "'patch_size'");
  // Found by the fuzzer: sizes beyond int64 arithmetic (a 2^62-entry default vace_layers, an
  // overflowing parameter_count) are refused by validate().
  expect(R"({"model_type": "vace", "num_layers": 9223372036854775807})", "offload.wan.config.invalid",
         "num_layers must be at most 4096");
  expect(R"({"dim": 4611686018427387904, "num_heads": 2})", "offload.wan.config.invalid",
         "dim must be at most 1048576");
  expect(R"({"patch_size": [1, 2, 100]})", "offload.wan.config.invalid", "patch_size[2] must be at most 64");
}

BOOST_AUTO_TEST_CASE(load_wan_model_is_strict) {
  auto m = wan::load_wan_model(wt::checkpoint_path("t2v"));
  const auto sd = offload::load_checkpoint(wt::checkpoint_path("t2v"));
  BOOST_TEST(torch::equal(m->blocks[1]->named_parameters()["self_attn.q.weight"],
                          sd.at("blocks.1.self_attn.q.weight")));
  BOOST_CHECK_THROW(wan::load_wan_model(wt::checkpoint_path("vace")), offload::config_error);
  BOOST_CHECK_THROW(wan::load_vace_wan_model(wt::checkpoint_path("t2v")), offload::config_error);

  // A config that does not match the weights: one block more than the checkpoint has.
  temp_dir d;
  fs::create_symlink(wt::checkpoint_path("t2v") / "diffusion_pytorch_model.safetensors",
                     d.path / "diffusion_pytorch_model.safetensors");
  write_file(d.path / "config.json",
             R"({"_class_name": "WanModel", "dim": 128, "ffn_dim": 256, "in_dim": 16, "num_heads": 2,
                 "num_layers": 3, "out_dim": 16, "text_dim": 64, "text_len": 32})");
  try {
    (void)wan::load_wan_model(d.path);
    BOOST_FAIL("expected checkpoint_error");
  } catch (const offload::checkpoint_error& e) {
    BOOST_TEST(std::string(e.what()).find("blocks.2.") != std::string::npos, e.what());
  }
}

BOOST_AUTO_TEST_CASE(loaded_with_16_bit_matmul_weights_equals_float32_loaded_then_converted) {
  // load_wan_model(dir, dtype) converts each checkpoint value as it is copied in: the bits of the
  // float32 load converted by store_matmul_weights, the same tensors in float32 (norms,
  // modulation, time embedding, head) and the same RoPE table.
  for (const char* name : kGoldenModels) {
    for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
      BOOST_TEST_CONTEXT(name << " " << c10::toString(dtype)) {
        const bool vace = std::string(name) == "vace";
        const auto dir = wt::checkpoint_path(name);
        wan::WanModel expected = vace ? wan::WanModel(std::static_pointer_cast<wan::WanModelImpl>(
                                            wan::load_vace_wan_model(dir).ptr()))
                                      : wan::load_wan_model(dir);
        wan::store_matmul_weights(*expected, dtype);
        wan::WanModel loaded = vace ? wan::WanModel(std::static_pointer_cast<wan::WanModelImpl>(
                                          wan::load_vace_wan_model(dir, dtype).ptr()))
                                    : wan::load_wan_model(dir, dtype);
        const auto selected = wan::matmul_weight_paths(*loaded);
        BOOST_TEST(!selected.empty());
        const auto a = expected->named_parameters(), b = loaded->named_parameters();
        BOOST_REQUIRE(a.size() == b.size());
        for (const auto& p : a) {
          const auto& q = b[p.key()];
          BOOST_TEST(q.scalar_type() == (selected.count(p.key()) ? dtype : torch::kFloat32), p.key());
          BOOST_TEST(torch::equal(p.value(), q), p.key());
        }
        BOOST_TEST(torch::equal(expected->freqs, loaded->freqs));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(built_with_bf16_matmul_weights_block_by_block_never_holding_the_float32_dit) {
  // 8 blocks of width 256: built in float32 and then converted, the host holds the float32 DiT;
  // block by block it holds the stored DiT, the non-block parts and one block in float32.
  for (const char* type : {"t2v", "vace"}) {
    BOOST_TEST_CONTEXT(type) {
      wan::WanModelConfig cfg;
      cfg.model_type = type;
      cfg.dim = 256;
      cfg.ffn_dim = 512;
      cfg.num_heads = 2;
      cfg.num_layers = 8;
      cfg.text_dim = 64;
      cfg.freq_dim = 32;
      cfg.text_len = 16;
      const auto make = [&](std::optional<torch::Dtype> dtype) {
        return cfg.model_type == "vace"
                   ? wan::WanModel(std::static_pointer_cast<wan::WanModelImpl>(wan::VaceWanModel(cfg, dtype).ptr()))
                   : wan::WanModel(cfg, dtype);
      };
      const std::int64_t float32_bytes = wan::parameter_count(cfg) * 4;
      std::int64_t whole_peak = 0, parts_peak = 0;
      {
        offload::testing::host_memory_probe probe;
        auto whole = make(std::nullopt);
        wan::store_matmul_weights(*whole, torch::kBFloat16);
        whole_peak = probe.peak();
      }
      wan::WanModel parts{nullptr};
      {
        offload::testing::host_memory_probe probe;
        parts = make(torch::kBFloat16);
        parts_peak = probe.peak();
      }
      std::int64_t stored = 0, non_block = 0, block = 0;
      for (const auto& p : parts->named_parameters()) {
        stored += static_cast<std::int64_t>(p.value().nbytes());
        const auto& k = p.key();
        if (k.rfind("blocks.", 0) != 0 && k.rfind("vace_blocks.", 0) != 0) non_block += p.value().numel() * 4;
        if (k.rfind("blocks.0.", 0) == 0) block += p.value().numel() * 4;
      }
      const std::int64_t table = static_cast<std::int64_t>(parts->freqs.nbytes());
      BOOST_TEST_MESSAGE(type << ": float32 " << float32_bytes << " B, stored " << stored << " B; peak built whole "
                              << whole_peak << " B, block by block " << parts_peak << " B");
      BOOST_TEST(whole_peak >= float32_bytes);
      // Blocks 0.. in float32 would exceed this by 7 blocks' float32 halves.
      BOOST_TEST(parts_peak <= stored + non_block + block + 2 * table);
      BOOST_TEST(parts_peak < float32_bytes);
      // Stored as store_matmul_weights stores them, and initialised (init_weights zeroes the
      // blocks' Linear biases, which LibTorch's initialisation does not).
      const auto selected = wan::matmul_weight_paths(*parts);
      for (const auto& p : parts->named_parameters())
        BOOST_TEST(p.value().scalar_type() == (selected.count(p.key()) ? torch::kBFloat16 : torch::kFloat32), p.key());
      if (cfg.model_type == "t2v")
        for (const auto& p : parts->named_parameters())
          if (p.key().rfind("blocks.", 0) == 0 && p.key().ends_with(".bias") && selected.count(p.key()))
            BOOST_TEST(p.value().count_nonzero().item<std::int64_t>() == 0, p.key());
    }
  }
  BOOST_TEST(offload::testing::error_id([] { (void)wan::WanModel(wan::WanModelConfig{}, torch::kFloat64); }) ==
             "offload.wan.model.matmul_dtype");
}

// ------------------------------------------------------------------------------------------------
// functions
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(rope_table_is_complex128_and_never_moved) {
  auto cfg = wan::from_config_json(wt::checkpoint_path("vace") / "config.json");
  wan::VaceWanModel m(cfg);
  BOOST_TEST((m->freqs.scalar_type() == torch::kComplexDouble));
  BOOST_TEST((m->freqs.sizes().vec() == std::vector<int64_t>{1024, cfg.dim / cfg.num_heads / 2}));
  m->to(torch::kFloat64); // Module::to leaves non-buffer tensors alone, as in the reference
  BOOST_TEST((m->freqs.scalar_type() == torch::kComplexDouble));

  auto x = torch::randn({1, 6, 2, 32});
  auto grid = torch::tensor({1, 2, 3}, torch::kLong).view({1, 3});
  auto freqs = wan::rope_params(1024, 32);
  auto y = wan::rope_apply(x, grid, freqs);
  BOOST_TEST((y.scalar_type() == torch::kFloat32));
  // RoPE is a rotation: norms per complex pair are kept.
  auto n0 = torch::view_as_complex(x.view({1, 6, 2, 16, 2})).abs();
  auto n1 = torch::view_as_complex(y.view({1, 6, 2, 16, 2})).abs();
  BOOST_TEST(torch::allclose(n0, n1, 1e-5, 1e-6));
  // Padding rows past the grid are passed through unchanged.
  auto xp = torch::cat({x, torch::randn({1, 2, 2, 32})}, 1);
  auto yp = wan::rope_apply(xp, grid, freqs);
  BOOST_TEST(torch::equal(yp.slice(1, 6), xp.slice(1, 6)));

  try {
    (void)wan::rope_apply(x, grid, freqs.to(torch::Device(torch::kMeta)));
    BOOST_FAIL("expected placement_error");
  } catch (const offload::placement_error& e) {
    BOOST_TEST(e.id() == "offload.placement.device_mismatch");
    BOOST_TEST(std::string(e.what()).find("freqs") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(sinusoidal_embedding_matches_formula) {
  auto t = torch::tensor({0, 999}, torch::kLong);
  auto s = wan::sinusoidal_embedding_1d(8, t);
  BOOST_TEST((s.scalar_type() == torch::kFloat64));
  BOOST_TEST((s.sizes().vec() == std::vector<int64_t>{2, 8}));
  for (int j = 0; j < 4; ++j) {
    const double arg = 999.0 * std::pow(10000.0, -j / 4.0);
    BOOST_TEST(s[1][j].item<double>() == std::cos(arg), boost::test_tools::tolerance(1e-12));
    BOOST_TEST(s[1][4 + j].item<double>() == std::sin(arg), boost::test_tools::tolerance(1e-9));
    BOOST_TEST(s[0][j].item<double>() == 1.0);
  }
}

// ------------------------------------------------------------------------------------------------
// attention
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(flash_attention_honours_key_lengths) {
  torch::manual_seed(0);
  const int64_t B = 3, Lq = 5, Lk = 7, N = 2, D = 8;
  auto q = torch::randn({B, Lq, N, D}), k = torch::randn({B, Lk, N, D}),
       v = torch::randn({B, Lk, N, D});
  auto lens = torch::tensor({7, 3, 1}, torch::kLong);
  auto out = wan::flash_attention(q, k, v, {}, lens);
  BOOST_TEST((out.sizes().vec() == std::vector<int64_t>{B, Lq, N, D}));

  auto allow = torch::arange(Lk).view({1, 1, Lk}).lt(lens.view({B, 1, 1})).expand({B, Lq, Lk});
  BOOST_TEST(torch::allclose(out, masked_reference(q, k, v, allow), 1e-5, 1e-6));
  // Keys/values past k_lens[b] have no influence.
  auto k2 = k.clone(), v2 = v.clone();
  k2[1].slice(0, 3).fill_(100.0);
  v2[1].slice(0, 3).fill_(-100.0);
  BOOST_TEST(torch::equal(wan::flash_attention(q, k2, v2, {}, lens)[1], out[1]));
  // No k_lens == all keys.
  auto all = torch::ones({B, Lq, Lk}, torch::kBool);
  BOOST_TEST(torch::allclose(wan::flash_attention(q, k, v), masked_reference(q, k, v, all), 1e-5,
                             1e-6));
  // q_lens: rows past the length are zero.
  auto qo = wan::flash_attention(q, k, v, torch::tensor({5, 2, 5}, torch::kLong), lens);
  BOOST_TEST(torch::equal(qo[1].slice(0, 2), torch::zeros({Lq - 2, N, D})));
  BOOST_TEST(torch::allclose(qo[1].slice(0, 0, 2), out[1].slice(0, 0, 2), 1e-6, 1e-7));

  BOOST_CHECK_THROW(wan::flash_attention(q, k, v, {}, torch::tensor({7, 0, 1})), offload::config_error);
  BOOST_CHECK_THROW(wan::flash_attention(q, k, v, {}, torch::tensor({8, 1, 1})), offload::config_error);
  BOOST_CHECK_THROW(wan::flash_attention(q, k, v.slice(1, 1)), offload::config_error);
}

BOOST_AUTO_TEST_CASE(flash_attention_causal_window_and_gqa) {
  torch::manual_seed(1);
  const int64_t B = 2, Lq = 4, Lk = 6, D = 4;
  auto q = torch::randn({B, Lq, 4, D}), k = torch::randn({B, Lk, 2, D}),
       v = torch::randn({B, Lk, 2, D});
  // GQA: query heads 0,1 use kv head 0; heads 2,3 use kv head 1.
  auto kr = k.repeat_interleave(2, 2), vr = v.repeat_interleave(2, 2);
  auto i = torch::arange(Lq).view({Lq, 1}) + (Lk - Lq), j = torch::arange(Lk).view({1, Lk});
  auto causal = j.le(i).unsqueeze(0).expand({B, Lq, Lk});
  BOOST_TEST(torch::allclose(wan::flash_attention(q, k, v, {}, {}, 0.0, {}, {}, true),
                             masked_reference(q, kr, vr, causal), 1e-5, 1e-6));
  auto window = (j.ge(i - 1) & j.le(i + 1)).unsqueeze(0).expand({B, Lq, Lk});
  BOOST_TEST(torch::allclose(wan::flash_attention(q, k, v, {}, {}, 0.0, {}, {}, false, {1, 1}),
                             masked_reference(q, kr, vr, window), 1e-5, 1e-6));
  // softmax_scale / q_scale
  auto s1 = wan::flash_attention(q, k, v, {}, {}, 0.0, 0.25);
  auto s2 = wan::flash_attention(q * (0.25 * std::sqrt(D)), k, v);
  BOOST_TEST(torch::allclose(s1, s2, 1e-5, 1e-6));
  BOOST_TEST(torch::allclose(wan::flash_attention(q, k, v, {}, {}, 0.0, {}, 2.0),
                             wan::flash_attention(q * 2.0, k, v), 1e-6, 1e-7));
  BOOST_CHECK_THROW(wan::flash_attention(q, k, v, {}, {}, 0.1), offload::config_error);
}

// ------------------------------------------------------------------------------------------------
// compute-dtype rule
// ------------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(compute_dtype_rule) {
  auto w16 = torch::zeros({2, 2}, torch::kBFloat16), w32 = torch::zeros({2, 2});
  BOOST_TEST((wan::linear_compute_dtype(w16) == torch::kBFloat16));
  BOOST_TEST((wan::linear_compute_dtype(w16, wan::compute_region::float32) == torch::kFloat32));
  BOOST_TEST((wan::linear_compute_dtype(w32) == torch::kFloat32));
  torch::nn::Linear l(2, 3);
  l->to(torch::kBFloat16);
  BOOST_TEST((wan::linear(l, torch::randn({4, 2})).scalar_type() == torch::kBFloat16));
  BOOST_TEST((wan::linear(l, torch::randn({4, 2}), wan::compute_region::float32).scalar_type() ==
              torch::kFloat32));
}

BOOST_AUTO_TEST_CASE(bf16_storage_runs_with_float32_islands) {
  torch::NoGradGuard no_grad;
  wt::golden_case g("dit_t2v");
  auto m = wan::load_wan_model(wt::checkpoint_path("t2v"));
  m->to(torch::kBFloat16);
  std::vector<torch::Tensor> mod_dtypes;
  m->trace = [&](const std::string& name, const torch::Tensor& v) {
    if (name == "time_embedding" || name == "time_projection") mod_dtypes.push_back(v);
  };
  auto out = m->forward({g.tensor("in.c1.x.0")}, g.tensor("in.c1.t"), {g.tensor("in.c1.context.0")},
                        g.tensor("in.c1.seq_len").item<int64_t>());
  BOOST_TEST((out[0].scalar_type() == torch::kFloat32));
  for (const auto& t : mod_dtypes) BOOST_TEST((t.scalar_type() == torch::kFloat32));
  const auto golden = g.tensor("out.c1.out.0");
  const double rel = (out[0] - golden).abs().max().item<double>() / golden.abs().max().item<double>();
  BOOST_TEST_MESSAGE("bf16 storage vs float32 golden: max|diff|/max|golden| = " << rel);
  BOOST_TEST(rel < 5e-2);
}

BOOST_AUTO_TEST_CASE(bf16_matmul_storage_equals_fp32_weights_under_autocast) {
  // The reference runs the DiT under amp.autocast(bf16): fp32 weights, bf16 matmuls, float32
  // islands. Storing the matmul weights in bf16 must give exactly the same numbers.
  torch::NoGradGuard no_grad;
  for (const char* variant : {"t2v", "i2v"}) {
    auto fp32 = wan::load_wan_model(wt::checkpoint_path(variant));
    auto bf16 = wan::load_wan_model(wt::checkpoint_path(variant));
    wan::store_matmul_weights(*bf16, torch::kBFloat16);
    int converted = 0;
    for (const auto& p : bf16->named_parameters()) {
      const std::string& n = p.key();
      const bool float32_region = n.find("norm") != std::string::npos || n.find("modulation") != std::string::npos ||
                                  n.rfind("time_", 0) == 0 || n.rfind("head.", 0) == 0 ||
                                  n.rfind("img_emb.proj.0.", 0) == 0 || // MLPProj's LayerNorms
                                  n.rfind("img_emb.proj.4.", 0) == 0;
      BOOST_TEST((p.value().scalar_type() == (float32_region ? torch::kFloat32 : torch::kBFloat16)), n);
      converted += !float32_region;
    }
    BOOST_TEST(converted > 0);
    const auto c = std::string("dit_") + variant;
    wt::golden_case g(c);
    auto run = [&](wan::WanModel& m) {
      std::vector<torch::Tensor> y;
      if (g.has("in.c1.y.0")) y = {g.tensor("in.c1.y.0")};
      torch::Tensor clip = g.has("in.c1.clip_fea") ? g.tensor("in.c1.clip_fea") : torch::Tensor();
      return m->forward({g.tensor("in.c1.x.0")}, g.tensor("in.c1.t"), {g.tensor("in.c1.context.0")},
                        g.tensor("in.c1.seq_len").item<int64_t>(), clip, y)[0];
    };
    torch::Tensor under_autocast;
    {
      wan::autocast_guard autocast(torch::kBFloat16);
      under_autocast = run(fp32);
    }
    const auto stored_bf16 = run(bf16);
    BOOST_TEST(torch::equal(under_autocast, stored_bf16), variant);
    BOOST_TEST(!torch::equal(under_autocast, run(fp32)), variant); // the rule changes the numbers
  }
}

BOOST_AUTO_TEST_CASE(forward_argument_errors) {
  torch::NoGradGuard no_grad;
  auto m = wan::load_wan_model(wt::checkpoint_path("i2v"));
  auto x = torch::randn({16, 1, 4, 4});
  auto ctx = torch::randn({3, 64});
  auto t = torch::tensor({10}, torch::kLong);
  BOOST_CHECK_THROW(m->forward({x}, t, {ctx}, 4), offload::config_error); // no clip_fea / y
  auto t2v = wan::load_wan_model(wt::checkpoint_path("t2v"));
  try {
    (void)t2v->forward({x}, t, {torch::randn({3, 64})}, 2); // 4 tokens > seq_len 2
    BOOST_FAIL("expected config_error");
  } catch (const offload::config_error& e) {
    BOOST_TEST(e.id() == "offload.wan.model.seq_len");
  }
  BOOST_CHECK_THROW(t2v->forward({x}, t, {torch::randn({33, 64})}, 4), offload::config_error);
}

BOOST_AUTO_TEST_SUITE_END()
