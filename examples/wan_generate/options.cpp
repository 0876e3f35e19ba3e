// wan_generate's command line (see options.hpp; reference: Wan-Video/Wan2.1@9737cba, generate.py).
#include "options.hpp"

#include "cli_devices.hpp"
#include "media.hpp"

#include "wan/configs/configs.hpp"
#include "wan/stages.hpp"

#include <offload/component.hpp>

#include <offload/cost_model.hpp>
#include <offload/errors.hpp>
#include <offload/units.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cctype>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <random>
#include <tuple>

namespace wan_cli {

namespace fs = std::filesystem;

namespace {

/// generate.py's EXAMPLE_PROMPT[task]["prompt"].
const std::map<std::string, std::string, std::less<>>& example_prompts() {
  static const std::string cats =
      "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a "
      "spotlighted stage.";
  static const std::string vace =
      "在一个欢乐而充满节日气氛的场景中，穿着鲜艳红色春服的小女孩正与她的可爱卡通蛇嬉戏。她的春服上绣着金色吉祥图案，"
      "散发着喜庆的气息，脸上洋溢着灿烂的笑容。蛇身呈现出亮眼的绿色，形状圆润，宽大的眼睛让它显得既友善又幽默。小女孩"
      "欢快地用手轻轻抚摸着蛇的头部，共同享受着这温馨的时刻。周围五彩斑斓的灯笼和彩带装饰着环境，阳光透过洒在她们身上，"
      "营造出一个充满友爱与幸福的新年氛围。";
  static const std::map<std::string, std::string, std::less<>> m{
      {"t2v-1.3B", cats},
      {"t2v-14B", cats},
      {"t2i-14B", "一个朴素端庄的美人"},
      {"i2v-14B",
       "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. The "
       "fluffy-furred feline gazes directly at the camera with a relaxed expression. Blurred beach "
       "scenery forms the background featuring crystal-clear waters, distant green hills, and a blue "
       "sky dotted with white clouds. The cat assumes a naturally relaxed posture, as if savoring the "
       "sea breeze and warm sunlight. A close-up shot highlights the feline's intricate details and "
       "the refreshing atmosphere of the seaside."},
      {"flf2v-14B",
       "CG动画风格，一只蓝色的小鸟从地面起飞，煽动翅膀。小鸟羽毛细腻，胸前有独特的花纹，背景是蓝天白云，阳光明媚。"
       "镜跟随小鸟向上移动，展现出小鸟飞翔的姿态和天空的广阔。近景，仰视视角。"},
      {"vace-1.3B", vace},
      {"vace-14B", vace},
  };
  return m;
}

std::string join(const std::vector<std::string>& v, std::string_view sep = ", ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : std::string(sep)) + x;
  return s;
}

using cli_common::one_line;

void require_readable_file(const std::string& flag, const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw usage_error(fmt::format("{} '{}': file not found; give the path of an existing file", flag, path));
  if (fs::is_directory(path, ec))
    throw usage_error(fmt::format("{} '{}': is a directory; expected a file", flag, path));
}

void require_image(const std::string& flag, const std::string& path) {
  require_readable_file(flag, path);
  std::string why;
  if (!probe_image(path, &why))
    throw usage_error(fmt::format("{} '{}': cannot read it as an image ({}); give a PNG or JPEG file",
                                  flag, path, why));
}

void require_video(const std::string& flag, const std::string& path) {
  require_readable_file(flag, path);
  if (!find_on_path("ffmpeg") || !find_on_path("ffprobe"))
    throw usage_error(fmt::format("{} '{}': reading videos needs ffmpeg and ffprobe on PATH, found "
                                  "neither; install ffmpeg (apt-get install ffmpeg)",
                                  flag, path));
}

void require_parent_dir(const std::string& flag, const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::is_directory(parent, ec))
    throw usage_error(fmt::format("{} '{}': folder '{}' does not exist; create it or choose another path",
                                  flag, path, parent.string()));
}

std::int64_t random_seed() {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<std::uint64_t>(rd()) << 32) ^ rd());
  return std::uniform_int_distribution<std::int64_t>(0, std::numeric_limits<std::int64_t>::max())(gen);
}

