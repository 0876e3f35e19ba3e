// wan_bench: a Wan pipeline with random weights at its real sizes (or a tiny scale), run under each
// given placement policy and measured: per-stage wall time, device memory peaks against the plan's,
// bytes moved and the share of transfer time hidden behind compute, with ratios against the resident
// run. Prints a table, writes JSON with --json. Usage and definitions: docs/benchmark.md.
//
//   wan_bench --task t2v-1.3B --size 832*480 --frame_num 81 --steps 2 --device cuda:0 \
//       --policy resident --policy offload_model+t5_cpu --json bench.json
#include "bench.hpp"
#include "cuda_stats.hpp"

#include "wan/configs/configs.hpp"
#include "wan/stages.hpp"

#include <offload/errors.hpp>
#include <offload/units.hpp>

#include <ATen/Parallel.h>
#include <torch/version.h>

#include <fmt/format.h>

#include <exception>
#include <fstream>
#include <iostream>

namespace {

using namespace wan_bench;

void say(const std::string& line) { std::cerr << "[wan_bench] " << line << '\n' << std::flush; }

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

/// --json: the report so far (rewritten after every policy, so a run stopped by a time limit leaves
/// the policies it finished).
void write_json(const bench_report& r) {
  if (r.opts.json_file.empty()) return;
  std::ofstream f(r.opts.json_file);
  f << json(r) << '\n';
  if (!f)
    throw offload::config_error("offload.wan_bench.json",
                                fmt::format("--json '{}': cannot write the file; check that its folder exists and "
                                            "is writable",
                                            r.opts.json_file));
}

/// --dry_run: the arguments and policies are valid; each policy's canonical form.
int dry_run(const options& o) {
  for (const auto& p : o.policies)
    std::cout << fmt::format("{}\t{}\n", p, offload::parse_policy(p).str());
  return exit_ok;
}

int run(const options& o) {
  if (o.dry_run) return dry_run(o);
  if (o.threads > 0) at::set_num_threads(o.threads);
  bench_report r;
  r.opts = o;
  r.torch_version = fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
  r.host_threads = at::get_num_threads();
  r.dit_tokens = wan::dit_tokens({.task = o.task, .width = o.width, .height = o.height, .frame_num = o.frame_num,
                                  .sampling_steps = o.steps});

  offload::device_set devices;
  switch (o.device.kind) {
    case offload::device_kind::cuda: {
      cli_common::add_accelerator(devices, o.device, o.gpu_memory);
      const auto name = cuda_device_name(o.device.index);
      r.device_name = name.empty() ? std::string("CUDA device (name not read: built without the CUDA headers)") : name;
      if (!cuda_stats_available())
        say("this build reads no CUDA allocator statistics (OFFLOAD_HAS_CUDA_ALLOCATOR_STATS is 0): peaks are "
            "offload's accounting only");
      break;
    }
    case offload::device_kind::mock: {
      cli_common::add_accelerator(devices, o.device, o.gpu_memory);
      r.device_name = fmt::format("simulated accelerator, capacity {}",
                                  offload::format_bytes(o.gpu_memory.value_or(cli_common::unlimited_mock_capacity)));
      break;
    }
    case offload::device_kind::cpu: r.device_name = "the host only"; break;
  }

  model_request request{o.task, o.scale, {}};
  if (o.device.kind == offload::device_kind::cuda)
    request.dtypes = wan::component_dtypes::reference(wan::configs::wan_config(o.task));
  say(fmt::format("building the {} components of {} with random weights ({} scale)...", pipeline_kind(o.task),
                  o.task, o.scale == model_scale::tiny ? "tiny" : "real"));
  const built_models models = build_models(request);
  r.build_seconds = models.seconds;
  r.fast_init = models.fast_init;
  for (const auto& c : models.components->infos()) r.component_bytes[c.name] = c.bytes;
  say(fmt::format("built in {:.2f} s{}", models.seconds,
                  models.fast_init ? std::string(" (parallel initialisation)")
                                   : fmt::format(" (serial initialisation: {})", fast_init::unavailable_reason())));

  r.bandwidth = measure_bandwidths(o, devices);
  say(fmt::format("host -> device: pinned {:.2f} GB/s, pageable {:.2f} GB/s ({})", r.bandwidth.pinned.value_or(0) / 1e9,
                  r.bandwidth.pageable.value_or(0) / 1e9, r.bandwidth.source));

  if (o.warmup) {
    say(fmt::format("warm-up: one untimed generation under '{}'", o.policies.front()));
    const auto w = run_policy(o, models, o.policies.front(), devices, r.bandwidth);
    say(w.ok ? fmt::format("warm-up done in {:.2f} s", w.total_seconds) : "warm-up failed: " + w.error);
  }
  for (const auto& p : o.policies) {
    say(fmt::format("policy '{}'...", p));
    r.results.push_back(run_policy(o, models, p, devices, r.bandwidth));
    compare_with_resident(r.results, o.device.kind == offload::device_kind::cuda);
    write_json(r);
    const auto& res = r.results.back();
    say(res.ok ? fmt::format("  {:.2f} s, peak {}", res.total_seconds,
                             res.measured_peak() ? offload::format_bytes(*res.measured_peak()) : std::string("n/a"))
               : "  failed: " + res.error);
  }

  if (o.onload_probe) {
    say("onload probe: each component's whole onload from pinned masters and its eviction, best of 3");
    r.onloads = measure_onloads(o, models, devices, r.bandwidth);
    write_json(r);
  }
  std::cout << table(r) << std::flush;
  if (!o.json_file.empty()) say(fmt::format("wrote {}", o.json_file));
  if (o.check) {
    const auto bad = check_against_plan(r);
    for (const auto& line : bad) std::cerr << "wan_bench: check: " << line << '\n';
    if (!bad.empty()) return exit_mismatch;
    say(fmt::format("check: the peaks and bytes moved of all {} policies equal their plans'", r.results.size()));
  }
  for (const auto& p : r.results)
    if (!p.ok) return exit_failed;
  return exit_ok;
}

} // namespace

int main(int argc, char** argv) {
  try {
    const auto opts = parse_command_line(argc, argv);
    if (!opts) return exit_ok; // --help
    return run(*opts);
  } catch (const usage_error& e) {
    std::cerr << "wan_bench: error: " << first_line(e.what()) << '\n';
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "wan_bench: failed: " << first_line(e.what()) << '\n';
    return exit_failed;
  }
}
