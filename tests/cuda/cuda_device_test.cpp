// offload's CUDA paths on a CUDA device (offload_cuda_tests; skipped, exit 77, where LibTorch has no
// CUDA device): pinned masters, synchronous and prefetched onloads, evictions that copy nothing,
// mutable tensors copied back, block streaming through reused slots, out-of-memory reported as
// capacity_error, and the executor under random policies with the planned bytes and peak.
//
// Values are checked by copying what is on the device back to the host, so every case runs on the
// fake CUDA runtime of tests/compat/fake_cudart too (`FAKE_CUDA=1 tests/compat/debian_torch_cuda.sh`;
// no GPU: device memory is host memory, kernels do nothing). Where kernels run (a real GPU), the cases also compute: streamed, prefetched and
// offloaded outputs are bit-identical to the all-resident run on the device, and close to the host's.
#include <offload/block_stream.hpp>
#include <offload/compat.hpp>
#include <offload/executor.hpp>
#include <offload/offloadable.hpp>
#include <offload/stage_scheduler.hpp>

#include <offload/testing/errors.hpp>

// Boost.Test's header-only form with this file's own main(), which skips where there is no device.
#define BOOST_TEST_NO_MAIN
#define BOOST_TEST_ALTERNATIVE_INIT_API
#include <boost/test/included/unit_test.hpp>
#include <torch/torch.h>

#include <dlfcn.h>

#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../offload/random_cases.hpp"

using offload::device_id;

namespace {

/// Whether kernels run: false on the fake CUDA runtime (tests/compat/fake_cudart), which exports
/// fake_cudart_kernel_launches.
bool kernels_run() { return dlsym(RTLD_DEFAULT, "fake_cudart_kernel_launches") == nullptr; }

struct computes {
  boost::test_tools::assertion_result operator()(boost::unit_test::test_unit_id) const {
    boost::test_tools::assertion_result r(kernels_run());
    r.message() << "kernels do not run on the fake CUDA runtime";
    return r;
  }
};

constexpr int kBlocks = 5;

// A DiT-like module: an embedding, a block list, a head, a buffer, and (declared by the test) a
// mutable auxiliary tensor.
struct toyImpl : torch::nn::Module {
  torch::nn::Linear embed{nullptr}, head{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  std::vector<torch::nn::Linear> block_list;
  at::Tensor offset;
  offload::block_stream* stream = nullptr;

  toyImpl() {
    embed = register_module("embed", torch::nn::Linear(24, 64));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < kBlocks; ++i) {
      block_list.push_back(torch::nn::Linear(64, 64));
      blocks->push_back(block_list.back());
    }
    head = register_module("head", torch::nn::Linear(64, 8));
    offset = register_buffer("offset", torch::linspace(-1.0, 1.0, 8));
  }
  // Both branches through block i before block i+1 (CFG-aware reuse).
  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& branches) {
    std::vector<at::Tensor> h;
    for (const auto& x : branches) h.push_back(embed(x.to(embed->weight.device())));
    for (int i = 0; i < kBlocks; ++i) {
      offload::block_use use(stream, i);
      for (auto& v : h) v = torch::gelu(block_list[static_cast<std::size_t>(i)](v)) + v;
    }
    for (auto& v : h) v = (head(v) + offset).cpu();
    return h;
  }
};
TORCH_MODULE(toy);

struct fixture {
  toy model;
  at::Tensor counter = torch::arange(16, torch::kFloat32); // mutable: copied back on eviction
  offload::offloadable<toy> comp;
  fixture() : comp("dit", model) {
    torch::manual_seed(11);
    torch::NoGradGuard g;
    for (auto& p : model->parameters()) p.uniform_(-0.3, 0.3);
    comp.register_aux("counter", counter, offload::dtype_rule::follow, offload::mutability::mutable_);
    comp.declare_blocks("blocks", kBlocks);
    model->stream = comp.stream();
  }
  std::int64_t block_bytes() const { return std::int64_t{64 * 64 + 64} * 4; }
  /// Every tensor the module and the test hold, by path, as it is now.
  std::vector<std::pair<std::string, at::Tensor>> current() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& p : model->named_parameters()) out.emplace_back(p.key(), p.value());
    for (const auto& b : model->named_buffers()) out.emplace_back(b.key(), b.value());
    out.emplace_back("counter", counter);
    return out;
  }
};

/// Copies of every master, to compare with after the component moved.
std::map<std::string, at::Tensor> snapshot(const fixture& f) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [path, t] : f.current()) out[path] = f.comp.tensors().master(path).clone();
  return out;
}

