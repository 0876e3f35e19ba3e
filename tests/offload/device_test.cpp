#include <offload/device.hpp>

#include <offload/testing/mock_device.hpp>

#include <boost/test/unit_test.hpp>
#include <torch/torch.h>

using namespace offload::literals;
using offload::device_id;

BOOST_AUTO_TEST_SUITE(device)

BOOST_AUTO_TEST_CASE(parses_and_prints_device_names) {
  BOOST_TEST(device_id::parse("cpu") == device_id::cpu());
  BOOST_TEST(device_id::parse("cuda") == device_id::cuda(0));
  BOOST_TEST(device_id::parse("cuda:3") == device_id::cuda(3));
  BOOST_TEST(device_id::parse("mock:1") == device_id::mock(1));
  BOOST_TEST(device_id::mock(2).str() == "mock:2");
  BOOST_TEST(device_id::mock(0).torch_device().is_cpu()); // mock tensors live on the host
  for (const char* bad : {"gpu0", "cuda:x", "cpu:1", "mock:", ""})
    BOOST_CHECK_THROW(device_id::parse(bad), offload::config_error);
  try {
    device_id::parse("cuda:x");
  } catch (const offload::config_error& e) {
    BOOST_TEST(std::string(e.what()).find("position 5") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(mock_accounts_peak_and_raises_capacity_error) {
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1000});
  gpu.allocate(600, "a");
  gpu.allocate(300, "b");
  BOOST_TEST(gpu.used() == 900);
  gpu.release(600);
  BOOST_TEST(gpu.used() == 300);
  BOOST_TEST(gpu.peak() == 900);
  try {
    gpu.allocate(701, "dit.blocks.0.ffn.0.weight");
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.id() == "offload.capacity.out_of_memory");
    BOOST_TEST(e.device() == "mock:0");
    BOOST_TEST(e.needed() == 1001);
    BOOST_TEST(e.available() == 1000);
    BOOST_TEST(std::string(e.what()).find("'dit.blocks.0.ffn.0.weight'") != std::string::npos);
  }
  BOOST_TEST(gpu.used() == 300); // nothing accounted on failure
}

BOOST_AUTO_TEST_CASE(mock_charges_transfers_to_the_virtual_clock) {
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(
      devices, 0, {.capacity = 1_GiB, .h2d_bytes_per_second = 1000, .h2d_pageable_bytes_per_second = 250,
                   .d2h_bytes_per_second = 500});
  const auto host = torch::ones({250}); // 1000 bytes
  const auto on_gpu = gpu.copy_from_host(host, "x", /*pinned=*/true);
  BOOST_TEST(devices.clock().now() == 1.0);
  BOOST_TEST(!on_gpu.is_same(host));
  BOOST_TEST(on_gpu.data_ptr() != host.data_ptr()); // a distinct copy
  BOOST_TEST(torch::equal(on_gpu, host));
  (void)gpu.copy_from_host(host, "x", /*pinned=*/false);
  BOOST_TEST(devices.clock().now() == 5.0);
  auto back = torch::zeros({250});
  gpu.copy_to_host(on_gpu, back, "x");
  BOOST_TEST(devices.clock().now() == 7.0);
  BOOST_TEST(gpu.transfer_log().size() == 3u);
  BOOST_TEST(gpu.transfer_log()[2].from == device_id::mock(0));
  BOOST_TEST(gpu.bytes_in() == 2000);
  BOOST_TEST(gpu.bytes_out() == 1000);
}

BOOST_AUTO_TEST_CASE(fault_injection_fails_the_nth_allocation_and_transfer) {
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
  gpu.fail_allocation_at(3);
  gpu.allocate(1, "a");
  gpu.allocate(1, "b");
  try {
    gpu.allocate(1, "c");
    BOOST_FAIL("expected the injected failure");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.id() == "offload.capacity.injected_fault");
    BOOST_TEST(std::string(e.what()).find("'c'") != std::string::npos);
  }
  gpu.allocate(1, "d"); // disarmed after firing
  gpu.fail_transfer_at(1);
  BOOST_CHECK_THROW((void)gpu.copy_from_host(torch::ones({2}), "t", true), offload::capacity_error);
  BOOST_CHECK_NO_THROW((void)gpu.copy_from_host(torch::ones({2}), "t", true));
}

BOOST_AUTO_TEST_CASE(device_set_finds_devices_and_names_unknown_ones) {
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  BOOST_TEST(devices.get(device_id::cpu()).id().is_host());
  BOOST_CHECK_THROW(offload::testing::add_mock(devices, 0), offload::config_error);
  try {
    (void)devices.get(device_id::cuda(0));
    BOOST_FAIL("expected config_error");
  } catch (const offload::config_error& e) {
    BOOST_TEST(std::string(e.what()).find("known: cpu, mock:0") != std::string::npos);
  }
}

BOOST_AUTO_TEST_SUITE_END()
