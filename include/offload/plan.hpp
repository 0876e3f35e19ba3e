#pragma once
/// \file
/// The explicit plan the scheduler produces: for every stage, the onload and evict actions, the
/// resident set and the peak per device. Prints as a table, serializes to JSON, executes on real
/// and mock devices (executor.hpp).

#include <offload/detail/json.hpp>
#include <offload/device.hpp>
#include <offload/errors.hpp>
#include <offload/placement_policy.hpp>
#include <offload/units.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace offload {

enum class action_kind : std::uint8_t { onload, evict };

[[nodiscard]] inline std::string_view to_string(action_kind k) {
  return k == action_kind::onload ? "onload" : "evict";
}

template <class Os>
auto operator<<(Os& os, action_kind k) -> decltype(os << std::string_view()) {
  return os << to_string(k);
}

/// One move of a whole component.
struct action {
  action_kind kind = action_kind::onload;
  std::string component;
  device_id device;      ///< the accelerator it comes to or leaves
  std::int64_t bytes = 0;
  std::string reason;    ///< why the scheduler decided it
  friend bool operator==(const action&, const action&) = default;
};

/// One step of a plan: `init`, then one per stage.
struct plan_step {
  std::string stage;
  int repeat = 1;
  double seconds = 0; ///< compute seconds per repetition (from the stage)
  std::vector<std::string> uses;
  std::vector<action> before; ///< applied before the stage runs (evictions first, then onloads)
  /// Onloads for the next stage, started at this stage's last repetition on the transfer stream
  /// (`prefetch` policies); the components are resident from then on (counted in this step).
  std::vector<action> prefetch;
  std::vector<action> after;  ///< applied after its last repetition
  std::map<device_id, std::vector<std::string>> resident; ///< during the stage
  std::map<device_id, std::int64_t> resident_bytes;
  std::map<device_id, std::int64_t> workspace_bytes;
  std::map<device_id, std::int64_t> peak_bytes;
  /// Per streamed component: bytes its blocks copy into their slots during the stage (all
  /// repetitions; each block once per repetition when the model runs its branches block-major).
  std::map<std::string, std::int64_t> streamed_bytes;
  /// Seconds the block copies add to the stage beyond its compute, all repetitions (0 when nothing
  /// streams or the device's bandwidth is not given).
  double stream_seconds = 0;
};

/// Where the plan does not fit.
struct plan_failure {
  std::string stage;
  device_id device;
  std::string during; ///< `onload t5` or `workspace`
  std::int64_t needed = 0;
  std::int64_t available = 0;
};

class plan {
public:
  placement_policy policy;
  device_id accelerator;
  std::vector<plan_step> steps;
  std::map<std::string, device_id> execute_on;             ///< per component
  std::map<std::string, std::int64_t> component_bytes;     ///< per component
  /// Streamed components: bytes on their device (all but the blocks and host tables, plus the slots).
  std::map<std::string, std::int64_t> device_bytes;
  std::map<device_id, std::optional<std::int64_t>> capacity;
  std::map<device_id, std::int64_t> peak_bytes;
  std::optional<plan_failure> failure;
  /// When it does not fit: a policy (text) that would, found by the scheduler; empty if none.
  std::string suggestion;
  std::int64_t bytes_to_devices = 0;
  std::int64_t bytes_to_host = 0; ///< copied back (mutable tensors only; 0 for weights)
  double predicted_seconds = 0;   ///< compute + transfers, from the cost model

  [[nodiscard]] bool fits() const noexcept { return !failure; }

  /// The step of a stage (not `init`), or nullptr.
  [[nodiscard]] const plan_step* step(std::string_view stage) const {
    for (std::size_t i = 1; i < steps.size(); ++i)
      if (steps[i].stage == stage) return &steps[i];
    return nullptr;
  }