/// Each tensor under `prefix` (all when empty) is on `where` and holds the values of `expected`.
void require_values(const fixture& f, const std::map<std::string, at::Tensor>& expected, device_id where,
                    const std::string& prefix = "") {
  for (const auto& [path, t] : f.current()) {
    if (path.rfind(prefix, 0) != 0) continue;
    BOOST_TEST_CONTEXT(path) {
      BOOST_TEST((t.device() == where.torch_device()));
      BOOST_TEST(torch::equal(t.cpu(), expected.at(path)));
    }
  }
}

std::vector<at::Tensor> inputs() {
  torch::manual_seed(5);
  return {torch::randn({6, 24}), torch::randn({6, 24})};
}

using offload_test::identical;

} // namespace

BOOST_AUTO_TEST_SUITE(cuda_device)

BOOST_AUTO_TEST_CASE(pinned_masters_keep_their_values_in_the_predicted_chunks) {
  fixture f;
  const auto before = snapshot(f);
  f.comp.use_pinned_memory(true);
  for (const auto& [path, t] : f.current()) {
    BOOST_TEST_CONTEXT(path) {
      BOOST_TEST(t.is_pinned());
      BOOST_TEST(torch::equal(t, before.at(path)));
    }
  }
  BOOST_TEST(f.comp.pinned_host_bytes() == f.comp.pinned_bytes());
  f.comp.use_pinned_memory(false);
  BOOST_TEST(f.comp.pinned_host_bytes() == 0);
  for (const auto& [path, t] : f.current()) {
    BOOST_TEST(!t.is_pinned(), path);
    BOOST_TEST(torch::equal(t, before.at(path)), path);
  }
}

