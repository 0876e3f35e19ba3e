// Wan generations for the budget planner (see budget.hpp for the compute model's derivation).
#include "wan/budget.hpp"

#include "wan/clip_size.hpp"
#include "wan/configs/configs.hpp"
#include "wan/model.hpp"
#include "wan/t5.hpp"

#include <offload/errors.hpp>
#include <offload/units.hpp>

#include <fmt/format.h>

#include <algorithm>

namespace wan {

namespace {

bool is_vace_task(std::string_view task) { return task.starts_with("vace"); }

/// The tile size (latent pixels) the advice tries when nothing fits untiled.
constexpr int advice_tile_latent = 32;

} // namespace

std::vector<stage_work> stage_flops(const generation_shape& s) {
  using C = compute_constants;
  const auto& cfg = configs::wan_config(s.task);
  const auto stages = pipeline_stages(s); // validates the shape
  const double t5 = static_cast<double>(parameter_count(T5Config::umt5_xxl()));
  const double clip = static_cast<double>(clip::parameter_count(CLIPConfig::clip_xlm_roberta_vit_h_14()));
  const double dit = static_cast<double>(parameter_count(model_config(s.task)));
  const double L = static_cast<double>(dit_tokens(s));
  const double d = static_cast<double>(cfg.dim), n = static_cast<double>(cfg.num_layers);
  const double pixel_frames = static_cast<double>(s.width) * s.height * s.frame_num;
  const double images = s.task.starts_with("flf2v") ? 2 : 1;
  std::vector<stage_work> out;
  for (const auto& st : stages) {
    double f = 0;
    if (st.name == "text_encode") f = 2 * 2 * t5 * C::text_tokens;
    else if (st.name == "clip_encode") f = images * 2 * clip * C::clip_tokens;
    else if (st.name == "vae_encode") f = (is_vace_task(s.task) ? 2 : 1) * C::vae_flops_per_pixel_frame * pixel_frames;
    else if (st.name == "denoise") f = 2 * (2 * dit * L + 4 * L * L * d * n + 4 * L * C::text_tokens * d * n);
    else if (st.name == "decode") f = C::vae_flops_per_pixel_frame * pixel_frames;
    out.push_back({st.name, f});
  }
  return out;
}

std::vector<offload::stage> timed_pipeline_stages(const generation_shape& shape, const offload::cost_model& cost) {
  auto stages = pipeline_stages(shape);
  const auto work = stage_flops(shape);
  for (std::size_t i = 0; i < stages.size(); ++i) stages[i].seconds = work[i].flops / cost.accelerator_flops_per_second;
  return stages;
}

offload::tile_options tile_options_of(const VaeTiling& tiling) {
  tiling.validate();
  if (tiling.tile_latent_h != tiling.tile_latent_w)
    throw offload::config_error(
        "offload.wan.budget.tiling",
        fmt::format("the budget planner tiles the VAE through the policy option 'vae=...:tile=N:overlap=M' (square "
                    "tiles); found tiles of {}x{} latent pixels: use square tiles",
                    tiling.tile_latent_h, tiling.tile_latent_w));
  return {static_cast<int>(tiling.tile_latent_h), static_cast<int>(tiling.overlap_latent)};
}

namespace {

bool fits(const generation_shape& shape, const std::vector<offload::component_info>& comps,
          const offload::budget_options& options) {
  try {
    (void)offload::plan_for_budget(timed_pipeline_stages(shape, options.cost), comps, options);
    return true;
  } catch (const offload::capacity_error&) {
    return false;
  }
}

} // namespace

offload::budget_plan plan_generation(const generation_shape& shape, const offload::budget_options& given) {
  const auto comps = preset_components(shape.task);
  offload::budget_options options = given;
  if (shape.vae_tiling) options.tiles[std::string(VAE_COMPONENT)] = tile_options_of(*shape.vae_tiling);
  try {
    return offload::plan_for_budget(timed_pipeline_stages(shape, options.cost), comps, options);
  } catch (const offload::capacity_error& e) {
    // Wan advice: the largest frame count at this size, the largest smaller supported size at this
    // frame count, that fit the same budgets.
    std::string advice;
    for (int f = shape.frame_num - 4; f >= 1; f -= 4) {
      generation_shape smaller = shape;
      smaller.frame_num = f;
      if (fits(smaller, comps, options)) {
        advice += fmt::format("; {} frames (of {}) fit at {}x{}", f, shape.frame_num, shape.width, shape.height);
        break;
      }
    }
    std::vector<std::pair<int, int>> sizes;
    if (const auto it = configs::SUPPORTED_SIZES().find(shape.task); it != configs::SUPPORTED_SIZES().end())
      for (const auto& text : it->second) {
        const auto [w, h] = configs::SIZE_CONFIGS().at(text);
        if (w * h < static_cast<std::int64_t>(shape.width) * shape.height)
          sizes.emplace_back(static_cast<int>(w), static_cast<int>(h));
      }
    // Largest area first; of equal areas, the shape's orientation first.
    const bool landscape = shape.width >= shape.height;
    std::stable_sort(sizes.begin(), sizes.end(), [&](const auto& a, const auto& b) {
      if (a.first * a.second != b.first * b.second) return a.first * a.second > b.first * b.second;
      return ((a.first >= a.second) == landscape) > ((b.first >= b.second) == landscape);
    });
    for (const auto& [w, h] : sizes) {
      generation_shape smaller = shape;
      smaller.width = w;
      smaller.height = h;
      if (fits(smaller, comps, options)) {
        advice += fmt::format("; size {}*{} fits with {} frames", w, h, shape.frame_num);
        break;
      }
    }
    if (advice.empty())
      advice = fmt::format("; no smaller frame count or supported size of task {} fits these budgets", shape.task);
    // Tiles change the video, so the planner never chooses them; say when they would fit.
    if (!shape.vae_tiling) {
      generation_shape tiled = shape;
      tiled.vae_tiling = VaeTiling::square(advice_tile_latent, advice_tile_latent / 4);
      offload::budget_options with_tiles = options;
      with_tiles.tiles[std::string(VAE_COMPONENT)] = tile_options_of(*tiled.vae_tiling);
      if (fits(tiled, comps, with_tiles))
        advice += fmt::format("; the VAE run in tiles fits (policy option 'vae=...:tile={}:overlap={}'; tiles change "
                              "the video slightly: docs/storage_and_tiling.md)",
                              advice_tile_latent, advice_tile_latent / 4);
    }
    const std::string what = e.what();
    throw offload::capacity_error(e.id(),
                                  fmt::format("task {} at {}x{}, {} frames: {}{}", shape.task, shape.width,
                                              shape.height, shape.frame_num, what.substr(e.id().size() + 2), advice),
                                  e.device(), e.stage(), e.needed(), e.available());
  }
}

} // namespace wan
