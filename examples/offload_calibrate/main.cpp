// offload_calibrate: measures the budget planner's cost model on this machine and writes it as
// JSON (offload::cost_model, docs/planner.md).
//
//   offload_calibrate FILE [--device cuda:N] [--transfer_bytes SIZE] [--quick]
//
// With a CUDA device: host -> device bandwidth from pinned and from pageable memory, device ->
// host, the time to pin host memory, and the device's bf16 matmul throughput. Always: the host's
// fp32 matmul throughput. What could not be measured (no CUDA device: the bandwidths and the
// accelerator throughput) keeps the H100 default, and its `sources` entry says so; the pinning
// rate then stays unset. Matmul throughput is an upper bound of the
// effective throughput of real pipeline work (attention, convolutions): see docs/planner.md.
#include <offload/compat.hpp>
#include <offload/cost_model.hpp>
#include <offload/detail/pinned_arena.hpp>
#include <offload/units.hpp>

#include <torch/cuda.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// The best of `reps` timings of `f` (after one warm-up run), in seconds.
template <class F>
double best_of(int reps, F&& f) {
  f();
  double best = 1e300;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = clock_type::now();
    f();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  return "unknown CPU";
}

/// FLOP/s of an n x n x n matmul of `dtype` on `device`.
double matmul_flops(torch::Device device, torch::Dtype dtype, int64_t n, int reps) {
  const auto opts = torch::TensorOptions().device(device).dtype(dtype);
  const auto a = torch::randn({n, n}, opts), b = torch::randn({n, n}, opts);
  const bool cuda = device.is_cuda();
  const double s = best_of(reps, [&] {
    auto c = torch::mm(a, b);
    if (cuda) torch::cuda::synchronize(device.index());
  });
  const auto d = static_cast<double>(n);
  return 2.0 * d * d * d / s;
}

} // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string file, device_text = "cuda:0";
  std::int64_t transfer_bytes = 1 * offload::GiB;
  bool quick = false;
  try {
    for (std::size_t i = 0; i < args.size(); ++i) {
      if (args[i] == "--device" && i + 1 < args.size()) device_text = args[++i];
      else if (args[i] == "--transfer_bytes" && i + 1 < args.size()) transfer_bytes = offload::parse_bytes(args[++i]);
      else if (args[i] == "--quick") quick = true;
      else if (args[i] == "--help" || args[i] == "-h") {
        std::cout << "usage: offload_calibrate FILE [--device cuda:N] [--transfer_bytes SIZE] [--quick]\n";
        return 0;
      } else if (file.empty() && !args[i].starts_with("--")) file = args[i];
      else throw offload::config_error("offload.config.calibrate_args",
                                       fmt::format("unexpected argument '{}'; usage: offload_calibrate FILE "
                                                   "[--device cuda:N] [--transfer_bytes SIZE] [--quick]",
                                                   args[i]));
    }
    if (file.empty())
      throw offload::config_error("offload.config.calibrate_args",
                                  "no output file; usage: offload_calibrate FILE [--device cuda:N]");
    const auto id = offload::device_id::parse(device_text);

    auto cost = offload::cost_model::defaults();
    const int reps = quick ? 2 : 5;
    // The host: fp32 matmul (what a host-executed stage runs on).
    const int64_t host_n = quick ? 256 : 1024;
    cost.host_flops_per_second = matmul_flops(torch::kCPU, torch::kFloat32, host_n, reps);
    cost.host = cpu_name();
    cost.sources["host_flops_per_second"] =
        fmt::format("measured: fp32 matmul {0}x{0}x{0} on the host ({1} threads)", host_n, at::get_num_threads());
    std::cout << fmt::format("host ({}): fp32 matmul {:.3g} FLOP/s\n", cost.host, cost.host_flops_per_second);

    const bool have_cuda = id.kind == offload::device_kind::cuda && torch::cuda::is_available() &&
                           id.index < static_cast<int>(torch::cuda::device_count());
    if (have_cuda) {
      const torch::Device dev(torch::kCUDA, static_cast<c10::DeviceIndex>(id.index));
      const auto n = transfer_bytes;
      const auto pageable = torch::empty({n}, torch::kUInt8);
      const auto pinned = torch::empty({n}, torch::kUInt8).pin_memory();
      auto on_device = torch::empty({n}, torch::TensorOptions().dtype(torch::kUInt8).device(dev));
      auto sync = [&] { torch::cuda::synchronize(id.index); };
      const double t_pin = best_of(reps, [&] { on_device.copy_(pinned, /*non_blocking=*/true); sync(); });
      const double t_page = best_of(reps, [&] { on_device.copy_(pageable); sync(); });
      const double t_d2h = best_of(reps, [&] { pinned.copy_(on_device, /*non_blocking=*/true); sync(); });
      cost.h2d_pinned_bytes_per_second = static_cast<double>(n) / t_pin;
      cost.h2d_pageable_bytes_per_second = static_cast<double>(n) / t_page;
      cost.d2h_bytes_per_second = static_cast<double>(n) / t_d2h;
      const auto what = offload::format_bytes(n);
      cost.sources["h2d_pinned_bytes_per_second"] = fmt::format("measured: {} pinned -> {}", what, id.str());
      cost.sources["h2d_pageable_bytes_per_second"] = fmt::format("measured: {} pageable -> {}", what, id.str());
      cost.sources["d2h_bytes_per_second"] = fmt::format("measured: {} {} -> pinned", what, id.str());
      const int64_t dev_n = quick ? 2048 : 8192;
      cost.accelerator_flops_per_second = matmul_flops(dev, torch::kBFloat16, dev_n, reps);
      cost.sources["accelerator_flops_per_second"] =
          fmt::format("measured: bf16 matmul {0}x{0}x{0} on {1} (an upper bound of pipeline throughput)", dev_n,
                      id.str());
      cost.accelerator = id.str();
      // Pinning a master as use_pinned_memory does (a page-locked chunk from LibTorch's pinned
      // allocator and a host copy into it, detail/pinned_arena.hpp). Every copy is kept alive, so
      // each is a fresh allocation: LibTorch's host allocator would hand a freed block back at no
      // cost.
      {
        const std::int64_t pin_n = quick ? 64 * offload::MiB : 256 * offload::MiB;
        std::vector<torch::Tensor> held;
        double best = 1e300;
        for (int i = 0; i < reps; ++i) {
          const auto master = torch::ones({pin_n}, torch::kUInt8); // touched: its pages exist
          const auto t0 = clock_type::now();
          (void)offload::detail::pack_into_arena(
              {master}, offload::detail::pinned_host_bytes,
              [&](std::size_t, at::Tensor pinned) { held.push_back(std::move(pinned)); }, "calibration");
          best = std::min(best, seconds_since(t0));
        }
        cost.pin_bytes_per_second = static_cast<double>(pin_n) / best;
        cost.sources["pin_bytes_per_second"] =
            fmt::format("measured: pinning a fresh {} host tensor (one chunk), best of {}", offload::format_bytes(pin_n), reps);
        held.clear();
        offload::detail::release_cached_pinned_memory(); // the chunks back to the system, not kept page-locked
      }
      std::cout << fmt::format("{}: pinned {:.3g} B/s, pageable {:.3g} B/s, to host {:.3g} B/s, bf16 matmul {:.3g} "
                               "FLOP/s; pinning {:.3g} B/s\n",
                               id.str(), cost.h2d_pinned_bytes_per_second, cost.h2d_pageable_bytes_per_second,
                               cost.d2h_bytes_per_second, cost.accelerator_flops_per_second,
                               cost.pin_bytes_per_second.value_or(0));
    } else {
      const std::string why = id.kind != offload::device_kind::cuda
                                  ? fmt::format("--device {} is not a CUDA device", id.str())
                                  : fmt::format("no CUDA device {} on this machine", id.str());
      for (const char* k : {"h2d_pinned_bytes_per_second", "h2d_pageable_bytes_per_second", "d2h_bytes_per_second",
                            "accelerator_flops_per_second"})
        cost.sources[k] = fmt::format("default (not measured: {}): {}", why, cost.sources[k].substr(9));
      std::cout << fmt::format("{}: transfer bandwidths and the accelerator throughput keep the H100 defaults; "
                               "only the host was measured\n",
                               why);
    }
    cost.validate(fmt::format("measured cost model for '{}'", file));
    cost.save(file);
    std::cout << fmt::format("host slowdown (accelerator / host throughput): {:.0f}x\nwrote {}\n",
                             cost.host_slowdown(), file);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "offload_calibrate: error: " << e.what() << '\n';
    return 1;
  }
}
