// Tests of the spatially tiled Wan VAE (wan/vae_tiling.hpp, WanVAE::decode/encode with a
// VaeTiling) on the tiny golden VAE (tests/data/golden/checkpoints/Wan2.1_VAE.pth, dim 6), and of
// the tiled decode workspace model (wan::decode_workspace_bytes, pipeline_stages).
//
// What is exact and what is approximate:
//  * one tile covering the latent runs the untiled path: bit-identical;
//  * where a single tile covers a pixel, the tiled output is bit-identical to decoding that tile's
//    latent on its own (each tile runs the whole sequence with its own causal cache), and across
//    an overlap it is the linear ramp blend of the two standalone tiles;
//  * against the untiled decode the tiled decode is an approximation: a tile sees zero padding at
//    its borders instead of its neighbours (the decoder's receptive field is ~18 latent pixels),
//    and the decoder's (and encoder's) middle AttentionBlock attends within the tile only. The
//    tolerances below bound the measured errors of this tiny random-weight VAE on N(0,1) latents /
//    uniform noise videos (a harsher input than real latents); see docs/pipelines/wan.md.
#include "wan/stages.hpp"
#include "wan/vae.hpp"
#include "wan/vae_tiling.hpp"

#include <torch/torch.h>

#include <functional>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <offload/errors.hpp>

#include "parity_harness.hpp"

namespace wt = wan::testing;

namespace {

/// The tiny golden VAE as the pipelines load it (WanVAE(vae_pth), CPU, float32).
wan::WanVAE& golden_vae() {
  static wan::WanVAE vae(wt::checkpoint_path("Wan2.1_VAE.pth"));
  return vae;
}

struct errors {
  double max_abs = 0.0; ///< max |tiled - untiled|
  double rel = 0.0;     ///< ||tiled - untiled||_2 / ||untiled||_2
  double max_ref = 0.0; ///< max |untiled|
};

errors compare(const torch::Tensor& tiled, const torch::Tensor& ref) {
  const auto d = (tiled.to(torch::kFloat64) - ref.to(torch::kFloat64));
  errors e;
  e.max_abs = d.abs().max().item<double>();
  e.rel = (d.norm() / ref.to(torch::kFloat64).norm()).item<double>();
  e.max_ref = ref.abs().max().item<double>();
  return e;
}

template <class F>
void expect_config_error(F&& f, const std::string& id, const std::vector<std::string>& substrings) {
  try {
    f();
    BOOST_ERROR("expected offload::config_error " << id);
  } catch (const offload::config_error& e) {
    BOOST_TEST(e.id() == id);
    for (const auto& s : substrings)
      BOOST_TEST(std::string(e.what()).find(s) != std::string::npos, "'" << s << "' in: " << e.what());
  }
}

/// Random normalised latent [16, T, h, w] with a fixed seed (N(0,1), like the golden z.i).
torch::Tensor random_latent(std::int64_t t, std::int64_t h, std::int64_t w, std::uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({16, t, h, w});
}

} // namespace

BOOST_AUTO_TEST_SUITE(vae_tiling)

BOOST_AUTO_TEST_CASE(covering_tiles_are_bit_identical_to_untiled) {
  torch::NoGradGuard no_grad;
  auto& vae = golden_vae();
  wt::golden_case g("vae");
  // golden latents [16, 3, 4, 4] and [16, 2, 4, 6]; a tile of >= the latent size covers them
  for (const char* name : {"in.z.0", "in.z.1"}) {
    const auto z = g.tensor(name);
    const auto ref = vae.decode({z})[0];
    for (const auto& tiling : {wan::VaeTiling{4, 6, 3}, wan::VaeTiling{32, 32, 8}, wan::VaeTiling{8, 6, 0}}) {
      BOOST_TEST_CONTEXT(name << " tile " << tiling.tile_latent_h << "x" << tiling.tile_latent_w) {
        if (!tiling.covers(z.size(2), z.size(3))) continue;
        BOOST_TEST(torch::equal(vae.decode({z}, tiling)[0], ref));
        BOOST_TEST(torch::equal(vae.model->tiled_decode(z.unsqueeze(0), vae.scale(), tiling),
                                vae.model->decode(z.unsqueeze(0), vae.scale())));
      }
    }
  }
  for (const char* name : {"in.video.0", "in.video.1"}) {
    const auto video = g.tensor(name); // [3, F, 32, 32|48] -> latent 4 x 4|6
    BOOST_TEST(torch::equal(vae.encode({video}, wan::VaeTiling{4, 6, 2})[0], vae.encode({video})[0]));
  }
}

