#pragma once
/// \file
/// The cost model of the budget planner (budget_planner.hpp): how long a transfer and a stage take.
///
/// - Transfers: host -> device from pinned or from pageable host memory, device -> host, in bytes per
///   second. Weights are never copied back (their host master stays), so device -> host only prices
///   mutable tensors.
/// - Compute: a stage declares its compute seconds on the accelerator (`stage::seconds`); a stage
///   one of whose components executes on the host takes `host_slowdown()` times longer, the ratio of
///   the accelerator's to the host's throughput. Pipelines that count their work in FLOPs turn it
///   into accelerator seconds with `accelerator_flops_per_second` (wan::timed_pipeline_stages).
///
/// The constants are measured on the machine by a calibration program (examples/offload_calibrate)
/// and stored in a small JSON file; every figure records where it came from (`sources`). The
/// defaults are the H100 figures the Wan measurements were taken with (docs/planner.md).
///
/// **Example**
/// \code
/// auto cost = offload::cost_model::defaults();               // H100 reference figures
/// cost.host_flops_per_second = 2e11;                          // a slower host
/// double s = cost.transfer_seconds(5 * offload::GiB, offload::host_memory::pageable);
/// cost.save("cost.json");
/// auto again = offload::cost_model::load("cost.json");        // config_error when malformed
/// \endcode

#include <offload/detail/json.hpp>
#include <offload/detail/safetensors_json.hpp>
#include <offload/errors.hpp>
#include <offload/placement_policy.hpp>

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

namespace offload {

/// Transfer bandwidths and compute throughputs for planning.
struct cost_model {
  /// Host -> device from pinned (page-locked) host memory. H100 (PCIe Gen5): 51-55 GB/s.
  double h2d_pinned_bytes_per_second = 53e9;
  /// Host -> device from pageable host memory (staged through a bounce buffer). H100: 7-8 GB/s.
  double h2d_pageable_bytes_per_second = 7.5e9;
  /// Device -> host (mutable tensors only; weights are never copied back).
  double d2h_bytes_per_second = 53e9;
  /// Effective throughput of the accelerator on pipeline work. H100: 4.5e14, fitted to the Wan
  /// step times (docs/planner.md).
  double accelerator_flops_per_second = 4.5e14;
  /// Effective throughput of the host on the same work (fp32 BLAS on the CPU).
  double host_flops_per_second = 1e12;
  /// Host memory -> pinned memory when a master is pinned (a page-locked allocation and a host
  /// copy, detail/pinned_arena.hpp), once per process. Unset: pinning costs no time in the model (not
  /// measured on the reference H100); offload_calibrate measures it on a CUDA machine.
  std::optional<double> pin_bytes_per_second;
  /// What the figures describe.
  std::string accelerator = "NVIDIA H100 80GB (reference figures)";
  std::string host = "server CPU (assumed)";
  /// Per figure (the member names above): how it was obtained, `default: ...` or `measured: ...`.
  std::map<std::string, std::string> sources;

  /// The H100 reference figures, every source saying so.
  static cost_model defaults() {
    cost_model c;
    c.sources = {
        {"h2d_pinned_bytes_per_second", "default: H100 PCIe Gen5 pinned host-to-device, 51-55 GB/s measured"},
        {"h2d_pageable_bytes_per_second", "default: H100 pageable host-to-device, 7-8 GB/s measured"},
        {"d2h_bytes_per_second", "default: assumed equal to pinned host-to-device"},
        {"accelerator_flops_per_second",
         "default: fitted to Wan2.1 on an H100 (T2V-1.3B 832x480x81 1.45 s/step, T2V-14B 720p 26-29 s/step)"},
        {"host_flops_per_second", "default: assumed (a server CPU with fp32 BLAS); run offload_calibrate"},
        {"pin_bytes_per_second", "default: unset (pinning costs no time); run offload_calibrate on a CUDA machine"},
    };
    return c;
  }

  /// Seconds to pin `bytes` of host masters; 0 while pin_bytes_per_second is unset.
  [[nodiscard]] double pin_seconds(std::int64_t bytes) const {
    return pin_bytes_per_second ? static_cast<double>(bytes) / *pin_bytes_per_second : 0.0;
  }

  /// Seconds to copy `bytes` host -> device from the given host memory.
  [[nodiscard]] double transfer_seconds(std::int64_t bytes, host_memory from) const {
    const double bw = from == host_memory::pinned ? h2d_pinned_bytes_per_second : h2d_pageable_bytes_per_second;
    return static_cast<double>(bytes) / bw;
  }
  /// How many times longer a stage takes when it executes on the host.
  [[nodiscard]] double host_slowdown() const { return accelerator_flops_per_second / host_flops_per_second; }
  /// Seconds of a stage whose accelerator time is `accelerator_seconds`, on the host or not.
  [[nodiscard]] double compute_seconds(double accelerator_seconds, bool on_host) const {
    return on_host ? accelerator_seconds * host_slowdown() : accelerator_seconds;
  }

  /// Throws config_error naming the first figure that is not a positive finite number.
  void validate(std::string_view origin = "cost model") const {
    auto figures = numbers();
    if (pin_bytes_per_second) figures["pin_bytes_per_second"] = &*pin_bytes_per_second;
    for (const auto& [name, v] : figures)
      if (!(std::isfinite(*v) && *v > 0))
        throw config_error("offload.config.cost_model_value",
                           fmt::format("{}: '{}' is {}; expected a positive number (bytes or FLOPs per "
                                       "second); fix the file or rerun offload_calibrate",
                                       origin, name, *v));
  }