BOOST_AUTO_TEST_CASE(onloads_copy_every_tensor_and_evictions_copy_only_mutable_ones) {
  for (const bool pinned : {false, true}) {
    for (const bool prefetch : {false, true}) {
      BOOST_TEST_CONTEXT((pinned ? "pinned" : "pageable") << (prefetch ? ", prefetched" : ", synchronous")) {
        fixture f;
        f.comp.use_pinned_memory(pinned);
        auto expected = snapshot(f);
        offload::device_set devices;
        auto& gpu = devices.emplace<offload::cuda_device>(0);
        if (prefetch) {
          f.comp.prefetch_onto(gpu);
          f.comp.finish_placement();
        } else {
          f.comp.place_on(gpu);
        }
        BOOST_TEST((f.comp.location() == gpu.id()));
        BOOST_TEST(gpu.used() == f.comp.bytes());
        BOOST_TEST(gpu.bytes_in() == f.comp.bytes());
        BOOST_TEST(gpu.transfers() == static_cast<std::int64_t>(f.comp.tensors().size()));
        f.comp.audit(gpu.id(), {"test", "cuda"});
        require_values(f, expected, gpu.id());

        // The mutable tensor changes on the device (a copy into it, no kernel) and comes back.
        const at::Tensor changed = torch::arange(100, 116, torch::kFloat32);
        f.counter.copy_(changed);
        expected["counter"] = changed;
        f.comp.place_on(devices.host());
        BOOST_TEST(gpu.used() == 0);
        BOOST_TEST(gpu.bytes_out() == static_cast<std::int64_t>(changed.nbytes()));
        f.comp.audit(device_id::cpu(), {"test", "cuda"});
        require_values(f, expected, device_id::cpu());
        for (const auto& [path, t] : f.current()) BOOST_TEST(t.is_pinned() == pinned, path);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(streamed_blocks_hold_their_values_in_reused_slots) {
  for (const auto [slots, prefetch] : {std::pair{1, 0}, std::pair{2, 1}, std::pair{3, 2}}) {
    BOOST_TEST_CONTEXT("stream=" << slots << ":prefetch=" << prefetch) {
      fixture f;
      f.comp.use_pinned_memory(true);
      const auto expected = snapshot(f);
      offload::device_set devices;
      auto& gpu = devices.emplace<offload::cuda_device>(0);
      f.comp.set_streaming({slots, prefetch});
      f.comp.place_on(gpu);
      const std::int64_t rest = f.comp.bytes() - kBlocks * f.block_bytes();
      BOOST_TEST(gpu.used() == rest + slots * f.comp.blocks()->slot_bytes);
      offload::detail::slot_schedule sim(kBlocks, slots, prefetch); // carries the slots from pass to pass
      std::vector<std::int64_t> allocations;
      for (int pass = 0; pass < 3; ++pass) {
        const std::int64_t in0 = gpu.bytes_in();
        for (int i = 0; i < kBlocks; ++i) {
          offload::block_use use(f.comp.stream(), i);
          f.comp.audit(gpu.id(), {"denoise", "cuda"});
          require_values(f, expected, gpu.id(), "blocks." + std::to_string(i) + ".");
        }
        BOOST_TEST(gpu.bytes_in() - in0 == sim.run_passes(1, *f.comp.blocks()));
        allocations.push_back(gpu.allocations());
      }
      BOOST_TEST(allocations.front() == allocations.back()); // slots reused, nothing allocated per pass
      f.comp.place_on(devices.host());
      BOOST_TEST(gpu.used() == 0);
      BOOST_TEST(gpu.bytes_out() == static_cast<std::int64_t>(f.counter.nbytes()));
      require_values(f, expected, device_id::cpu());
    }
  }
}

BOOST_AUTO_TEST_CASE(out_of_memory_is_a_capacity_error_and_places_nothing) {
  fixture f;
  offload::device_set devices;
  auto& small = devices.emplace<offload::cuda_device>(0, f.comp.bytes() / 2);
  BOOST_TEST(offload::testing::error_id([&] { f.comp.place_on(small); }) == "offload.capacity.out_of_memory");
  BOOST_TEST((f.comp.location() == device_id::cpu()));
  BOOST_TEST(small.used() == 0);
  // A real out-of-memory error from LibTorch's allocator (a 1 PiB buffer).
  offload::device_set other;
  auto& gpu = other.emplace<offload::cuda_device>(0);
  const std::string message =
      offload::testing::error_message([&] { (void)gpu.allocate_buffer(std::int64_t{1} << 50, "dit.huge"); });
  const std::string doing = fmt::format("allocating a buffer of {} on cuda:0 ({} accounted in use before it) failed: ",
                                        offload::format_bytes(std::int64_t{1} << 50), offload::format_bytes(0));
  BOOST_TEST(message.find(doing) != std::string::npos, message);
  BOOST_TEST(message.find("out of memory") != std::string::npos, message); // LibTorch's own words follow
  BOOST_TEST(gpu.used() == 0);
  f.comp.place_on(gpu); // and the device is still usable
  BOOST_TEST(gpu.used() == f.comp.bytes());
  f.comp.place_on(other.host());
}

BOOST_AUTO_TEST_CASE(streamed_outputs_are_bit_identical_to_resident_on_the_device,
                     *boost::unit_test::precondition(computes())) {
  torch::NoGradGuard g;
  const auto x = inputs();
  fixture host;
  const auto on_host = host.model->forward(x);
  offload::device_set devices;
  auto& gpu = devices.emplace<offload::cuda_device>(0);
  fixture resident;
  resident.comp.place_on(gpu);
  const auto expected = resident.model->forward(x);
  for (std::size_t i = 0; i < expected.size(); ++i)
    BOOST_TEST(torch::allclose(expected[i], on_host[i], 1e-4, 1e-5));
  for (const auto [slots, prefetch] : {std::pair{1, 0}, std::pair{2, 1}, std::pair{3, 1}}) {
    BOOST_TEST_CONTEXT("stream=" << slots << ":prefetch=" << prefetch) {
      fixture f;
      f.comp.use_pinned_memory(true);
      f.comp.set_streaming({slots, prefetch});
      f.comp.prefetch_onto(gpu);
      f.comp.finish_placement();
      for (int pass = 0; pass < 3; ++pass) BOOST_TEST(identical(f.model->forward(x), expected));
      f.comp.place_on(devices.host());
    }
  }
  resident.comp.place_on(devices.host());
}

BOOST_AUTO_TEST_CASE(random_policies_run_as_planned) {
  // 40 random policies over three components (an encoder, the toy streamed or whole, a decoder),
  // each on the host or cuda:0, loaded at init or first use, evicted never, after use or when
  // idle, pinned or pageable, streamed through 1-3 slots; evict on demand and prefetch at random.
  // On the device the executor copies the planned bytes and reaches the planned peak, copies
  // nothing back but the mutable tensor, and reset() leaves everything home. Where kernels run,
  // the output is bit-identical to the all-resident run on the device when every component
  // computes there, and close to it otherwise.
  offload_test::random_source r(offload_test::seed(0xc0da0001));
  const std::vector<at::Tensor> x = inputs();
  torch::nn::Linear enc(24, 24), dec(8, 8);
  {
    torch::NoGradGuard g;
    for (auto& p : enc->parameters()) p.uniform_(-0.3, 0.3);
    for (auto& p : dec->parameters()) p.uniform_(-0.3, 0.3);
  }
  fixture f;
  offload::offloadable<torch::nn::Linear> c_enc("enc", enc), c_dec("dec", dec);
  const std::vector<offload::stage> stages = {
      {"encode", {"enc"}, {{"enc", 4096}}}, {"denoise", {"dit"}, {{"dit", 8192}}, 3}, {"decode", {"dec"}, {{"dec", 2048}}}};
  const std::vector<offload::component_info> infos = {offload::info_of(c_enc), offload::info_of(f.comp),
                                                      offload::info_of(c_dec)};
  const std::vector<offload::component*> components = {&c_enc, &f.comp, &c_dec};
  const device_id cuda0 = device_id::cuda(0);
  const bool compute = kernels_run();

  auto run = [&](offload::executor& ex) {
    torch::NoGradGuard g;
    std::vector<at::Tensor> h, acc, out;
    {
      auto s = ex.enter("encode");
      if (compute)
        for (const auto& v : x) h.push_back(enc->forward(v.to(enc->weight.device())));
    }
    for (int k = 0; k < 3; ++k) {
      auto s = ex.enter("denoise");
      if (compute) {
        const auto o = f.model->forward(h);
        if (acc.empty()) acc = std::vector<at::Tensor>(o.size(), torch::zeros_like(o[0]));
        for (std::size_t b = 0; b < o.size(); ++b) acc[b] = acc[b] + 0.1 * o[b];
      } else {
        for (int i = 0; i < kBlocks; ++i) offload::block_use use(f.model->stream, i); // the copies alone
      }
    }
    {
      auto s = ex.enter("decode");
      if (compute)
        for (const auto& v : acc) out.push_back(dec->forward(v.to(dec->weight.device())).cpu());
    }
    ex.finish();
    return out;
  };
  auto policy_of = [&](const std::function<offload::component_policy(const offload::component_info&)>& each) {
    offload::placement_policy pol;
    for (const auto& c : infos) pol.components[c.name] = each(c);
    return pol;
  };

  offload::placement_policy resident_policy = policy_of([](const offload::component_info&) {
    offload::component_policy cp;
    cp.execute_on = offload::target::accelerator();
    cp.load = offload::load_rule::init;
    cp.evict = offload::evict_rule::never;
    return cp;
  });
  std::vector<at::Tensor> expected;
  {
    offload::device_set devices;
    devices.emplace<offload::cuda_device>(0);
    offload::executor ex(offload::schedule(stages, infos, resident_policy, {.accelerator = cuda0}), devices, components);
    expected = run(ex);
    ex.reset();
  }

  for (int i = 0; i < offload_test::cases(40); ++i) {
    offload::placement_policy pol =
        policy_of([&](const offload::component_info& c) { return offload_test::random_component_policy(r, c); });
    pol.evict_on_demand = r.uniform(0, 2) == 0;
    pol.prefetch = r.uniform(0, 1) == 1;
    pol.set_label(pol.str());
    const auto plan = offload::schedule(stages, infos, pol, {.accelerator = cuda0, .suggest = false});
    BOOST_TEST_CONTEXT("case " << i << ": " << pol.str()) {
      BOOST_REQUIRE(plan.fits());
      offload::device_set devices;
      auto& gpu = devices.emplace<offload::cuda_device>(0);
      offload::executor ex(plan, devices, components);
      const auto out = run(ex);
      if (compute) {
        bool all_on_device = true;
        for (const auto& [name, cp] : pol.components) all_on_device &= cp.execute_on.k != offload::target::kind::host;
        if (all_on_device) {
          BOOST_TEST(identical(out, expected));
        } else { // a component computed on the host: other kernels, other roundings
          for (std::size_t b = 0; b < out.size(); ++b) BOOST_TEST(torch::allclose(out[b], expected[b], 1e-4, 1e-5));
        }
      }
      // The mutable counter of a component that was on the device comes back once per eviction.
      const auto counter = static_cast<std::int64_t>(f.counter.nbytes());
      BOOST_TEST(gpu.bytes_in() == plan.bytes_to_devices);
      BOOST_TEST(gpu.bytes_out() % counter == 0);
      BOOST_TEST(gpu.peak() == plan.peak_of(cuda0));
      ex.reset();
      BOOST_TEST(gpu.used() == 0);
      for (const auto* c : components) BOOST_TEST((c->location() == device_id::cpu()), c->name());
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

namespace {
bool init_unit_test() { return true; }
} // namespace

int main(int argc, char* argv[]) {
  if (!offload::detail::cuda_available() || !torch::cuda::is_available()) {
    std::puts("offload_cuda_tests: LibTorch finds no CUDA device here; skipped");
    return 77; // CTest's SKIP_RETURN_CODE
  }
  std::printf("offload_cuda_tests: %s\n", kernels_run() ? "CUDA device" : "fake CUDA runtime (kernels do not run)");
  return boost::unit_test::unit_test_main(&init_unit_test, argc, argv);
}