void validate(options& o, const std::string& offload_model_text) {
  // --task, --size, --frame_num (size_frames.hpp).
  const bool i2v = o.task.starts_with("i2v"), flf2v = o.task.starts_with("flf2v"),
             vace = o.task.starts_with("vace");
  const frame_size wh = parse_size(o.task, o.size); // checks --task first
  o.width = wh.width;
  o.height = wh.height;
  o.frame_num = resolve_frame_num(o.task, o.frame_num);
  if (flf2v && o.frame_num != 81)
    throw usage_error(fmt::format("--frame_num {}: task {} needs 81 frames (the reference builds its first/last "
                                  "frame conditioning mask for 81); leave --frame_num out or give 81",
                                  o.frame_num, o.task));

  // Sampling defaults (generate.py _validate_args).
  if (o.sample_steps == 0) o.sample_steps = i2v ? 40 : 50;
  if (o.sample_steps < 1)
    throw usage_error(fmt::format("--sample_steps {}: expected at least 1", o.sample_steps));
  if (o.sample_shift == 0) {
    o.sample_shift = 5.0;
    if (i2v && (o.size == "832*480" || o.size == "480*832")) o.sample_shift = 3.0;
    else if (flf2v || vace) o.sample_shift = 16;
  }
  if (o.sample_shift < 0)
    throw usage_error(fmt::format("--sample_shift {}: expected a positive shift", o.sample_shift));
  if (o.sample_solver != "unipc" && o.sample_solver != "dpm++")
    throw usage_error(fmt::format("--sample_solver '{}': expected 'unipc' or 'dpm++'", o.sample_solver));
  if (o.base_seed < 0) o.base_seed = random_seed();
  if (o.prompt.empty()) o.prompt = example_prompts().at(o.task);

  // --offload_model (str2bool); None -> True on one process, as generate.py.
  if (!offload_model_text.empty()) o.offload_model = str2bool("--offload_model", offload_model_text);

  // --report, --gpu_memory, --device
  if (o.report != "table" && o.report != "json")
    throw usage_error(fmt::format("--report '{}': expected 'table' or 'json'", o.report));
  if (!o.device_text.empty()) o.device = cli_common::parse_device_flag(o.device_text);

  // The policy: the reference flags give the preset, --placement entries override.
  const offload::placement_policy flags =
      offload::wan_flags({.offload_model = o.offload_model, .t5_cpu = o.t5_cpu, .vae_cpu = o.vae_cpu});
  o.policy = flags;
  if (!o.placement_text.empty()) {
    try {
      (void)offload::parse_policy(o.placement_text); // errors point into the user's own text
    } catch (const offload::config_error& e) {
      throw usage_error(fmt::format("--placement: {}", one_line(e.what())));
    }
    // Presets named in --placement add to the flags' presets; its entries override both.
    o.policy = offload::parse_policy(flags.label() + "," + o.placement_text);
    o.policy.set_label(flags.label() + "," + o.placement_text);
    // Options the task's components cannot honour (`store` without a storage rule, `tile` on a
    // component that does not tile, `stream` without a block list) are argument errors too.
    try {
      for (const auto& c : offload::detail::stored_infos(wan::preset_components(o.task), o.policy)) {
        const auto& cp = o.policy.of(c.name);
        if (cp.stream.enabled() && !cp.execute_on.is_host() && !c.blocks)
          throw offload::config_error("offload.config.not_streamable",
                                      fmt::format("policy '{}' streams component '{}', which declares no block list "
                                                  "in task {}; drop ':stream' for it",
                                                  o.policy.label(), c.name, o.task));
      }
    } catch (const offload::config_error& e) {
      throw usage_error(fmt::format("--placement: {}", one_line(e.what())));
    }
  }

  // The budget planner: --vram_budget chooses the policy (docs/planner.md).
  if (o.vram_budget) {
    std::string chosen;
    if (!o.placement_text.empty()) chosen = "--placement";
    else if (o.t5_cpu) chosen = "--t5_cpu";
    else if (o.vae_cpu) chosen = "--vae_cpu";
    if (!chosen.empty())
      throw usage_error(fmt::format("--vram_budget chooses the placement, and {} gives one; drop {} or drop "
                                    "--vram_budget",
                                    chosen, chosen));
    if (o.gpu_memory)
      throw usage_error("--vram_budget is the accelerator's memory for the plan, and so is --gpu_memory; give one "
                        "of them");
    if (!o.device_text.empty() && o.device.is_host())
      throw usage_error("--vram_budget plans for an accelerator, and --device cpu has none; use --device cuda:N "
                        "or mock:N, or drop --vram_budget");
  } else if (o.pinned_budget || o.host_budget || !o.cost_model_file.empty()) {
    throw usage_error(fmt::format("{} is used by the budget planner: add --vram_budget SIZE (e.g. 8GiB)",
                                  o.pinned_budget ? "--pinned_budget" : o.host_budget ? "--host_budget" : "--cost_model"));
  } else if (o.vae_tile) {
    throw usage_error("--vae_tile tiles the VAE in the budget planner's policy: add --vram_budget SIZE, or give the "
                      "tiles in the placement (--placement 'vae=cuda:tile=32')");
  }
  if (!o.cost_model_file.empty()) {
    try {
      (void)offload::cost_model::load(o.cost_model_file);
    } catch (const offload::config_error& e) {
      throw usage_error(fmt::format("--cost_model: {}", one_line(e.what())));
    }
  }

  // Inputs per task (checked before anything is loaded).
  auto ignored = [&](const std::string& flag, const std::string& value) {
    if (!value.empty()) std::cerr << fmt::format("wan_generate: note: {} is not used by task {}; ignored\n", flag, o.task);
  };
  if (i2v) {
    if (o.image.empty() && !o.dry_run)
      throw usage_error(fmt::format("task {} needs an input image: give --image FILE (PNG or JPEG)", o.task));
  } else {
    ignored("--image", o.image);
  }
  if (!o.image.empty() && i2v) require_image("--image", o.image);
  if (flf2v) {
    if ((o.first_frame.empty() || o.last_frame.empty()) && !o.dry_run)
      throw usage_error(fmt::format("task {} needs two images: give --first_frame FILE and --last_frame FILE",
                                    o.task));
    if (!o.first_frame.empty()) require_image("--first_frame", o.first_frame);
    if (!o.last_frame.empty()) require_image("--last_frame", o.last_frame);
  } else {
    ignored("--first_frame", o.first_frame);
    ignored("--last_frame", o.last_frame);
  }
  if (vace) {
    if (!o.src_mask.empty() && o.src_video.empty())
      throw usage_error("--src_mask needs --src_video (the mask marks the frames of the source video to "
                        "regenerate); give both or neither");
    if (!o.src_video.empty()) require_video("--src_video", o.src_video);
    if (!o.src_mask.empty()) require_video("--src_mask", o.src_mask);
    for (const auto& r : o.src_ref_images) require_image("--src_ref_images", r);
  } else {
    ignored("--src_video", o.src_video);
    ignored("--src_mask", o.src_mask);
    ignored("--src_ref_images", join(o.src_ref_images, ","));
  }

  // Files and folders.
  if (!o.dry_run) {
    if (o.ckpt_dir.empty())
      throw usage_error("--ckpt_dir is missing: give the checkpoint folder (e.g. Wan2.1-T2V-1.3B), or add "
                        "--dry_run to plan without weights");
    std::error_code ec;
    if (!fs::is_directory(o.ckpt_dir, ec))
      throw usage_error(fmt::format("--ckpt_dir '{}': not a folder; give the checkpoint folder that holds "
                                    "config.json and the .pth files",
                                    o.ckpt_dir));
    if (o.save_file.empty()) o.save_file = default_save_file(o);
    require_parent_dir("--save_file", o.save_file);
  }
  if (!o.trace_file.empty()) require_parent_dir("--trace", o.trace_file);
}

} // namespace

