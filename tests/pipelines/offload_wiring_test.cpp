// Every ported Wan model wired into the offload library at its tiny golden config: wrapped as an
// offload::offloadable with its auxiliary tensors declared (DiT `freqs`: dtype_rule::keep; VAE
// `mean`/`std`: dtype_rule::follow), placed on a mock device. Checks, per model:
//  * the registry holds exactly parameters ∪ buffers ∪ aux, and every one reports mock:0 (and is
//    the copy offload placed: audit);
//  * forward on the mock copy equals the host forward bit for bit;
//  * a longer forward registers nothing (the module's tensor set and the registry are unchanged,
//    nothing was replaced behind offload's back);
//  * eviction copies nothing back (bytes_out == 0) and leaves the host masters intact;
//  * convert(bfloat16): keep-rule aux keep their dtype, follow-rule aux and weights convert.
// Plus the analytic CLIP visual parameter count (pipelines/wan/clip_size.hpp) the planner uses.
#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <offload/errors.hpp>
#include <offload/offloadable.hpp>
#include <offload/state_dict.hpp>
#include <offload/testing/mock_device.hpp>

#include "wan/clip.hpp"
#include "wan/clip_size.hpp"
#include "wan/model.hpp"
#include "wan/t5.hpp"
#include "wan/vace_model.hpp"
#include "wan/vae.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "parity_harness.hpp"

namespace wt = wan::testing;

namespace {

using tensors = std::vector<torch::Tensor>;

/// name -> TensorImpl of every parameter and buffer of `m`.
std::map<std::string, const void*> module_tensors(torch::nn::Module& m) {
  std::map<std::string, const void*> out;
  for (auto& p : m.named_parameters(true)) out.emplace(p.key(), p.value().unsafeGetTensorImpl());
  for (auto& b : m.named_buffers(true)) out.emplace(b.key(), b.value().unsafeGetTensorImpl());
  return out;
}

std::size_t unique_count(const std::map<std::string, const void*>& m) {
  std::set<const void*> s;
  for (const auto& [_, p] : m) s.insert(p);
  return s.size();
}

bool bitwise_equal(const tensors& a, const tensors& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].sizes() != b[i].sizes() || a[i].scalar_type() != b[i].scalar_type() ||
        !torch::equal(a[i], b[i]))
      return false;
  return true;
}

struct aux_decl {
  std::string name;
  offload::dtype_rule rule;
};

