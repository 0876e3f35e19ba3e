// Tests of pipelines/wan/vae.hpp: config preset, analytic parameter count, key set against the
// golden manifest, config inference, the causal feature cache (first frame then groups of 4 on
// encode, one latent frame at a time on decode, the 'Rep' sentinel) and the WanVAE wrapper's
// auxiliary mean/std handling.
#include "wan/vae.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <offload/errors.hpp>
#include <offload/state_dict.hpp>

#include "parity_harness.hpp"

namespace wt = wan::testing;

namespace {

constexpr const char* kCheckpoint = "checkpoints/Wan2.1_VAE.pth";

wan::WanVAEConfig tiny_config() {
  const auto& c = wt::manifest_entry(kCheckpoint).at("config");
  wan::WanVAEConfig cfg;
  cfg.dim = c.at("dim").get<std::int64_t>();
  cfg.z_dim = c.at("z_dim").get<std::int64_t>();
  cfg.dim_mult = c.at("dim_mult").get<std::vector<std::int64_t>>();
  cfg.num_res_blocks = c.at("num_res_blocks").get<std::int64_t>();
  cfg.attn_scales = c.at("attn_scales").get<std::vector<double>>();
  cfg.temperal_downsample = c.at("temperal_downsample").get<std::vector<bool>>();
  cfg.dropout = c.at("dropout").get<double>();
  return cfg;
}

std::map<std::string, std::vector<std::int64_t>> module_keys(torch::nn::Module& m) {
  std::map<std::string, std::vector<std::int64_t>> keys;
  for (const auto& p : m.named_parameters()) keys[p.key()] = p.value().sizes().vec();
  for (const auto& b : m.named_buffers()) keys[b.key()] = b.value().sizes().vec();
  return keys;
}

std::int64_t numel(torch::nn::Module& m) {
  std::int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

/// The built module's parameter sizes against tensor_numels (what the preset's pinned bytes
/// pack), as sorted lists.
void check_tensor_numels(torch::nn::Module& m, const wan::WanVAEConfig& cfg) {
  std::vector<std::int64_t> built, listed = wan::tensor_numels(cfg);
  for (const auto& p : m.parameters()) built.push_back(p.numel());
  std::sort(built.begin(), built.end());
  std::sort(listed.begin(), listed.end());
  BOOST_TEST(listed == built, boost::test_tools::per_element());
}

template <class F>
void expect_error_id(F&& f, const std::string& id, const std::vector<std::string>& substrings = {}) {
  try {
    f();
    BOOST_ERROR("expected offload error " << id);
  } catch (const offload::error& e) {
    BOOST_TEST(e.id() == id);
    for (const auto& s : substrings)
      BOOST_TEST(std::string(e.what()).find(s) != std::string::npos, "'" << s << "' in: " << e.what());
  }
}

/// The tiny golden VAE with its golden weights, eval mode.
wan::WanVAE_ golden_model() {
  wan::WanVAE_ m(tiny_config());
  offload::load_state(*m, offload::load_checkpoint(wt::golden_dir() / kCheckpoint));
  m->eval();
  return m;
}

/// Cached CausalConv3d calls per encoder (or decoder) chunk: every CausalConv3d except the
/// ResidualBlock shortcuts (1x1x1, called without the cache).
std::int64_t cached_convs(torch::nn::Module& m) {
  std::int64_t shortcuts = 0;
  for (const auto& item : m.named_modules()) {
    const auto& key = item.key();
    if (key.size() >= 9 && key.compare(key.size() - 9, 9, ".shortcut") == 0) ++shortcuts;
  }
  return wan::count_conv3d(m) - shortcuts;
}

} // namespace

BOOST_AUTO_TEST_SUITE(vae)

BOOST_AUTO_TEST_CASE(video_vae_preset_and_parameter_count) {
  const auto c = wan::WanVAEConfig::video_vae();
  BOOST_TEST(c.dim == 96);
  BOOST_TEST(c.z_dim == 16);
  BOOST_TEST(c.dim_mult == std::vector<std::int64_t>({1, 2, 4, 4}), boost::test_tools::per_element());
  BOOST_TEST(c.num_res_blocks == 2);
  BOOST_TEST(c.attn_scales.empty());
  BOOST_TEST((c.temperal_downsample == std::vector<bool>{false, true, true}));
  BOOST_TEST(c.dropout == 0.0);
  BOOST_TEST(wan::parameter_count(c) == 126'892'531LL);
  BOOST_TEST(wan::tensor_numels(c).size() == 194u); // 71 convolutions (weight, bias), 52 norms
  const auto& o = wt::manifest_entry(kCheckpoint).at("official_config");
  BOOST_TEST(o.at("dim").get<std::int64_t>() == c.dim);
  BOOST_TEST(o.at("z_dim").get<std::int64_t>() == c.z_dim);
  BOOST_TEST((o.at("temperal_downsample").get<std::vector<bool>>() == c.temperal_downsample));
}

BOOST_AUTO_TEST_CASE(parameter_count_equals_constructed_numel) {
  const auto tiny = tiny_config();
  wan::WanVAE_ m(tiny);
  BOOST_TEST(numel(*m) == wan::parameter_count(tiny));
  check_tensor_numels(*m, tiny);
  BOOST_TEST(numel(*m) == wt::manifest_entry(kCheckpoint).at("num_params").get<std::int64_t>());
  // other layouts: attention in the down/up paths, one residual block, no temporal resampling
  auto other = tiny;
  other.dim = 4;
  other.z_dim = 3;
  other.num_res_blocks = 1;
  other.attn_scales = {1.0, 0.5};
  other.temperal_downsample = {true, false, true};
  wan::WanVAE_ m2(other);
  BOOST_TEST(numel(*m2) == wan::parameter_count(other));
  check_tensor_numels(*m2, other);
}

BOOST_AUTO_TEST_CASE(keys_equal_manifest_keys) {
  wan::WanVAE_ m(tiny_config());
  const auto keys = module_keys(*m);
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
  BOOST_TEST(m->named_buffers().size() == 0u);
}

BOOST_AUTO_TEST_CASE(infer_from_weights) {
  const auto sd = offload::load_checkpoint(wt::golden_dir() / kCheckpoint);
  BOOST_TEST((wan::WanVAEConfig::infer_from_weights(sd) == tiny_config()));
  offload::state_dict broken = sd;
  broken.erase("conv2.weight");
  expect_error_id([&] { (void)wan::WanVAEConfig::infer_from_weights(broken); },
                  "offload.checkpoint.missing_keys", {"conv2.weight"});
  broken = sd;
  broken["conv1.weight"] = torch::zeros({8, 8, 1, 1, 1});
  expect_error_id([&] { (void)wan::WanVAEConfig::infer_from_weights(broken); },
                  "offload.checkpoint.shape_mismatch", {"conv1.weight", "32"});
}

BOOST_AUTO_TEST_CASE(count_conv3d_matches_reference_layout) {
  wan::WanVAE_ m(tiny_config());
  // encoder: conv1 + 8 blocks x 2 + 2 shortcuts + 2 time_conv + middle 2 x 2 + head = 26
  BOOST_TEST(wan::count_conv3d(*m->encoder) == 26);
  // decoder: conv1 + middle 2 x 2 + 12 blocks x 2 + 1 shortcut + 2 time_conv + head = 33
  BOOST_TEST(wan::count_conv3d(*m->decoder) == 33);
  BOOST_TEST(wan::count_conv3d(*m) == 26 + 33 + 2);
  m->clear_cache();
  BOOST_TEST(m->_enc_feat_map.size() == 26u);
  BOOST_TEST(m->_feat_map.size() == 33u);
  for (const auto& s : m->_feat_map) BOOST_TEST(s.is_none());
}

BOOST_AUTO_TEST_CASE(building_blocks) {
  wan::RMS_norm video(8, true, false), image(8), last(8, false, true, true);
  BOOST_TEST(video->gamma.sizes().vec() == std::vector<std::int64_t>({8, 1, 1, 1}), boost::test_tools::per_element());
  BOOST_TEST(image->gamma.sizes().vec() == std::vector<std::int64_t>({8, 1, 1}), boost::test_tools::per_element());
  BOOST_TEST(last->gamma.sizes().vec() == std::vector<std::int64_t>({8}), boost::test_tools::per_element());
  BOOST_TEST(video->named_parameters().size() == 1u);
  BOOST_TEST(last->named_parameters().size() == 2u); // gamma, bias
  torch::manual_seed(0);
  const auto x = torch::randn({2, 8, 3, 4, 5});
  const auto expect = x / x.norm(2, 1, true) * std::sqrt(8.0);
  BOOST_TEST(torch::allclose(video->forward(x), expect, 1e-5, 1e-6));

  // CausalConv3d: pads 2 frames in front in time, symmetric in space
  wan::CausalConv3d conv(2, 3, 3, 1, 1);
  const auto y = torch::randn({1, 2, 4, 5, 6});
  const auto ref = torch::conv3d(torch::constant_pad_nd(y, {1, 1, 1, 1, 2, 0}), conv->weight, conv->bias);
  BOOST_TEST(torch::equal(conv->forward(y), ref));
  // with a cache of 2 frames no zero frames are added
  const auto cache = torch::randn({1, 2, 2, 5, 6});
  const auto ref_c = torch::conv3d(torch::constant_pad_nd(torch::cat({cache, y}, 2), {1, 1, 1, 1}),
                                   conv->weight, conv->bias);
  BOOST_TEST(torch::equal(conv->forward(y, cache), ref_c));
  BOOST_TEST(conv->forward(y, cache).size(2) == 4);

  expect_error_id([] { wan::Resample(4, "upsample4d"); }, "offload.config.vae_resample_mode",
                  {"upsample4d"});
  BOOST_TEST(wan::Resample(4, "none")->named_parameters().size() == 0u);

  // the cache slot states of the Python list: None, 'Rep', tensor
  wan::CacheSlot s;
  BOOST_TEST(s.is_none());
  s = wan::CacheSlot::rep();
  BOOST_TEST(s.is_rep());
  BOOST_TEST(!s.tensor().defined());
  s = wan::CacheSlot(torch::ones({1}));
  BOOST_TEST(s.is_tensor());
}

BOOST_AUTO_TEST_CASE(encode_chunks_first_frame_then_groups_of_four) {
  torch::NoGradGuard no_grad;
  auto m = golden_model();
  torch::manual_seed(1);
  const auto video = torch::rand({1, 3, 14, 16, 16}) * 2 - 1; // 14 frames: 1 + 4 + 4 + 4 (+1 dropped)
  const wan::Scale scale{torch::randn({16}), torch::rand({16}) + 0.5};
  const auto mu = m->encode(video, scale);
  BOOST_TEST(mu.sizes().vec() == std::vector<std::int64_t>({1, 16, 4, 2, 2}), boost::test_tools::per_element());

  // the same by hand: encoder on frames [0,1), [1,5), [5,9), [9,13) sharing one cache
  const auto per_chunk = cached_convs(*m->encoder);
  BOOST_TEST(per_chunk == 24);
  m->clear_cache();
  std::vector<torch::Tensor> outs;
  const std::vector<std::pair<int, int>> chunks{{0, 1}, {1, 5}, {5, 9}, {9, 13}};
  for (const auto& [b, e] : chunks) {
    m->_enc_conv_idx = 0;
    outs.push_back(m->encoder->forward(video.slice(2, b, e), &m->_enc_feat_map, m->_enc_conv_idx));
    BOOST_TEST(m->_enc_conv_idx == per_chunk); // every cached conv used exactly once per chunk
  }
  auto manual = m->conv1->forward(torch::cat(outs, 2)).chunk(2, 1)[0];
  manual = (manual - scale[0].view({1, 16, 1, 1, 1})) * scale[1].view({1, 16, 1, 1, 1});
  BOOST_TEST(torch::equal(mu, manual));

  // causality: latent frames 0..1 only see frames 0..4
  auto changed = video.clone();
  changed.slice(2, 5) += 0.5;
  const auto mu2 = m->encode(changed, scale);
  BOOST_TEST(torch::equal(mu.slice(2, 0, 2), mu2.slice(2, 0, 2)));
  BOOST_TEST(!torch::equal(mu.slice(2, 2), mu2.slice(2, 2)));
  // the cache is cleared after encode
  for (const auto& s : m->_enc_feat_map) BOOST_TEST(s.is_none());
}

BOOST_AUTO_TEST_CASE(decode_one_latent_frame_at_a_time_with_rep_sentinel) {
  torch::NoGradGuard no_grad;
  auto m = golden_model();
  torch::manual_seed(2);
  const auto z = torch::randn({1, 16, 3, 2, 3});
  const auto out = m->decode(z, 0.0, 1.0);
  BOOST_TEST(out.sizes().vec() == std::vector<std::int64_t>({1, 3, 9, 16, 24}), boost::test_tools::per_element());

  m->clear_cache();
  const auto x = m->conv2->forward(z);
  std::vector<torch::Tensor> outs;
  for (int i = 0; i < 3; ++i) {
    m->_conv_idx = 0;
    outs.push_back(m->decoder->forward(x.slice(2, i, i + 1), &m->_feat_map, m->_conv_idx));
    BOOST_TEST(m->_conv_idx == cached_convs(*m->decoder));
    int reps = 0;
    for (const auto& s : m->_feat_map) reps += s.is_rep() ? 1 : 0;
    // after the first latent frame both upsample3d slots hold 'Rep' (no temporal upsampling yet)
    BOOST_TEST(reps == (i == 0 ? 2 : 0));
    BOOST_TEST(outs.back().size(2) == (i == 0 ? 1 : 4));
  }
  BOOST_TEST(torch::equal(out, torch::cat(outs, 2)));
  // scale semantics: decode(z, [mean, 1/std]) == decode(z * std + mean) with the float form
  const wan::Scale scale{torch::randn({16}), torch::rand({16}) + 0.5};
  const auto a = m->decode(z, scale);
  const auto b = m->decode(z / scale[1].view({1, 16, 1, 1, 1}) + scale[0].view({1, 16, 1, 1, 1}), 0.0, 1.0);
  BOOST_TEST(torch::equal(a, b));
}

BOOST_AUTO_TEST_CASE(wrapper_mean_std_are_auxiliary_tensors) {
  torch::NoGradGuard no_grad;
  wan::WanVAE vae(wt::golden_dir() / kCheckpoint);
  BOOST_TEST(vae.mean.sizes().vec() == std::vector<std::int64_t>({16}), boost::test_tools::per_element());
  BOOST_TEST(vae.mean[0].item<float>() == -0.7571f);
  BOOST_TEST(vae.std[15].item<float>() == 1.9160f);
  BOOST_TEST(vae.model->named_buffers().size() == 0u); // not registered
  BOOST_TEST(!vae.model->is_training());
  for (const auto& p : vae.model->parameters()) BOOST_TEST(!p.requires_grad());
  const auto s = vae.scale();
  BOOST_TEST(s[0].is_same(vae.mean));
  BOOST_TEST(torch::equal(s[1], 1.0 / vae.std));

  // the wrapper's decode is the clamped model decode (the output bias is shifted so that the
  // clamp has something to do)
  vae.model->named_parameters()["decoder.head.2.bias"].add_(1.0);
  torch::manual_seed(3);
  const auto z = torch::randn({16, 2, 2, 2});
  const auto raw = vae.model->decode(z.unsqueeze(0), vae.scale())[0];
  BOOST_TEST(torch::equal(vae.decode({z})[0], raw.clamp(-1, 1)));
  BOOST_TEST(raw.abs().max().item<float>() > 1.0f); // the clamp is exercised

  // mean/std elsewhere than the input: a clear placement error, never a silent move
  vae.mean = torch::empty({16}, torch::TensorOptions().device(torch::kMeta));
  expect_error_id([&] { (void)vae.decode({z}); }, "offload.placement.device_mismatch",
                  {"'vae.mean'", "expected cpu", "found meta",
                   "declare mean/std as auxiliary tensors of the VAE component"});
  expect_error_id([&] { (void)vae.encode({torch::zeros({3, 1, 16, 16})}); },
                  "offload.placement.device_mismatch", {"'vae.mean'", "encode"});
  BOOST_TEST(vae.mean.device().type() == torch::kMeta); // untouched

  expect_error_id([] { wan::WanVAE bad(wt::golden_dir() / kCheckpoint, 8); },
                  "offload.config.vae_z_dim", {"16", "8"});
}

BOOST_AUTO_TEST_SUITE_END()