BOOST_AUTO_TEST_CASE(single_coverage_equals_standalone_tile_and_overlap_is_a_linear_ramp) {
  // Latent 4 x 12, tiles covering h and 8 wide with overlap 4: columns [0, 8) and [4, 12), i.e.
  // pixels [0, 64) and [32, 96) overlapping on [32, 64).
  torch::NoGradGuard no_grad;
  auto& vae = golden_vae();
  const auto z = random_latent(3, 4, 12, 7).unsqueeze(0);
  const auto s = vae.scale();
  const auto tiled = vae.model->tiled_decode(z, s, wan::VaeTiling{8, 8, 4}); // one tile row: 8 >= 4
  const auto a = vae.model->decode(z.slice(4, 0, 8).contiguous(), s);  // pixels [0, 64)
  const auto b = vae.model->decode(z.slice(4, 4, 12).contiguous(), s); // pixels [32, 96)
  BOOST_TEST(tiled.sizes().vec() == std::vector<std::int64_t>({1, 3, 9, 32, 96}), boost::test_tools::per_element());
  BOOST_TEST(torch::equal(tiled.slice(4, 0, 32), a.slice(4, 0, 32)));
  BOOST_TEST(torch::equal(tiled.slice(4, 64, 96), b.slice(4, 32, 64)));
  const auto wb = (torch::arange(32, torch::kFloat64) + 0.5) / 32.0; // weight of b over the overlap
  const auto expect = a.slice(4, 32, 64).to(torch::kFloat64) * (1.0 - wb) + b.slice(4, 0, 32).to(torch::kFloat64) * wb;
  const double diff = (tiled.slice(4, 32, 64).to(torch::kFloat64) - expect).abs().max().item<double>();
  BOOST_TEST_MESSAGE("vae_tiling: overlap blend vs the hand-made linear ramp: max abs " << diff);
  BOOST_TEST(diff <= 1e-6); // float32 rounding of (a wa + b wb) / (wa + wb), |a|, |b| ~ 1
  BOOST_TEST(!torch::equal(a.slice(4, 32, 64), b.slice(4, 0, 32))); // the blend is not vacuous
}

BOOST_AUTO_TEST_CASE(without_attention_the_error_is_confined_to_the_overlap) {
  // The decoder's only non-local layer is the middle AttentionBlock; with its output projection
  // zeroed (x + 0) the decoder is local, with a receptive field of about 16 latent pixels. Tiles
  // [0, 48) and [32, 80) of an 8 x 80 latent: every column outside the overlap [32, 48) is at
  // least 16 latent pixels from the border of the tile that covers it, so there the tiled decode
  // must equal the untiled one up to float32 rounding; the border error (zero padding instead of
  // the neighbour) shows only inside the overlap, where the ramp gives the border little weight.
  torch::NoGradGuard no_grad;
  static wan::WanVAE local(wt::checkpoint_path("Wan2.1_VAE.pth"));
  auto* attn = local.model->decoder->middle[1]->as<wan::AttentionBlockImpl>();
  BOOST_TEST_REQUIRE(attn != nullptr);
  attn->proj->weight.zero_();
  attn->proj->bias.zero_();
  const auto z = random_latent(3, 8, 80, 4321);
  const auto ref = local.decode({z})[0];
  const auto tiled = local.decode({z}, wan::VaeTiling{16, 48, 8})[0];
  const auto err = (tiled - ref).abs();
  const double outside = std::max(err.slice(3, 0, 256).max().item<double>(), err.slice(3, 384, 640).max().item<double>());
  const double inside = err.slice(3, 256, 384).max().item<double>();
  BOOST_TEST_MESSAGE("vae_tiling decode without attention, 8x80 latent, tiles 16x48 overlap 8: max abs err outside "
                     "the overlap " << outside << ", inside " << inside);
  BOOST_TEST(outside <= 1e-5); // float32 rounding (convolutions of other sizes); measured ~1e-6
  BOOST_TEST(inside > 1e-3);   // the border effect exists, and only there
}

