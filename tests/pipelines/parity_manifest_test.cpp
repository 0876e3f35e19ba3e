// The golden set itself: manifest, checkpoints (through offload::load_checkpoint) and cases
// (through the parity harness) agree with each other; the harness refuses what it cannot check.
#include "parity_harness.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <limits>
#include <set>
#include <stdexcept>
#include <string>

#include <offload/state_dict.hpp>

namespace wt = wan::testing;

namespace {

// Compares a loaded state_dict with a manifest `keys` object {name: {shape, dtype}}.
void check_keys(const std::string& what, const offload::state_dict& sd, const nlohmann::json& keys) {
  BOOST_TEST_CONTEXT(what) {
    BOOST_TEST(sd.size() == keys.size());
    for (const auto& [name, spec] : keys.items()) {
      auto it = sd.find(name);
      BOOST_TEST_CONTEXT(name) {
        BOOST_TEST_REQUIRE((it != sd.end()), "key missing from the loaded checkpoint");
        const auto shape = spec.at("shape").get<std::vector<int64_t>>();
        BOOST_TEST(it->second.sizes().vec() == shape, boost::test_tools::per_element());
        BOOST_TEST(wt::dtype_name(it->second.scalar_type()) == spec.at("dtype").get<std::string>());
      }
    }
    for (const auto& [name, t] : sd)
      BOOST_TEST(keys.contains(name), "loaded key '" << name << "' is not in the manifest");
  }
}

} // namespace

BOOST_AUTO_TEST_SUITE(parity_manifest)

BOOST_AUTO_TEST_CASE(golden_dir_and_manifest_load) {
  BOOST_TEST(std::filesystem::is_directory(wt::golden_dir()));
  const auto& m = wt::manifest();
  BOOST_TEST(m.at("set").get<std::string>() == "shared");
  BOOST_TEST(m.at("files").size() == 22u);
  BOOST_TEST(wt::manifest_entry("cases/dit_t2v.safetensors").at("kind").get<std::string>() == "golden");
  BOOST_CHECK_THROW(wt::manifest_entry("cases/nope.safetensors"), std::invalid_argument);
  BOOST_TEST(std::filesystem::exists(wt::checkpoint_path("Wan2.1_VAE.pth")));
}

BOOST_AUTO_TEST_CASE(every_checkpoint_matches_manifest_keys) {
  int checked = 0;
  for (const auto& f : wt::manifest().at("files")) {
    if (f.at("kind") != "checkpoint") continue;
    const auto rel = f.at("file").get<std::string>();
    const auto& keys = f.at("keys");
    const auto sd = offload::load_checkpoint(wt::golden_dir() / rel);
    check_keys(rel, sd, keys);
    BOOST_TEST(sd.size() == f.at("num_tensors").get<size_t>());
    int64_t params = 0;
    for (const auto& [k, t] : sd) params += t.numel();
    BOOST_TEST(params == f.at("num_params").get<int64_t>());
    // The DiT checkpoints also load from their directory (the official layout).
    const auto p = std::filesystem::path(rel);
    if (p.filename() == "diffusion_pytorch_model.safetensors") {
      check_keys(p.parent_path().string() + "/", offload::load_checkpoint(wt::golden_dir() / p.parent_path()),
                 keys);
      BOOST_TEST(std::filesystem::exists(wt::golden_dir() / p.parent_path() / "config.json"));
    }
    ++checked;
  }
  BOOST_TEST(checked == 7);
}

BOOST_AUTO_TEST_CASE(every_golden_case_opens) {
  int checked = 0;
  for (const auto& f : wt::manifest().at("files")) {
    if (f.at("kind") != "golden") continue;
    const auto case_name = f.at("case").get<std::string>();
    BOOST_TEST_CONTEXT(case_name) {
      wt::golden_case c(case_name);
      BOOST_TEST(&c.entry() == &f);
      BOOST_TEST(c.metadata().at("case") == case_name);
      const auto& stored = f.at("stored");
      BOOST_TEST(c.names().size() == stored.size());
      for (const auto& [name, spec] : stored.items()) {
        BOOST_TEST_CONTEXT(name) {
          BOOST_TEST_REQUIRE(c.has(name));
          const auto t = c.tensor(name);
          BOOST_TEST(t.sizes().vec() == spec.at("shape").get<std::vector<int64_t>>(),
                     boost::test_tools::per_element());
          BOOST_TEST(wt::dtype_name(t.scalar_type()) == spec.at("dtype").get<std::string>());
          // Every float output/intermediate has a tolerance; inputs have none.
          if (at::isFloatingType(t.scalar_type()) && name.rfind("in.", 0) != 0)
            BOOST_TEST(c.tolerance(name).has_value(), "no tolerance for float tensor " << name);
        }
      }
      // Every tolerance key names a stored tensor (directly or as out.<key>).
      for (const auto& [key, tol] : f.at("recommended_tolerance").at("tol").items()) {
        BOOST_TEST((c.has(key) || c.has("out." + key)), "tolerance key without tensor: " << key);
        BOOST_TEST(tol.get<double>() > 0.0);
      }
    }
    ++checked;
  }
  BOOST_TEST(checked == 15);
}

