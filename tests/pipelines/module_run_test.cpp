// wan::run_module (pipelines/wan/module_run.hpp), the logic of examples/wan_module_run: every module
// golden case of the manifest is fed to it as its own inputs file, with its checkpoint, and every
// out.* tensor it produces is compared with the golden of the same name (parity tolerances);
// plus the error paths and the executable itself when it was built.
#include "wan/module_run.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <offload/errors.hpp>
#include <offload/safetensors.hpp>

#include <cstdlib>
#include <unistd.h>
#include <filesystem>
#include <set>
#include <string>

#include <fmt/format.h>

#include "parity_harness.hpp"

namespace wt = wan::testing;

namespace {

/// One module golden case: the module to run and its checkpoint under golden_dir()/checkpoints.
struct module_case {
  const char* golden;      ///< cases/<golden>.safetensors
  wan::module_kind module;
  const char* checkpoint;
};

std::int64_t golden_clip_heads() {
  return wt::manifest_entry("checkpoints/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
      .at("config").at("vision_heads").get<std::int64_t>();
}

wan::module_run_options options_for(const module_case& c) {
  wan::module_run_options o;
  o.module = c.module;
  o.checkpoint = wt::checkpoint_path(c.checkpoint);
  if (c.module == wan::module_kind::clip_visual) o.vision_heads = golden_clip_heads();
  return o;
}

/// Compares every out.* of `produced` with the golden and returns the names compared.
std::set<std::string> compare_outputs(wt::golden_case& g, const offload::state_dict& produced) {
  std::set<std::string> compared;
  for (const auto& [name, tensor] : produced) {
    BOOST_TEST_CONTEXT(g.name() << ": " << name) {
      BOOST_TEST(name.rfind("out.", 0) == 0u, "produced a non-output name " << name);
      BOOST_TEST_REQUIRE(g.has(name), "the golden has no tensor " << name);
      g.expect_close(name, tensor);
      compared.insert(name);
    }
  }
  return compared;
}

/// Every golden out.* (except the loose bf16 variants) was produced by one of the runs.
void expect_all_outputs(const wt::golden_case& g, const std::set<std::string>& compared) {
  for (const auto& name : g.names()) {
    if (name.rfind("out.", 0) != 0 || name.find("_bf16") != std::string::npos) continue;
    BOOST_TEST(compared.count(name) == 1u, g.name() << ": golden output not produced: " << name);
  }
}

void run_case(const module_case& c) {
  wt::golden_case g(c.golden);
  const auto produced = wan::run_module(options_for(c), g.path());
  BOOST_TEST(!produced.empty());
  expect_all_outputs(g, compare_outputs(g, produced));
}

const module_case kDit[] = {
    {"dit_t2v", wan::module_kind::dit, "t2v"},
    {"dit_i2v", wan::module_kind::dit, "i2v"},
    {"dit_flf2v", wan::module_kind::dit, "flf2v"},
    {"dit_vace", wan::module_kind::vace, "vace"},
};

/// examples/wan_module_run/wan_module_run next to this test binary's build tree, if built.
std::filesystem::path executable() {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return self.parent_path().parent_path() / "examples" / "wan_module_run" / "wan_module_run";
}

struct executable_built {
  boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
    boost::test_tools::assertion_result r(std::filesystem::exists(executable()));
    r.message() << "wan_module_run is not built at " << executable().string();
    return r;
  }
};

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

} // namespace

BOOST_AUTO_TEST_SUITE(parity_module_run)

BOOST_AUTO_TEST_CASE(t5_encoder) { run_case({"t5_encoder", wan::module_kind::t5, "models_t5_umt5-xxl-enc-bf16.pth"}); }

BOOST_AUTO_TEST_CASE(t5_encoder_bfloat16) {
  // the official t5_dtype: out.c0.context in bf16 against the golden's bf16 run (loose tolerance)
  wt::golden_case g("t5_encoder");
  auto o = options_for({"t5_encoder", wan::module_kind::t5, "models_t5_umt5-xxl-enc-bf16.pth"});
  o.dtype = torch::kBFloat16;
  o.sub_case = 0;
  const auto produced = wan::run_module(o, g.path());
  BOOST_TEST_REQUIRE(produced.count("out.c0.context") == 1u);
  BOOST_TEST(produced.count("out.c1.context") == 0u); // only the requested sub-case ran
  BOOST_TEST(produced.at("out.c0.context").scalar_type() == torch::kBFloat16);
  g.expect_close("out.c0.context_bf16", produced.at("out.c0.context"));
}

