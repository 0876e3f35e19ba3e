// Tests of pipelines/wan/clip.hpp: the preset, key sets against the golden manifest (visual.*),
// the explicit opt-out of the unported text tower, config inference and argument errors.
#include "wan/clip.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <map>
#include <set>

#include <offload/errors.hpp>
#include <offload/state_dict.hpp>

#include "parity_harness.hpp"

namespace wt = wan::testing;

namespace {

constexpr const char* kCheckpoint =
    "checkpoints/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth";

wan::CLIPConfig tiny_config() {
  const auto& c = wt::manifest_entry(kCheckpoint).at("config");
  wan::CLIPConfig cfg;
  cfg.embed_dim = c.at("embed_dim").get<std::int64_t>();
  cfg.image_size = c.at("image_size").get<std::int64_t>();
  cfg.patch_size = c.at("patch_size").get<std::int64_t>();
  cfg.vision_dim = c.at("vision_dim").get<std::int64_t>();
  cfg.vision_mlp_ratio = c.at("vision_mlp_ratio").get<double>();
  cfg.vision_heads = c.at("vision_heads").get<std::int64_t>();
  cfg.vision_layers = c.at("vision_layers").get<std::int64_t>();
  cfg.vision_pool = c.at("vision_pool").get<std::string>();
  cfg.vision_pre_norm = c.at("vision_pre_norm").get<bool>();
  cfg.vision_post_norm = c.at("vision_post_norm").get<bool>();
  cfg.activation = c.at("activation").get<std::string>();
  cfg.vocab_size = c.at("vocab_size").get<std::int64_t>();
  cfg.max_text_len = c.at("max_text_len").get<std::int64_t>();
  cfg.type_size = c.at("type_size").get<std::int64_t>();
  cfg.pad_id = c.at("pad_id").get<std::int64_t>();
  cfg.text_dim = c.at("text_dim").get<std::int64_t>();
  cfg.text_heads = c.at("text_heads").get<std::int64_t>();
  cfg.text_layers = c.at("text_layers").get<std::int64_t>();
  cfg.text_post_norm = c.at("text_post_norm").get<bool>();
  cfg.text_dropout = c.at("text_dropout").get<double>();
  cfg.attn_dropout = c.at("attn_dropout").get<double>();
  cfg.proj_dropout = c.at("proj_dropout").get<double>();
  cfg.embedding_dropout = c.at("embedding_dropout").get<double>();
  return cfg;
}

template <class F>
void expect_error_id(F&& f, const std::string& id, const std::vector<std::string>& substrings = {}) {
  try {
    f();
    BOOST_ERROR("expected offload error " << id);
  } catch (const offload::error& e) {
    BOOST_TEST(e.id() == id, e.what());
    for (const auto& s : substrings)
      BOOST_TEST(std::string(e.what()).find(s) != std::string::npos, "'" << s << "' in " << e.what());
  }
}

bool matches_prefix(const std::string& key, const std::string& p) {
  // offload::load_options semantics: equal, p + '.', or p ending in '.' as a prefix
  return key == p || (key.rfind(p, 0) == 0 && (p.back() == '.' || key[p.size()] == '.'));
}

} // namespace

BOOST_AUTO_TEST_SUITE(clip)

BOOST_AUTO_TEST_CASE(preset_matches_reference) {
  const auto c = wan::CLIPConfig::clip_xlm_roberta_vit_h_14();
  BOOST_TEST(c.embed_dim == 1024);
  BOOST_TEST(c.image_size == 224);
  BOOST_TEST(c.patch_size == 14);
  BOOST_TEST(c.vision_dim == 1280);
  BOOST_TEST(c.vision_heads == 16);
  BOOST_TEST(c.vision_layers == 32);
  BOOST_TEST(c.activation == "gelu");
  BOOST_TEST(c.norm_mean[0] == 0.48145466);
  BOOST_TEST(c.norm_std[2] == 0.27577711);
  const auto& o = wt::manifest_entry(kCheckpoint).at("official_config");
  BOOST_TEST(o.at("vision_dim").get<std::int64_t>() == c.vision_dim);
  BOOST_TEST(o.at("vision_layers").get<std::int64_t>() == c.vision_layers);
  BOOST_TEST(o.at("vision_heads").get<std::int64_t>() == c.vision_heads);
  BOOST_TEST(o.at("embed_dim").get<std::int64_t>() == c.embed_dim);
  // 257 tokens per image: (224 / 14)^2 patches + the class token
  wan::clip::VisionTransformer vit(224, 14, 16, 4, 8, 2, 1, "token", true, false, "gelu");
  BOOST_TEST(vit->pos_embedding.size(1) == 257);
}

BOOST_AUTO_TEST_CASE(keys_equal_manifest_visual_keys) {
  wan::XLMRobertaCLIP model(tiny_config());
  std::map<std::string, std::vector<std::int64_t>> keys;
  for (const auto& p : model->named_parameters()) keys[p.key()] = p.value().sizes().vec();
  for (const auto& b : model->named_buffers()) keys[b.key()] = b.value().sizes().vec();
  std::size_t visual = 0;
  for (const auto& [name, spec] : wt::manifest_entry(kCheckpoint).at("keys").items()) {
    if (name.rfind("visual.", 0) != 0) continue;
    ++visual;
    BOOST_TEST_CONTEXT(name) {
      const auto it = keys.find(name);
      BOOST_TEST_REQUIRE((it != keys.end()), "manifest key missing from the module");
      BOOST_TEST(it->second == spec.at("shape").get<std::vector<std::int64_t>>(),
                 boost::test_tools::per_element());
    }
  }
  BOOST_TEST(keys.size() == visual);
  BOOST_TEST(keys.count("visual.patch_embedding.weight") == 1u);
  BOOST_TEST(keys.count("visual.transformer.0.attn.to_qkv.weight") == 1u);
  BOOST_TEST(keys.count("visual.patch_embedding.bias") == 0u);  // pre_norm: conv without bias
}

