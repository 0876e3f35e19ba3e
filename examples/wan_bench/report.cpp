// wan_bench's table, JSON and --check (see bench.hpp; the fields are described in docs/benchmark.md).
#include "bench.hpp"

#include <offload/units.hpp>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>

namespace wan_bench {

namespace {

constexpr const char* hidden_definition =
    "hidden = 1 - (T_policy - T_resident) / T_transfer, T = wall time of the whole generation, "
    "T_transfer = the bytes the policy copied host -> device (onloads and streamed blocks) / the measured "
    "host -> device bandwidth of each component's host memory (pinned or pageable); "
    "hidden(denoise): the same over the denoising steps (from the first step's entry to decode's), "
    "with the bytes copied in that span";

std::string opt_seconds(const std::map<std::string, double>& m, const std::string& key) {
  const auto it = m.find(key);
  return it == m.end() ? std::string("-") : fmt::format("{:.2f}", it->second);
}

std::string opt_bytes(const std::optional<std::int64_t>& b) {
  return b ? offload::format_bytes(*b) : std::string("-");
}

std::string opt_ratio(const std::optional<double>& x) { return x ? fmt::format("{:.2f}", *x) : std::string("-"); }

std::string rate(const std::optional<double>& bytes_per_second) {
  return bytes_per_second ? fmt::format("{:.1f} GB/s", *bytes_per_second / 1e9) : std::string("n/a");
}

template <class T>
nlohmann::json opt(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

std::string scale_name(model_scale s) { return s == model_scale::tiny ? "tiny" : "real"; }

/// The video against the resident run's: "same" (bit for bit), the largest |difference|, or "-".
std::string vs_resident(const policy_result& p) {
  if (!p.identical_to_resident) return "-";
  if (*p.identical_to_resident) return "same";
  return fmt::format("{:.1e}", p.max_abs_diff_vs_resident.value_or(0.0));
}

} // namespace

std::string table(const bench_report& r) {
  const options& o = r.opts;
  std::string out = fmt::format(
      "wan_bench: {} ({} scale), {}x{}, {} frames, {} steps ({} DiT tokens), on {} ({}), torch {}, {} host threads\n",
      o.task, scale_name(o.scale), o.width, o.height, o.frame_num, o.steps, r.dit_tokens, o.device.str(),
      r.device_name, r.torch_version, r.host_threads);
  std::string sizes;
  for (const auto& [name, bytes] : r.component_bytes)
    sizes += fmt::format("{}{} {}", sizes.empty() ? "" : ", ", name, offload::format_bytes(bytes));
  out += fmt::format("components (random weights): {}; built in {:.2f} s{}\n", sizes, r.build_seconds,
                     r.fast_init ? " (parallel initialisation)" : " (LibTorch's serial initialisation)");
  out += fmt::format("host -> device bandwidth: pinned {}, pageable {} ({})\n", rate(r.bandwidth.pinned),
                     rate(r.bandwidth.pageable), r.bandwidth.source);
  const bool real_pinning = o.device.kind == offload::device_kind::cuda;
  const std::string projected = o.project_steps.value_or(0) > 0 ? fmt::format("x@{}", *o.project_steps) : "x@-";
  out += fmt::format("{:>8} {:>6} {:>6} {:>6} {:>7} {:>7} {:>7} {:>8} {:>7} {:>6} {:>7} {:>11} {:>6} {:>11} {:>11} "
                     "{:>11} {:>11} {:>11} {:>11} {:>6} {:>6} {:>7}  {}\n",
                     "total s", "x res", projected, "setup", "text", "clip", "vae_enc", "denoise", "s/step", "x res",
                     "decode", "peak", "x res", "reserved", "plan peak", "pinned", "host peak", "to device", "streamed",
                     "hidden", "h.den", "video", "policy");
  for (const auto& p : r.results) {
    if (!p.ok) {
      out += fmt::format("{:>8}  {}: {}\n", "FAILED", p.policy, p.error);
      continue;
    }
    const auto& s = p.stage_seconds;
    out += fmt::format(
        "{:>8.2f} {:>6} {:>6} {:>6.2f} {:>7} {:>7} {:>7} {:>8} {:>7.3f} {:>6} {:>7} {:>11} {:>6} {:>11} {:>11} {:>11} "
        "{:>11} {:>11} {:>11} {:>6} {:>6} {:>7}  {}\n",
        p.total_seconds, opt_ratio(p.time_ratio), opt_ratio(p.projected_time_ratio), p.setup_seconds,
        opt_seconds(s, "text_encode"), opt_seconds(s, "clip_encode"), opt_seconds(s, "vae_encode"),
        opt_seconds(s, "denoise"), p.mean_step_seconds(), opt_ratio(p.step_ratio), opt_seconds(s, "decode"),
        opt_bytes(p.measured_peak()), opt_ratio(p.peak_ratio), opt_bytes(p.peak_reserved), opt_bytes(p.predicted_peak),
        offload::format_bytes(real_pinning ? p.pinned_host_bytes : p.predicted_pinned_bytes), opt_bytes(p.host_peak),
        offload::format_bytes(p.bytes_to_device), offload::format_bytes(p.bytes_streamed),
        opt_ratio(p.hidden_fraction), opt_ratio(p.denoise_hidden_fraction), vs_resident(p), p.policy);
  }
  if (o.device.is_mock())
    out += "on a mock device: 'peak' is its accounting (what the plan predicts), 'reserved' does not exist, "
           "'pinned' is what the pinned masters would take (packed into power-of-two chunks; nothing is pinned "
           "here), and no hidden fraction is computed (its copies cost host time, not bytes / bandwidth)\n";
  else if (real_pinning)
    out += "peak / reserved: the CUDA caching allocator's peaks (max_memory_allocated / max_memory_reserved); "
           "plan peak: offload's prediction; pinned: host memory the pinned masters take (their chunks)\n";
  if (std::any_of(r.results.begin(), r.results.end(), [](const policy_result& p) { return !p.stage_peak.empty(); })) {
    out += "peak by stage, measured / planned (from each stage's onloads to its evictions after use):\n";
    for (const auto& p : r.results) {
      if (!p.ok || p.stage_peak.empty()) continue;
      std::string line;
      for (const auto& [stage, bytes] : p.stage_peak) {
        const auto planned = p.predicted_stage_peak.find(stage);
        line += fmt::format("{}{} {} / {}", line.empty() ? "" : ", ", stage, offload::format_bytes(bytes),
                            planned == p.predicted_stage_peak.end() ? "-" : offload::format_bytes(planned->second));
      }
      out += fmt::format("  {}: {}\n", p.policy, line);
    }
  }
  if (real_pinning)
    for (const auto& p : r.results)
      if (p.ok && p.pinned_host_bytes != p.predicted_pinned_bytes)
        out += fmt::format("policy '{}': its pinned masters ({} bytes) take {} bytes pinned, {} predicted\n", p.policy,
                           p.pinned_master_bytes, p.pinned_host_bytes, p.predicted_pinned_bytes);
  out += "host peak: the process's peak resident host memory (VmHWM) from the policy's storage conversion and "
         "pinning to the end of its run, pageable and pinned alike (with the models of every policy)";
  out += std::any_of(r.results.begin(), r.results.end(), [](const policy_result& p) { return p.ok && !p.host_peak_reset; })
             ? "; it could not be restarted per policy here, so it counts from the start of the process\n"
             : "\n";
  if (std::none_of(r.results.begin(), r.results.end(), [](const policy_result& p) { return p.policy == "resident" && p.ok; }))
    out += "no 'resident' run in this invocation: ratios and hidden fractions need one (--policy resident)\n";
  out += "video: the generated video against the resident run's, 'same' bit for bit, else the largest "
         "|difference|\n";
  if (o.project_steps.value_or(0) > 0)
    out += fmt::format("x@{0}: the time ratio of a {0}-step generation, projected from this one: every step but "
                       "the last repeats (total + ({0} - {1}) x the mean of the steps before the last; '-' with fewer "
                       "than 2 steps)\n",
                       *o.project_steps, o.steps);
  if (!r.onloads.empty()) {
    out += fmt::format("onload probe: each component whole, from pinned masters, best of 3, synchronized; {}\n",
                       o.device.is_mock() ? "on the mock's virtual clock (bytes / its bandwidth)" : "wall time");
    out += fmt::format("  {:<8} {:>11} {:>8} {:>9} {:>10} {:>10} {:>11} {:>10} {:>9} {:>11}\n", "comp", "bytes",
                       "pin s", "onload s", "GB/s", "x pinned", "prefetch s", "x pinned", "evict s", "to host");
    for (const auto& l : r.onloads) {
      if (!l.ok) {
        out += fmt::format("  {:<8} FAILED: {}\n", l.component, l.error);
        continue;
      }
      out += fmt::format("  {:<8} {:>11} {:>8.2f} {:>9.4f} {:>10} {:>10} {:>11.4f} {:>10} {:>9.4f} {:>11}\n",
                         l.component, offload::format_bytes(l.bytes), l.pin_seconds, l.onload_seconds,
                         l.bytes_per_second ? fmt::format("{:.1f}", *l.bytes_per_second / 1e9) : std::string("-"),
                         opt_ratio(l.fraction_of_pinned), l.prefetch_seconds, opt_ratio(l.prefetch_fraction_of_pinned),
                         l.evict_seconds, offload::format_bytes(l.bytes_to_host));
    }
  }
  out += fmt::format("{}\n", hidden_definition);
  return out;
}

std::string json(const bench_report& r) {
  const options& o = r.opts;
  nlohmann::json j;
  j["format"] = "offload.wan_bench/1";
  j["task"] = o.task;
  j["scale"] = scale_name(o.scale);
  j["device"] = o.device.str();
  j["device_name"] = r.device_name;
  j["torch_version"] = r.torch_version;
  j["host_threads"] = r.host_threads;
  j["size"] = {o.width, o.height};
  j["frame_num"] = o.frame_num;
  j["steps"] = o.steps;
  j["project_steps"] = o.project_steps.value_or(0);
  j["dit_tokens"] = r.dit_tokens;
  j["prompt_tokens"] = o.prompt_tokens;
  j["neg_prompt_tokens"] = o.neg_prompt_tokens;
  j["seed"] = o.seed;
  j["warmup"] = o.warmup;
  j["gpu_memory"] = opt(o.gpu_memory);
  j["component_bytes"] = r.component_bytes;
  j["build_seconds"] = r.build_seconds;
  j["parallel_init"] = r.fast_init;
  j["bandwidth"] = {{"h2d_pinned_bytes_per_second", opt(r.bandwidth.pinned)},
                    {"h2d_pageable_bytes_per_second", opt(r.bandwidth.pageable)},
                    {"source", r.bandwidth.source}};
  j["hidden_fraction_definition"] = hidden_definition;
  j["policies"] = nlohmann::json::array();
  for (const auto& p : r.results) {
    nlohmann::json e;
    e["policy"] = p.policy;
    e["canonical"] = p.canonical;
    e["ok"] = p.ok;
    e["error"] = p.ok ? nlohmann::json(nullptr) : nlohmann::json(p.error);
    if (p.ok) {
      e["prepare_seconds"] = p.prepare_seconds;
      e["pinned_master_bytes"] = p.pinned_master_bytes;
      e["predicted_pinned_bytes"] = p.predicted_pinned_bytes;
      e["pinned_host_bytes"] = p.pinned_host_bytes;
      e["host_resident_prepared_bytes"] = opt(p.host_resident_prepared);
      e["host_peak_bytes"] = opt(p.host_peak);
      e["host_peak_since_prepare"] = p.host_peak_reset;
      e["total_seconds"] = p.total_seconds;
      e["setup_seconds"] = p.setup_seconds;
      e["stage_seconds"] = p.stage_seconds;
      e["stage_peak_bytes"] = p.stage_peak;
      e["predicted_stage_peak_bytes"] = p.predicted_stage_peak;
      e["denoise_step_seconds"] = p.denoise_step_seconds;
      e["mean_step_seconds"] = p.mean_step_seconds();
      e["peak_allocated_bytes"] = opt(p.peak_allocated);
      e["peak_reserved_bytes"] = opt(p.peak_reserved);
      e["accounted_peak_bytes"] = opt(p.accounted_peak);
      e["measured_peak_bytes"] = opt(p.measured_peak());
      e["predicted_peak_bytes"] = opt(p.predicted_peak);
      e["bytes_to_device"] = p.bytes_to_device;
      e["predicted_bytes_to_device"] = p.predicted_bytes_to_device;
      e["bytes_streamed"] = p.bytes_streamed;
      e["predicted_bytes_streamed"] = p.predicted_bytes_streamed;
      e["bytes_streamed_by_component"] = p.streamed_by_component;
      e["bytes_to_host"] = p.bytes_to_host;
      e["predicted_bytes_to_host"] = p.predicted_bytes_to_host;
      e["transfer_seconds"] = p.transfer_seconds;
      e["hidden_fraction"] = opt(p.hidden_fraction);
      e["denoise_transfer_seconds"] = p.denoise_transfer_seconds;
      e["denoise_hidden_fraction"] = opt(p.denoise_hidden_fraction);
      e["time_ratio"] = opt(p.time_ratio);
      e["steady_step_seconds"] = opt(p.steady_step_seconds);
      e["projected_seconds"] = opt(p.projected_seconds);
      e["projected_time_ratio"] = opt(p.projected_time_ratio);
      e["step_ratio"] = opt(p.step_ratio);
      e["peak_ratio"] = opt(p.peak_ratio);
      e["identical_to_resident"] = opt(p.identical_to_resident);
      e["max_abs_diff_vs_resident"] = opt(p.max_abs_diff_vs_resident);
    }
    j["policies"].push_back(std::move(e));
  }
  j["onload_probe"] = nlohmann::json::array();
  for (const auto& l : r.onloads) {
    nlohmann::json e;
    e["component"] = l.component;
    e["ok"] = l.ok;
    e["error"] = l.ok ? nlohmann::json(nullptr) : nlohmann::json(l.error);
    e["bytes"] = l.bytes;
    e["pin_seconds"] = l.pin_seconds;
    e["onload_seconds"] = l.onload_seconds;
    e["evict_seconds"] = l.evict_seconds;
    e["bytes_to_host"] = l.bytes_to_host;
    e["bytes_per_second"] = opt(l.bytes_per_second);
    e["fraction_of_pinned_bandwidth"] = opt(l.fraction_of_pinned);
    e["prefetch_seconds"] = l.prefetch_seconds;
    e["prefetch_bytes_per_second"] = opt(l.prefetch_bytes_per_second);
    e["prefetch_fraction_of_pinned_bandwidth"] = opt(l.prefetch_fraction_of_pinned);
    j["onload_probe"].push_back(std::move(e));
  }
  return j.dump(1);
}

std::vector<std::string> check_against_plan(const bench_report& r) {
  std::vector<std::string> bad;
  for (const auto& p : r.results) {
    if (!p.ok) {
      bad.push_back(fmt::format("policy '{}' failed: {}", p.policy, p.error));
      continue;
    }
    const auto expect = [&](std::string_view what, std::int64_t measured, std::int64_t planned) {
      if (measured != planned)
        bad.push_back(fmt::format("policy '{}': {} expected {} as planned, found {} ({} bytes vs {})", p.policy, what,
                                  offload::format_bytes(planned), offload::format_bytes(measured), planned, measured));
    };
    expect("peak on the device", p.accounted_peak.value_or(-1), p.predicted_peak.value_or(-1));
    expect("bytes to the device", p.bytes_to_device, p.predicted_bytes_to_device);
    expect("bytes streamed", p.bytes_streamed, p.predicted_bytes_streamed);
    expect("bytes back to the host", p.bytes_to_host, p.predicted_bytes_to_host);
    for (const auto& [stage, planned] : p.predicted_stage_peak) {
      const auto it = p.stage_peak.find(stage);
      expect(fmt::format("peak of stage '{}'", stage), it == p.stage_peak.end() ? -1 : it->second, planned);
    }
  }
  return bad;
}

} // namespace wan_bench
