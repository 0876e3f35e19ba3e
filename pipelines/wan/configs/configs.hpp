#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/configs/__init__.py: the task presets (`WAN_CONFIGS`),
/// `SIZE_CONFIGS`, `MAX_AREA_CONFIGS` and `SUPPORTED_SIZES`, aggregating the per-file headers.
///
/// Deviations: the dicts are functions returning const references to std::map (Python dicts keep
/// insertion order; SUPPORTED_SIZES keeps the reference's tuple order, including t2i-14B's
/// `tuple(SIZE_CONFIGS.keys())`). `wan_config(task)` is `WAN_CONFIGS[task]` with an R5 error instead
/// of a KeyError. The `os.environ['TOKENIZERS_PARALLELISM']` side effect is not reproduced.

#include "wan/configs/shared_config.hpp"
#include "wan/configs/wan_i2v_14B.hpp"
#include "wan/configs/wan_t2v_14B.hpp"
#include "wan/configs/wan_t2v_1_3B.hpp"

#include <offload/errors.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace wan::configs {

/// `t2i_14B`: the config of t2i_14B is the same as t2v_14B.
inline WanConfig t2i_14B() {
  WanConfig c = t2v_14B();
  c.name = "Config: Wan T2I 14B";
  return c;
}

/// `flf2v_14B`: the config of flf2v_14B is the same as i2v_14B.
inline WanConfig flf2v_14B() {
  WanConfig c = i2v_14B();
  c.name = "Config: Wan FLF2V 14B";
  c.sample_neg_prompt = "镜头切换，" + c.sample_neg_prompt;
  return c;
}

/// `WAN_CONFIGS`: task name -> config. vace-1.3B / vace-14B reuse t2v_1_3B / t2v_14B.
inline const std::map<std::string, WanConfig, std::less<>>& WAN_CONFIGS() {
  static const std::map<std::string, WanConfig, std::less<>> m{
      {"t2v-14B", t2v_14B()},     {"t2v-1.3B", t2v_1_3B()},   {"i2v-14B", i2v_14B()},
      {"t2i-14B", t2i_14B()},     {"flf2v-14B", flf2v_14B()}, {"vace-1.3B", t2v_1_3B()},
      {"vace-14B", t2v_14B()},
  };
  return m;
}

/// The task names of WAN_CONFIGS in the reference's order.
inline const std::vector<std::string>& wan_tasks() {
  static const std::vector<std::string> v{"t2v-14B",   "t2v-1.3B", "i2v-14B", "t2i-14B",
                                          "flf2v-14B", "vace-1.3B", "vace-14B"};
  return v;
}

/// `WAN_CONFIGS[task]`; throws offload::config_error naming the known tasks.
inline const WanConfig& wan_config(std::string_view task) {
  const auto& m = WAN_CONFIGS();
  if (auto it = m.find(task); it != m.end()) return it->second;
  throw offload::config_error(
      "offload.wan.config.unknown_task",
      fmt::format("unknown Wan task '{}'; expected one of {}", task, fmt::join(wan_tasks(), ", ")));
}

/// `SIZE_CONFIGS`: size string -> (width, height) as the reference passes it to the pipelines.
inline const std::map<std::string, std::pair<int64_t, int64_t>, std::less<>>& SIZE_CONFIGS() {
  static const std::map<std::string, std::pair<int64_t, int64_t>, std::less<>> m{
      {"720*1280", {720, 1280}}, {"1280*720", {1280, 720}},   {"480*832", {480, 832}},
      {"832*480", {832, 480}},   {"1024*1024", {1024, 1024}},
  };
  return m;
}

/// `MAX_AREA_CONFIGS`: size string -> pixel area (i2v / flf2v).
inline const std::map<std::string, int64_t, std::less<>>& MAX_AREA_CONFIGS() {
  static const std::map<std::string, int64_t, std::less<>> m{
      {"720*1280", 720 * 1280},
      {"1280*720", 1280 * 720},
      {"480*832", 480 * 832},
      {"832*480", 832 * 480},
  };
  return m;
}

/// `SUPPORTED_SIZES`: task -> size strings, in the reference's order.
inline const std::map<std::string, std::vector<std::string>, std::less<>>& SUPPORTED_SIZES() {
  static const std::map<std::string, std::vector<std::string>, std::less<>> m{
      {"t2v-14B", {"720*1280", "1280*720", "480*832", "832*480"}},
      {"t2v-1.3B", {"480*832", "832*480"}},
      {"i2v-14B", {"720*1280", "1280*720", "480*832", "832*480"}},
      {"flf2v-14B", {"720*1280", "1280*720", "480*832", "832*480"}},
      // tuple(SIZE_CONFIGS.keys()) in insertion order
      {"t2i-14B", {"720*1280", "1280*720", "480*832", "832*480", "1024*1024"}},
      {"vace-1.3B", {"480*832", "832*480"}},
      {"vace-14B", {"720*1280", "1280*720", "480*832", "832*480"}},
  };
  return m;
}

} // namespace wan::configs
