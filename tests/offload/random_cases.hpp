#pragma once
// Random test cases shared by the property tests (plan_properties_test.cpp, block_stream_test.cpp,
// tests/cuda/cuda_device_test.cpp): fixed seeds so that a failure reproduces, scaled by hand through
// the environment (docs/robustness.md): OFFLOAD_PROPERTY_CASES=N multiplies the number of cases,
// OFFLOAD_PROPERTY_SEED=S changes the seed.
#include <offload/placement_policy.hpp>
#include <offload/stage.hpp>
#include <offload/units.hpp>

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

namespace offload_test {

/// Number of cases: `base` times OFFLOAD_PROPERTY_CASES (default 1).
inline int cases(int base) {
  const char* s = std::getenv("OFFLOAD_PROPERTY_CASES");
  return base * (s ? std::max(1, std::atoi(s)) : 1);
}

/// `base`, varied by OFFLOAD_PROPERTY_SEED when it is set.
inline std::uint64_t seed(std::uint64_t base) {
  const char* s = std::getenv("OFFLOAD_PROPERTY_SEED");
  return s ? base ^ std::strtoull(s, nullptr, 10) : base;
}

class random_source {
public:
  explicit random_source(std::uint64_t s) : rng_(s) {}
  int uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool chance(double p) { return std::bernoulli_distribution(p)(rng_); }
  /// Log-uniform in [lo, hi].
  double log_uniform(double lo, double hi) {
    return std::exp(std::uniform_real_distribution<double>(std::log(lo), std::log(hi))(rng_));
  }
  /// A multiple of 64 MiB in [lo, hi] MiB.
  std::int64_t mib(int lo, int hi) { return std::int64_t{64} * uniform(lo / 64, hi / 64) * offload::MiB; }

private:
  std::mt19937_64 rng_;
};

/// A random policy for component `c`: executed on the host one time in five, else on the
/// accelerator; loaded at init or first use; evicted never, after use or when idle; pinned or
/// pageable; when it declares blocks, streamed half the time through 1-3 slots with a random
/// prefetch depth below the slots.
inline offload::component_policy random_component_policy(random_source& r, const offload::component_info& c) {
  offload::component_policy cp;
  if (r.uniform(0, 4) == 0) cp.execute_on = offload::target::host();
  cp.load = r.uniform(0, 1) ? offload::load_rule::init : offload::load_rule::first_use;
  cp.evict = std::array{offload::evict_rule::never, offload::evict_rule::after_use,
                        offload::evict_rule::when_idle}[static_cast<std::size_t>(r.uniform(0, 2))];
  cp.memory = r.uniform(0, 1) ? offload::host_memory::pinned : offload::host_memory::pageable;
  if (c.blocks && r.uniform(0, 1)) {
    cp.stream.slots = r.uniform(1, 3);
    cp.stream.prefetch = r.uniform(0, cp.stream.slots - 1);
  }
  return cp;
}

/// Whether two lists of tensors are equal, element for element and bit for bit.
inline bool identical(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!a[i].equal(b[i])) return false;
  return true;
}

} // namespace offload_test
