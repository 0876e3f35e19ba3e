#include <offload/executor.hpp>

#include <offload/offloadable.hpp>
#include <offload/stage_scheduler.hpp>
#include <offload/testing/errors.hpp>
#include <offload/testing/mock_device.hpp>
#include <offload/testing/simulate.hpp>

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

// stage_scope::run: errors of a stage's compute name the stage and the policy, as errors of its moves do.
BOOST_AUTO_TEST_CASE(errors_of_a_stage_s_compute_name_the_stage_and_the_policy) {
  toy_pipeline tp;
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
  const std::string policy = "enc=cpu,den=cuda:on_demand,dec=cpu";
  const auto plan = offload::schedule(tp.stages(2), tp.infos(), offload::parse_policy(policy),
                                      {.accelerator = device_id::mock(0), .devices = {{device_id::mock(0), 1_GiB}}});
  BOOST_TEST_REQUIRE(plan.fits());
  const std::int64_t peak = plan.steps.at(2).peak_bytes.at(device_id::mock(0)); // steps: init, encode, denoise
  BOOST_TEST_REQUIRE(plan.steps.at(2).stage == "denoise");
  offload::executor ex(plan, devices, tp.components());
  {
    auto s = ex.enter("encode");
    // What the compute returns comes back; void works too.
    BOOST_TEST(s.run([] { return 42; }) == 42);
    int calls = 0;
    s.run([&] { ++calls; });
    BOOST_TEST(calls == 1);
  }
  auto s = ex.enter("denoise");
  // A capacity_error without a stage (a block copy that failed mid-compute) gets the stage and the policy.
  try {
    s.run([&]() -> int {
      throw offload::capacity_error("offload.capacity.injected_fault", "copy failed", "mock:0");
    });
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.id() == "offload.capacity.injected_fault");
    BOOST_TEST(e.stage() == "denoise");
    BOOST_TEST(e.device() == "mock:0");
    BOOST_TEST(std::string(e.what()) ==
                   fmt::format("offload.capacity.injected_fault: stage 'denoise', policy '{}': copy failed", policy),
               e.what());
  }
  // One that already names its stage passes unchanged.
  try {
    s.run([] { throw offload::capacity_error("offload.capacity.out_of_memory", "x: stage 'decode': y", "", "decode"); });
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.stage() == "decode");
    BOOST_TEST(std::string(e.what()) == "offload.capacity.out_of_memory: x: stage 'decode': y");
  }
  // The device's allocator running out mid-compute: the plan's figures for the stage, and what to do.
  try {
    s.run([] {
      throw c10::OutOfMemoryError({"compute", __FILE__, static_cast<std::uint32_t>(__LINE__)},
                                  "CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines");
    });
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    const std::string m = e.what();
    BOOST_TEST(e.id() == "offload.capacity.compute_out_of_memory");
    BOOST_TEST(e.stage() == "denoise");
    BOOST_TEST(e.device() == "mock:0");
    BOOST_TEST(m.find(fmt::format("stage 'denoise', policy '{}': the device ran out of memory during the stage's "
                                  "compute, beyond the plan (mock:0: peak {} (workspace 1.00 KiB)): CUDA out of "
                                  "memory. Tried to allocate 2.00 GiB;",
                                  policy, offload::format_bytes(peak))) != std::string::npos,
               m);
    BOOST_TEST(m.find("more lines") == std::string::npos, m);
  }
  // Other exceptions pass unchanged.
  BOOST_CHECK_THROW(s.run([] { throw std::logic_error("bug"); }), std::logic_error);
  BOOST_TEST(gpu.used() > 0); // the stage is still open: its component and workspace stay
}

