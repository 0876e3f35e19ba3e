#pragma once
/// \file
/// wan_generate's --task/--size/--frame_num checks as pure functions (no files, no LibTorch), so
/// they can be unit-tested and fuzzed on their own (tests/fuzz). options.cpp's validate() calls
/// them in this order; the messages are the CLI's (docs/cli.md).

#include "cli_errors.hpp"
#include "wan/configs/configs.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace wan_cli {

using cli_common::usage_error;

namespace detail {
inline std::string join_names(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}
} // namespace detail

/// --task: one of WAN_CONFIGS; throws usage_error otherwise.
inline void check_task(const std::string& task) {
  const auto& tasks = wan::configs::wan_tasks();
  if (std::find(tasks.begin(), tasks.end(), task) == tasks.end())
    throw usage_error(
        fmt::format("--task '{}': unknown task; expected one of {}", task, detail::join_names(tasks)));
}

/// Width and height of a --size.
struct frame_size {
  int width = 0, height = 0;
};

/// --size for a known --task: a SIZE_CONFIGS key that SUPPORTED_SIZES[task] lists; throws
/// usage_error otherwise (an unknown task too, as check_task).
inline frame_size parse_size(const std::string& task, const std::string& size) {
  check_task(task);
  const auto& sizes = wan::configs::SIZE_CONFIGS();
  const auto& supported = wan::configs::SUPPORTED_SIZES().at(task);
  if (!sizes.count(size))
    throw usage_error(fmt::format("--size '{}': unknown size; expected WIDTH*HEIGHT, one of {} for task "
                                  "{}",
                                  size, detail::join_names(supported), task));
  if (std::find(supported.begin(), supported.end(), size) == supported.end())
    throw usage_error(fmt::format("--size '{}' is not supported by task {}; supported sizes are {}", size,
                                  task, detail::join_names(supported)));
  return {static_cast<int>(sizes.at(size).first), static_cast<int>(sizes.at(size).second)};
}

/// --frame_num for a known --task (0 = not given): the default (81; 1 for t2i) or the given count
/// when it is 4n+1 (t2i: exactly 1); throws usage_error otherwise.
inline int resolve_frame_num(const std::string& task, int frame_num) {
  const bool t2i = task.starts_with("t2i");
  if (frame_num == 0) frame_num = t2i ? 1 : 81;
  if (t2i && frame_num != 1)
    throw usage_error(fmt::format("--frame_num {}: task {} makes one image; expected 1 (or leave it out)",
                                  frame_num, task));
  if (frame_num < 1 || (frame_num - 1) % 4 != 0) {
    // The two nearest valid counts, in 64 bits: near INT_MAX the upper one does not fit an int.
    const long long below = frame_num < 1 ? 1 : (static_cast<long long>(frame_num) - 1) / 4 * 4 + 1;
    throw usage_error(fmt::format("--frame_num {}: expected 4n+1 frames (1, 5, 9, ..., 81); use {} or {}",
                                  frame_num, below, frame_num < 1 ? 5 : below + 4));
  }
  return frame_num;
}

} // namespace wan_cli