namespace {

// One tiling setting and its bounds. Bounds: the measured errors (docs/pipelines/wan.md) rounded
// up by ~20%. The computation is deterministic (fixed seed and weights, CPU float32), so they
// guard against regressions; a misplaced tile, a cache shared between tiles or a hard seam gives
// errors of order 1.
struct tiling_bound {
  wan::VaeTiling tiling;
  double max_abs_tol, rel_tol;
};

/// Runs `tiled(tiling)` for every setting against the untiled `ref`, checks the shape and the
/// bounds, prints the errors, and checks that they shrink as tiles and overlaps grow.
void check_against_untiled(const std::string& what, const torch::Tensor& ref,
                           const std::function<torch::Tensor(const wan::VaeTiling&)>& tiled,
                           const std::vector<tiling_bound>& settings) {
  std::vector<double> rel;
  for (const auto& [tiling, max_abs_tol, rel_tol] : settings) {
    const auto out = tiled(tiling);
    BOOST_TEST(out.sizes() == ref.sizes());
    const auto e = compare(out, ref);
    BOOST_TEST_MESSAGE("vae_tiling " << what << ", tile " << tiling.tile_latent_h << "x" << tiling.tile_latent_w
                       << " overlap " << tiling.overlap_latent << ": max abs err " << e.max_abs
                       << " (max |ref| " << e.max_ref << "), rel L2 err " << e.rel);
    BOOST_TEST(e.max_abs <= max_abs_tol);
    BOOST_TEST(e.rel <= rel_tol);
    rel.push_back(e.rel);
  }
  // larger overlaps and tiles leave less of the frame near a tile border: the error shrinks
  for (std::size_t i = 1; i < rel.size(); ++i) BOOST_TEST(rel[i] < rel[i - 1]);
}

} // namespace

BOOST_AUTO_TEST_CASE(decode_error_vs_untiled) {
  torch::NoGradGuard no_grad;
  auto& vae = golden_vae();
  // 20 x 28 latent (160 x 224 pixels), 3 latent frames (9 video frames): several tiles per axis.
  const auto z = random_latent(3, 20, 28, 1234);
  check_against_untiled("decode 20x28 latent", vae.decode({z})[0],
                        [&](const wan::VaeTiling& t) { return vae.decode({z}, t)[0]; },
                        {
                            {{8, 8, 2}, 0.93, 0.30},   // measured 0.773, 0.247
                            {{8, 8, 4}, 0.71, 0.24},   // measured 0.590, 0.194
                            {{12, 16, 4}, 0.60, 0.14}, // measured 0.500, 0.110
                            {{16, 16, 8}, 0.31, 0.066} // measured 0.253, 0.055
                        });
}

BOOST_AUTO_TEST_CASE(encode_error_vs_untiled) {
  torch::NoGradGuard no_grad;
  auto& vae = golden_vae();
  torch::manual_seed(99);
  const auto video = torch::rand({3, 9, 160, 224}) * 2 - 1; // latent [16, 3, 20, 28]
  check_against_untiled("encode 160x224 video", vae.encode({video})[0],
                        [&](const wan::VaeTiling& t) { return vae.encode({video}, t)[0]; },
                        {
                            {{8, 8, 2}, 0.28, 0.10},    // measured 0.232, 0.083
                            {{8, 8, 4}, 0.20, 0.078},   // measured 0.164, 0.064
                            {{12, 16, 4}, 0.17, 0.038}, // measured 0.137, 0.031
                            {{16, 16, 8}, 0.067, 0.020} // measured 0.056, 0.016
                        });
}