/// The checks of the file comment on one wrapped component.
template <class M>
void check_wiring(offload::offloadable<M>& c, const std::vector<aux_decl>& aux,
                  const std::function<tensors()>& forward, const std::function<void()>& long_forward) {
  torch::NoGradGuard no_grad;
  torch::nn::Module& module = *c.module().ptr();
  const auto& reg = c.tensors();

  // the registry is parameters ∪ buffers ∪ aux, each tensor once
  const auto before = module_tensors(module);
  std::set<std::string> aux_names;
  for (const auto& a : aux) aux_names.insert(a.name);
  BOOST_TEST(reg.size() == unique_count(before) + aux.size());
  for (const auto& t : reg.tensors()) {
    if (t.kind == offload::tensor_kind::auxiliary) BOOST_TEST(aux_names.count(t.path) == 1u, t.path);
    else BOOST_TEST(before.count(t.path) == 1u, "registered but not in the module: " << t.path);
  }

  // host reference and snapshot of the masters
  const auto host_out = forward();
  std::map<std::string, torch::Tensor> snapshot;
  for (const auto& t : reg.tensors()) snapshot.emplace(t.path, reg.master(t.path).clone());

  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0);
  c.place_on(gpu);
  BOOST_TEST(c.location() == offload::device_id::mock(0));
  for (const auto& t : reg.tensors())
    BOOST_TEST(t.device == offload::device_id::mock(0), t.path << " (" << t.kind << ") on " << t.device);
  BOOST_CHECK_NO_THROW(c.audit(offload::device_id::mock(0), {"wiring", "mock"}));
  BOOST_TEST(gpu.used() == c.bytes());
  BOOST_TEST(gpu.bytes_in() == c.bytes());

  // the same forward on the mock copy, bit for bit
  BOOST_TEST(bitwise_equal(forward(), host_out), "forward on mock:0 differs from the host forward");

  // a longer forward registers and replaces nothing
  const auto registered = reg.size();
  long_forward();
  BOOST_TEST(reg.size() == registered);
  const auto after = module_tensors(module);
  BOOST_TEST(after.size() == before.size(), "the module's tensor set changed during forward");
  for (const auto& [name, _] : after) BOOST_TEST(before.count(name) == 1u, "registered in forward: " << name);
  BOOST_CHECK_NO_THROW(c.audit(offload::device_id::mock(0), {"wiring", "after long forward"}));

  // eviction: frees everything, copies nothing back, masters intact
  c.place_on(devices.host());
  BOOST_TEST(gpu.bytes_out() == 0);
  BOOST_TEST(gpu.used() == 0);
  BOOST_CHECK_NO_THROW(c.audit(offload::device_id::cpu(), {"wiring", "evicted"}));
  for (const auto& t : reg.tensors()) {
    BOOST_TEST(t.device == offload::device_id::cpu(), t.path);
    BOOST_TEST(torch::equal(reg.master(t.path), snapshot.at(t.path)), "master changed: " << t.path);
  }
  BOOST_TEST(bitwise_equal(forward(), host_out), "forward after eviction differs");

  // storage dtype: keep-rule aux keep theirs, the rest converts
  std::map<std::string, c10::ScalarType> dtypes;
  for (const auto& t : reg.tensors()) dtypes.emplace(t.path, t.dtype);
  c.convert(torch::kBFloat16);
  for (const auto& t : reg.tensors()) {
    bool keep = !c10::isFloatingType(dtypes.at(t.path));
    for (const auto& a : aux)
      if (a.name == t.path && a.rule == offload::dtype_rule::keep) keep = true;
    const auto expected = keep ? dtypes.at(t.path) : torch::kBFloat16;
    BOOST_TEST(t.dtype == expected, t.path << ": " << c10::toString(t.dtype) << ", expected "
                                           << c10::toString(expected));
  }
  c.place_on(gpu);
  BOOST_CHECK_NO_THROW(c.audit(offload::device_id::mock(0), {"wiring", "bfloat16"}));
  c.place_on(devices.host());
  BOOST_TEST(gpu.bytes_out() == 0);
}

template <class Model>
void check_dit(Model model, const std::string& case_name,
               const std::function<tensors(Model&, const wt::golden_case&, bool)>& run) {
  wt::golden_case g(case_name);
  const auto freqs_dtype = model->freqs.scalar_type();
  offload::offloadable dit("dit", model);
  dit.register_aux("freqs", model->freqs, offload::dtype_rule::keep);
  check_wiring(dit, {{"freqs", offload::dtype_rule::keep}}, [&] { return run(model, g, false); },
               [&] { (void)run(model, g, true); });
  BOOST_TEST(model->freqs.scalar_type() == freqs_dtype); // complex128 after convert(bf16)
  BOOST_TEST(model->freqs.scalar_type() == torch::kComplexDouble);
}

/// DiT inputs of golden sub-case c1, or a longer sequence of the same kind (`long_seq`).
struct dit_inputs {
  tensors x, context, y, vace_context;
  torch::Tensor t, clip_fea;
  int64_t seq_len;
};

dit_inputs dit_case(const wt::golden_case& g, int n, bool long_seq, int64_t y_channels = 0,
                    int64_t vace_channels = 0) {
  const auto p = fmt::format("in.c{}.", n);
  dit_inputs d;
  d.t = g.tensor(p + "t");
  if (g.has(p + "clip_fea")) d.clip_fea = g.tensor(p + "clip_fea");
  if (!long_seq) {
    d.x = {g.tensor(p + "x.0")};
    d.context = {g.tensor(p + "context.0")};
    if (g.has(p + "y.0")) d.y = {g.tensor(p + "y.0")};
    if (g.has(p + "vace_context.0")) d.vace_context = {g.tensor(p + "vace_context.0")};
    d.seq_len = g.tensor(p + "seq_len").item<int64_t>();
    return d;
  }
  torch::manual_seed(7);
  const int64_t f = 9, h = 16, w = 16; // 9 * 8 * 8 = 576 tokens
  d.x = {torch::randn({16, f, h, w})};
  d.context = {torch::randn({20, g.tensor(p + "context.0").size(1)})};
  if (y_channels) d.y = {torch::randn({y_channels, f, h, w})};
  if (vace_channels) d.vace_context = {torch::randn({vace_channels, f, h, w})};
  d.seq_len = f * (h / 2) * (w / 2);
  return d;
}

} // namespace

