#pragma once
/// \file
/// wan_bench: runs a Wan pipeline with random weights under several placement policies and measures
/// each run (stage times, device memory peaks, bytes moved, transfer time hidden behind compute).
/// Definitions: docs/benchmark.md.

#include "cli_devices.hpp"
#include "random_models.hpp"

#include <offload/device.hpp>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace wan_bench {

/// Exit codes.
enum exit_code : int {
  exit_ok = 0,
  exit_usage = 1,     ///< a bad argument, found before any model was built
  exit_failed = 2,    ///< a policy did not fit or failed (the others still ran and are reported)
  exit_mismatch = 3,  ///< --check: a measured figure differs from the plan's
};

using cli_common::usage_error;

/// The parsed command line.
struct options {
  std::string task = "t2v-1.3B";
  model_scale scale = model_scale::real;
  std::string size;                 ///< W*H as given; default: the task's first supported size
  int width = 0, height = 0;
  int frame_num = 81;
  int steps = 2;
  /// The steps of the generation the times are projected to (policy_result::projected_seconds):
  /// the task's default sampling steps (50; 40 for i2v) unless given; 0: no projection.
  std::optional<int> project_steps;
  std::vector<std::string> policies; ///< as given (default: resident)
  std::string device_text = "cuda:0";
  offload::device_id device = offload::device_id::cuda(0);
  std::optional<std::int64_t> gpu_memory; ///< the accelerator's capacity for the plans
  bool warmup = false;
  std::string json_file;
  std::int64_t seed = 42;
  int prompt_tokens = 40;           ///< as the Python harness: context of 40 tokens
  int neg_prompt_tokens = 120;      ///< and a negative context of 120
  std::int64_t bandwidth_bytes = std::int64_t{1} << 30;
  int threads = 0;                  ///< host threads (0: LibTorch's default)
  bool check = false;               ///< mock: measured peaks and bytes must equal the plan's
  bool onload_probe = false;        ///< after the policies: each component's whole onload and eviction, timed
  bool dry_run = false;             ///< check the arguments and policies, build nothing
};

/// Parses argv; nullopt when --help was printed. Throws usage_error.
std::optional<options> parse_command_line(int argc, char** argv);

/// Host -> device copy bandwidths the hidden fraction is computed with.
struct bandwidths {
  std::optional<double> pinned;   ///< bytes per second from page-locked memory
  std::optional<double> pageable; ///< bytes per second from ordinary memory
  std::string source;
};

/// Measures them on a CUDA device (a `bytes` copy, best of 5), or reads the mock's settings.
bandwidths measure_bandwidths(const options& o, offload::device_set& devices);

/// The measurements of one policy.
struct policy_result {
  std::string policy;    ///< as given
  std::string canonical; ///< placement_policy::str()
  bool ok = false;
  std::string error;     ///< when !ok: the first line of the error

  double prepare_seconds = 0;          ///< storage conversion and pinning of the masters (not timed in total)
  std::int64_t pinned_master_bytes = 0;    ///< bytes of the masters the policy pins
  std::int64_t predicted_pinned_bytes = 0; ///< what they take pinned, packed (component_info::pinned_bytes)
  std::int64_t pinned_host_bytes = 0;      ///< what they take in pinned memory (0 without CUDA)
  std::optional<std::int64_t> host_resident_prepared; ///< the process's resident bytes after that step (VmRSS)
  std::optional<std::int64_t> host_peak;   ///< its peak resident bytes from that step to the end of the run
  bool host_peak_reset = false;            ///< whether that peak was restarted for this policy (else: since start)
  double total_seconds = 0;            ///< the whole generate() call, from an all-home start
  double setup_seconds = 0;            ///< planning, pinning, initial placement, first stage's onloads
  std::map<std::string, double> stage_seconds; ///< per stage, from its entry to the next stage's entry
  std::vector<double> denoise_step_seconds;

  std::optional<std::int64_t> peak_allocated; ///< CUDA caching allocator
  std::optional<std::int64_t> peak_reserved;
  std::optional<std::int64_t> accounted_peak; ///< offload's ledger of the accelerator (mock: its peak)
  std::optional<std::int64_t> predicted_peak; ///< the plan's peak on the accelerator
  /// Per stage, the measured peak (as measured_peak(): the allocator's on CUDA, the mock's on mock)
  /// from the stage's entry, its onloads included, to the end of its scope, its evictions
  /// included; the largest over its repetitions. And the plan's peak of its steps.
  std::map<std::string, std::int64_t> stage_peak, predicted_stage_peak;

  std::int64_t bytes_to_device = 0, predicted_bytes_to_device = 0;
  std::int64_t bytes_streamed = 0, predicted_bytes_streamed = 0; ///< block streams, all components
  std::map<std::string, std::int64_t> streamed_by_component;
  std::int64_t bytes_to_host = 0, predicted_bytes_to_host = 0;