  /// The message of the capacity error this plan raises when it does not fit.
  [[nodiscard]] std::string failure_message() const {
    if (!failure) return {};
    const auto& f = *failure;
    return fmt::format(
        "stage '{}' does not fit on {} under policy '{}': {} needs {} but the device has {} (short "
        "by {}); {}",
        f.stage, f.device.str(), policy.label(), f.during, format_bytes(f.needed), format_bytes(f.available),
        format_bytes(f.needed - f.available),
        suggestion.empty() ? std::string("no policy change found that fits: use a larger device or "
                                         "reduce the workspace (size, frames)")
                           : fmt::format("policy '{}' would fit", suggestion));
  }

  /// Throws capacity_error naming the stage, the device, the bytes needed and available, and a
  /// policy that would fit.
  void require_fit() const {
    if (!failure) return;
    throw capacity_error("offload.capacity.plan_does_not_fit", failure_message(), failure->device.str(),
                         failure->stage, failure->needed, failure->available);
  }

  /// The devices the plan touches other than the host, in order.
  [[nodiscard]] std::vector<device_id> accelerators() const {
    std::vector<device_id> out;
    for (const auto& [d, _] : capacity)
      if (!d.is_host()) out.push_back(d);
    return out;
  }

  /// A readable table: one row per step with its actions, resident set and peak per device.
  [[nodiscard]] std::string table() const {
    std::string out = fmt::format("plan for policy '{}' ({})\n", policy.label(), policy.str());
    for (const auto& d : accelerators()) {
      const auto cap = capacity.at(d);
      out += fmt::format("  {}: capacity {}, peak {}\n", d.str(), cap ? format_bytes(*cap) : "unlimited",
                         format_bytes(peak_of(d)));
    }
    out += fmt::format("  cpu: peak {} (host masters and host workspace)\n", format_bytes(peak_of(device_id::cpu())));
    out += fits() ? std::string("  fits\n") : fmt::format("  DOES NOT FIT: {}\n", failure_message());
    out += fmt::format("  moved to devices {}, back to host {}\n", format_bytes(bytes_to_devices),
                       format_bytes(bytes_to_host));
    std::size_t name_w = 5, act_w = 7, res_w = 8;
    std::vector<std::string> acts(steps.size()), ress(steps.size());
    for (std::size_t i = 0; i < steps.size(); ++i) {
      const auto& s = steps[i];
      for (const auto* list : {&s.before, &s.prefetch, &s.after})
        for (const auto& a : *list)
          acts[i] += fmt::format("{}{}{} {}", acts[i].empty() ? "" : ", ",
                                 list == &s.after ? "after: " : list == &s.prefetch ? "prefetch: " : "",
                                 to_string(a.kind), a.component);
      for (const auto& [c, b] : s.streamed_bytes)
        acts[i] += fmt::format("{}stream {} {}", acts[i].empty() ? "" : ", ", c, format_bytes(b));
      for (const auto& d : accelerators()) {
        std::string names;
        if (const auto it = s.resident.find(d); it != s.resident.end())
          for (const auto& n : it->second) names += (names.empty() ? "" : " ") + n;
        ress[i] += fmt::format("{}{}", ress[i].empty() ? "" : " | ", names.empty() ? "-" : names);
      }
      name_w = std::max(name_w, s.stage.size());
      act_w = std::max(act_w, acts[i].size());
      res_w = std::max(res_w, ress[i].size());
    }
    out += fmt::format("  {:>2}  {:<{}}  {:>5}  {:<{}}  {:<{}}  {}\n", "#", "stage", name_w, "x", "actions",
                       act_w, "resident", res_w, "peak");
    for (std::size_t i = 0; i < steps.size(); ++i) {
      const auto& s = steps[i];
      std::string peaks;
      for (const auto& d : accelerators()) {
        const auto it = s.peak_bytes.find(d);
        peaks += fmt::format("{}{}", peaks.empty() ? "" : " | ",
                             format_bytes(it == s.peak_bytes.end() ? 0 : it->second));
      }
      out += fmt::format("  {:>2}  {:<{}}  {:>5}  {:<{}}  {:<{}}  {}\n", i, s.stage, name_w,
                         i == 0 ? std::string() : std::to_string(s.repeat), acts[i], act_w, ress[i], res_w, peaks);
    }
    return out;
  }

