// Parity of wan::WanModel (pipelines/wan/model.hpp) with the official Python reference: the
// golden cases dit_t2v, dit_i2v and dit_flf2v. Every sub-case cN of the manifest `spec` is run;
// every stored out.* tensor and every recorded cN.mid.* intermediate is compared with the
// manifest's tolerance.
#include "wan/model.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <set>
#include <string>

#include <fmt/format.h>

#include "parity_harness.hpp"

namespace wt = wan::testing;

namespace {

void run_dit_case(const std::string& case_name, const std::string& checkpoint) {
  torch::NoGradGuard no_grad;
  wt::golden_case g(case_name);
  auto model = wan::load_wan_model(wt::checkpoint_path(checkpoint));
  std::set<std::string> compared;
  const auto& spec = g.entry().at("spec");
  BOOST_TEST_REQUIRE(spec.size() > 0u);
  for (size_t n = 0; n < spec.size(); ++n) {
    BOOST_TEST_CONTEXT(case_name << " c" << n) {
      const auto in = fmt::format("in.c{}.", n);
      const auto batch = spec[n].at("shapes").size();
      std::vector<torch::Tensor> x, context, y;
      for (size_t b = 0; b < batch; ++b) {
        x.push_back(g.tensor(fmt::format("{}x.{}", in, b)));
        context.push_back(g.tensor(fmt::format("{}context.{}", in, b)));
        if (g.has(fmt::format("{}y.{}", in, b))) y.push_back(g.tensor(fmt::format("{}y.{}", in, b)));
      }
      const auto clip_fea = g.has(in + "clip_fea") ? g.tensor(in + "clip_fea") : torch::Tensor();
      const auto seq_len = g.tensor(in + "seq_len").item<int64_t>();
      BOOST_TEST(seq_len == spec[n].at("seq_len").get<int64_t>());

      const auto mid = fmt::format("c{}.mid.", n);
      model->trace = [&](const std::string& name, const torch::Tensor& value) {
        if (g.has(mid + name)) {
          g.expect_close(mid + name, value);
          compared.insert(mid + name);
        }
      };
      auto out = model->forward(x, g.tensor(in + "t"), context, seq_len, clip_fea, y);
      model->trace = nullptr;
      BOOST_TEST_REQUIRE(out.size() == batch);
      for (size_t b = 0; b < batch; ++b) {
        const auto name = fmt::format("out.c{}.out.{}", n, b);
        g.expect_close(name, out[b]);
        compared.insert(name);
      }
      if (g.has(mid + "freqs_first64")) {
        g.expect_close(mid + "freqs_first64", model->freqs.slice(0, 0, 64)); // complex, as real pairs
        compared.insert(mid + "freqs_first64");
      }
    }
  }
  // Nothing stored as an output or intermediate is left unchecked.
  for (const auto& name : g.names())
    if (name.rfind("in.", 0) != 0) BOOST_TEST(compared.count(name) == 1u, "not compared: " << name);
}

} // namespace

BOOST_AUTO_TEST_SUITE(parity_model)

BOOST_AUTO_TEST_CASE(dit_t2v) { run_dit_case("dit_t2v", "t2v"); }

BOOST_AUTO_TEST_CASE(dit_i2v) { run_dit_case("dit_i2v", "i2v"); }

BOOST_AUTO_TEST_CASE(dit_flf2v) { run_dit_case("dit_flf2v", "flf2v"); }

BOOST_AUTO_TEST_SUITE_END()