// A device in an error state records no compute point: a prefetch (whose copies must wait for one)
// fails before anything is allocated, naming the stage, the policy and the component.
BOOST_AUTO_TEST_CASE(a_failed_compute_point_fails_a_prefetch_cleanly) {
  toy_pipeline tp;
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.h2d_bytes_per_second = 1e6});
  auto pol = offload::parse_policy("enc=cuda:on_demand:pinned,den=cuda:on_demand:pinned,dec=cuda:on_demand:pinned");
  pol.prefetch = true;
  auto stages = tp.stages(1);
  for (auto& st : stages) st.seconds = 0.05; // compute to hide the copies behind
  const auto plan = offload::schedule(stages, tp.infos(), pol,
                                      {.accelerator = gpu.id(), .devices = {{gpu.id(), 1_MiB, 1e6}}});
  plan.require_fit();
  BOOST_TEST_REQUIRE(!plan.steps.at(1).prefetch.empty()); // encode prefetches den
  offload::executor ex(plan, devices, tp.components());
  gpu.fail_record_compute_at(1);
  try {
    auto s = ex.enter("encode");
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    const std::string m = e.what();
    BOOST_TEST(e.id() == "offload.capacity.injected_fault");
    BOOST_TEST(e.stage() == "encode");
    BOOST_TEST(m.find(fmt::format("stage 'encode', policy '{}': prefetching 'den.*' to mock:0: injected failure on "
                                  "mock:0 while recording a compute point",
                                  pol.label())) != std::string::npos,
               m);
  }
  ex.reset();
  BOOST_TEST(gpu.used() == 0);
  BOOST_TEST(gpu.copies_in_flight() == 0u);
  for (auto* c : tp.components()) BOOST_CHECK_NO_THROW(c->audit(device_id::cpu(), {"reset", "prefetch"}));
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

