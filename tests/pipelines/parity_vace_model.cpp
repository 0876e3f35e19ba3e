// Parity of wan::VaceWanModel (pipelines/wan/vace_model.hpp) with the official Python reference:
// the golden case dit_vace. Every sub-case cN of the manifest `spec` is run; every stored out.*
// tensor and every recorded cN.mid.* intermediate (incl. the VACE hints) is compared with the
// manifest's tolerance.
#include "wan/vace_model.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <set>
#include <string>

#include <fmt/format.h>

#include "parity_harness.hpp"

namespace wt = wan::testing;

BOOST_AUTO_TEST_SUITE(parity_vace_model)

BOOST_AUTO_TEST_CASE(dit_vace) {
  torch::NoGradGuard no_grad;
  wt::golden_case g("dit_vace");
  auto model = wan::load_vace_wan_model(wt::checkpoint_path("vace"));
  std::set<std::string> compared;
  const auto& spec = g.entry().at("spec");
  BOOST_TEST_REQUIRE(spec.size() > 0u);
  for (size_t n = 0; n < spec.size(); ++n) {
    BOOST_TEST_CONTEXT("dit_vace c" << n) {
      const auto in = fmt::format("in.c{}.", n);
      const auto batch = spec[n].at("shapes").size();
      std::vector<torch::Tensor> x, context, vace_context;
      for (size_t b = 0; b < batch; ++b) {
        x.push_back(g.tensor(fmt::format("{}x.{}", in, b)));
        context.push_back(g.tensor(fmt::format("{}context.{}", in, b)));
        vace_context.push_back(g.tensor(fmt::format("{}vace_context.{}", in, b)));
      }
      const auto seq_len = g.tensor(in + "seq_len").item<int64_t>();
      const auto scale = g.tensor(in + "vace_context_scale").item<double>();
      BOOST_TEST(scale == spec[n].at("scale").get<double>());

      const auto mid = fmt::format("c{}.mid.", n);
      model->trace = [&](const std::string& name, const torch::Tensor& value) {
        if (g.has(mid + name)) {
          g.expect_close(mid + name, value);
          compared.insert(mid + name);
        }
      };
      auto out = model->forward(x, g.tensor(in + "t"), vace_context, context, seq_len, scale);
      model->trace = nullptr;
      BOOST_TEST_REQUIRE(out.size() == batch);
      for (size_t b = 0; b < batch; ++b) {
        const auto name = fmt::format("out.c{}.out.{}", n, b);
        g.expect_close(name, out[b]);
        compared.insert(name);
      }
      if (g.has(mid + "freqs_first64")) {
        g.expect_close(mid + "freqs_first64", model->freqs.slice(0, 0, 64));
        compared.insert(mid + "freqs_first64");
      }
    }
  }
  for (const auto& name : g.names())
    if (name.rfind("in.", 0) != 0) BOOST_TEST(compared.count(name) == 1u, "not compared: " << name);
}

BOOST_AUTO_TEST_SUITE_END()
