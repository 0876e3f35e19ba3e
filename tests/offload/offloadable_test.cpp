#include <offload/offloadable.hpp>

#include <offload/testing/errors.hpp>
#include <offload/testing/mock_device.hpp>

#include <boost/test/unit_test.hpp>
#include <torch/torch.h>

using namespace offload::literals;
using offload::device_id;

namespace {

// A VAE-like wrapper: the module plus latent statistics that are plain members (as in Wan's WanVAE).
struct toy_vae {
  torch::nn::Sequential model{torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)),
                              torch::nn::BatchNorm2d(4)};
  at::Tensor mean = torch::arange(16, torch::kFloat32);
  at::Tensor std = torch::full({16}, 2.0f);
};

// A DiT-like module with a complex RoPE table that is not a buffer.
struct toy_ditImpl : torch::nn::Module {
  torch::nn::Linear proj{nullptr};
  at::Tensor freqs;
  toy_ditImpl() {
    proj = register_module("proj", torch::nn::Linear(8, 8));
    freqs = torch::polar(torch::ones({4, 2}, torch::kFloat64), torch::rand({4, 2}, torch::kFloat64));
  }
};
TORCH_MODULE(toy_dit);


} // namespace

BOOST_AUTO_TEST_SUITE(offloadable)

BOOST_AUTO_TEST_CASE(discovers_parameters_buffers_and_aux) {
  toy_vae vae;
  offload::offloadable c("vae", vae.model);
  c.register_aux("mean", vae.mean).register_aux("std", vae.std);
  const auto t = c.tensors().tensors();
  std::vector<std::string> paths;
  for (const auto& x : t) paths.push_back(x.path);
  const std::vector<std::string> expected = {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                             "1.running_var", "1.num_batches_tracked", "mean", "std"};
  BOOST_TEST(paths == expected, boost::test_tools::per_element());
  BOOST_TEST(t[4].kind == offload::tensor_kind::buffer);
  BOOST_TEST(t[7].kind == offload::tensor_kind::auxiliary);
  std::int64_t bytes = 0;
  for (auto& p : vae.model->parameters()) bytes += static_cast<std::int64_t>(p.nbytes());
  for (auto& b : vae.model->buffers()) bytes += static_cast<std::int64_t>(b.nbytes());
  BOOST_TEST(c.bytes() == bytes + std::int64_t{2} * 16 * 4);
}

BOOST_AUTO_TEST_CASE(moves_everything_in_one_call_and_evicts_without_copying_back) {
  toy_vae vae;
  offload::offloadable c("vae", vae.model);
  c.register_aux("mean", vae.mean).register_aux("std", vae.std);
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
  const auto master_weight = c.tensors().master("0.weight").clone();
  const auto* host_mean_ptr = vae.mean.data_ptr();

  c.place_on(gpu);
  BOOST_TEST(c.location() == device_id::mock(0));
  BOOST_TEST(gpu.used() == c.bytes());
  BOOST_TEST(c.tensors().bytes_per_device().at(device_id::mock(0)) == c.bytes());
  BOOST_TEST(vae.mean.data_ptr() != host_mean_ptr); // the aux moved with the module
  BOOST_CHECK_NO_THROW(c.audit(device_id::mock(0), {"decode", "vae_cpu"}));

  // Forward runs unchanged on the mock copy and gives the host result.
  const auto x = torch::rand({1, 3, 8, 8});
  vae.model->eval();
  const auto y_gpu = vae.model->forward(x);
  c.place_on(devices.host());
  const auto y_host = vae.model->forward(x);
  BOOST_TEST(torch::equal(y_gpu, y_host));

  BOOST_TEST(gpu.used() == 0);
  BOOST_TEST(gpu.bytes_out() == 0); // immutable weights: eviction copies nothing back
  BOOST_TEST(vae.mean.data_ptr() == host_mean_ptr);
  BOOST_TEST(torch::equal(c.tensors().master("0.weight"), master_weight)); // master intact
  BOOST_CHECK_NO_THROW(c.audit(device_id::cpu(), {"init", "vae_cpu"}));
}

BOOST_AUTO_TEST_CASE(rope_table_keeps_its_dtype_and_follows_the_device) {
  toy_dit dit;
  offload::offloadable c("dit", dit);
  c.register_aux("freqs", dit->freqs, offload::dtype_rule::keep);
  c.convert(torch::kBFloat16);
  BOOST_TEST(dit->proj->weight.scalar_type() == torch::kBFloat16);
  BOOST_TEST(dit->freqs.scalar_type() == torch::kComplexDouble);
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0);
  c.place_on(gpu);
  BOOST_TEST(dit->freqs.scalar_type() == torch::kComplexDouble);
  for (const auto& t : c.tensors().tensors()) BOOST_TEST(t.device == device_id::mock(0));
  c.place_on(devices.host());
}

