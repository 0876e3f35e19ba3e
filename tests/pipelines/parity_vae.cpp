// Parity of wan::WanVAE (pipelines/wan/vae.hpp) with the official Python reference: the golden
// case `vae` (every sub-case of its manifest spec: latent.i = vae.encode([video.i])[0],
// decoded_raw.i = vae.model.decode(z.i[None], vae.scale)[0], and the wrapper's decode equal to
// clamp(decoded_raw.i)), plus the VAE steps recorded by the end-to-end cases: the 81-frame
// first/last-frame encode and the decodes of the final latents (longer videos: 21 latent frames).
#include "wan/vae.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <string>

#include <fmt/format.h>

#include "parity_harness.hpp"

namespace wt = wan::testing;

namespace {

/// The VAE as the reference pipelines build it: WanVAE(vae_pth=Wan2.1_VAE.pth, z_dim=16, cpu).
wan::WanVAE& golden_vae() {
  static wan::WanVAE vae(wt::checkpoint_path("Wan2.1_VAE.pth"));
  return vae;
}

} // namespace

BOOST_AUTO_TEST_SUITE(parity_vae)

BOOST_AUTO_TEST_CASE(vae_case) {
  torch::NoGradGuard no_grad;
  wt::golden_case g("vae");
  auto& vae = golden_vae();
  const auto& spec = g.entry().at("spec");
  BOOST_TEST_REQUIRE(spec.size() > 0u);
  for (std::size_t i = 0; i < spec.size(); ++i) {
    BOOST_TEST_CONTEXT("vae sub-case " << i << ": " << spec[i].dump()) {
      const auto frames = spec[i].at("frames").get<std::int64_t>();
      const auto h = spec[i].at("h").get<std::int64_t>();
      const auto w = spec[i].at("w").get<std::int64_t>();
      const auto video = g.tensor(fmt::format("in.video.{}", i));
      BOOST_TEST(video.sizes().vec() == std::vector<std::int64_t>({3, frames, h, w}),
                 boost::test_tools::per_element());

      const auto latent = vae.encode({video})[0];
      BOOST_TEST(latent.sizes().vec() ==
                     std::vector<std::int64_t>({16, (frames - 1) / 4 + 1, h / 8, w / 8}),
                 boost::test_tools::per_element());
      g.expect_close(fmt::format("out.latent.{}", i), latent);

      const auto z = g.tensor(fmt::format("in.z.{}", i));
      const auto raw = vae.model->decode(z.unsqueeze(0), vae.scale())[0];
      g.expect_close(fmt::format("out.decoded_raw.{}", i), raw);
      BOOST_TEST(torch::equal(vae.decode({z})[0], raw.clamp(-1, 1)));
    }
  }
  // nothing recorded in the file is left unchecked
  for (const auto& name : g.names()) {
    BOOST_TEST((name.rfind("in.", 0) == 0 || name.rfind("out.latent.", 0) == 0 ||
                name.rfind("out.decoded_raw.", 0) == 0),
               "unexpected golden tensor " << name);
  }
}

BOOST_AUTO_TEST_CASE(e2e_flf2v_81_frame_encode_and_decode) {
  torch::NoGradGuard no_grad;
  wt::golden_case g("e2e_flf2v");
  auto& vae = golden_vae();
  // WanFLF2V.generate: vae.encode([cat(first[:, None], zeros(3, F - 2, h, w), last[:, None])])
  const auto first = g.tensor("out.vae_encode_input.first"); // [3, h, w]
  const auto last = g.tensor("out.vae_encode_input.last");
  const auto frames = g.entry().at("spec").at("frames").get<std::int64_t>();
  const auto video = torch::cat({first.unsqueeze(1),
                                 torch::zeros({3, frames - 2, first.size(1), first.size(2)}),
                                 last.unsqueeze(1)},
                                1); // [3, 81, h, w]
  g.expect_close("out.vae_encode_output", vae.encode({video})[0]); // [16, 21, h/8, w/8]
  g.expect_close("out.video", vae.decode({g.tensor("out.x0")})[0]); // [3, 81, H, W]
}

BOOST_AUTO_TEST_CASE(e2e_i2v_encode_and_decode) {
  torch::NoGradGuard no_grad;
  wt::golden_case g("e2e_i2v");
  auto& vae = golden_vae();
  // WanI2V.generate: vae.encode([cat(first[:, None], zeros(3, F - 1, h, w))])
  const auto first = g.tensor("out.vae_encode_input.first");
  const auto frames = g.entry().at("spec").at("frames").get<std::int64_t>();
  const auto video = torch::cat(
      {first.unsqueeze(1), torch::zeros({3, frames - 1, first.size(1), first.size(2)})}, 1);
  g.expect_close("out.vae_encode_output", vae.encode({video})[0]);
  g.expect_close("out.video", vae.decode({g.tensor("out.x0")})[0]);
}

BOOST_AUTO_TEST_CASE(e2e_t2v_decode) {
  torch::NoGradGuard no_grad;
  for (const char* name : {"e2e_t2v", "e2e_t2v_dpmpp", "e2e_t2i"}) {
    BOOST_TEST_CONTEXT(name) {
      wt::golden_case g(name);
      g.expect_close("out.video", golden_vae().decode({g.tensor("out.x0")})[0]);
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