BOOST_AUTO_TEST_CASE(vae) {
  // one golden file, two modules: encode (in.video.i -> out.latent.i), decode (in.z.i ->
  // out.decoded_raw.i)
  wt::golden_case g("vae");
  std::set<std::string> compared;
  for (const auto kind : {wan::module_kind::vae_encode, wan::module_kind::vae_decode}) {
    auto produced = wan::run_module(options_for({"vae", kind, "Wan2.1_VAE.pth"}), g.path());
    compared.merge(compare_outputs(g, produced));
  }
  expect_all_outputs(g, compared);
}

BOOST_AUTO_TEST_CASE(clip_visual) {
  run_case({"clip_visual", wan::module_kind::clip_visual,
            "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"});
}

BOOST_AUTO_TEST_CASE(clip_visual_from_uint8_images) {
  // only in.image_u8.i given: converted like TF.to_tensor(img).sub_(0.5).div_(0.5)
  wt::golden_case g("clip_visual");
  offload::state_dict inputs{{"in.image_u8.0", g.tensor("in.image_u8.0")},
                             {"in.image_u8.1", g.tensor("in.image_u8.1")}};
  const auto produced = wan::run_module(
      options_for({"clip_visual", wan::module_kind::clip_visual,
                   "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"}),
      inputs);
  expect_all_outputs(g, compare_outputs(g, produced));
}

BOOST_AUTO_TEST_CASE(dit_t2v) { run_case(kDit[0]); }
BOOST_AUTO_TEST_CASE(dit_i2v) { run_case(kDit[1]); }
BOOST_AUTO_TEST_CASE(dit_flf2v) { run_case(kDit[2]); }
BOOST_AUTO_TEST_CASE(dit_vace) { run_case(kDit[3]); }

BOOST_AUTO_TEST_CASE(dit_intermediates_and_one_case) {
  // --case c1 --intermediates: only c1 runs, and its trace points match the recorded goldens
  wt::golden_case g("dit_t2v");
  auto o = options_for(kDit[0]);
  o.sub_case = 1;
  o.record_intermediates = true;
  const auto produced = wan::run_module(o, g.path());
  BOOST_TEST(produced.count("out.c0.out.0") == 0u);
  std::size_t mids = 0;
  for (const auto& [name, t] : produced) {
    if (name.rfind("c1.mid.", 0) == 0 && g.has(name)) {
      g.expect_close(name, t);
      ++mids;
    }
  }
  g.expect_close("out.c1.out.0", produced.at("out.c1.out.0"));
  // every recorded intermediate of the golden is among the trace points
  for (const auto& name : g.names())
    if (name.rfind("c1.mid.", 0) == 0) BOOST_TEST(produced.count(name) == 1u, "not traced: " << name);
  BOOST_TEST(mids > 5u);
}

BOOST_AUTO_TEST_CASE(round_trip_through_a_file) {
  // outputs saved with offload::save_safetensors read back unchanged (what the executable does)
  wt::golden_case g("dit_flf2v");
  const auto produced = wan::run_module(options_for(kDit[2]), g.path());
  const auto file = std::filesystem::temp_directory_path() /
                    fmt::format("module_run_test_{}.safetensors", ::getpid());
  offload::save_safetensors(file, produced, {{"module", "dit"}});
  {
    const offload::safetensors_file back(file);
    BOOST_TEST(back.keys().size() == produced.size());
    for (const auto& [name, t] : produced) BOOST_TEST(torch::equal(back.get(name), t), name);
  }
  std::filesystem::remove(file);
}

BOOST_AUTO_TEST_CASE(missing_input_names_the_tensor) {
  wt::golden_case g("dit_i2v");
  offload::state_dict inputs;
  for (const auto& name : g.names())
    if (name.rfind("in.c1.", 0) == 0 && name != "in.c1.clip_fea") inputs.emplace(name, g.tensor(name));
  try {
    (void)wan::run_module(options_for(kDit[1]), inputs, "'dit_i2v without clip_fea'");
    BOOST_FAIL("expected offload::config_error");
  } catch (const offload::config_error& e) {
    const std::string what = e.what();
    BOOST_TEST(e.id() == "offload.wan.module_run.missing_input");
    BOOST_TEST(what.find("'in.c1.clip_fea'") != std::string::npos, what);
    BOOST_TEST(what.find("'dit_i2v without clip_fea'") != std::string::npos, what);
    BOOST_TEST(what.find('\n') == std::string::npos, what);
  }
}