BOOST_AUTO_TEST_CASE(complex_aux_that_follows_dtype_is_refused) {
  toy_dit dit;
  offload::offloadable c("dit", dit);
  c.register_aux("freqs", dit->freqs, offload::dtype_rule::follow);
  const auto msg = offload::testing::error_message([&] { c.convert(torch::kBFloat16); });
  BOOST_TEST(msg.find("offload.placement.complex_follows_dtype") != std::string::npos);
  BOOST_TEST(msg.find("'dit.freqs'") != std::string::npos);
  BOOST_TEST(msg.find("dtype_rule::keep") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(audit_names_path_devices_dtypes_stage_and_policy) {
  toy_vae vae;
  offload::offloadable c("vae", vae.model);
  c.register_aux("mean", vae.mean).register_aux("std", vae.std);
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0);
  c.place_on(gpu);
  vae.mean = vae.mean.clone(); // replaced behind offload's back: the Wan bug class
  const auto msg = offload::testing::error_message([&] { c.audit(device_id::mock(0), {"decode", "offload_model+vae_cpu"}); });
  BOOST_TEST(msg.find("offload.placement.device_mismatch") != std::string::npos);
  BOOST_TEST(msg.find("tensor 'vae.mean' (auxiliary) expected mock:0/Float") != std::string::npos);
  BOOST_TEST(msg.find("found cpu/Float (not the copy offload placed)") != std::string::npos);
  BOOST_TEST(msg.find("stage 'decode', policy 'offload_model+vae_cpu'") != std::string::npos);

  // A parameter converted by hand is caught with its dotted path and both dtypes.
  offload::offloadable lin("enc", torch::nn::Linear(2, 2));
  lin.module()->weight.set_data(lin.module()->weight.to(torch::kFloat64));
  const auto msg2 = offload::testing::error_message([&] { lin.audit(device_id::cpu(), {"text_encode", "t5_cpu"}); });
  BOOST_TEST(msg2.find("tensor 'enc.weight' (parameter) expected cpu/Float, found cpu/Double") !=
             std::string::npos);
}

BOOST_AUTO_TEST_CASE(failed_move_rolls_back_everything) {
  toy_vae vae;
  offload::offloadable c("vae", vae.model);
  c.register_aux("mean", vae.mean).register_aux("std", vae.std);
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0);
  for (int n = 1; n <= static_cast<int>(c.tensors().size()); ++n) {
    gpu.fail_transfer_at(n);
    BOOST_CHECK_THROW(c.place_on(gpu), offload::capacity_error);
    BOOST_TEST(gpu.used() == 0);
    BOOST_TEST(c.location() == device_id::cpu());
    BOOST_CHECK_NO_THROW(c.audit(device_id::cpu(), {"decode", "rollback"}));
  }
  gpu.fail_allocation_at(4);
  BOOST_CHECK_THROW(c.place_on(gpu), offload::capacity_error);
  BOOST_TEST(gpu.used() == 0);
  BOOST_CHECK_NO_THROW(c.place_on(gpu)); // the next try succeeds
  BOOST_TEST(gpu.used() == c.bytes());
}

BOOST_AUTO_TEST_CASE(mutable_tensors_are_copied_back_on_eviction) {
  toy_vae vae;
  offload::offloadable c("vae", vae.model);
  c.tensors().set_mutable("1.running_");
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0);
  c.place_on(gpu);
  torch::NoGradGuard no_grad;
  vae.model[1]->as<torch::nn::BatchNorm2d>()->running_mean.fill_(7.0f);
  c.place_on(devices.host());
  BOOST_TEST(gpu.bytes_out() == 2 * 4 * 4);
  BOOST_TEST(vae.model[1]->as<torch::nn::BatchNorm2d>()->running_mean[0].item<float>() == 7.0f);
}

// Fault injection (issue 7): a copy-back that fails during eviction leaves the component wholly on
// the device, accounted once, and the next eviction succeeds with the device values.
BOOST_AUTO_TEST_CASE(failed_copy_back_leaves_the_component_on_its_device) {
  toy_vae vae;
  offload::offloadable c("vae", vae.model);
  c.tensors().set_mutable("1.running_");
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0);
  c.place_on(gpu);
  torch::NoGradGuard no_grad;
  auto& bn = *vae.model[1]->as<torch::nn::BatchNorm2d>();
  bn.running_mean.fill_(7.0f);
  bn.running_var.fill_(3.0f);
  gpu.fail_transfer_at(2); // running_mean copies back, running_var fails
  const auto msg = offload::testing::error_message([&] { c.place_on(devices.host()); });
  BOOST_TEST(msg.find("offload.capacity.injected_fault") != std::string::npos, msg);
  BOOST_TEST(msg.find("vae.1.running_var") != std::string::npos, msg);
  BOOST_TEST(c.location() == device_id::mock(0));
  BOOST_TEST(gpu.used() == c.bytes());
  BOOST_CHECK_NO_THROW(c.audit(device_id::mock(0), {"evict", "test"}));
  c.place_on(devices.host()); // retried: succeeds, nothing released twice
  BOOST_TEST(gpu.used() == 0);
  BOOST_TEST(c.location().is_host());
  BOOST_CHECK_NO_THROW(c.audit(device_id::cpu(), {"evict", "test"}));
  BOOST_TEST(bn.running_mean[0].item<float>() == 7.0f);
  BOOST_TEST(bn.running_var[0].item<float>() == 3.0f);
}

BOOST_AUTO_TEST_CASE(wraps_holders_and_shared_pointers) {
  offload::offloadable a("a", torch::nn::Linear(3, 3));
  offload::offloadable b("b", std::make_shared<torch::nn::LinearImpl>(3, 3));
  offload::offloadable d("d", toy_dit());
  BOOST_TEST(a.bytes() == b.bytes());
  BOOST_TEST(d.tensors().size() == 2u);
}

BOOST_AUTO_TEST_CASE(refuses_modules_not_on_the_host_and_undefined_aux) {
  at::Tensor undefined;
  offload::offloadable c("c", torch::nn::Linear(2, 2));
  const auto msg = offload::testing::error_message([&] { c.register_aux("cache", undefined); });
  BOOST_TEST(msg.find("auxiliary tensor 'c.cache' is undefined") != std::string::npos);
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0);
  c.place_on(gpu);
  at::Tensor late = torch::ones({2});
  const auto msg2 = offload::testing::error_message([&] { c.register_aux("late", late); });
  BOOST_TEST(msg2.find("while it is on mock:0") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