BOOST_AUTO_TEST_SUITE(offload_wiring)

BOOST_AUTO_TEST_CASE(dit_t2v) {
  check_dit<wan::WanModel>(wan::load_wan_model(wt::checkpoint_path("t2v")), "dit_t2v",
                           [](wan::WanModel& m, const wt::golden_case& g, bool long_seq) {
                             const auto d = dit_case(g, 1, long_seq);
                             return m->forward(d.x, d.t, d.context, d.seq_len);
                           });
}

BOOST_AUTO_TEST_CASE(dit_i2v) {
  check_dit<wan::WanModel>(wan::load_wan_model(wt::checkpoint_path("i2v")), "dit_i2v",
                           [](wan::WanModel& m, const wt::golden_case& g, bool long_seq) {
                             const auto d = dit_case(g, 1, long_seq, 20);
                             return m->forward(d.x, d.t, d.context, d.seq_len, d.clip_fea, d.y);
                           });
}

BOOST_AUTO_TEST_CASE(dit_flf2v) {
  check_dit<wan::WanModel>(wan::load_wan_model(wt::checkpoint_path("flf2v")), "dit_flf2v",
                           [](wan::WanModel& m, const wt::golden_case& g, bool long_seq) {
                             const auto d = dit_case(g, 0, long_seq, 20);
                             return m->forward(d.x, d.t, d.context, d.seq_len, d.clip_fea, d.y);
                           });
}

BOOST_AUTO_TEST_CASE(dit_vace) {
  check_dit<wan::VaceWanModel>(
      wan::load_vace_wan_model(wt::checkpoint_path("vace")), "dit_vace",
      [](wan::VaceWanModel& m, const wt::golden_case& g, bool long_seq) {
        const auto d = dit_case(g, 1, long_seq, 0, 96);
        return m->forward(d.x, d.t, d.vace_context, d.context, d.seq_len,
                          g.tensor("in.c1.vace_context_scale").item<double>());
      });
}

BOOST_AUTO_TEST_CASE(vae) {
  wt::golden_case g("vae");
  wan::WanVAE vae(wt::checkpoint_path("Wan2.1_VAE.pth"));
  offload::offloadable c("vae", vae.model);
  c.register_aux("mean", vae.mean, offload::dtype_rule::follow)
      .register_aux("std", vae.std, offload::dtype_rule::follow);
  check_wiring(
      c, {{"mean", offload::dtype_rule::follow}, {"std", offload::dtype_rule::follow}},
      [&]() -> tensors {
        return {vae.encode({g.tensor("in.video.1")})[0],
                vae.model->decode(g.tensor("in.z.1").unsqueeze(0), vae.scale())[0]};
      },
      [&] {
        torch::manual_seed(3);
        (void)vae.encode({torch::rand({3, 17, 32, 32}) * 2 - 1});  // 5 latent frames
        (void)vae.decode({torch::randn({16, 5, 4, 4})});            // 17 frames
      });
  BOOST_TEST(vae.mean.scalar_type() == torch::kBFloat16); // followed convert(bf16)
  BOOST_TEST(vae.std.scalar_type() == torch::kBFloat16);
}

