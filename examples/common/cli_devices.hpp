// Command-line helpers the Wan tools share (wan_generate, wan_bench): the accelerator flags
// (--device, --gpu_memory) and the devices they add.
#pragma once

#include "cli_errors.hpp"

#include <offload/device.hpp>
#include <offload/testing/mock_device.hpp>

#include <torch/cuda.h>

#include <fmt/format.h>

#include <cstdint>
#include <optional>
#include <string>

namespace cli_common {

/// `--device`: cuda:N, mock:N or cpu.
inline offload::device_id parse_device_flag(const std::string& text) {
  try {
    return offload::device_id::parse(text);
  } catch (const offload::config_error& e) {
    throw usage_error(
        fmt::format("--device '{}': expected 'cuda:N', 'mock:N' or 'cpu' ({})", text, one_line(e.what())));
  }
}

/// Throws a usage error unless `id` names a CUDA device this build and this machine have.
inline void require_cuda_device(offload::device_id id) {
  if (!torch::cuda::is_available())
    throw usage_error(fmt::format("--device {}: CUDA is not available in this build or on this machine; use "
                                  "--device cpu, or mock:0 to simulate an accelerator",
                                  id.str()));
  const auto n = static_cast<int>(torch::cuda::device_count());
  if (id.index >= n)
    throw usage_error(fmt::format("--device {}: this machine has {} CUDA device(s) (cuda:0 to cuda:{}); choose "
                                  "one of them",
                                  id.str(), n, n - 1));
}

/// A mock accelerator without --gpu_memory: 1 TiB, so that only the plans' own figures count.
inline constexpr std::int64_t unlimited_mock_capacity = std::int64_t{1} << 40;

/// Adds the accelerator `id` to `devices` unless it is the host or already there: a CUDA device
/// (checked to exist) whose plans may use `capacity` bytes (none given: no limit but the card's), or a mock
/// device of `capacity` bytes (default: `unlimited_mock_capacity`).
inline void add_accelerator(offload::device_set& devices, offload::device_id id,
                            std::optional<std::int64_t> capacity) {
  if (id.is_host() || devices.find(id)) return;
  if (id.kind == offload::device_kind::cuda) {
    require_cuda_device(id);
    devices.emplace<offload::cuda_device>(id.index, capacity);
    return;
  }
  offload::testing::mock_options m;
  m.capacity = capacity.value_or(unlimited_mock_capacity);
  offload::testing::add_mock(devices, id.index, m);
}

} // namespace cli_common
