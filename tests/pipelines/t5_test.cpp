// Tests of pipelines/wan/t5.hpp: configs, parameter counts, key sets against the golden manifest,
// checkpoint loading (bf16 -> float32), relative-position buckets and the T5EncoderModel wrapper.
#include "parity_harness.hpp"
#include "wan/t5.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <random>

#include <fmt/format.h>

#include <offload/errors.hpp>
#include <offload/state_dict.hpp>
#include <offload/testing/host_memory_probe.hpp>

#include "parity_harness.hpp"

namespace fs = std::filesystem;
namespace wt = wan::testing;

namespace {

constexpr const char* kCheckpoint = "checkpoints/models_t5_umt5-xxl-enc-bf16.pth";

wan::T5Config tiny_config() {
  const auto& c = wt::manifest_entry(kCheckpoint).at("config");
  wan::T5Config cfg;
  cfg.vocab_size = c.at("vocab_size").get<std::int64_t>();
  cfg.dim = c.at("dim").get<std::int64_t>();
  cfg.dim_attn = c.at("dim_attn").get<std::int64_t>();
  cfg.dim_ffn = c.at("dim_ffn").get<std::int64_t>();
  cfg.num_heads = c.at("num_heads").get<std::int64_t>();
  cfg.encoder_layers = c.at("encoder_layers").get<std::int64_t>();
  cfg.decoder_layers = c.at("decoder_layers").get<std::int64_t>();
  cfg.num_buckets = c.at("num_buckets").get<std::int64_t>();
  cfg.shared_pos = c.at("shared_pos").get<bool>();
  cfg.dropout = c.at("dropout").get<double>();
  return cfg;
}

std::map<std::string, std::vector<std::int64_t>> module_keys(torch::nn::Module& m) {
  std::map<std::string, std::vector<std::int64_t>> keys;
  for (const auto& p : m.named_parameters()) keys[p.key()] = p.value().sizes().vec();
  for (const auto& b : m.named_buffers()) keys[b.key()] = b.value().sizes().vec();
  return keys;
}

template <class F>
void expect_error_id(F&& f, const std::string& id, const std::string& substring = {}) {
  try {
    f();
    BOOST_ERROR("expected offload error " << id);
  } catch (const offload::error& e) {
    BOOST_TEST(e.id() == id);
    if (!substring.empty())
      BOOST_TEST(std::string(e.what()).find(substring) != std::string::npos, e.what());
  }
}

} // namespace

BOOST_AUTO_TEST_SUITE(t5)

