// offload::testing::host_memory_probe: live bytes, peak and allocations of the CPU tensors the
// calling thread allocates while a probe lives.
#include <offload/testing/host_memory_probe.hpp>

#include <boost/test/unit_test.hpp>
#include <torch/torch.h>

BOOST_AUTO_TEST_SUITE(host_memory_probe)

BOOST_AUTO_TEST_CASE(counts_live_bytes_peak_and_allocations) {
  auto before = torch::ones({1000}); // allocated before the probe: its free is ignored
  offload::testing::host_memory_probe probe;
  BOOST_TEST(probe.current() == 0);
  auto a = torch::empty({1000}, torch::kFloat32); // 4000 bytes
  BOOST_TEST(probe.current() == 4000);
  {
    auto b = torch::empty({500}, torch::kFloat64); // 4000 bytes
    BOOST_TEST(probe.current() == 8000);
  }
  BOOST_TEST(probe.current() == 4000);
  BOOST_TEST(probe.peak() == 8000);
  BOOST_TEST(probe.allocations() == 2);
  probe.reset_peak();
  BOOST_TEST(probe.peak() == 4000);
  // An expression's temporaries count while they live.
  auto c = torch::mul(torch::add(a, a), a); // a + a (4000) is alive while the product (4000) is allocated
  BOOST_TEST(probe.peak() == 12000);
  BOOST_TEST(probe.current() == 8000);
  a = torch::Tensor();
  c = torch::Tensor();
  BOOST_TEST(probe.current() == 0);
  before = torch::Tensor(); // freeing an older tensor changes nothing
  BOOST_TEST(probe.current() == 0);
}

BOOST_AUTO_TEST_CASE(the_innermost_probe_counts) {
  offload::testing::host_memory_probe outer;
  auto a = torch::empty({256}, torch::kFloat32);
  {
    offload::testing::host_memory_probe inner;
    auto b = torch::empty({256}, torch::kFloat32);
    BOOST_TEST(inner.current() == 1024);
    BOOST_TEST(outer.current() == 1024); // only a
  }
  auto c = torch::empty({256}, torch::kFloat32);
  BOOST_TEST(outer.current() == 2048);
  BOOST_TEST(outer.allocations() == 2);
}

BOOST_AUTO_TEST_SUITE_END()
