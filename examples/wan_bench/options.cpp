// wan_bench's command line (see bench.hpp and docs/benchmark.md).
#include "bench.hpp"

#include "wan/configs/configs.hpp"
#include "wan/stages.hpp"

#include <offload/errors.hpp>
#include <offload/placement_policy.hpp>
#include <offload/units.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

namespace wan_bench {

namespace {

using cli_common::one_line;

/// The task's default --size: 1280*720 where the task supports it, else 832*480.
std::string default_size(const std::string& task) {
  const auto& sizes = wan::configs::SUPPORTED_SIZES();
  const auto it = sizes.find(task);
  if (it != sizes.end() && std::find(it->second.begin(), it->second.end(), "1280*720") != it->second.end())
    return "1280*720";
  return "832*480";
}

void validate(options& o) {
  try {
    (void)pipeline_kind(o.task);
  } catch (const offload::config_error& e) {
    throw usage_error(one_line(std::string(e.what()).substr(e.id().size() + 2))); // without the id
  }
  if (o.size.empty()) o.size = default_size(o.task);
  try {
    std::tie(o.width, o.height) = wan::parse_size(o.size);
  } catch (const offload::config_error& e) {
    throw usage_error(fmt::format("--size '{}': {}", o.size, one_line(e.what())));
  }
  if (o.width <= 0 || o.height <= 0 || o.width % 16 != 0 || o.height % 16 != 0)
    throw usage_error(fmt::format("--size '{}': expected a width and a height that are positive multiples of 16 "
                                  "(the VAE's stride 8 times the DiT's patch 2), e.g. 832*480 or 64*64",
                                  o.size));
  if (o.frame_num < 1 || (o.frame_num - 1) % 4 != 0)
    throw usage_error(fmt::format("--frame_num {}: expected 4n+1 frames (1, 5, 9, ..., 81)", o.frame_num));
  if (o.steps < 1) throw usage_error(fmt::format("--steps {}: expected at least 1", o.steps));
  if (!o.project_steps) o.project_steps = pipeline_kind(o.task) == "i2v" ? 40 : 50; // generate.py's sample_steps
  if (*o.project_steps < 0)
    throw usage_error(fmt::format("--project_steps {}: expected 0 (no projection) or more", *o.project_steps));
  if (o.prompt_tokens < 1 || o.neg_prompt_tokens < 1)
    throw usage_error("--prompt_tokens / --neg_prompt_tokens: expected at least 1 token each");
  if (o.policies.empty()) o.policies.push_back("resident");
  std::string converted_by; // the first policy that converts masters (store=)
  for (const auto& p : o.policies) {
    offload::placement_policy policy;
    try {
      policy = offload::parse_policy(p);
    } catch (const offload::config_error& e) {
      throw usage_error(fmt::format("--policy: {}", one_line(e.what())));
    }
    bool converts = false;
    for (const auto& [name, cp] : policy.components) converts = converts || cp.store != offload::storage_dtype::native;
    if (converts && converted_by.empty()) converted_by = p;
    else if (!converts && !converted_by.empty())
      std::cerr << fmt::format("wan_bench: note: '{}' runs after '{}', whose store= converted the masters for good "
                               "(one-way): it runs with them converted; list store= policies last\n",
                               p, converted_by);
  }
  o.device = cli_common::parse_device_flag(o.device_text);
  if (o.device.kind == offload::device_kind::cuda) cli_common::require_cuda_device(o.device);
  if (o.check && !o.device.is_mock())
    throw usage_error(fmt::format("--check compares a mock device's accounting with the plans; found --device {}: "
                                  "use --device mock:0",
                                  o.device.str()));
  if (o.gpu_memory && o.device.is_host())
    throw usage_error("--gpu_memory sizes the accelerator, and --device cpu has none; drop one of them");
  if (o.bandwidth_bytes < (std::int64_t{1} << 20))
    throw usage_error(fmt::format("--bandwidth_bytes {}: expected at least 1 MiB", o.bandwidth_bytes));
  if (!o.json_file.empty()) {
    const auto parent = std::filesystem::path(o.json_file).parent_path();
    std::error_code ec;
    if (!parent.empty() && !std::filesystem::is_directory(parent, ec))
      throw usage_error(fmt::format("--json '{}': folder '{}' does not exist; create it or choose another path",
                                    o.json_file, parent.string()));
  }
  if (o.threads < 0) throw usage_error(fmt::format("--threads {}: expected 0 (default) or more", o.threads));
}

} // namespace

std::optional<options> parse_command_line(int argc, char** argv) {
  options o;
  CLI::App app{"Benchmark a Wan pipeline with random weights under placement policies: stage times, device "
               "memory peaks, bytes moved and transfer time hidden behind compute (docs/benchmark.md)",
               "wan_bench"};
  app.get_formatter()->column_width(30);
  std::string scale = "real", gpu_memory, bandwidth = "1GiB";

  app.add_option("--task", o.task, "t2v-1.3B, t2v-14B, t2i-14B or i2v-14B")->capture_default_str();
  app.add_option("--scale", scale,
                 "real: the task's preset model sizes; tiny: the same structure with small widths (seconds on "
                 "a CPU)")
      ->capture_default_str();
  app.add_option("--size", o.size, "width*height (default: 1280*720 where the task supports it, else 832*480)");
  app.add_option("--frame_num", o.frame_num, "frames, 4n+1")->capture_default_str();
  app.add_option("--steps", o.steps, "denoising steps per generation")->capture_default_str();
  app.add_option("--project_steps", o.project_steps,
                 "project each time to a generation of this many steps (default: the task's sampling steps, 50; "
                 "40 for i2v; 0: none)");
  app.add_option("--policy", o.policies,
                 "a placement policy (docs/policies.md); repeat for several (default: resident)");
  app.add_option("--device", o.device_text, "cuda:N, mock:N (simulated, runs on the host) or cpu")
      ->capture_default_str();
  app.add_option("--gpu_memory", gpu_memory, "the accelerator's capacity for the plans, e.g. 24GiB (default: unlimited)");
  app.add_flag("--warmup", o.warmup, "run one untimed generation with the first policy first");
  app.add_flag("--onload_probe", o.onload_probe,
               "after the policies, time each component's whole onload from pinned masters and its eviction");
  app.add_option("--json", o.json_file, "also write the results as JSON to this file");
  app.add_option("--seed", o.seed, "seed of the random prompt, image and noise")->capture_default_str();
  app.add_option("--prompt_tokens", o.prompt_tokens, "length of the random prompt in tokens")->capture_default_str();
  app.add_option("--neg_prompt_tokens", o.neg_prompt_tokens, "length of the random negative prompt")
      ->capture_default_str();
  app.add_option("--bandwidth_bytes", bandwidth, "size of the copy that measures host -> device bandwidth")
      ->capture_default_str();
  app.add_option("--threads", o.threads, "host threads for LibTorch (0: its default)")->capture_default_str();
  app.add_flag("--dry_run", o.dry_run,
               "check the arguments and print each policy's canonical form; builds and runs nothing");
  app.add_flag("--check", o.check,
               "mock only: exit 3 unless every policy's peak and bytes moved equal its plan's");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return std::nullopt;
  } catch (const CLI::ParseError& e) {
    throw usage_error(fmt::format("{}; run 'wan_bench --help' for the flags", e.what()));
  }
  if (scale == "real") o.scale = model_scale::real;
  else if (scale == "tiny") o.scale = model_scale::tiny;
  else throw usage_error(fmt::format("--scale '{}': expected 'real' or 'tiny'", scale));
  if (!gpu_memory.empty()) o.gpu_memory = cli_common::parse_size_flag("--gpu_memory", gpu_memory, "24GiB");
  o.bandwidth_bytes = cli_common::parse_size_flag("--bandwidth_bytes", bandwidth, "1GiB");
  validate(o);
  return o;
}

} // namespace wan_bench