  /// The file form: `{"format": "offload.cost_model/1", <figures>, "accelerator", "host", "sources"}`.
  [[nodiscard]] std::string json() const {
    using detail::json_string;
    std::string out = "{\n  \"format\": \"offload.cost_model/1\",\n";
    for (const auto& [name, v] : numbers())
      out += fmt::format("  {}: {:.6g},\n", json_string(name), *v);
    if (pin_bytes_per_second) out += fmt::format("  \"pin_bytes_per_second\": {:.6g},\n", *pin_bytes_per_second);
    out += fmt::format("  \"accelerator\": {},\n  \"host\": {},\n  \"sources\": {{", json_string(accelerator),
                       json_string(host));
    bool first = true;
    for (const auto& [k, v] : sources) {
      out += fmt::format("{}\n    {}: {}", first ? "" : ",", json_string(k), json_string(v));
      first = false;
    }
    out += first ? "}\n}\n" : "\n  }\n}\n";
    return out;
  }

  /// Parses the file form. Figures left out keep their defaults (and say so in `sources`); unknown
  /// keys, wrong types and non-positive figures throw config_error naming the key and `origin`.
  static cost_model parse(std::string_view text, std::string_view origin = "cost model") {
    detail::json_value doc;
    try {
      doc = detail::parse_json(text);
    } catch (const detail::json_parse_error& e) {
      throw config_error("offload.config.cost_model_syntax",
                         fmt::format("{}: expected JSON, found an error at byte {}: {}; rewrite it with "
                                     "offload_calibrate",
                                     origin, e.offset(), e.what()));
    }
    if (doc.type != detail::json_value::kind::object)
      throw config_error("offload.config.cost_model_syntax",
                         fmt::format("{}: expected a JSON object, found a {}", origin, detail::json_kind_name(doc.type)));
    cost_model c = defaults();
    auto expect = [&](const detail::json_member& m, detail::json_value::kind k) {
      if (m.value.type != k)
        throw config_error("offload.config.cost_model_type",
                           fmt::format("{}: '{}' is a {}; expected a {}", origin, m.key,
                                       detail::json_kind_name(m.value.type), detail::json_kind_name(k)));
    };
    const auto figures = c.numbers();
    for (const auto& m : doc.object) {
      if (m.key == "format") {
        expect(m, detail::json_value::kind::string);
        if (m.value.text != "offload.cost_model/1")
          throw config_error("offload.config.cost_model_format",
                             fmt::format("{}: format '{}'; expected 'offload.cost_model/1'", origin, m.value.text));
      } else if (m.key == "accelerator" || m.key == "host") {
        expect(m, detail::json_value::kind::string);
        (m.key == "host" ? c.host : c.accelerator) = m.value.text;
      } else if (m.key == "sources") {
        expect(m, detail::json_value::kind::object);
        for (const auto& s : m.value.object) {
          expect(s, detail::json_value::kind::string);
          c.sources[s.key] = s.value.text;
        }
      } else if (m.key == "pin_bytes_per_second") {
        expect(m, detail::json_value::kind::number);
        c.pin_bytes_per_second = m.value.number;
        if (!doc.find("sources") || !doc.find("sources")->find(m.key)) c.sources[m.key] = "given (no source recorded)";
      } else if (const auto it = figures.find(m.key); it != figures.end()) {
        expect(m, detail::json_value::kind::number);
        *it->second = m.value.number;
        if (!doc.find("sources") || !doc.find("sources")->find(m.key)) c.sources[m.key] = "given (no source recorded)";
      } else {
        std::string known = "format, accelerator, host, sources, pin_bytes_per_second";
        for (const auto& [k, _] : figures) known += ", " + k;
        throw config_error("offload.config.cost_model_key",
                           fmt::format("{}: unknown key '{}'; expected one of {}", origin, m.key, known));
      }
    }
    c.validate(origin);
    return c;
  }

  /// Reads a file written by save() or offload_calibrate.
  static cost_model load(const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in)
      throw config_error("offload.config.cost_model_file",
                         fmt::format("cost model '{}': cannot open it; give a file written by offload_calibrate",
                                     file.string()));
    std::ostringstream ss;
    ss << in.rdbuf();
    return parse(ss.str(), fmt::format("cost model '{}'", file.string()));
  }

  void save(const std::filesystem::path& file) const {
    std::ofstream out(file, std::ios::binary);
    out << json();
    if (!out)
      throw config_error("offload.config.cost_model_file",
                         fmt::format("cost model '{}': cannot write it; choose a writable path", file.string()));
  }

private:
  std::map<std::string, double*> numbers() {
    return {{"h2d_pinned_bytes_per_second", &h2d_pinned_bytes_per_second},
            {"h2d_pageable_bytes_per_second", &h2d_pageable_bytes_per_second},
            {"d2h_bytes_per_second", &d2h_bytes_per_second},
            {"accelerator_flops_per_second", &accelerator_flops_per_second},
            {"host_flops_per_second", &host_flops_per_second}};
  }
  [[nodiscard]] std::map<std::string, const double*> numbers() const {
    return {{"h2d_pinned_bytes_per_second", &h2d_pinned_bytes_per_second},
            {"h2d_pageable_bytes_per_second", &h2d_pageable_bytes_per_second},
            {"d2h_bytes_per_second", &d2h_bytes_per_second},
            {"accelerator_flops_per_second", &accelerator_flops_per_second},
            {"host_flops_per_second", &host_flops_per_second}};
  }
};

} // namespace offload
