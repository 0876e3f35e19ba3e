#include <offload/executor.hpp>

#include <offload/offloadable.hpp>
#include <offload/stage_scheduler.hpp>
#include <offload/testing/mock_device.hpp>

#include <boost/test/unit_test.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

using namespace offload::literals;
using offload::device_id;

namespace {

// encoder -> denoiser (repeated) -> decoder, with a decoder-side statistic as an auxiliary tensor.
struct toy_pipeline {
  torch::nn::Linear enc{8, 16};
  torch::nn::Sequential den{torch::nn::Linear(16, 32), torch::nn::GELU(), torch::nn::Linear(32, 16)};
  torch::nn::Linear dec{16, 4};
  at::Tensor dec_scale = torch::linspace(0.5, 2.0, 4);
  offload::offloadable<torch::nn::Linear> c_enc{"enc", enc};
  offload::offloadable<torch::nn::Sequential> c_den{"den", den};
  offload::offloadable<torch::nn::Linear> c_dec{"dec", dec};

  toy_pipeline() {
    torch::manual_seed(1);
    for (auto* m : {static_cast<torch::nn::Module*>(enc.get()), static_cast<torch::nn::Module*>(den.get()),
                    static_cast<torch::nn::Module*>(dec.get())})
      for (auto& p : m->parameters()) {
        torch::NoGradGuard g;
        p.uniform_(-0.5, 0.5);
      }
    c_dec.register_aux("scale", dec_scale);
  }
  std::vector<offload::stage> stages(int steps) const {
    return {{"encode", {"enc"}, {{"enc", 512}}}, {"denoise", {"den"}, {{"den", 1024}}, steps},
            {"decode", {"dec"}, {{"dec", 256}}}};
  }
  std::vector<offload::component_info> infos() const {
    return {{"enc", c_enc.bytes()}, {"den", c_den.bytes()}, {"dec", c_dec.bytes()}};
  }
  std::vector<offload::component*> components() { return {&c_enc, &c_den, &c_dec}; }

  // Inputs are placed on the execution device of each stage by the caller (host here: mocks keep
  // tensors on the host).
  at::Tensor run(offload::executor& ex, const at::Tensor& x, int steps) {
    torch::NoGradGuard g;
    at::Tensor h;
    {
      auto s = ex.enter("encode");
      h = enc->forward(x);
    }
    for (int i = 0; i < steps; ++i) {
      auto s = ex.enter("denoise");
      h = h - 0.1 * den->forward(h);
    }
    at::Tensor y;
    {
      auto s = ex.enter("decode");
      y = dec->forward(h) * dec_scale;
    }
    ex.finish();
    return y;
  }
};

} // namespace

BOOST_AUTO_TEST_SUITE(executor)

BOOST_AUTO_TEST_CASE(outputs_are_bit_identical_under_every_policy) {
  toy_pipeline tp;
  const auto x = torch::rand({3, 8});
  // Reference: everything on the host.
  offload::device_set host_only;
  const auto host_plan = offload::schedule(tp.stages(4), tp.infos(), offload::parse_policy("enc=cpu,den=cpu,dec=cpu"),
                                           {.accelerator = device_id::mock(0)});
  offload::executor ref(host_plan, host_only, tp.components());
  const auto expected = tp.run(ref, x, 4);

  for (const char* text : {"resident", "enc=cuda:offload,den=cuda:on_demand,dec=cuda:on_demand",
                           "enc=cpu,den=cuda:lazy,dec=cuda:on_demand:pinned", "evict_on_demand"}) {
    offload::device_set devices;
    auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_MiB});
    const auto plan = offload::schedule(tp.stages(4), tp.infos(), offload::parse_policy(text),
                                        {.accelerator = device_id::mock(0), .devices = {{device_id::mock(0), 1_MiB}}});
    BOOST_TEST_REQUIRE(plan.fits());
    offload::executor ex(plan, devices, tp.components());
    const auto y = tp.run(ex, x, 4);
    BOOST_TEST(torch::equal(y, expected), text);
    // The mock saw exactly the planned moves: one allocation and one transfer per tensor onloaded.
    std::int64_t planned_tensors = 0, planned_bytes = 0;
    for (const auto& st : plan.steps)
      for (const auto& a : st.before) {
        planned_bytes += a.bytes;
        for (auto* c : tp.components())
          if (c->name() == a.component)
            planned_tensors += static_cast<std::int64_t>(
                (c == &tp.c_enc ? tp.c_enc.tensors().size()
                                : c == &tp.c_den ? tp.c_den.tensors().size() : tp.c_dec.tensors().size()));
      }
    BOOST_TEST(gpu.transfers() == planned_tensors, text);
    BOOST_TEST(gpu.bytes_in() == planned_bytes, text);
    BOOST_TEST(gpu.bytes_out() == 0);
    BOOST_TEST(gpu.peak() <= plan.peak_of(device_id::mock(0)));
    // Everything the plan leaves on the device after the last stage, and nothing else.
    std::int64_t left = 0;
    for (auto* c : tp.components()) left += c->location() == device_id::mock(0) ? c->bytes() : 0;
    BOOST_TEST(gpu.used() == left);
    ex.reset();
    BOOST_TEST(gpu.used() == 0);
  }
}