BOOST_AUTO_TEST_CASE(t5_encoder) {
  wt::golden_case g("t5_encoder");
  wan::T5EncoderModel enc(32, torch::kFloat, torch::kCPU,
                          wt::checkpoint_path("models_t5_umt5-xxl-enc-bf16.pth"));
  offload::offloadable c("t5", enc.model);
  check_wiring(
      c, {}, [&]() -> tensors { return {enc.model->forward(g.tensor("in.c0.ids"), g.tensor("in.c0.mask"))}; },
      [&] { (void)enc.model->forward(g.tensor("in.c1.ids"), g.tensor("in.c1.mask")); }); // 512 tokens
}

BOOST_AUTO_TEST_CASE(clip_visual) {
  wt::golden_case g("clip_visual");
  const auto ckpt = wt::checkpoint_path("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth");
  const auto heads = wt::manifest_entry("checkpoints/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
                         .at("config").at("vision_heads").get<std::int64_t>();
  const auto cfg = wan::CLIPConfig::infer_from_weights(offload::load_checkpoint(ckpt), heads);
  wan::CLIPModel clip(torch::kFloat, torch::kCPU, ckpt, cfg);
  offload::offloadable c("clip", clip.model);
  // the planner's analytic size is what the registry holds
  BOOST_TEST(c.bytes() == wan::parameter_count(cfg) * 4);
  const auto image0 = g.tensor("in.image.0").unsqueeze(1);  // [3, 1, H, W]
  check_wiring(
      c, {}, [&]() -> tensors { return {clip.visual({image0})}; },
      [&] { (void)clip.visual({image0, g.tensor("in.image.1").unsqueeze(1)}); });
}

BOOST_AUTO_TEST_CASE(clip_parameter_count) {
  // Tensor by tensor too (what the preset's pinned bytes pack): the built module's parameter sizes.
  auto numel = [](const wan::CLIPConfig& cfg) {
    wan::XLMRobertaCLIP m(cfg);
    std::int64_t n = 0;
    std::vector<std::int64_t> built, listed = wan::clip::tensor_numels(cfg);
    for (const auto& p : m->parameters()) {
      n += p.numel();
      built.push_back(p.numel());
    }
    std::sort(built.begin(), built.end());
    std::sort(listed.begin(), listed.end());
    BOOST_TEST(listed == built, boost::test_tools::per_element());
    return n;
  };
  // the tiny golden config, also against the checkpoint's visual.* shapes in the manifest
  const auto& entry = wt::manifest_entry("checkpoints/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth");
  const auto tiny = wan::CLIPConfig::infer_from_weights(
      offload::load_checkpoint(wt::checkpoint_path("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")),
      entry.at("config").at("vision_heads").get<std::int64_t>());
  std::int64_t visual = 0;
  for (const auto& [key, info] : entry.at("keys").items()) {
    if (key.rfind("visual.", 0) != 0) continue;
    std::int64_t n = 1;
    for (const auto& d : info.at("shape")) n *= d.get<std::int64_t>();
    visual += n;
  }
  BOOST_TEST(wan::parameter_count(tiny) == numel(tiny));
  BOOST_TEST(wan::parameter_count(tiny) == visual);

  // a second small config exercising the other branches: no pre_norm (patch bias), quick_gelu,
  // a fractional mlp_ratio (int(dim * ratio)), another patch grid and head width
  wan::CLIPConfig other = tiny;
  other.vision_dim = 48;
  other.vision_heads = 3;
  other.vision_layers = 2;
  other.patch_size = 16;
  other.image_size = 64;
  other.vision_mlp_ratio = 2.6;
  other.embed_dim = 24;
  other.vision_pre_norm = false;
  other.activation = "quick_gelu";
  BOOST_TEST(wan::parameter_count(other) == numel(other));

  // the official visual tower (open-clip-xlm-roberta-large-vit-huge-14): 632,076,800 parameters
  BOOST_TEST(wan::parameter_count(wan::CLIPConfig::clip_xlm_roberta_vit_h_14()) == 632'076'800);

  wan::CLIPConfig bad = tiny;
  bad.vision_pool = "attn_pool";
  BOOST_CHECK_THROW((void)wan::parameter_count(bad), offload::config_error);
  BOOST_CHECK_THROW((void)wan::clip::tensor_numels(bad), offload::config_error);
}

BOOST_AUTO_TEST_SUITE_END()