  /// JSON with at least `fits`, `peak_bytes` per device and per-stage `name`, `resident`,
  /// `peak_bytes`, plus actions, capacities, failure and suggestion.
  [[nodiscard]] std::string json() const {
    using detail::json_append;
    using detail::json_string;
    auto device_map = [](const std::map<device_id, std::int64_t>& m) {
      std::string s;
      for (const auto& [d, b] : m) json_append(s, fmt::format("{}:{}", json_string(d.str()), b));
      return "{" + s + "}";
    };
    auto actions = [](const std::vector<action>& v) {
      std::string s;
      for (const auto& a : v)
        json_append(s, fmt::format(R"({{"action":{},"component":{},"device":{},"bytes":{},"reason":{}}})",
                                   json_string(to_string(a.kind)), json_string(a.component),
                                   json_string(a.device.str()), a.bytes, json_string(a.reason)));
      return "[" + s + "]";
    };
    std::string stages;
    for (const auto& s : steps) {
      std::string resident;
      for (const auto& [d, names] : s.resident) {
        std::string list;
        for (const auto& n : names) json_append(list, json_string(n));
        json_append(resident, fmt::format("{}:[{}]", json_string(d.str()), list));
      }
      std::string uses;
      for (const auto& u : s.uses) json_append(uses, json_string(u));
      std::string streamed;
      for (const auto& [c, b] : s.streamed_bytes) json_append(streamed, fmt::format("{}:{}", json_string(c), b));
      json_append(stages,
                  fmt::format(R"({{"name":{},"repeat":{},"uses":[{}],"before":{},"prefetch":{},"after":{},)"
                              R"("resident":{{{}}},"resident_bytes":{},"workspace_bytes":{},"peak_bytes":{},)"
                              R"("streamed_bytes":{{{}}}}})",
                              json_string(s.stage), s.repeat, uses, actions(s.before), actions(s.prefetch),
                              actions(s.after),
                              resident, device_map(s.resident_bytes), device_map(s.workspace_bytes),
                              device_map(s.peak_bytes), streamed));
    }
    std::string caps;
    for (const auto& [d, c] : capacity)
      json_append(caps, fmt::format("{}:{}", json_string(d.str()), c ? std::to_string(*c) : "null"));
    std::string exec;
    for (const auto& [c, d] : execute_on) json_append(exec, fmt::format("{}:{}", json_string(c), json_string(d.str())));
    std::string fail = "null";
    if (failure)
      fail = fmt::format(R"({{"stage":{},"device":{},"during":{},"needed_bytes":{},"available_bytes":{},"message":{}}})",
                         json_string(failure->stage), json_string(failure->device.str()),
                         json_string(failure->during), failure->needed, failure->available,
                         json_string(failure_message()));
    return fmt::format(
        R"({{"policy":{},"label":{},"accelerator":{},"fits":{},"peak_bytes":{},"capacity":{{{}}},)"
        R"("execute_on":{{{}}},"bytes_to_devices":{},"bytes_to_host":{},"predicted_seconds":{},)"
        R"("failure":{},"suggestion":{},"stages":[{}]}})",
        json_string(policy.str()), json_string(policy.label()), json_string(accelerator.str()),
        fits() ? "true" : "false", device_map(peak_bytes), caps, exec, bytes_to_devices, bytes_to_host,
        predicted_seconds, fail, suggestion.empty() ? "null" : json_string(suggestion), stages);
  }

  [[nodiscard]] std::int64_t peak_of(device_id d) const {
    const auto it = peak_bytes.find(d);
    return it == peak_bytes.end() ? 0 : it->second;
  }
};

} // namespace offload
