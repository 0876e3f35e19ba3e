#pragma once
// The golden set's tiny models loaded as the components of one pipeline kind ("t2v", "i2v",
// "flf2v", "vace"), once per process: shared by the pipeline, soak and fault-injection tests.
#include "wan/components.hpp"

#include <map>
#include <memory>
#include <string>

#include "parity_harness.hpp"

namespace wan::testing {

inline std::shared_ptr<wan::WanComponents> tiny_components(const std::string& kind) {
  static std::map<std::string, std::shared_ptr<wan::WanComponents>> cache;
  if (auto it = cache.find(kind); it != cache.end()) return it->second;
  wan::component_options o;
  // The tiny CLIP's head count (not in its weights) from the golden manifest.
  o.clip_vision_heads = manifest_entry("checkpoints/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
                            .at("config").at("vision_heads").get<int64_t>();
  wan::component_paths p;
  p.t5_checkpoint = checkpoint_path("models_t5_umt5-xxl-enc-bf16.pth");
  p.vae_checkpoint = checkpoint_path("Wan2.1_VAE.pth");
  if (kind == "i2v" || kind == "flf2v")
    p.clip_checkpoint = checkpoint_path("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth");
  p.dit_dir = checkpoint_path(kind);
  return cache[kind] = wan::WanComponents::load(kind, p, o);
}

} // namespace wan::testing