BOOST_AUTO_TEST_CASE(stages_out_of_order_are_refused) {
  toy_pipeline tp;
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  const auto plan = offload::schedule(tp.stages(2), tp.infos(), {}, {.accelerator = device_id::mock(0)});
  offload::executor ex(plan, devices, tp.components());
  try {
    auto s = ex.enter("denoise");
    BOOST_FAIL("expected placement_error");
  } catch (const offload::placement_error& e) {
    BOOST_TEST(std::string(e.what()).find("stage 'denoise' entered out of order (policy 'custom'): expected "
                                          "'encode'") != std::string::npos);
  }
  { auto s = ex.enter("encode"); }
  BOOST_CHECK_THROW(ex.finish(), offload::placement_error);
}

BOOST_AUTO_TEST_CASE(audit_at_the_boundary_catches_a_tensor_moved_by_hand) {
  toy_pipeline tp;
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  const auto plan = offload::schedule(tp.stages(1), tp.infos(), offload::parse_policy("resident"),
                                      {.accelerator = device_id::mock(0)});
  offload::executor ex(plan, devices, tp.components());
  { auto s = ex.enter("encode"); }
  {
    auto s = ex.enter("denoise");
    // What Wan's bug looks like: a statistic swapped for a host copy behind the scheduler's back.
    tp.dec_scale = tp.dec_scale.clone();
  }
  try {
    auto s = ex.enter("decode");
    BOOST_FAIL("expected placement_error");
  } catch (const offload::placement_error& e) {
    const std::string m = e.what();
    BOOST_TEST(m.find("tensor 'dec.scale' (auxiliary) expected mock:0/Float") != std::string::npos);
    BOOST_TEST(m.find("stage 'decode', policy 'resident'") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(simulated_out_of_memory_names_the_stage_and_leaves_a_clean_state) {
  toy_pipeline tp;
  offload::device_set devices;
  const std::int64_t cap = tp.c_enc.bytes() + tp.c_den.bytes() + 100; // decode's 256 B workspace won't fit
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = cap});
  const auto plan = offload::schedule(tp.stages(1), tp.infos(), offload::parse_policy("dec=cpu"),
                                      {.accelerator = device_id::mock(0), .devices = {{device_id::mock(0), cap}}});
  BOOST_TEST(!plan.fits());
  BOOST_TEST(plan.failure->stage == "encode"); // enc + den resident (init) + 512 B workspace
  offload::executor ex(plan, devices, tp.components());
  try {
    auto s = ex.enter("encode");
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.stage() == "encode");
    BOOST_TEST(std::string(e.what()).find("stage 'encode', policy 'dec=cpu'") != std::string::npos);
    BOOST_TEST(std::string(e.what()).find("would fit") != std::string::npos);
  }
  ex.reset();
  BOOST_TEST(gpu.used() == 0);
  for (auto* c : tp.components()) BOOST_CHECK_NO_THROW(c->audit(device_id::cpu(), {"reset", "dec=cpu"}));
}

BOOST_AUTO_TEST_CASE(trace_is_valid_chrome_json_with_stages_transfers_and_counters) {
  toy_pipeline tp;
  offload::device_set devices;
  offload::testing::add_mock(devices, 0, {.h2d_bytes_per_second = 1e6});
  const auto plan = offload::schedule(tp.stages(2), tp.infos(), offload::parse_policy("den=cuda:on_demand"),
                                      {.accelerator = device_id::mock(0)});
  offload::executor ex(plan, devices, tp.components());
  (void)tp.run(ex, torch::rand({1, 8}), 2);
  const auto j = nlohmann::json::parse(ex.trace().chrome_json());
  int stages = 0, onloads = 0, counters = 0;
  for (const auto& e : j["traceEvents"]) {
    if (e["ph"] == "X" && e["cat"] == "stage") ++stages;
    if (e["ph"] == "X" && e["cat"] == "onload") {
      ++onloads;
      BOOST_TEST(e["dur"].get<double>() > 0.0); // virtual transfer time
    }
    if (e["ph"] == "C") ++counters;
  }
  BOOST_TEST(stages == 4); // encode, denoise x2, decode
  BOOST_TEST(onloads == 3); // enc + dec at init, den at denoise
  BOOST_TEST(counters > 0);
}

BOOST_AUTO_TEST_SUITE_END()