BOOST_AUTO_TEST_CASE(cross_stage_prefetch_overlaps_compute_and_gives_the_same_result) {
  // Each component moves for its stage only (on_demand); with `prefetch` the next stage's component
  // starts moving during the current stage's last repetition, on the transfer stream.
  const at::Tensor x = torch::rand({3, 8});
  const double bw = 1e6; // 1 MB/s: a component's copy takes a few milliseconds of virtual time
  const double compute = 0.05;
  auto run = [&](const std::string& policy, bool prefetch, int steps, int ran_steps) {
    toy_pipeline tp;
    offload::device_set devices;
    auto& gpu = offload::testing::add_mock(devices, 0, {.h2d_bytes_per_second = bw});
    auto pol = offload::parse_policy(policy);
    pol.prefetch = prefetch;
    auto stages = tp.stages(steps);
    for (auto& st : stages) st.seconds = compute; // the scheduler credits the overlap against it
    const auto plan = offload::schedule(stages, tp.infos(), pol,
                                        {.accelerator = gpu.id(), .devices = {{gpu.id(), 1_MiB, bw}}});
    plan.require_fit();
    offload::executor ex(plan, devices, tp.components());
    torch::NoGradGuard g;
    at::Tensor h;
    {
      auto s = ex.enter("encode");
      s.compute(compute);
      h = tp.enc->forward(x);
    }
    for (int i = 0; i < ran_steps; ++i) {
      auto s = ex.enter("denoise");
      s.compute(compute);
      h = h - 0.1 * tp.den->forward(h);
    }
    at::Tensor y;
    {
      auto s = ex.enter("decode");
      s.compute(compute);
      y = tp.dec->forward(h) * tp.dec_scale;
    }
    ex.finish();
    struct out {
      at::Tensor y;
      offload::plan plan;
      double seconds;
      std::int64_t peak, bytes_in;
      std::size_t in_flight;
      std::vector<offload::testing::transfer_record> log;
    };
    return out{y, plan, devices.clock().now(), gpu.peak(), gpu.bytes_in(), gpu.copies_in_flight(), gpu.transfer_log()};
  };
  const std::string policy = "enc=mock:0:on_demand:pinned,den=mock:0:on_demand:pinned,dec=mock:0:on_demand:pinned";
  const auto plain = run(policy, false, 3, 3);
  const auto pre = run(policy, true, 3, 3);
  // The plan: den is prefetched during encode, dec during the last denoise step; nothing else moves.
  BOOST_TEST(pre.plan.steps[1].prefetch.size() == 1u);
  BOOST_TEST(pre.plan.steps[1].prefetch.at(0).component == "den");
  BOOST_TEST(pre.plan.steps[2].prefetch.at(0).component == "dec");
  BOOST_TEST(pre.plan.steps[2].before.empty()); // no onload before denoise: den is there
  BOOST_TEST(pre.plan.bytes_to_devices == plain.plan.bytes_to_devices);
  BOOST_TEST(pre.plan.policy.str().find("prefetch") != std::string::npos);
  // Same bits, same bytes; the mock peaks where the plan says (encode now holds enc and den).
  BOOST_TEST(torch::equal(pre.y, plain.y));
  BOOST_TEST(pre.bytes_in == plain.bytes_in);
  const auto mock0 = device_id::mock(0);
  BOOST_TEST(pre.peak == pre.plan.peak_of(mock0));
  BOOST_TEST(pre.plan.steps[1].peak_bytes.at(mock0) ==
             plain.plan.steps[1].peak_bytes.at(mock0) + pre.plan.component_bytes.at("den"));
  BOOST_TEST(pre.in_flight == 0u);
  // Time: the prefetched copies ran on the transfer stream while compute ran (the log says async),
  // so the run is shorter by exactly their time (each is shorter than the compute it hides behind).
  const double den_copy = static_cast<double>(pre.plan.component_bytes.at("den")) / bw;
  const double dec_copy = static_cast<double>(pre.plan.component_bytes.at("dec")) / bw;
  BOOST_TEST_REQUIRE(den_copy < compute);
  BOOST_TEST_REQUIRE(dec_copy < compute);
  for (const auto& r : pre.log)
    BOOST_TEST(r.async == !r.what.starts_with("enc."), r.what); // den and dec prefetched, enc loaded at encode
  BOOST_TEST(std::abs((plain.seconds - pre.seconds) - (den_copy + dec_copy)) < 1e-9,
             plain.seconds << " vs " << pre.seconds);
  BOOST_TEST(std::abs(pre.plan.predicted_seconds - (plain.plan.predicted_seconds - den_copy - dec_copy)) < 1e-9);
  // A stage run fewer times than planned never issues its prefetch: the next stage loads it.
  const auto short_run = run(policy, true, 3, 2);
  BOOST_TEST(torch::equal(short_run.y, run(policy, false, 3, 2).y));
  BOOST_TEST(short_run.in_flight == 0u);
  BOOST_TEST(short_run.bytes_in == pre.bytes_in);
  for (const auto& r : short_run.log)
    BOOST_TEST(r.async == r.what.starts_with("den."), r.what); // dec's prefetch was never issued
  // No room on top of the stage's peak: nothing is prefetched.
  toy_pipeline tp;
  auto pol = offload::parse_policy(policy);
  pol.prefetch = true;
  const auto tight = offload::schedule(tp.stages(3), tp.infos(), pol,
                                       {.accelerator = mock0, .devices = {{mock0, plain.plan.peak_of(mock0), bw}}});
  BOOST_TEST(tight.fits());
  for (const auto& st : tight.steps) BOOST_TEST(st.prefetch.empty(), st.stage);
  // Pageable masters are not prefetched: the host thread would wait for their copies (the mock
  // models it: a pageable asynchronous copy holds the compute clock), so they would hide nothing.
  const std::string pageable = "enc=mock:0:on_demand,den=mock:0:on_demand,dec=mock:0:on_demand";
  const auto pageable_pre = run(pageable, true, 3, 3);
  const auto pageable_plain = run(pageable, false, 3, 3);
  for (const auto& st : pageable_pre.plan.steps) BOOST_TEST(st.prefetch.empty(), st.stage);
  BOOST_TEST(pageable_pre.plan.predicted_seconds == pageable_plain.plan.predicted_seconds);
  BOOST_TEST(pageable_pre.seconds == pageable_plain.seconds);
  BOOST_TEST(torch::equal(pageable_pre.y, pre.y));
  {
    offload::device_set devices;
    auto& gpu = offload::testing::add_mock(devices, 0, {.h2d_bytes_per_second = bw});
    toy_pipeline t;
    const double t0 = devices.clock().now();
    t.c_den.prefetch_onto(gpu); // pageable: the clock moves by the copy's time at once
    BOOST_TEST(std::abs(devices.clock().now() - (t0 + static_cast<double>(t.c_den.bytes()) / bw)) < 1e-12);
    t.c_den.finish_placement();
    t.c_den.place_on(devices.host());
  }
}

