// wan_generate: the dry run and the real run (see generate.hpp). The real run follows the
// reference generate.py (Wan-Video/Wan2.1@9737cba): build the task's pipeline from --ckpt_dir,
// generate, save with cache_video / cache_image's conversion.
#include "generate.hpp"

#include "cli_devices.hpp"
#include "media.hpp"
#include "progress.hpp"

#include "wan/budget.hpp"
#include "wan/components.hpp"
#include "wan/configs/configs.hpp"
#include "wan/first_last_frame2video.hpp"
#include "wan/image2video.hpp"
#include "wan/text2video.hpp"
#include "wan/vace.hpp"

#include <offload/budget_planner.hpp>
#include <offload/cost_model.hpp>
#include <offload/errors.hpp>
#include <offload/stage_scheduler.hpp>
#include <offload/units.hpp>

#include <torch/torch.h>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include <unistd.h>

namespace wan_cli {

namespace {

using steady = std::chrono::steady_clock;

double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}

void say(const std::string& line) { std::cerr << "[wan_generate] " << line << '\n' << std::flush; }

/// The first line of a message (offload errors may add a caret display).
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::string pipeline_kind(const std::string& task) {
  if (task.starts_with("i2v")) return "i2v";
  if (task.starts_with("flf2v")) return "flf2v";
  if (task.starts_with("vace")) return "vace";
  return "t2v"; // t2v and t2i
}

/// The accelerator of a dry run: --device, or mock:0 when none is given.
offload::device_id planning_accelerator(const options& o) {
  return o.device_text.empty() ? offload::device_id::mock(0) : o.device;
}

/// (width, height) the reference derives from an image of size (iw, ih) and a pixel budget
/// (image2video.py / first_last_frame2video.py: lat_h = round(sqrt(max_area * h / w) // 8 // 2 * 2)).
std::pair<int, int> size_from_image(int iw, int ih, std::int64_t max_area, const wan::configs::WanConfig& cfg) {
  const auto [lat_h, lat_w] = wan::detail::latent_hw(max_area, ih, iw, cfg.vae_stride, cfg.patch_size);
  return {static_cast<int>(lat_w * cfg.vae_stride[2]), static_cast<int>(lat_h * cfg.vae_stride[1])};
}

/// uint8 [F, H, W, 3] -> float [3, F, H, W] in [-1, 1] (what VaceVideoProcessor.load_video returns).
torch::Tensor video_to_tensor(const torch::Tensor& frames) {
  return frames.permute({3, 0, 1, 2}).to(torch::kFloat32).div(255).sub(0.5).div(0.5); // [3, F, H, W]
}

/// Adds the run's devices: the accelerator (with --gpu_memory as its capacity) and every device a
/// policy entry names. Checks that CUDA devices exist before anything is loaded.
void add_devices(offload::device_set& devices, const options& o) {
  cli_common::add_accelerator(devices, o.device, o.gpu_memory);
  for (const auto& [name, cp] : o.policy.components)
    if (cp.execute_on.k == offload::target::kind::named)
      cli_common::add_accelerator(devices, cp.execute_on.id, std::nullopt);
}

} // namespace

wan::generation_shape generation_shape_of(const options& o) {
  wan::generation_shape s;
  s.task = o.task;
  s.width = o.width;
  s.height = o.height;
  s.frame_num = o.frame_num;
  s.sampling_steps = o.sample_steps;
  s.ref_images = static_cast<int>(o.src_ref_images.size());
  // vae=...:tile=N (or --vae_tile with --vram_budget): the plan carries the tiled workspaces
  s.vae_tiling = o.vae_tile ? wan::vae_tiling_of(*o.vae_tile) : wan::vae_tiling_of(o.policy);
  const std::string& image = o.task.starts_with("i2v") ? o.image : o.task.starts_with("flf2v") ? o.first_frame : "";
  if (!image.empty()) {
    const auto [iw, ih] = image_size(image);
    const auto [w, h] = size_from_image(iw, ih, wan::configs::MAX_AREA_CONFIGS().at(o.size),
                                        wan::configs::wan_config(o.task));
    s.width = w;
    s.height = h;
  }
  return s;
}