BOOST_AUTO_TEST_CASE(shapes_equal_untiled_for_sizes_not_divisible_by_the_tile) {
  torch::NoGradGuard no_grad;
  auto& vae = golden_vae();
  const auto z = random_latent(2, 13, 11, 5); // 13 x 11 latent, tiles of 5 x 4
  const auto tiled = vae.decode({z}, wan::VaeTiling{5, 4, 1})[0];
  BOOST_TEST(tiled.sizes().vec() == std::vector<std::int64_t>({3, 5, 104, 88}), boost::test_tools::per_element());
  BOOST_TEST(tiled.sizes() == vae.decode({z})[0].sizes());
  BOOST_TEST(tiled.abs().max().item<double>() <= 1.0); // the wrapper clamps like decode()
  // a video whose size is not a multiple of 8: latent [H/8, W/8] like the untiled encoder
  torch::manual_seed(3);
  const auto video = torch::rand({3, 5, 100, 75}) * 2 - 1; // latent 12 x 9
  const auto enc = vae.encode({video}, wan::VaeTiling{5, 4, 2})[0];
  BOOST_TEST(enc.sizes().vec() == std::vector<std::int64_t>({16, 2, 12, 9}), boost::test_tools::per_element());
  BOOST_TEST(enc.sizes() == vae.encode({video})[0].sizes());
}

BOOST_AUTO_TEST_CASE(invalid_options_raise_config_error) {
  torch::NoGradGuard no_grad;
  auto& vae = golden_vae();
  const auto z = random_latent(1, 4, 4, 0);
  const auto video = torch::zeros({3, 1, 32, 32});
  const std::string size_id = "offload.wan.vae.tile_size", overlap_id = "offload.wan.vae.tile_overlap";
  expect_config_error([&] { vae.decode({z}, wan::VaeTiling{0, 8, 0}); }, size_id, {"found tile_latent_h 0", "positive"});
  expect_config_error([&] { vae.decode({z}, wan::VaeTiling{8, -2, 0}); }, size_id, {"tile_latent_w -2"});
  expect_config_error([&] { vae.encode({video}, wan::VaeTiling{0, 0, 0}); }, size_id, {"expected tile sizes > 0"});
  expect_config_error([&] { vae.decode({z}, wan::VaeTiling{8, 8, 8}); }, overlap_id, {"found overlap_latent 8", "smaller than the tile"});
  expect_config_error([&] { vae.decode({z}, wan::VaeTiling{8, 4, 4}); }, overlap_id, {"< 4"});
  expect_config_error([&] { vae.encode({video}, wan::VaeTiling{8, 8, -1}); }, overlap_id, {"overlap_latent -1"});
  expect_config_error([&] { vae.model->tiled_decode(z.unsqueeze(0), vae.scale(), wan::VaeTiling{8, 8, 9}); },
                      overlap_id, {});
  // a 4-d input to the raw model
  expect_config_error([&] { vae.model->tiled_decode(z, vae.scale(), wan::VaeTiling{2, 2, 1}); },
                      "offload.wan.vae.input_shape", {"5-d", "unsqueeze(0)"});
  // the planner validates too
  expect_config_error([] { (void)wan::decode_workspace_bytes(832, 480, 81, wan::VaeTiling{16, 16, 16}); }, overlap_id, {});
}