BOOST_AUTO_TEST_CASE(no_prefetch_into_a_stage_that_streams_blocks_on_the_device) {
  // denoise streams the DiT: its transfer stream carries the block copies, so the VAE is not
  // prefetched there (queued ahead of the blocks it would delay them by as much as it hides);
  // text_encode streams nothing, so the DiT's footprint moves during it.
  const std::vector<offload::component_info> comps = {
      {"t5", 4_GiB},
      {"dit", 3_GiB, offload::block_layout{std::vector<std::int64_t>(10, 256_MiB), 256_MiB}},
      {"vae", 1_GiB}};
  const std::vector<offload::stage> stages = {{"text_encode", {"t5"}, {{"t5", 1_GiB}}, 1, 0.5},
                                              {"denoise", {"dit"}, {{"dit", 2_GiB}}, 10, 0.2},
                                              {"decode", {"vae"}, {{"vae", 3_GiB}}, 1, 1.0}};
  const auto mock0 = device_id::mock(0);
  const double bw = 25e9;
  auto plan_of = [&](const char* text) {
    return offload::schedule(stages, comps, offload::parse_policy(text),
                             {.accelerator = mock0, .devices = {{mock0, 16_GiB, bw}}});
  };
  const auto streamed = plan_of("t5=cuda:on_demand:pinned,dit=cuda:on_demand:stream=2:pinned,vae=cuda:on_demand:pinned,prefetch");
  const auto whole = plan_of("t5=cuda:on_demand:pinned,dit=cuda:on_demand:pinned,vae=cuda:on_demand:pinned,prefetch");
  BOOST_REQUIRE(streamed.fits());
  BOOST_REQUIRE(whole.fits());
  BOOST_TEST(streamed.step("text_encode")->prefetch.size() == 1u);
  BOOST_TEST(streamed.step("text_encode")->prefetch.at(0).component == "dit");
  BOOST_TEST(streamed.step("denoise")->prefetch.empty());
  BOOST_TEST(streamed.step("decode")->before.size() == 1u); // the VAE loads when decode begins
  BOOST_TEST(whole.step("denoise")->prefetch.size() == 1u); // unstreamed, it moves during the last step
  // The simulation agrees with the prediction.
  const auto sim = offload::testing::simulate(streamed, comps, {.h2d_bytes_per_second = bw});
  BOOST_TEST(std::abs(sim.seconds - streamed.predicted_seconds) < 1e-9, sim.seconds << " vs " << streamed.predicted_seconds);
  BOOST_TEST(sim.peak_bytes.at(mock0) == streamed.peak_of(mock0));
}