namespace {

/// --vram_budget, --pinned_budget, --host_budget and --cost_model as the planner's options. The
/// planner may store the DiT in bf16 where that computes the same bits: on CUDA (autocast), and in
/// a dry run, which plans for a CUDA card; a run on a mock device computes in float32, so there it
/// keeps the native storage.
offload::budget_options budget_options_of(const options& o, offload::device_id accelerator) {
  offload::budget_options b;
  b.accelerator = accelerator;
  b.allow_exact_storage = o.dry_run || (!accelerator.is_host() && !accelerator.is_mock());
  b.budgets = {.device = o.vram_budget, .pinned = o.pinned_budget, .host = o.host_budget};
  if (!o.cost_model_file.empty()) b.cost = offload::cost_model::load(o.cost_model_file);
  return b;
}

/// The message of an offload error without its id.
std::string message_of(const offload::error& e) { return std::string(e.what()).substr(e.id().size() + 2); }

/// This machine's physical memory, or 0 where unknown. OFFLOAD_HOST_MEMORY (a size such as
/// `16GiB`) stands in for it, so that the warning below can be tested on any machine.
std::int64_t host_memory_bytes() {
  if (const char* v = std::getenv("OFFLOAD_HOST_MEMORY"); v && *v) return offload::parse_bytes(v);
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<std::int64_t>(pages) * page : 0;
}

/// Warns where the planner's choice needs more host memory than this machine has, or pins more
/// than half of it, and the user gave no budget for it (the planner then takes it as unlimited).
void warn_about_host_memory(const options& o, const offload::budget_plan& chosen) {
  const std::int64_t have = host_memory_bytes();
  if (have <= 0) return;
  if (!o.host_budget && chosen.host_peak_bytes > have)
    std::cerr << fmt::format("wan_generate: warning: the plan needs {} of host memory (the masters of every "
                             "model, and the workspace of stages on the host), and this machine has {}; give "
                             "--host_budget {} to plan within it\n",
                             offload::format_bytes(chosen.host_peak_bytes), offload::format_bytes(have),
                             offload::format_bytes(have));
  if (!o.pinned_budget && chosen.pinned_bytes > have / 2)
    std::cerr << fmt::format("wan_generate: warning: the plan pins {} of host memory, more than half of this "
                             "machine's {} (pinned pages cannot be swapped); give --pinned_budget {} or less to "
                             "plan within it\n",
                             offload::format_bytes(chosen.pinned_bytes), offload::format_bytes(have),
                             offload::format_bytes(have / 2));
}

/// --dry_run --vram_budget: the planner's choice, its predicted peaks and time.
int budget_dry_run(const options& o) {
  const auto shape = generation_shape_of(o);
  const auto accelerator = planning_accelerator(o);
  const auto header = fmt::format("{} {}x{}, {} frames, {} steps ({} DiT tokens), on {} with a budget of {}\n",
                                  o.task, shape.width, shape.height, shape.frame_num, shape.sampling_steps,
                                  wan::dit_tokens(shape), accelerator.str(), offload::format_bytes(*o.vram_budget));
  try {
    const auto chosen = wan::plan_generation(shape, budget_options_of(o, accelerator));
    warn_about_host_memory(o, chosen);
    if (o.report == "json") std::cout << chosen.json() << '\n';
    else std::cout << header << chosen.summary() << chosen.plan.table();
    std::cout << std::flush;
    return exit_ok;
  } catch (const offload::capacity_error& e) {
    if (o.report == "json")
      std::cout << fmt::format(R"({{"fits":false,"planner":{{"error":{{"id":{},"stage":{},"device":{},)"
                               R"("needed_bytes":{},"available_bytes":{},"message":{}}}}}}})",
                               offload::detail::json_string(e.id()), offload::detail::json_string(e.stage()),
                               offload::detail::json_string(e.device()), e.needed(), e.available(),
                               offload::detail::json_string(message_of(e)))
                << '\n';
    else std::cout << header << "  no placement fits\n";
    std::cout << std::flush;
    std::cerr << "wan_generate: does not fit: " << message_of(e) << '\n';
    return exit_does_not_fit;
  }
}

/// A run with --vram_budget: the planner chooses the policy before anything is loaded (with the
/// preset models' sizes in the reference's dtypes), and the run plans with it on --vram_budget.
options with_budget_placement(const options& given) {
  if (!given.vram_budget) return given;
  options o = given;
  const auto chosen = wan::plan_generation(generation_shape_of(o), budget_options_of(o, o.device));
  warn_about_host_memory(o, chosen);
  o.policy = chosen.plan.policy;
  o.gpu_memory = o.vram_budget;
  say(fmt::format("budget planner: policy '{}', predicted {:.1f} s, peak {} of {}", o.policy.str(),
                  chosen.predicted_seconds, offload::format_bytes(chosen.device_peak_bytes),
                  offload::format_bytes(*o.vram_budget)));
  return o;
}

} // namespace

