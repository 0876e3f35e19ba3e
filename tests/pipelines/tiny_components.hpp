#pragma once
// The golden set's tiny models loaded as the components of one pipeline kind ("t2v", "i2v",
// "flf2v", "vace"), once per process, and one tiny generation of each pipeline: shared by the
// pipeline, soak and fault-injection tests.
#include "wan/first_last_frame2video.hpp"
#include "wan/vace.hpp"

#include <torch/torch.h>

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "parity_harness.hpp"

namespace wan::testing {

/// A fresh load (tests that change the components, e.g. convert their storage dtype), the DiT's
/// matmul weights loaded in `dit_matmul_storage` when given (component_options).
inline std::shared_ptr<wan::WanComponents> load_tiny_components(const std::string& kind,
                                                               std::optional<torch::Dtype> dit_matmul_storage = {}) {
  wan::component_options o;
  o.dit_matmul_storage = dit_matmul_storage;
  // The tiny CLIP's head count (not in its weights) from the golden manifest.
  o.clip_vision_heads = manifest_entry("checkpoints/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
                            .at("config").at("vision_heads").get<int64_t>();
  wan::component_paths p;
  p.t5_checkpoint = checkpoint_path("models_t5_umt5-xxl-enc-bf16.pth");
  p.vae_checkpoint = checkpoint_path("Wan2.1_VAE.pth");
  if (kind == "i2v" || kind == "flf2v")
    p.clip_checkpoint = checkpoint_path("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth");
  p.dit_dir = checkpoint_path(kind);
  return wan::WanComponents::load(kind, p, o);
}

/// Loaded once per process and shared: tests must leave them as they found them.
inline std::shared_ptr<wan::WanComponents> tiny_components(const std::string& kind) {
  static std::map<std::string, std::shared_ptr<wan::WanComponents>> cache;
  if (auto it = cache.find(kind); it != cache.end()) return it->second;
  return cache[kind] = load_tiny_components(kind);
}

/// Runs the pipeline of `kind` on a tiny problem; returns the video.
inline torch::Tensor tiny_generate(const std::string& kind, const wan::execution& exec,
                                   const wan::stage_observer& observer = {},
                                   std::shared_ptr<wan::WanComponents> given = nullptr,
                                   const wan::recorder& record = {}) {
  auto comps = given ? given : tiny_components(kind);
  const auto prompt = torch::tensor({17, 250, 3, 99, 1}, torch::kLong);
  const auto neg = torch::tensor({42, 7, 1}, torch::kLong);
  if (kind == "t2v") {
    wan::WanT2V pipe("t2v-1.3B", comps, exec);
    pipe.observer = observer;
    pipe.record = record;
    wan::t2v_params p;
    p.size = {32, 32};
    p.frame_num = 5;
    p.sampling_steps = 2;
    p.seed = 7;
    return pipe.generate(prompt, neg, p);
  }
  if (kind == "i2v") {
    wan::WanI2V pipe("i2v-14B", comps, exec);
    pipe.observer = observer;
    pipe.record = record;
    wan::i2v_params p;
    p.max_area = 32 * 32;
    p.frame_num = 5;
    p.sampling_steps = 2;
    p.seed = 8;
    auto gen = at::detail::createCPUGenerator(4);
    auto img = torch::randint(0, 256, {30, 34, 3}, gen, torch::TensorOptions().dtype(torch::kByte));
    return pipe.generate(prompt, neg, img, p);
  }
  if (kind == "flf2v") {
    wan::WanFLF2V pipe("flf2v-14B", comps, exec);
    pipe.observer = observer;
    pipe.record = record;
    wan::flf2v_params p;
    p.max_area = 16 * 16;
    p.sampling_steps = 2;
    p.seed = 9;
    auto gen = at::detail::createCPUGenerator(5);
    auto first = torch::randint(0, 256, {16, 16, 3}, gen, torch::TensorOptions().dtype(torch::kByte));
    auto last = torch::randint(0, 256, {16, 16, 3}, gen, torch::TensorOptions().dtype(torch::kByte));
    return pipe.generate(prompt, neg, first, last, p);
  }
  wan::WanVace pipe("vace-1.3B", comps, exec);
  pipe.observer = observer;
  pipe.record = record;
  wan::vace_params p;
  p.sampling_steps = 2;
  p.seed = 10;
  auto gen = at::detail::createCPUGenerator(6);
  auto frames = torch::rand({3, 5, 32, 32}, gen) * 2 - 1;
  auto mask = (torch::rand({1, 5, 32, 32}, gen) > 0.5).to(torch::kFloat32);
  auto ref = torch::rand({3, 1, 32, 32}, gen) * 2 - 1;
  return pipe.generate(prompt, neg, {frames}, {mask}, {{ref}}, p);
}

} // namespace wan::testing