BOOST_AUTO_TEST_CASE(bad_inputs_and_options) {
  wt::golden_case g("dit_t2v");
  auto expect_error = [](auto&& fn, const std::string& id, const std::string& needle) {
    try {
      fn();
      BOOST_ERROR("expected " << id);
    } catch (const offload::error& e) {
      BOOST_TEST(e.id() == id);
      BOOST_TEST(std::string(e.what()).find(needle) != std::string::npos, e.what());
    }
  };
  // inputs of another module: the t5 ids hold no x
  expect_error([&] { (void)wan::run_module(options_for(kDit[0]), wt::golden_case("t5_encoder").path()); },
               "offload.wan.module_run.missing_input", "'in.c0.x.0'");
  // an unknown sub-case lists the ones present
  auto o = options_for(kDit[0]);
  o.sub_case = 7;
  expect_error([&] { (void)wan::run_module(o, g.path()); }, "offload.wan.module_run.unknown_case",
               "c0, c1");
  // nothing named in.cN.*
  expect_error([&] { (void)wan::run_module(options_for(kDit[0]), offload::state_dict{}); },
               "offload.wan.module_run.no_inputs", "in.cN.x.0");
  // a mis-shaped input
  offload::state_dict bad{{"in.c0.x.0", torch::zeros({16, 4, 4})},
                          {"in.c0.context.0", torch::zeros({3, 64})}};
  expect_error([&] { (void)wan::run_module(options_for(kDit[0]), bad); },
               "offload.wan.module_run.input_shape", "'in.c0.x.0'");
  // a VACE checkpoint run as 'dit'
  expect_error([&] { (void)wan::run_module(options_for({"dit_vace", wan::module_kind::dit, "vace"}), g.path()); },
               "offload.wan.module_run.module_mismatch", "module 'vace'");
  // image conditioning given to a t2v model
  offload::state_dict t2v_with_clip;
  for (const auto& name : g.names())
    if (name.rfind("in.c1.", 0) == 0) t2v_with_clip.emplace(name, g.tensor(name));
  t2v_with_clip.emplace("in.c1.clip_fea", torch::zeros({1, 257, 64}));
  expect_error([&] { (void)wan::run_module(options_for(kDit[0]), t2v_with_clip); },
               "offload.wan.module_run.unexpected_input", "'in.c1.clip_fea'");
  // the VAE port runs in float32 only
  auto vae_bf16 = options_for({"vae", wan::module_kind::vae_decode, "Wan2.1_VAE.pth"});
  vae_bf16.dtype = torch::kBFloat16;
  expect_error([&] { (void)wan::run_module(vae_bf16, wt::golden_case("vae").path()); },
               "offload.wan.module_run.bad_dtype", "float32 only");
  // clip_visual has no sub-cases
  auto clip_case = options_for({"clip_visual", wan::module_kind::clip_visual,
                                "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"});
  clip_case.sub_case = 0;
  expect_error([&] { (void)wan::run_module(clip_case, wt::golden_case("clip_visual").path()); },
               "offload.wan.module_run.no_sub_cases", "no sub-cases");
  // option parsing
  expect_error([] { (void)wan::parse_module_kind("unet"); }, "offload.wan.module_run.bad_module",
               "clip_visual");
  expect_error([] { (void)wan::parse_module_dtype("float16"); }, "offload.wan.module_run.bad_dtype",
               "'float16'");
  expect_error([] { (void)wan::parse_case("case1"); }, "offload.wan.module_run.bad_case", "'case1'");
  BOOST_TEST(wan::parse_case("c12") == 12);
  BOOST_TEST(wan::parse_case("3") == 3);
  for (const auto& name : wan::module_kind_names())
    BOOST_TEST(wan::to_string(wan::parse_module_kind(name)) == name);
}

BOOST_AUTO_TEST_CASE(executable_writes_the_golden_names,
                     *boost::unit_test::precondition(executable_built())) {
  // the CLI on every sub-case of dit_vace; its file compared through the harness
  wt::golden_case g("dit_vace");
  const auto out = std::filesystem::temp_directory_path() /
                   fmt::format("module_run_cli_{}.safetensors", ::getpid());
  const auto cmd = fmt::format("{} --module vace --checkpoint {} --inputs {} --outputs {} > /dev/null",
                               quoted(executable()), quoted(wt::checkpoint_path("vace")),
                               quoted(g.path()), quoted(out));
  BOOST_TEST_REQUIRE(std::system(cmd.c_str()) == 0, cmd);
  {
    const offload::safetensors_file file(out);
    BOOST_TEST(file.metadata().at("module") == "vace");
    std::set<std::string> compared;
    for (const auto& name : file.keys()) {
      g.expect_close(name, file.get(name));
      compared.insert(name);
    }
    expect_all_outputs(g, compared);
  }
  std::filesystem::remove(out);
}

BOOST_AUTO_TEST_SUITE_END()