bool single_frame_task(const std::string& task) { return task.starts_with("t2i"); }

bool str2bool(const std::string& flag, const std::string& value) {
  std::string v = value;
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
  if (v == "yes" || v == "true" || v == "t" || v == "y" || v == "1") return true;
  if (v == "no" || v == "false" || v == "f" || v == "n" || v == "0") return false;
  throw usage_error(fmt::format("{} '{}': boolean value expected (True/False, yes/no, 1/0)", flag, value));
}

std::string default_save_file(const options& o) {
  std::string p = o.prompt;
  for (auto& c : p)
    if (c == ' ' || c == '/') c = '_';
  // [:50] counts characters in Python: cut at 50 UTF-8 code points.
  std::size_t cut = 0, chars = 0;
  while (cut < p.size() && chars < 50) {
    const auto c = static_cast<unsigned char>(p[cut]);
    cut += c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    ++chars;
  }
  p = p.substr(0, std::min(cut, p.size()));
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d_%H%M%S", std::localtime(&now));
  return fmt::format("{}_{}_1_1_{}_{}{}", o.task, o.size, p, stamp, single_frame_task(o.task) ? ".png" : ".mp4");
}

namespace {

/// --vae_tile "N" or "N:M": tiles of N latent pixels overlapping by M (default N / 4).
offload::tile_options parse_vae_tile(const std::string& text) {
  auto number = [&](std::string_view part, std::string_view what) {
    int v = -1;
    const auto r = std::from_chars(part.data(), part.data() + part.size(), v);
    if (r.ec != std::errc() || r.ptr != part.data() + part.size() || part.empty())
      throw usage_error(fmt::format("--vae_tile '{}': expected {} (N or N:M, e.g. 32 or 32:8)", text, what));
    return v;
  };
  const auto colon = text.find(':');
  offload::tile_options t;
  t.size = number(std::string_view(text).substr(0, colon), "a tile size N in latent pixels");
  t.overlap = colon == std::string::npos ? t.size / 4 : number(std::string_view(text).substr(colon + 1), "an overlap M");
  if (t.size < 1 || t.size > 99999)
    throw usage_error(fmt::format("--vae_tile '{}': expected a tile size of 1 to 99999 latent pixels", text));
  if (t.overlap < 0 || t.overlap >= t.size)
    throw usage_error(fmt::format("--vae_tile '{}': expected an overlap smaller than the tile ({}), found {}", text,
                                  t.size, t.overlap));
  return t;
}

} // namespace