BOOST_AUTO_TEST_CASE(a_prefetched_component_is_not_read_before_its_copy) {
  toy_pipeline tp;
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.h2d_bytes_per_second = 1e6});
  tp.c_den.use_pinned_memory(true); // from pageable memory the host would wait for the copy
  const double t0 = devices.clock().now();
  tp.c_den.prefetch_onto(gpu);
  // Placed and accounted at once; the data arrives on the transfer stream (one copy per tensor).
  BOOST_TEST(gpu.used() == tp.c_den.bytes());
  BOOST_TEST(tp.c_den.location() == gpu.id());
  BOOST_TEST(gpu.copies_in_flight() == tp.c_den.tensors().size());
  BOOST_TEST(devices.clock().now() == t0); // the compute stream did not wait
  BOOST_TEST(offload::testing::error_id([&] { tp.c_den.audit(gpu.id(), {"denoise", "test"}); }) ==
             "offload.placement.read_before_transfer");
  tp.c_den.finish_placement();
  BOOST_TEST(std::abs(devices.clock().now() - (t0 + static_cast<double>(tp.c_den.bytes()) / 1e6)) < 1e-12);
  BOOST_TEST(gpu.copies_in_flight() == 0u);
  tp.c_den.audit(gpu.id(), {"denoise", "test"});
  for (const auto& item : tp.den->named_parameters())
    BOOST_TEST(torch::equal(item.value(), tp.c_den.tensors().master(item.key())), item.key());
  tp.c_den.place_on(devices.host());
  BOOST_TEST(gpu.used() == 0);
  // Evicted while its copies are in flight: the eviction waits for them first.
  tp.c_den.prefetch_onto(gpu);
  tp.c_den.place_on(devices.host());
  BOOST_TEST(gpu.copies_in_flight() == 0u);
  BOOST_TEST(gpu.used() == 0);
  // A failed copy leaves the component home and the device as it was.
  gpu.fail_transfer_at(2);
  BOOST_TEST(offload::testing::error_id([&] { tp.c_den.prefetch_onto(gpu); }) == "offload.capacity.injected_fault");
  BOOST_TEST(tp.c_den.location() == device_id::cpu());
  BOOST_TEST(gpu.used() == 0);
  BOOST_TEST(gpu.copies_in_flight() == 0u);
}

BOOST_AUTO_TEST_CASE(simulated_prefetch_takes_the_predicted_time) {
  // Sized components (no tensors) on the transfer stream: the simulation's time is the plan's.
  const std::vector<offload::component_info> comps = {{"t5", 4_GiB}, {"dit", 3_GiB}, {"vae", 1_GiB}};
  const std::vector<offload::stage> stages = {{"text_encode", {"t5"}, {{"t5", 1_GiB}}, 1, 0.5},
                                              {"denoise", {"dit"}, {{"dit", 2_GiB}}, 10, 0.2},
                                              {"decode", {"vae"}, {{"vae", 3_GiB}}, 1, 1.0}};
  const double bw = 25e9;
  for (const char* text : {"offload_model,prefetch", "t5=cuda:on_demand:pinned,dit=cuda:on_demand:pinned,vae=cuda:on_demand:pinned,prefetch",
                           "t5=cuda:on_demand:pinned,dit=cuda:on_demand:pinned,vae=cuda:on_demand:pinned",
                           "t5=cuda:on_demand,dit=cuda:on_demand,vae=cuda:on_demand,prefetch"}) {
    BOOST_TEST_CONTEXT(text) {
      const auto mock0 = device_id::mock(0);
      const auto plan = offload::schedule(stages, comps, offload::parse_policy(text),
                                          {.accelerator = mock0, .devices = {{mock0, 16_GiB, bw}}});
      BOOST_REQUIRE(plan.fits());
      const auto sim = offload::testing::simulate(plan, comps, {.h2d_bytes_per_second = bw});
      BOOST_TEST(sim.peak_bytes.at(mock0) == plan.peak_of(mock0));
      BOOST_TEST(std::abs(sim.seconds - plan.predicted_seconds) < 1e-9, sim.seconds << " vs " << plan.predicted_seconds);
    }
  }
  // The dit's copy (0.13 s) hides behind text_encode (0.5 s); the vae's behind one denoise step.
  const auto mock0 = device_id::mock(0);
  const auto with = offload::schedule(stages, comps, offload::parse_policy("t5=cuda:on_demand:pinned,dit=cuda:on_demand:pinned,vae=cuda:on_demand:pinned,prefetch"),
                                      {.accelerator = mock0, .devices = {{mock0, 16_GiB, bw}}});
  const auto without = offload::schedule(stages, comps, offload::parse_policy("t5=cuda:on_demand:pinned,dit=cuda:on_demand:pinned,vae=cuda:on_demand:pinned"),
                                         {.accelerator = mock0, .devices = {{mock0, 16_GiB, bw}}});
  BOOST_TEST(std::abs((without.predicted_seconds - with.predicted_seconds) - static_cast<double>(3_GiB + 1_GiB) / bw) < 1e-9);
}

BOOST_AUTO_TEST_SUITE_END()
