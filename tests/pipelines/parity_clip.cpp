// Parity of the CLIP visual tower (pipelines/wan/clip.hpp) with the golden case clip_visual:
// preprocessing (bicubic resize, [-1,1] -> [0,1], CLIP normalisation), every recorded block and
// CLIPModel.visual for the i2v (one image) and flf2v (two images) calls.
#include "wan/clip.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <offload/state_dict.hpp>

#include "parity_harness.hpp"

namespace wt = wan::testing;

BOOST_AUTO_TEST_SUITE(parity_clip)

BOOST_AUTO_TEST_CASE(clip_visual) {
  wt::golden_case g("clip_visual");
  const auto ckpt = wt::checkpoint_path("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth");
  // vision_heads is the one hyper-parameter the weights do not hold
  const auto heads = wt::manifest_entry("checkpoints/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
                         .at("config").at("vision_heads").get<std::int64_t>();
  const auto cfg = wan::CLIPConfig::infer_from_weights(offload::load_checkpoint(ckpt), heads);
  wan::CLIPModel clip(torch::kFloat, torch::kCPU, ckpt, cfg);
  torch::NoGradGuard no_grad;

  const auto image0 = g.tensor("in.image.0");  // [3, H, W] in [-1, 1]
  const auto image1 = g.tensor("in.image.1");

  // preprocessing and every recorded block of the i2v call
  const auto pre = wan::clip::preprocess_videos({image0.unsqueeze(1)}, clip.model->config);
  g.expect_close("mid.preprocessed_i2v", pre);  // [1, 3, 224, 224]
  auto x = clip.model->visual->embeddings(pre);  // [1, 257, dim]
  for (std::int64_t j = 0;; ++j) {
    const auto name = fmt::format("mid.block.{}", j);
    if (!g.has(name)) break;
    x = clip.model->visual->transformer->ptr<wan::clip::AttentionBlockImpl>(static_cast<std::size_t>(j))
            ->forward(x);
    g.expect_close(name, x);
  }

  // the calls the pipelines make
  g.expect_close("out.features_i2v", clip.visual({image0.unsqueeze(1)}));
  g.expect_close("out.features_flf2v", clip.visual({image0.unsqueeze(1), image1.unsqueeze(1)}));
}

BOOST_AUTO_TEST_SUITE_END()