std::optional<options> parse_command_line(int argc, char** argv) {
  options o;
  CLI::App app{"Generate an image or video from a text prompt or image using Wan (C++ port of "
               "generate.py, placed by offload)",
               "wan_generate"};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.get_formatter()->column_width(34);
  std::string offload_model_text, ref_images, gpu_memory;
  std::string vram_budget, pinned_budget, host_budget, vae_tile;
  std::optional<int> frame_num, sample_steps;
  std::optional<double> sample_shift;

  app.add_option("--task", o.task, "The task to run: " + join(wan::configs::wan_tasks()))
      ->capture_default_str();
  app.add_option("--size", o.size,
                 "The area (width*height) of the generated video. For the I2V task, the aspect ratio of "
                 "the output video will follow that of the input image")
      ->capture_default_str();
  app.add_option("--frame_num", frame_num,
                 "How many frames to sample from a image or video. The number should be 4n+1 "
                 "(default 81; 1 for t2i)");
  app.add_option("--ckpt_dir", o.ckpt_dir, "The path to the checkpoint directory");
  app.add_option("--offload_model", offload_model_text,
                 "True/False: offload the models to CPU after each model forward, reducing GPU memory "
                 "usage (default True)");
  app.add_flag("--t5_cpu", o.t5_cpu, "Place the T5 model on CPU");
  app.add_flag("--vae_cpu", o.vae_cpu,
               "Keep the VAE on CPU between its stages (it comes to the GPU to encode/decode)");
  app.add_option("--save_file", o.save_file, "The file to save the generated image or video to");
  app.add_option("--src_video", o.src_video, "[vace] The file of the source video");
  app.add_option("--src_mask", o.src_mask, "[vace] The file of the source mask");
  app.add_option("--src_ref_images", ref_images,
                 "[vace] The file list of the source reference images, separated by ','");
  app.add_option("--prompt", o.prompt, "The prompt to generate the image or video from");
  app.add_option("--base_seed", o.base_seed, "The seed to use for generating the image or video (-1: random)")
      ->capture_default_str();
  app.add_option("--image", o.image, "[i2v] The image to generate the video from");
  app.add_option("--first_frame", o.first_frame, "[flf2v] The image (first frame) to generate the video from");
  app.add_option("--last_frame", o.last_frame, "[flf2v] The image (last frame) to generate the video from");
  app.add_option("--sample_solver", o.sample_solver, "The solver used to sample: unipc or dpm++")
      ->capture_default_str();
  app.add_option("--sample_steps", sample_steps, "The sampling steps (default 50; 40 for i2v)");
  app.add_option("--sample_shift", sample_shift,
                 "Sampling shift factor for flow matching schedulers (default 5; 3 for i2v at 480p; 16 "
                 "for flf2v and vace)");
  app.add_option("--sample_guide_scale", o.sample_guide_scale, "Classifier free guidance scale")
      ->capture_default_str();
  app.add_option("--placement", o.placement_text,
                 "Placement policy (docs/policies.md), e.g. 'offload_model+vae_cpu' or "
                 "'t5=cpu,vae=cuda:on_demand'; its entries override the flags' preset");
  app.add_option("--device", o.device_text,
                 "The accelerator: cuda:N, mock:N (simulated, runs on the host) or cpu (everything on "
                 "the host); default cuda:0 (mock:0 for --dry_run)");
  app.add_option("--trace", o.trace_file, "Write the executor's Chrome trace JSON to this file");
  app.add_flag("--dry_run", o.dry_run, "Print the placement plan and exit; needs no checkpoint");
  app.add_option("--gpu_memory", gpu_memory, "Memory of the accelerator for planning, e.g. 11.49GiB");
  app.add_option("--vram_budget", vram_budget,
                 "Choose the fastest placement whose plan fits this accelerator memory, e.g. 8GiB "
                 "(docs/planner.md); replaces --offload_model/--t5_cpu/--vae_cpu/--placement");
  app.add_option("--pinned_budget", pinned_budget,
                 "With --vram_budget: page-locked host memory the plan may pin for faster copies "
                 "(default unlimited)");
  app.add_option("--host_budget", host_budget,
                 "With --vram_budget: host memory for the models' masters and host-executed stages "
                 "(default unlimited)");
  app.add_option("--cost_model", o.cost_model_file,
                 "With --vram_budget: cost model file written by offload_calibrate (default: H100 figures)");
  app.add_option("--vae_tile", vae_tile,
                 "With --vram_budget: run the VAE in tiles of N latent pixels overlapping by M (N or N:M, "
                 "default M = N/4); the video differs slightly from an untiled one (docs/storage_and_tiling.md)");
  app.add_option("--report", o.report, "Plan report format: table or json")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return std::nullopt;
  } catch (const CLI::ParseError& e) {
    throw usage_error(fmt::format("{}; run 'wan_generate --help' for the flags", e.what()));
  }
  if (frame_num) {
    if (*frame_num == 0)
      throw usage_error("--frame_num 0: expected 4n+1 frames (1, 5, 9, ..., 81)");
    o.frame_num = *frame_num;
  }
  if (sample_steps) {
    if (*sample_steps <= 0)
      throw usage_error(fmt::format("--sample_steps {}: expected at least 1", *sample_steps));
    o.sample_steps = *sample_steps;
  }
  if (sample_shift) {
    if (*sample_shift <= 0)
      throw usage_error(fmt::format("--sample_shift {}: expected a positive shift", *sample_shift));
    o.sample_shift = *sample_shift;
  }
  if (!ref_images.empty()) {
    std::size_t start = 0;
    while (start <= ref_images.size()) {
      const auto comma = ref_images.find(',', start);
      const std::string item = ref_images.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (item.empty())
        throw usage_error(fmt::format("--src_ref_images '{}': empty file name in the list; separate files "
                                      "with ',' and no empty items",
                                      ref_images));
      o.src_ref_images.push_back(item);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (!gpu_memory.empty()) o.gpu_memory = cli_common::parse_size_flag("--gpu_memory", gpu_memory, "11.49GiB");
  for (auto [flag, text, target] : {std::tuple{"--vram_budget", &vram_budget, &o.vram_budget},
                                    std::tuple{"--pinned_budget", &pinned_budget, &o.pinned_budget},
                                    std::tuple{"--host_budget", &host_budget, &o.host_budget}})
    if (!text->empty())
      *target = cli_common::parse_size_flag(flag, *text, "8GiB", std::string_view(flag) == "--pinned_budget");
  if (!vae_tile.empty()) o.vae_tile = parse_vae_tile(vae_tile);
  validate(o, offload_model_text);
  return o;
}

} // namespace wan_cli