int dry_run(const options& o) {
  if (o.vram_budget) return budget_dry_run(o);
  const auto shape = generation_shape_of(o);
  const auto components = wan::preset_components(o.task);
  const auto stages = wan::pipeline_stages(shape);
  offload::schedule_options opts;
  opts.accelerator = planning_accelerator(o);
  if (!opts.accelerator.is_host()) opts.devices.push_back({opts.accelerator, o.gpu_memory});
  const offload::plan plan = offload::schedule(stages, components, o.policy, opts);
  if (o.report == "json") {
    std::cout << plan.json() << '\n';
  } else {
    std::cout << fmt::format("{} {}x{}, {} frames, {} steps ({} DiT tokens), on {}{}\n", o.task, shape.width,
                             shape.height, shape.frame_num, shape.sampling_steps, wan::dit_tokens(shape),
                             opts.accelerator.str(),
                             o.gpu_memory ? fmt::format(" with {}", offload::format_bytes(*o.gpu_memory))
                                          : std::string(" (capacity unlimited)"));
    std::cout << plan.table();
  }
  std::cout << std::flush;
  if (!plan.fits()) {
    std::cerr << "wan_generate: does not fit: " << plan.failure_message() << '\n';
    return exit_does_not_fit;
  }
  return exit_ok;
}

/// The keyword arguments every pipeline shares (solver, steps, shift, guide scale, seed), from the flags.
template <class Params>
Params sampling_params(const options& o) {
  Params p;
  p.shift = o.sample_shift;
  p.sample_solver = o.sample_solver;
  p.sampling_steps = o.sample_steps;
  p.guide_scale = o.sample_guide_scale;
  p.seed = o.base_seed;
  return p;
}