BOOST_AUTO_TEST_CASE(tiled_decode_workspace_scales_with_the_tile) {
  using W = wan::workspace_constants;
  // As the library rounds its modelled bytes (std::llround).
  auto rounded = [](double x) { return static_cast<std::int64_t>(std::llround(x)); };
  const int width = 832, height = 480, frames = 81;
  const double pixels = 832.0 * 480.0, video = 3.0 * frames * pixels * 4.0;
  const auto untiled = wan::decode_workspace_bytes(width, height, frames);
  BOOST_TEST(untiled == rounded(W::vae_bytes_per_pixel * pixels + video));

  const wan::VaeTiling tiling{}; // 32 x 32 latent = 256 x 256 pixels, overlap 8
  const auto tiled = wan::decode_workspace_bytes(width, height, frames, tiling);
  const double tile_px = 256.0 * 256.0;
  const double formula = W::vae_bytes_per_pixel * tile_px + video + 3.0 * frames * tile_px * 4.0 + pixels * 4.0;
  BOOST_TEST(tiled == rounded(formula));
  BOOST_TEST(tiled < untiled);
  BOOST_TEST_MESSAGE("vae_tiling workspace 832x480x81 decode: untiled " << untiled << " B ("
                     << untiled / 1073741824.0 << " GiB), tiled 32x32 latent overlap 8 " << tiled << " B ("
                     << tiled / 1073741824.0 << " GiB)");

  // a tile larger than the frame in one direction is clipped to the frame
  const auto tall = wan::decode_workspace_bytes(width, height, frames, wan::VaeTiling{100, 16, 4});
  const double tall_px = 480.0 * 128.0;
  BOOST_TEST(tall == rounded(W::vae_bytes_per_pixel * tall_px + video + 3.0 * frames * tall_px * 4.0 + pixels * 4.0));
  // a covering tile runs the untiled decode and is modelled as untiled
  BOOST_TEST(wan::decode_workspace_bytes(width, height, frames, wan::VaeTiling{60, 104, 8}) == untiled);

  // The encode: the input videos held, and tiled one tile of input plus the latent blend.
  const double latent = 16.0 * 21 * 60 * 104 * 4.0;
  BOOST_TEST(wan::encode_workspace_bytes(width, height, frames, 1) ==
             rounded(W::vae_bytes_per_pixel * pixels + video));
  BOOST_TEST(wan::encode_workspace_bytes(width, height, frames, 2) ==
             rounded(W::vae_bytes_per_pixel * pixels + 2 * video));
  const auto encode_tiled = wan::encode_workspace_bytes(width, height, frames, 2, tiling);
  BOOST_TEST(encode_tiled ==
             rounded(W::vae_bytes_per_pixel * tile_px + 2 * video + 3.0 * frames * tile_px * 4.0 + 2 * latent));
  BOOST_TEST(encode_tiled < wan::encode_workspace_bytes(width, height, frames, 2));
  BOOST_TEST(wan::encode_workspace_bytes(width, height, frames, 1, wan::VaeTiling{60, 104, 8}) ==
             wan::encode_workspace_bytes(width, height, frames, 1));
  // i2v and vace encode through the same tiles: their vae_encode stages carry it.
  for (const auto& [task, videos] : {std::pair{"i2v-14B", 1}, std::pair{"vace-1.3B", 2}}) {
    BOOST_TEST_CONTEXT(task) {
      wan::generation_shape e{task, width, height, frames, 40};
      const auto untiled_stages = wan::pipeline_stages(e);
      e.vae_tiling = tiling;
      const auto tiled_stages = wan::pipeline_stages(e);
      for (std::size_t i = 0; i < tiled_stages.size(); ++i)
        if (tiled_stages[i].name == "vae_encode") {
          BOOST_TEST(untiled_stages[i].workspace.at(0).bytes ==
                     wan::encode_workspace_bytes(width, height, frames, videos) + W::library_workspace_bytes);
          BOOST_TEST(tiled_stages[i].workspace.at(0).bytes ==
                     wan::encode_workspace_bytes(width, height, frames, videos, tiling) + W::library_workspace_bytes);
        }
    }
  }

  // t2v: pipeline_stages uses it for the decode stage only
  wan::generation_shape s{"t2v-1.3B", width, height, frames, 50};
  const auto plain = wan::pipeline_stages(s);
  s.vae_tiling = tiling;
  const auto with_tiling = wan::pipeline_stages(s);
  BOOST_TEST_REQUIRE(plain.size() == with_tiling.size());
  for (std::size_t i = 0; i < plain.size(); ++i) {
    BOOST_TEST_CONTEXT(plain[i].name) {
      BOOST_TEST_REQUIRE(plain[i].workspace.size() == with_tiling[i].workspace.size());
      for (std::size_t k = 0; k < plain[i].workspace.size(); ++k) {
        const auto before = plain[i].workspace[k].bytes, after = with_tiling[i].workspace[k].bytes;
        if (plain[i].name == "decode") {
          BOOST_TEST(plain[i].workspace[k].component == std::string(wan::VAE_COMPONENT));
          // The stages carry cuBLAS's workspace too (stages.hpp).
          BOOST_TEST(before == untiled + W::library_workspace_bytes);
          BOOST_TEST(after == tiled + W::library_workspace_bytes);
        } else {
          BOOST_TEST(before == after);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
