// Parity of the T5 encoder (pipelines/wan/t5.hpp) with the golden case t5_encoder: the tiny umT5
// encoder checkpoint (bfloat16 on disk) loaded into float32 (and bfloat16) modules, run on the
// stored ids / masks.
#include "wan/t5.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include "parity_harness.hpp"

namespace wt = wan::testing;

BOOST_AUTO_TEST_SUITE(parity_t5)

BOOST_AUTO_TEST_CASE(t5_encoder_float32) {
  wt::golden_case g("t5_encoder");
  const auto& spec = g.entry().at("spec");
  const auto ckpt = wt::checkpoint_path("models_t5_umt5-xxl-enc-bf16.pth");
  for (std::size_t n = 0; n < spec.size(); ++n) {
    BOOST_TEST_CONTEXT("sub-case c" << n) {
      const auto text_len = spec[n].at("text_len").get<std::int64_t>();
      wan::T5EncoderModel enc(text_len, torch::kFloat, torch::kCPU, ckpt);
      const auto ids = g.tensor(fmt::format("in.c{}.ids", n));    // [B, L]
      const auto mask = g.tensor(fmt::format("in.c{}.mask", n));  // [B, L]
      BOOST_TEST(ids.size(1) == text_len);
      torch::NoGradGuard no_grad;
      const auto context = enc.model->forward(ids, mask);  // [B, L, dim]
      g.expect_close(fmt::format("out.c{}.context", n), context);
      const auto seq_lens = mask.gt(0).sum(1).to(torch::kLong);
      g.expect_close(fmt::format("out.c{}.seq_lens", n), seq_lens);
      // T5EncoderModel.__call__ semantics: per-prompt context trimmed to the mask length
      const auto trimmed = enc.encode(ids, mask);
      const auto lens = spec[n].at("lens").get<std::vector<std::int64_t>>();
      BOOST_TEST_REQUIRE(trimmed.size() == lens.size());
      for (std::size_t b = 0; b < lens.size(); ++b) {
        BOOST_TEST(trimmed[b].size(0) == lens[b]);
        BOOST_TEST(torch::equal(trimmed[b], context[static_cast<std::int64_t>(b)].slice(0, 0, lens[b])));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(t5_encoder_bfloat16) {
  // the official t5_dtype; loose tolerance from the manifest (bf16 arithmetic on CPU)
  wt::golden_case g("t5_encoder");
  const auto& spec = g.entry().at("spec");
  const auto ckpt = wt::checkpoint_path("models_t5_umt5-xxl-enc-bf16.pth");
  int compared = 0;
  for (std::size_t n = 0; n < spec.size(); ++n) {
    if (!spec[n].value("bf16", false)) continue;
    wan::T5EncoderModel enc(spec[n].at("text_len").get<std::int64_t>(), torch::kBFloat16,
                            torch::kCPU, ckpt);
    BOOST_TEST(enc.model->token_embedding->weight.scalar_type() == torch::kBFloat16);
    torch::NoGradGuard no_grad;
    const auto context = enc.model->forward(g.tensor(fmt::format("in.c{}.ids", n)),
                                            g.tensor(fmt::format("in.c{}.mask", n)));
    BOOST_TEST(context.scalar_type() == torch::kBFloat16);
    g.expect_close(fmt::format("out.c{}.context_bf16", n), context);
    ++compared;
  }
  BOOST_TEST(compared == 1);
}

BOOST_AUTO_TEST_SUITE_END()
