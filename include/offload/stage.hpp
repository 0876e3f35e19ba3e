#pragma once
/// \file
/// Stages: what a pipeline declares to the scheduler, in order.
///
/// **Example**
/// \code
/// using namespace offload::literals;
/// std::vector<offload::stage> stages = {
///     {"text_encode", {"t5"}, {{"t5", 0.28_GiB}}},
///     {"denoise", {"dit"}, {{"dit", 2.06_GiB}}, /*repeat=*/50},
///     {"decode", {"vae"}, {{"vae", 8.28_GiB}}},
/// };
/// \endcode

#include <cstdint>
#include <string>
#include <vector>

namespace offload {

/// Activation bytes a stage needs on the device where `component` executes.
struct workspace_item {
  std::string component;
  std::int64_t bytes = 0;
};

/// One stage of a pipeline.
struct stage {
  std::string name;
  /// Components the stage runs (they must be on their execution device during it).
  std::vector<std::string> uses;
  /// Workspace estimates, each on the execution device of its component.
  std::vector<workspace_item> workspace;
  /// How many times the stage runs back to back (denoising steps); placement changes only once.
  int repeat = 1;
  /// Compute time of one repetition in seconds (cost model for predictions and simulations).
  double seconds = 0;
};

/// A component as the scheduler sees it: a name and its size on a device.
struct component_info {
  std::string name;
  std::int64_t bytes = 0;
};

} // namespace offload