BOOST_AUTO_TEST_CASE(ignored_prefixes_are_exactly_the_unported_parts) {
  const auto prefixes = wan::XLMRobertaCLIPImpl::unported_checkpoint_prefixes();
  BOOST_TEST((std::set<std::string>(prefixes.begin(), prefixes.end()) ==
              std::set<std::string>{"textual.", "log_scale"}));
  BOOST_TEST(prefixes.size() == 2u);
  const auto sd = offload::load_checkpoint(wt::golden_dir() / kCheckpoint);
  wan::XLMRobertaCLIP model(tiny_config());
  std::set<std::string> module_keys;
  for (const auto& p : model->named_parameters()) module_keys.insert(p.key());
  // every checkpoint key the module lacks is covered by an opt-out, each opt-out is used, and no
  // module key is covered by one
  std::map<std::string, int> used;
  for (const auto& [key, t] : sd) {
    if (module_keys.count(key) > 0) {
      for (const auto& p : prefixes) BOOST_TEST(!matches_prefix(key, p), key);
      continue;
    }
    bool covered = false;
    for (const auto& p : prefixes)
      if (matches_prefix(key, p)) covered = true, ++used[p];
    BOOST_TEST(covered, "checkpoint key '" << key << "' is neither loaded nor explicitly ignored");
  }
  for (const auto& p : prefixes) BOOST_TEST(used[p] > 0, p);
  BOOST_TEST(used["log_scale"] == 1);
  // without the opt-out, strict loading names the unported keys
  expect_error_id([&] { offload::load_state(*model, sd); }, "offload.checkpoint.state_mismatch",
                  {"textual.", "log_scale"});
  // with it, everything loads
  offload::load_options opts;
  opts.ignore_unexpected_prefixes = prefixes;
  offload::load_state(*model, sd, opts);
  BOOST_TEST(torch::equal(model->visual->pos_embedding, sd.at("visual.pos_embedding")));
}

BOOST_AUTO_TEST_CASE(infer_from_weights) {
  const auto sd = offload::load_checkpoint(wt::golden_dir() / kCheckpoint);
  const auto tiny = tiny_config();
  const auto c = wan::CLIPConfig::infer_from_weights(sd, tiny.vision_heads);
  BOOST_TEST(c.vision_dim == tiny.vision_dim);
  BOOST_TEST(c.patch_size == tiny.patch_size);
  BOOST_TEST(c.image_size == tiny.image_size);
  BOOST_TEST(c.embed_dim == tiny.embed_dim);
  BOOST_TEST(c.vision_mlp_ratio == tiny.vision_mlp_ratio);
  BOOST_TEST(c.vision_layers == tiny.vision_layers);
  BOOST_TEST(c.vision_pre_norm == tiny.vision_pre_norm);
  BOOST_TEST(c.vision_heads == tiny.vision_heads);
  offload::state_dict broken = sd;
  broken.erase("visual.head");
  expect_error_id([&] { (void)wan::CLIPConfig::infer_from_weights(broken); },
                  "offload.checkpoint.missing_keys", {"visual.head"});
}

BOOST_AUTO_TEST_CASE(model_wrapper_and_errors) {
  const auto ckpt = wt::golden_dir() / kCheckpoint;
  wan::CLIPModel clip(torch::kFloat, torch::kCPU, ckpt, tiny_config());
  BOOST_TEST(!clip.model->is_training());
  const auto video = torch::rand({3, 2, 30, 40}) * 2 - 1;  // [3, F, H, W]
  const auto out = clip.visual({video});
  BOOST_TEST(out.sizes().vec() == (std::vector<std::int64_t>{2, 257, 64}), boost::test_tools::per_element());
  // use_31_block: all blocks but the last, the same as running the transformer minus one block
  const auto pre = wan::clip::preprocess_videos({video}, clip.model->config);
  BOOST_TEST(pre.sizes().vec() == (std::vector<std::int64_t>{2, 3, 224, 224}), boost::test_tools::per_element());
  torch::NoGradGuard no_grad;
  const auto all = clip.model->visual->forward(pre);
  BOOST_TEST(!torch::allclose(all, out));
  expect_error_id([&] { (void)clip.visual({torch::zeros({3, 30, 40})}); }, "offload.config.clip_input",
                  {"3x30x40"});
  expect_error_id([&] { (void)clip.visual({}); }, "offload.config.clip_input");
  auto bad = tiny_config();
  bad.vision_pool = "attn_pool";
  expect_error_id([&] { wan::XLMRobertaCLIP m(bad); }, "offload.config.clip_pool", {"attn_pool"});
  bad = tiny_config();
  bad.activation = "swi_glu";
  expect_error_id([&] { wan::XLMRobertaCLIP m(bad); }, "offload.config.clip_activation", {"swi_glu"});
  bad = tiny_config();
  bad.vision_heads = 5;
  expect_error_id([&] { wan::XLMRobertaCLIP m(bad); }, "offload.config.clip_heads");
}

BOOST_AUTO_TEST_SUITE_END()