  double transfer_seconds = 0;          ///< bytes_to_device at the measured bandwidths
  std::optional<double> hidden_fraction;
  double denoise_transfer_seconds = 0;  ///< bytes copied from the first denoise step to decode
  std::optional<double> denoise_hidden_fraction;

  std::optional<double> time_ratio, peak_ratio, step_ratio; ///< against the resident run

  /// A generation of options::project_steps steps, from this run of fewer: every step but the last
  /// (which runs into decode: the DiT's eviction, the VAE's onload) repeats the same compute and the
  /// same copies, so total_seconds + (project_steps - steps) x their mean (steady_step_seconds;
  /// needs two steps or more). What the "total time" targets are about: a 2-step run
  /// weighs the fixed costs (text encode, onloads, decode) 25 times more than a 50-step one.
  std::optional<double> steady_step_seconds, projected_seconds;
  std::optional<double> projected_time_ratio; ///< projected_seconds against the resident run's

  /// The generated video, on the host (not reported: compared with the resident run's).
  at::Tensor output;
  /// Against the resident run's video: bit for bit (torch.equal), and the largest |difference|.
  std::optional<bool> identical_to_resident;
  std::optional<double> max_abs_diff_vs_resident;

  /// The measured peak the ratios use: the allocator's on CUDA, the mock's on mock.
  [[nodiscard]] std::optional<std::int64_t> measured_peak() const {
    return peak_allocated ? peak_allocated : accounted_peak;
  }
  [[nodiscard]] double mean_step_seconds() const;
};

/// One component moved whole to the accelerator from pinned masters and back, synchronized and
/// timed (--onload_probe): what a stage switch costs, against the measured pinned bandwidth.
struct onload_result {
  std::string component;
  bool ok = false;
  std::string error;               ///< when !ok: the first line of the error (e.g. it does not fit)
  std::int64_t bytes = 0;          ///< host -> device bytes of one onload (device::bytes_in)
  double pin_seconds = 0;          ///< packing its masters into pinned chunks (once, not in the onload)
  double onload_seconds = 0;       ///< place_on(accelerator) to the device's completion, best of the repeats
  double evict_seconds = 0;        ///< place_on(host) after it, best of the repeats
  std::int64_t bytes_to_host = 0;  ///< device -> host bytes of the evictions (expected 0: nothing copied back)
  std::optional<double> bytes_per_second;
  std::optional<double> fraction_of_pinned; ///< bytes_per_second / the measured pinned bandwidth
  /// The same onload as a cross-stage prefetch makes it (prefetch_onto: copies on the transfer
  /// stream, an event per copy; then finish_placement), to the device's completion, best of the repeats.
  double prefetch_seconds = 0;
  std::optional<double> prefetch_bytes_per_second;
  std::optional<double> prefetch_fraction_of_pinned;
};

/// Everything one invocation measured.
struct bench_report {
  options opts;
  std::string device_name;
  std::string torch_version;
  int host_threads = 0;
  std::int64_t dit_tokens = 0;
  std::map<std::string, std::int64_t> component_bytes;
  double build_seconds = 0;
  bool fast_init = false;
  bandwidths bandwidth;
  std::vector<policy_result> results;
  std::vector<onload_result> onloads; ///< --onload_probe
};

/// Runs one generation under `policy` and measures it (never throws for a failing policy: the
/// result says why).
policy_result run_policy(const options& o, const built_models& models, const std::string& policy,
                         offload::device_set& devices, const bandwidths& bw);

/// --onload_probe: each component of `models`, its masters pinned and not streamed, placed whole
/// on the accelerator and evicted `repeats` times, each move synchronized, then as many times
/// prefetched (prefetch_onto, finish_placement) and evicted; best times. Timed on the device set's
/// clock (a mock's is virtual: bytes / its bandwidth).
std::vector<onload_result> measure_onloads(const options& o, const built_models& models, offload::device_set& devices,
                                           const bandwidths& bw, int repeats = 3);

/// Fills the ratios of every result against the resident run (policy `resident`), if there is one,
/// the comparison of its video with the resident run's (once: the video is then released), and,
/// when `timed_transfers` (a real accelerator: copies take bytes / bandwidth of wall time), the
/// hidden fractions.
void compare_with_resident(std::vector<policy_result>& results, bool timed_transfers);

/// The table printed on stdout.
std::string table(const bench_report& r);
/// The JSON written by --json.
std::string json(const bench_report& r);
/// --check on a mock device: one line per figure that differs from the plan's (empty: all equal).
std::vector<std::string> check_against_plan(const bench_report& r);

} // namespace wan_bench
