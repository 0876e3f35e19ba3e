#pragma once
/// \file
/// wan_generate's command line: the flags of the reference generate.py (Wan-Video/Wan2.1@9737cba)
/// plus offload's (--placement, --device, --trace, --dry_run, --gpu_memory, --report), their
/// defaults per task, and the checks that run before any weight is loaded.
///
/// Deviations from generate.py (see docs/cli.md):
///  * --frame_num must be 4n+1 (the reference only documents it); t2i: 1.
///  * Input files named by a flag are required where the task needs them (--image for i2v,
///    --first_frame/--last_frame for flf2v) instead of falling back to the repository's example
///    files; the example prompts are kept as the default --prompt.
///  * The distributed flags (--ulysses_size, --ring_size, --t5_fsdp, --dit_fsdp) and prompt
///    extension are not offered.

#include "size_frames.hpp"

#include <offload/placement_policy.hpp>
#include <offload/device.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace wan_cli {

/// Exit codes (docs/cli.md).
enum exit_code : int {
  exit_ok = 0,
  exit_usage = 1,        ///< a bad argument or input file, found before anything was loaded
  exit_does_not_fit = 2, ///< the plan does not fit the accelerator (--gpu_memory / the device)
  exit_failed = 3,       ///< loading or generating failed
};

// usage_error (a bad argument): size_frames.hpp.

/// The parsed command line, defaults filled in as generate.py's _validate_args does.
struct options {
  // generate.py
  std::string task = "t2v-14B";
  std::string size = "1280*720";
  int frame_num = 0;                  ///< default: 1 for t2i, else 81
  std::string ckpt_dir;
  bool offload_model = true;          ///< generate.py: None -> True on one process
  bool t5_cpu = false;
  bool vae_cpu = false;
  std::string save_file;              ///< default: generate.py's formatted name
  std::string src_video, src_mask;
  std::vector<std::string> src_ref_images;
  std::string prompt;                 ///< default: EXAMPLE_PROMPT[task]
  std::int64_t base_seed = -1;        ///< < 0: random
  std::string image, first_frame, last_frame;
  std::string sample_solver = "unipc";
  int sample_steps = 0;               ///< default: 40 for i2v, else 50
  double sample_shift = 0;            ///< default per task (5; 3 for i2v at 480p; 16 flf2v/vace)
  double sample_guide_scale = 5.0;
  // offload
  std::string placement_text;         ///< --placement as given ("" = none)
  offload::placement_policy policy;   ///< flags preset + --placement entries
  std::string device_text;            ///< --device as given ("" = none)
  offload::device_id device = offload::device_id::cuda(0);
  std::string trace_file;
  bool dry_run = false;
  std::optional<std::int64_t> gpu_memory;
  std::string report = "table";
  // the budget planner (docs/planner.md): --vram_budget chooses the policy
  std::optional<std::int64_t> vram_budget;   ///< --vram_budget: plan for this accelerator memory
  std::optional<std::int64_t> pinned_budget; ///< --pinned_budget (needs --vram_budget)
  std::optional<std::int64_t> host_budget;   ///< --host_budget (needs --vram_budget)
  std::string cost_model_file;               ///< --cost_model FILE (offload_calibrate); "" = H100 defaults
  std::optional<offload::tile_options> vae_tile; ///< --vae_tile N[:M] (needs --vram_budget)

  int width = 0, height = 0;          ///< SIZE_CONFIGS[size] (W*H)
};

/// Parses argv. Returns nullopt when --help was printed; throws usage_error on a bad argument.
std::optional<options> parse_command_line(int argc, char** argv);

/// "True"/"yes"/"1"... -> bool as generate.py's str2bool; throws usage_error otherwise.
bool str2bool(const std::string& flag, const std::string& value);

/// The default file name of generate.py: <task>_<size>_1_1_<prompt[:50]>_<YYYYmmdd_HHMMSS>.<mp4|png>
std::string default_save_file(const options& o);

/// True for the tasks that produce one image (t2i).
bool single_frame_task(const std::string& task);

} // namespace wan_cli