BOOST_AUTO_TEST_CASE(umt5_xxl_preset_and_parameter_count) {
  const auto c = wan::T5Config::umt5_xxl();
  BOOST_TEST(c.vocab_size == 256384);
  BOOST_TEST(c.dim == 4096);
  BOOST_TEST(c.dim_attn == 4096);
  BOOST_TEST(c.dim_ffn == 10240);
  BOOST_TEST(c.num_heads == 64);
  BOOST_TEST(c.encoder_layers == 24);
  BOOST_TEST(c.num_buckets == 32);
  BOOST_TEST(!c.shared_pos);
  BOOST_TEST(wan::parameter_count(c) == 5'680'910'336LL);
  // the official config in the manifest is the preset
  const auto& o = wt::manifest_entry(kCheckpoint).at("official_config");
  BOOST_TEST(o.at("vocab_size").get<std::int64_t>() == c.vocab_size);
  BOOST_TEST(o.at("dim_ffn").get<std::int64_t>() == c.dim_ffn);
  BOOST_TEST(o.at("encoder_layers").get<std::int64_t>() == c.encoder_layers);
}

BOOST_AUTO_TEST_CASE(tiny_config_numel_equals_parameter_count) {
  const auto cfg = tiny_config();
  wan::T5Encoder enc(cfg);
  std::int64_t numel = 0;
  for (const auto& p : enc->parameters()) numel += p.numel();
  BOOST_TEST(numel == wan::parameter_count(cfg));
  BOOST_TEST(numel == wt::manifest_entry(kCheckpoint).at("num_params").get<std::int64_t>());
  auto shared = cfg;
  shared.shared_pos = true;
  wan::T5Encoder enc_shared(shared);
  numel = 0;
  for (const auto& p : enc_shared->parameters()) numel += p.numel();
  BOOST_TEST(numel == wan::parameter_count(shared));
  // Tensor by tensor (what the preset's pinned size packs): the module's parameter sizes.
  for (const auto& [c, m] : {std::pair{cfg, enc.ptr()}, std::pair{shared, enc_shared.ptr()}}) {
    std::vector<std::int64_t> listed = wan::tensor_numels(c), built;
    for (const auto& p : m->parameters()) built.push_back(p.numel());
    std::sort(listed.begin(), listed.end());
    std::sort(built.begin(), built.end());
    BOOST_TEST(listed == built, boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_CASE(built_in_bf16_part_by_part_never_holding_the_float32_encoder) {
  // 8 blocks, a table as large as one block: built whole in float32 and then converted, the host
  // holds the float32 encoder and more at once; part by part it holds the bf16 encoder and one
  // part in float32. Same values either way.
  wan::T5Config cfg = tiny_config();
  cfg.vocab_size = 1024;
  cfg.dim = cfg.dim_attn = 128;
  cfg.dim_ffn = 256;
  cfg.num_heads = 4;
  cfg.encoder_layers = 8;
  cfg.shared_pos = false;
  const std::int64_t numel = wan::parameter_count(cfg);
  const std::vector<std::int64_t> sizes = wan::tensor_numels(cfg);
  const std::int64_t largest = *std::max_element(sizes.begin(), sizes.end());
  torch::manual_seed(3);
  offload::testing::host_memory_probe whole_probe;
  wan::T5Encoder whole(cfg);
  whole->to(torch::kBFloat16);
  const std::int64_t whole_peak = whole_probe.peak();
  torch::manual_seed(3);
  std::int64_t parts_peak = 0;
  wan::T5Encoder parts{nullptr};
  {
    offload::testing::host_memory_probe probe;
    parts = wan::T5Encoder(cfg, torch::kBFloat16);
    parts_peak = probe.peak();
  }
  BOOST_TEST(whole_peak >= numel * 4);
  // One block in float32: its attention, feed-forward, norms and relative embedding.
  const std::int64_t block = (4 * cfg.dim * cfg.dim_attn + 3 * cfg.dim * cfg.dim_ffn + 2 * cfg.dim +
                              cfg.num_buckets * cfg.num_heads) * 4;
  BOOST_TEST(parts_peak <= numel * 2 + std::max(block, largest * 4));
  BOOST_TEST(parts_peak < numel * 4);
  const auto a = whole->named_parameters(), b = parts->named_parameters();
  BOOST_REQUIRE(a.size() == b.size());
  for (const auto& p : a) {
    BOOST_TEST(b[p.key()].scalar_type() == torch::kBFloat16, p.key());
    BOOST_TEST(torch::equal(p.value(), b[p.key()]), p.key());
  }
}

BOOST_AUTO_TEST_CASE(keys_equal_manifest_keys) {
  wan::T5Encoder enc(tiny_config());
  const auto keys = module_keys(*enc);
  const auto& manifest_keys = wt::manifest_entry(kCheckpoint).at("keys");
  BOOST_TEST(keys.size() == manifest_keys.size());
  for (const auto& [name, spec] : manifest_keys.items()) {
    BOOST_TEST_CONTEXT(name) {
      const auto it = keys.find(name);
      BOOST_TEST_REQUIRE((it != keys.end()), "manifest key missing from the module");
      BOOST_TEST(it->second == spec.at("shape").get<std::vector<std::int64_t>>(),
                 boost::test_tools::per_element());
    }
  }
}

BOOST_AUTO_TEST_CASE(infer_from_weights_and_bf16_to_float32_load) {
  const auto sd = offload::load_checkpoint(wt::golden_dir() / kCheckpoint);
  BOOST_TEST((wan::T5Config::infer_from_weights(sd) == tiny_config()));
  wan::T5Encoder enc(tiny_config());
  offload::load_state(*enc, sd);
  for (const auto& p : enc->named_parameters()) {
    BOOST_TEST_CONTEXT(p.key()) {
      BOOST_TEST(p.value().scalar_type() == torch::kFloat);
      const auto& src = sd.at(p.key());
      BOOST_TEST(src.scalar_type() == torch::kBFloat16);
      BOOST_TEST(torch::equal(p.value(), src.to(torch::kFloat)));  // bf16 -> f32 is exact
    }
  }
  offload::state_dict broken = sd;
  broken.erase("blocks.0.attn.q.weight");
  expect_error_id([&] { (void)wan::T5Config::infer_from_weights(broken); },
                  "offload.checkpoint.missing_keys", "blocks.0.attn.q.weight");
}

BOOST_AUTO_TEST_CASE(relative_position_buckets) {
  wan::T5RelativeEmbedding rel(32, 4, /*bidirectional=*/true);
  // key - query offsets -> buckets (16 per direction, 8 exact, log-spaced up to max_dist 128)
  const auto rel_pos = torch::tensor({0, 1, -1, 7, -7, 8, -8, 12, 16, -32, 100, -127, 128, -1000},
                                     torch::kLong);
  const auto got = rel->relative_position_bucket(rel_pos);
  std::vector<std::int64_t> want;
  for (std::int64_t r : {0, 1, -1, 7, -7, 8, -8, 12, 16, -32, 100, -127, 128, -1000}) {
    const std::int64_t a = std::abs(r);
    std::int64_t bucket = a < 8 ? a
                                : std::min<std::int64_t>(
                                      8 + static_cast<std::int64_t>(std::log(static_cast<float>(a) / 8.0F) /
                                                                    std::log(16.0) * 8),
                                      15);
    want.push_back((r > 0 ? 16 : 0) + bucket);
  }
  BOOST_TEST(std::vector<std::int64_t>(got.data_ptr<std::int64_t>(), got.data_ptr<std::int64_t>() + got.numel()) ==
                 want,
             boost::test_tools::per_element());
  BOOST_TEST(want[1] == 17);
  BOOST_TEST(want[2] == 1);
  BOOST_TEST(want.back() == 15);
  const auto bias = rel->forward(5, 7);  // [1, N, Lq, Lk]
  BOOST_TEST(bias.sizes().vec() == (std::vector<std::int64_t>{1, 4, 5, 7}), boost::test_tools::per_element());
  // bias[0, n, i, j] = embedding[bucket(j - i), n]
  const auto b23 = rel->relative_position_bucket(torch::tensor({3 - 2}, torch::kLong)).item<std::int64_t>();
  BOOST_TEST(torch::equal(bias[0].select(1, 2).select(1, 3), rel->embedding->weight[b23]));
}

BOOST_AUTO_TEST_CASE(gelu_and_layer_norm_formulas) {
  torch::manual_seed(0);
  const auto x = torch::randn({3, 8});
  wan::GELU gelu;
  BOOST_TEST(torch::allclose(gelu->forward(x), torch::gelu(x, "tanh"), 1e-6, 1e-6));
  wan::T5LayerNorm norm(8);
  norm->weight.data().uniform_(0.5, 1.5);
  const auto want = norm->weight * x * torch::rsqrt(x.pow(2).mean(-1, true) + 1e-6);
  BOOST_TEST(torch::allclose(norm->forward(x), want, 1e-6, 1e-6));
  norm->to(torch::kBFloat16);  // bf16 weights: statistic in float32, then cast like the Python
  BOOST_TEST(norm->forward(x.to(torch::kBFloat16)).scalar_type() == torch::kBFloat16);
}

BOOST_AUTO_TEST_CASE(mask_hides_padded_keys) {
  torch::manual_seed(1);
  wan::T5Encoder enc(tiny_config());
  enc->eval();
  auto ids = torch::randint(2, 384, {1, 6}, torch::kLong);
  auto mask = torch::tensor({{1, 1, 1, 1, 0, 0}}, torch::kLong);
  const auto full = enc->forward(ids, mask);
  auto ids2 = ids.clone();
  ids2.index_put_({0, torch::indexing::Slice(4)}, 7);  // change only the padded tokens
  const auto other = enc->forward(ids2, mask);
  BOOST_TEST(torch::allclose(full.slice(1, 0, 4), other.slice(1, 0, 4), 0, 0));
}

BOOST_AUTO_TEST_CASE(encoder_model_wrapper) {
  const auto ckpt = wt::golden_dir() / kCheckpoint;
  wan::T5EncoderModel enc(16, torch::kFloat, torch::kCPU, ckpt);
  BOOST_TEST(!enc.tokenizer.has_value());
  BOOST_TEST(!enc.model->is_training());
  BOOST_TEST((enc.model->config == tiny_config()));
  auto ids = torch::zeros({2, 16}, torch::kLong);   // [B, L], pad 0
  auto mask = torch::zeros({2, 16}, torch::kLong);  // [B, L]
  ids[0].slice(0, 0, 4).fill_(9), ids[0][4] = 1, mask[0].slice(0, 0, 5).fill_(1);   // 5 tokens
  ids[1].slice(0, 0, 2).fill_(11), ids[1][2] = 1, mask[1].slice(0, 0, 3).fill_(1);  // 3 tokens
  const auto out = enc.encode(ids, mask);
  BOOST_TEST_REQUIRE(out.size() == 2u);
  BOOST_TEST(out[0].sizes().vec() == (std::vector<std::int64_t>{5, 64}), boost::test_tools::per_element());
  BOOST_TEST(out[1].sizes().vec() == (std::vector<std::int64_t>{3, 64}), boost::test_tools::per_element());
  const auto full = enc.model->forward(ids, mask);
  BOOST_TEST(torch::equal(out[1], full[1].slice(0, 0, 3)));
  expect_error_id([&] { (void)enc({"a cat"}, torch::kCPU); }, "offload.config.t5_no_tokenizer");
  expect_error_id([&] { (void)enc.encode(ids, mask.slice(1, 0, 8)); }, "offload.config.t5_ids");
}

BOOST_AUTO_TEST_CASE(encoder_model_with_tokenizer) {
  // the fixture tokenizer (200 pieces, fits the tiny vocabulary of 384), as the checkpoint's
  // google/umt5-xxl folder
  std::random_device rd;
  const fs::path dir = fs::temp_directory_path() / fmt::format("wan_t5_test_{:08x}", rd()) / "umt5-xxl";
  fs::create_directories(dir);
  const fs::path data = wan::testing::test_data_dir();
  fs::copy_file(data / "tokenizer" / "spiece.model", dir / "spiece.model");

  wan::T5EncoderModel enc(12, torch::kFloat, torch::kCPU, wt::golden_dir() / kCheckpoint, dir);
  BOOST_TEST_REQUIRE(enc.tokenizer.has_value());
  const std::vector<std::string> texts = {"two dogs  run\n", "A very long prompt about a cat that sits on a warm windowsill"};
  const auto out = enc(texts, torch::kCPU);
  const auto [ids, mask] = (*enc.tokenizer)(texts);
  BOOST_TEST(ids.size(1) == 12);
  const auto want = enc.encode(ids, mask);
  BOOST_TEST_REQUIRE(out.size() == 2u);
  BOOST_TEST(out[0].size(0) == mask[0].sum().item<std::int64_t>());
  BOOST_TEST(out[1].size(0) == 12);  // truncated to text_len
  BOOST_TEST(torch::equal(out[0], want[0]));
  BOOST_TEST(torch::equal(out[1], want[1]));
  fs::remove_all(dir.parent_path());
}

BOOST_AUTO_TEST_SUITE_END()