int generate(const options& given) {
  const options o = with_budget_placement(given); // --vram_budget: the planner chooses the policy
  const auto& cfg = wan::configs::wan_config(o.task);
  const std::string kind = pipeline_kind(o.task);

  // Devices, then inputs: every check that can fail runs before weights are loaded.
  offload::device_set devices;
  add_devices(devices, o);
  const offload::device_id accelerator = o.device;

  at::Tensor image, first_frame, last_frame, src_video, src_mask;
  std::vector<at::Tensor> ref_images;
  try {
    if (kind == "i2v") image = read_image(o.image);
    if (kind == "flf2v") first_frame = read_image(o.first_frame), last_frame = read_image(o.last_frame);
    if (kind == "vace") {
      // VaceVideoProcessor (not ported): resample to the config's fps, cover-scale and center-crop
      // to the size, at most frame_num frames, then keep 4n+1 frames.
      const video_fit fit{o.width, o.height, static_cast<int>(cfg.sample_fps), o.frame_num};
      if (!o.src_video.empty()) src_video = read_video(o.src_video, fit);
      if (!o.src_mask.empty()) src_mask = read_video(o.src_mask, fit);
      if (src_video.defined()) {
        auto n = src_video.size(0);
        if (src_mask.defined()) n = std::min(n, src_mask.size(0));
        n = (n - 1) / 4 * 4 + 1;
        src_video = src_video.slice(0, 0, n);
        if (src_mask.defined()) src_mask = src_mask.slice(0, 0, n);
      }
      for (const auto& r : o.src_ref_images) ref_images.push_back(read_image(r));
    }
  } catch (const std::runtime_error& e) {
    throw usage_error(first_line(e.what()));
  }
  say(fmt::format("task {}, size {}, {} frames, {} steps ({} shift {}, guide scale {}), seed {}", o.task, o.size,
                  o.frame_num, o.sample_steps, o.sample_solver, o.sample_shift, o.sample_guide_scale,
                  o.base_seed));
  say(fmt::format("device {}{}, policy '{}' ({})", accelerator.str(),
                  o.gpu_memory ? fmt::format(" ({})", offload::format_bytes(*o.gpu_memory)) : std::string(),
                  o.policy.label(), o.policy.str()));
  if (const auto tiling = wan::vae_tiling_of(o.policy))
    say(fmt::format("vae: tiled encode/decode, {}x{} latent px tiles overlapping by {}: the video differs from "
                    "the untiled decode near tile seams (measured errors: docs/storage_and_tiling.md)",
                    tiling->tile_latent_h, tiling->tile_latent_w, tiling->overlap_latent));

  // Load every model on the host (configs from the checkpoint files).
  const auto t_load = steady::now();
  wan::component_options copts;
  if (accelerator.kind == offload::device_kind::cuda) copts.dtypes = wan::component_dtypes::reference(cfg);
  // A policy that stores the DiT's matmul weights in bf16 gets them so from the load on: the host
  // never holds the float32 DiT (the plan's host peak counts the stored masters).
  copts.dit_matmul_storage = wan::dit_matmul_storage_of(o.policy);
  const auto components =
      wan::WanComponents::load(kind, wan::component_paths::official(o.ckpt_dir, cfg), copts);
  std::string sizes;
  for (const auto& c : components->infos())
    sizes += fmt::format("{}{} {}", sizes.empty() ? "" : ", ", c.name, offload::format_bytes(c.bytes));
  say(fmt::format("loaded {} in {:.2f} s ({})", o.ckpt_dir, seconds_since(t_load), sizes));

  progress prog;
  const wan::execution exec{&devices, accelerator, o.policy,
                            [&](const offload::executor& ex) { prog.on_run_finished(ex); }};
  const auto observer = [&](std::string_view stage, int repetition, const offload::executor& ex) {
    prog.on_stage(stage, repetition, ex);
  };

  const auto t_gen = steady::now();
  torch::Tensor video; // [3, F, H, W] in [-1, 1]
  if (kind == "t2v") {
    wan::WanT2V pipe(o.task, components, exec);
    pipe.observer = observer;
    auto p = sampling_params<wan::t2v_params>(o);
    p.size = {o.width, o.height};
    p.frame_num = o.frame_num;
    video = pipe.generate(o.prompt, p);
  } else if (kind == "i2v") {
    wan::WanI2V pipe(o.task, components, exec);
    pipe.observer = observer;
    auto p = sampling_params<wan::i2v_params>(o);
    p.max_area = wan::configs::MAX_AREA_CONFIGS().at(o.size);
    p.frame_num = o.frame_num;
    video = pipe.generate(o.prompt, image, p);
  } else if (kind == "flf2v") {
    wan::WanFLF2V pipe(o.task, components, exec);
    pipe.observer = observer;
    auto p = sampling_params<wan::flf2v_params>(o);
    p.max_area = wan::configs::MAX_AREA_CONFIGS().at(o.size);
    p.frame_num = o.frame_num;
    video = pipe.generate(o.prompt, first_frame, last_frame, p);
  } else {
    wan::WanVace pipe(o.task, components, exec);
    pipe.observer = observer;
    std::vector<std::optional<torch::Tensor>> refs;
    for (const auto& r : ref_images) refs.emplace_back(wan::detail::image_to_tensor(r)); // [3, H, W]
    auto source = pipe.prepare_source(
        {src_video.defined() ? std::optional<torch::Tensor>(video_to_tensor(src_video)) : std::nullopt},
        {src_mask.defined() ? std::optional<torch::Tensor>(video_to_tensor(src_mask)) : std::nullopt},
        {refs}, o.frame_num, {o.width, o.height}, torch::kCPU);
    auto p = sampling_params<wan::vace_params>(o);
    video = pipe.generate(o.prompt, source.video, source.mask, source.ref_images, p);
  }
  prog.finish();
  say(fmt::format("generated [{}] in {:.2f} s", fmt::join(video.sizes(), ", "), seconds_since(t_gen)));
  for (const auto* d : devices.all())
    if (!d->id().is_host())
      say(fmt::format("{}: peak {} placed by offload", d->id().str(), offload::format_bytes(d->peak())));

  if (single_frame_task(o.task)) {
    write_png(to_uint8_frames(video, /*round=*/true)[0], o.save_file);
    say(fmt::format("wrote {} ({}x{})", o.save_file, video.size(3), video.size(2)));
  } else {
    say(write_video(to_uint8_frames(video, /*round=*/false), o.save_file, static_cast<int>(cfg.sample_fps)));
  }
  if (!o.trace_file.empty()) {
    std::ofstream(o.trace_file) << prog.trace().chrome_json() << '\n';
    say(fmt::format("wrote trace {}", o.trace_file));
  }
  return exit_ok;
}

} // namespace wan_cli
