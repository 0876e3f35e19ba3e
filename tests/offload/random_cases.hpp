#pragma once
// Random test cases shared by the property tests (plan_properties_test.cpp, block_stream_test.cpp):
// fixed seeds so that a failure reproduces, scaled by hand through the environment
// (docs/robustness.md): OFFLOAD_PROPERTY_CASES=N multiplies the number of cases,
// OFFLOAD_PROPERTY_SEED=S changes the seed.
#include <offload/units.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>

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

} // namespace offload_test