BOOST_AUTO_TEST_CASE(tolerances_come_from_the_manifest) {
  wt::golden_case c("dit_t2v");
  BOOST_TEST(*c.tolerance("out.c0.out.0") == 5e-06);
  BOOST_TEST(*c.tolerance("c1.mid.freqs_first64") == 1e-06);
  BOOST_TEST(!c.tolerance("in.c0.x.0").has_value());
  wt::golden_case t5("t5_encoder");
  BOOST_TEST(*t5.tolerance("out.c0.context_bf16") == 0.02);
}

BOOST_AUTO_TEST_CASE(expect_close_accepts_the_golden_itself) {
  wt::golden_case c("dit_t2v");
  c.expect_close("out.c0.out.0", c.tensor("out.c0.out.0"));
  c.expect_close("in.c0.t", c.tensor("in.c0.t"));                       // integer: exact
  c.expect_close("c1.mid.sinusoidal", c.tensor("c1.mid.sinusoidal").to(torch::kFloat)); // f64 golden
  // A complex tensor is compared through view_as_real (freqs are stored that way).
  c.expect_close("c1.mid.freqs_first64", torch::view_as_complex(c.tensor("c1.mid.freqs_first64")));
  BOOST_TEST(c.compared() == 4u);
  BOOST_TEST(c.worst_ratio() < 1.0);
}

BOOST_AUTO_TEST_CASE(expect_close_refuses_unknown_names_shapes_and_untoleranced_floats) {
  wt::golden_case c("dit_t2v");
  const auto out = c.tensor("out.c0.out.0");
  BOOST_CHECK_THROW(c.expect_close("out.c0.out.9", out), std::invalid_argument);
  BOOST_CHECK_THROW(c.expect_close("c0.out.0", out), std::invalid_argument); // tolerance key, not a stored name
  BOOST_CHECK_THROW(c.expect_close("out.c0.out.0", out.flatten()), std::invalid_argument);
  BOOST_CHECK_THROW(c.expect_close("out.c0.out.0", out.unsqueeze(0)), std::invalid_argument);
  BOOST_CHECK_THROW(c.expect_close("in.c0.x.0", c.tensor("in.c0.x.0")), std::invalid_argument);
  BOOST_CHECK_THROW(c.expect_close("out.c0.out.0", torch::Tensor()), std::invalid_argument);
  BOOST_CHECK_THROW((void)c.tensor("nope"), std::invalid_argument);
  try {
    (void)c.tensor("out.c0.out.7");
  } catch (const std::invalid_argument& e) {
    BOOST_TEST(std::string(e.what()).find("out.c0.out.0") != std::string::npos); // suggestion
  }
  BOOST_TEST(c.compared() == 0u);
}

BOOST_AUTO_TEST_CASE(compare_applies_the_tolerance_rule) {
  wt::golden_case c("dit_t2v");
  const auto g = c.tensor("out.c1.out.0");
  const double tol = *c.tolerance("out.c1.out.0");
  const double bound = tol * g.abs().max().item<double>();

  auto near = g.clone();
  near.view(-1)[5] += 0.5 * bound;
  auto r = c.compare("out.c1.out.0", near);
  BOOST_TEST(r.ok);
  BOOST_TEST(r.ratio == 0.5, boost::test_tools::tolerance(0.05));

  auto far = g.clone();
  far.view(-1)[7] += 3.0 * bound;
  r = c.compare("out.c1.out.0", far);
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.ratio == 3.0, boost::test_tools::tolerance(0.05));
  BOOST_TEST(r.detail.find("[0, 0, 0, 7]") != std::string::npos, r.detail);

  auto nan = g.clone();
  nan.view(-1)[3] = std::numeric_limits<float>::quiet_NaN();
  r = c.compare("out.c1.out.0", nan);
  BOOST_TEST(!r.ok);
  BOOST_TEST(std::isinf(r.ratio));

  auto t = c.tensor("in.c0.t").clone();
  t[0] += 1;
  r = c.compare("in.c0.t", t);
  BOOST_TEST(r.exact);
  BOOST_TEST(!r.ok);
  r = c.compare("in.c0.t", c.tensor("in.c0.t").to(torch::kFloat)); // same values, other dtype
  BOOST_TEST(r.ok);
}

BOOST_AUTO_TEST_SUITE_END()
