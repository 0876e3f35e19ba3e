// Block streaming (block_stream.hpp) on mock devices: slot decisions, bit-identical outputs,
// CFG-aware reuse (one copy per block per pass for two branches), no allocation per step,
// event order, overlap on the virtual clock, plans that count the streamed bytes, and faults; and
// 150 random configurations checked against the scheduler's slot model and time prediction.
#include <offload/block_stream.hpp>
#include <offload/executor.hpp>
#include <offload/offloadable.hpp>
#include <offload/stage_scheduler.hpp>

#include <offload/testing/errors.hpp>
#include <offload/testing/mock_device.hpp>
#include <offload/testing/simulate.hpp>

#include <boost/test/unit_test.hpp>
#include <torch/torch.h>

#include <cmath>
#include <optional>

#include "random_cases.hpp"

using namespace offload::literals;
using offload::device_id;

namespace {

constexpr int kBlocks = 6;

// A DiT-like module: an embedding, a list of blocks, a head. forward() runs every branch through
// block i before block i+1 (block-major), the order CFG-aware reuse needs.
struct toy_streamedImpl : torch::nn::Module {
  torch::nn::Linear embed{nullptr}, head{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  std::vector<torch::nn::Linear> block_list;
  offload::block_stream* stream = nullptr;
  std::function<void(int)> on_block; // called inside each block use (tests)

  explicit toy_streamedImpl(int n = kBlocks) {
    embed = register_module("embed", torch::nn::Linear(8, 16));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < n; ++i) {
      block_list.push_back(torch::nn::Linear(16, 16));
      blocks->push_back(block_list.back());
    }
    head = register_module("head", torch::nn::Linear(16, 4));
  }

  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& branches) {
    std::vector<at::Tensor> h;
    for (const auto& x : branches) h.push_back(embed(x));
    for (int i = 0; i < static_cast<int>(block_list.size()); ++i) {
      offload::block_use use(stream, i);
      if (on_block) on_block(i);
      for (auto& v : h) v = torch::gelu(block_list[static_cast<std::size_t>(i)](v)) + v;
    }
    for (auto& v : h) v = head(v);
    return h;
  }
};
TORCH_MODULE(toy_streamed);

struct fixture {
  toy_streamed model;
  offload::offloadable<toy_streamed> comp;
  explicit fixture(int n = kBlocks) : model(n), comp("dit", model) {
    torch::manual_seed(7);
    for (auto& p : model->parameters()) {
      torch::NoGradGuard g;
      p.uniform_(-0.5, 0.5);
    }
    comp.declare_blocks("blocks", n);
    model->stream = comp.stream();
  }
  std::int64_t block_bytes() const { return std::int64_t{16 * 16 + 16} * 4; }
};

std::vector<at::Tensor> inputs() {
  torch::manual_seed(3);
  return {torch::randn({5, 8}), torch::randn({5, 8})};
}

using offload_test::identical;


} // namespace

BOOST_AUTO_TEST_SUITE(block_stream)

BOOST_AUTO_TEST_CASE(slot_schedule_decisions) {
  using L = offload::detail::slot_schedule::load;
  auto str = [](const std::vector<L>& v) {
    std::string s;
    for (const auto& l : v) s += fmt::format("{}>{} ", l.block, l.slot);
    return s;
  };
  // 4 blocks, 2 slots, prefetch 1.
  offload::detail::slot_schedule s(4, 2, 1);
  BOOST_TEST(str(s.acquire(0, "dit")) == "0>0 1>1 ");
  s.release(0);
  BOOST_TEST(str(s.acquire(1, "dit")) == "2>0 ");
  s.release(1);
  BOOST_TEST(str(s.acquire(2, "dit")) == "3>1 ");
  s.release(2);
  BOOST_TEST(str(s.acquire(3, "dit")) == "");
  s.release(3);
  // Next pass: block 0 replaces the block needed latest (3), block 1 goes where 2 was.
  BOOST_TEST(str(s.acquire(0, "dit")) == "0>1 1>0 ");
  // Every slot in use: a clear error.
  offload::detail::slot_schedule one(3, 1, 0);
  (void)one.acquire(0, "dit");
  BOOST_TEST(offload::testing::error_id([&] { (void)one.acquire(1, "dit"); }) == "offload.placement.stream_slots");
  // With 3 blocks and 2 slots, the second pass finds block 1 still loaded: 2 loads, not 3.
  offload::detail::slot_schedule three(3, 2, 1);
  offload::block_layout layout{{10, 20, 30}, 32};
  BOOST_TEST(three.run_passes(1, layout) == 60);
  BOOST_TEST(three.run_passes(1, layout) == 40);
  BOOST_TEST(three.run_passes(1, layout) == 40);
  // As many slots as blocks: loaded once.
  offload::detail::slot_schedule all(3, 5, 1);
  BOOST_TEST(all.slots() == 3);
  BOOST_TEST(all.run_passes(3, layout) == 60);
}

BOOST_AUTO_TEST_CASE(layout_and_declaration_errors) {
  fixture f;
  const auto l = f.comp.blocks();
  BOOST_REQUIRE(l.has_value());
  BOOST_TEST(l->count() == kBlocks);
  BOOST_TEST(l->block_bytes[0] == f.block_bytes());
  BOOST_TEST(l->slot_bytes ==
             offload::detail::align_up(std::int64_t{16} * 16 * 4) + offload::detail::align_up(std::int64_t{16} * 4));
  BOOST_TEST(l->total() == kBlocks * f.block_bytes());

  toy_streamed m;
  offload::offloadable c("dit", m);
  BOOST_TEST(offload::testing::error_id([&] { c.declare_blocks("blocks", 4); }) == "offload.config.blocks");  // block 5 exists
  BOOST_TEST(offload::testing::error_id([&] { c.declare_blocks("blocks", 8); }) == "offload.config.blocks");  // block 6 empty
  BOOST_TEST(offload::testing::error_id([&] { c.set_streaming({2, 1}); }) == "offload.config.not_streamable");
  c.declare_blocks("blocks", kBlocks);
  BOOST_TEST(offload::testing::error_id([&] { c.declare_blocks("blocks", kBlocks); }) == "offload.placement.duplicate_blocks");
}

namespace {
// Two module lists run interleaved (VACE-like): `side.n` runs just before `blocks.<2n>`, feeding
// it; the streamed list names the blocks in that order.
struct toy_interleavedImpl : torch::nn::Module {
  torch::nn::ModuleList blocks{nullptr}, side{nullptr};
  std::vector<torch::nn::Linear> block_list, side_list;
  offload::block_stream* stream = nullptr;
  toy_interleavedImpl() {
    blocks = register_module("blocks", torch::nn::ModuleList());
    side = register_module("side", torch::nn::ModuleList());
    for (int i = 0; i < 4; ++i) blocks->push_back(block_list.emplace_back(torch::nn::Linear(16, 16)));
    for (int i = 0; i < 2; ++i) side->push_back(side_list.emplace_back(torch::nn::Linear(16, 32)));
  }
  static std::vector<std::string> order() { return {"side.0", "blocks.0", "blocks.1", "side.1", "blocks.2", "blocks.3"}; }
  std::vector<at::Tensor> forward(std::vector<at::Tensor> h) {
    std::vector<at::Tensor> c = h;
    int unit = 0;
    for (int i = 0; i < 4; ++i) {
      std::vector<at::Tensor> hint(h.size());
      if (i % 2 == 0) {
        offload::block_use use(stream, unit++);
        for (std::size_t b = 0; b < h.size(); ++b) {
          auto y = side_list[static_cast<std::size_t>(i / 2)](c[b]);
          c[b] = y.narrow(-1, 0, 16);
          hint[b] = y.narrow(-1, 16, 16);
        }
      }
      offload::block_use use(stream, unit++);
      for (std::size_t b = 0; b < h.size(); ++b) {
        h[b] = torch::gelu(block_list[static_cast<std::size_t>(i)](h[b]));
        if (hint[b].defined()) h[b] = h[b] + hint[b];
      }
    }
    return h;
  }
};
TORCH_MODULE(toy_interleaved);
} // namespace

BOOST_AUTO_TEST_CASE(a_block_list_can_interleave_module_lists) {
  toy_interleaved model;
  torch::manual_seed(11);
  for (auto& p : model->parameters()) {
    torch::NoGradGuard g;
    p.uniform_(-0.5, 0.5);
  }
  torch::manual_seed(3);
  const std::vector<at::Tensor> x{torch::randn({5, 16}), torch::randn({5, 16})};
  const auto expected = model->forward(x);

  offload::offloadable comp("dit", model);
  // Naming errors first: nested names, a name used twice, a block without tensors.
  BOOST_TEST(offload::testing::error_id([&] { comp.declare_blocks(std::vector<std::string>{"blocks.1", "blocks"}); }) ==
             "offload.config.blocks");
  BOOST_TEST(offload::testing::error_id([&] { comp.declare_blocks(std::vector<std::string>{"side.0", "side.0"}); }) ==
             "offload.config.blocks");
  BOOST_TEST(offload::testing::error_id([&] { comp.declare_blocks(std::vector<std::string>{"side.0", "side.7"}); }) ==
             "offload.config.blocks");
  BOOST_TEST(offload::testing::error_id([&] { comp.declare_blocks(std::vector<std::string>{}); }) == "offload.config.blocks");
  comp.declare_blocks(toy_interleavedImpl::order());
  model->stream = comp.stream();
  const auto l = comp.blocks();
  BOOST_REQUIRE(l.has_value());
  const std::int64_t side = std::int64_t{16 * 32 + 32} * 4, block = std::int64_t{16 * 16 + 16} * 4;
  BOOST_TEST((l->block_bytes == std::vector<std::int64_t>{side, block, block, side, block, block}));
  BOOST_TEST(l->slot_bytes ==
             offload::detail::align_up(std::int64_t{16} * 32 * 4) + offload::detail::align_up(std::int64_t{32} * 4));

  // Streamed through one and two slots: bit-identical, every block (of both lists) copied once
  // per pass for both branches, and every tensor home afterwards.
  for (const int slots : {1, 2}) {
    BOOST_TEST_CONTEXT("slots " << slots) {
      offload::device_set devices;
      auto& mock = offload::testing::add_mock(devices, 0);
      comp.set_streaming({slots, slots - 1});
      comp.place_on(mock);
      const auto before = mock.bytes_in();
      const auto got = model->forward(x);
      BOOST_TEST(identical(got, expected));
      BOOST_TEST(mock.bytes_in() - before == l->total());
      BOOST_TEST(mock.copies_in_flight() == 0u);
      comp.place_on(devices.host());
      BOOST_TEST(mock.used() == 0);
      for (const auto& t : comp.tensors().tensors()) BOOST_TEST(t.device == device_id::cpu());
    }
  }
}

BOOST_AUTO_TEST_CASE(streamed_outputs_are_bit_identical_and_move_each_block_once_per_pass) {
  const auto x = inputs();
  fixture ref;
  const auto expected = ref.model->forward(x); // on the host, resident

  for (auto [k, d] : {std::pair{1, 0}, std::pair{2, 1}, std::pair{3, 2}, std::pair{3, 1}}) {
    BOOST_TEST_CONTEXT("stream=" << k << ":prefetch=" << d) {
      fixture f;
      offload::device_set devices;
      auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
      f.comp.set_streaming({k, d});
      f.comp.place_on(gpu);
      const std::int64_t rest = f.comp.bytes() - kBlocks * f.block_bytes();
      const std::int64_t slot = f.comp.blocks()->slot_bytes;
      BOOST_TEST(gpu.used() == rest + k * slot);
      // Blocks not in use point at their host masters; in use at their slot.
      f.comp.audit(gpu.id(), {"denoise", "test"});
      f.model->on_block = [&](int i) {
        f.comp.audit(gpu.id(), {"denoise", "test"});
        BOOST_TEST(f.comp.stream()->in_use(i));
      };
      std::vector<std::int64_t> allocations, bytes;
      for (int pass = 0; pass < 3; ++pass) {
        const auto in0 = gpu.bytes_in();
        const auto out = f.model->forward(x); // two branches through each block
        BOOST_TEST(identical(out, expected));
        allocations.push_back(gpu.allocations());
        bytes.push_back(gpu.bytes_in() - in0);
      }
      // No allocation after placement: the slots are reused.
      BOOST_TEST(allocations[0] == allocations[2]);
      // CFG-aware: each block copied at most once per pass for two branches; with 3 slots and a
      // prefetch of 1, one block of the last window is still there at the next pass.
      offload::detail::slot_schedule sim(kBlocks, k, d);
      for (int pass = 0; pass < 3; ++pass) {
        BOOST_TEST(bytes[static_cast<std::size_t>(pass)] == sim.run_passes(1, *f.comp.blocks()));
        BOOST_TEST(bytes[static_cast<std::size_t>(pass)] <= kBlocks * f.block_bytes());
      }
      BOOST_TEST(bytes[0] == kBlocks * f.block_bytes());
      if (k <= 2) BOOST_TEST(bytes[1] == kBlocks * f.block_bytes());
      if (k == 3 && d == 1) BOOST_TEST(bytes[1] == (kBlocks - 2) * f.block_bytes());
      BOOST_TEST(gpu.copies_in_flight() == 0u);
      f.comp.place_on(devices.host());
      BOOST_TEST(gpu.used() == 0);
      for (const auto& t : f.comp.tensors().tensors()) BOOST_TEST(t.device == device_id::cpu());
      f.comp.audit(device_id::cpu(), {"after", "test"});
    }
  }
}

BOOST_AUTO_TEST_CASE(random_configurations_stream_bit_identically_in_the_predicted_time) {
  // 150 random configurations: 1-10 blocks, 1-4 slots, every prefetch depth, 1-3 branches, 1-4
  // passes, pinned or pageable masters, block compute and copy times of 0.1-10 ms each. Every pass
  // gives the resident outputs bit for bit, copies exactly the bytes the scheduler's slot model
  // predicts, allocates nothing, and takes exactly the time the scheduler predicts for it
  // (slot_schedule::run_passes_timed). Two cases are also checked by hand: from pageable masters,
  // or without prefetch, compute + copies; compute-bound with prefetch from pinned masters,
  // compute + the first copy. (The scheduler once predicted max(compute, copies) + the first copy
  // for every prefetched pass; blocks kept from the pass before break the pipeline, and such
  // passes took up to a block's compute longer.)
  offload_test::random_source r(offload_test::seed(0x5eed0004));
  int overlapped = 0, compute_bound = 0, serial = 0, kept = 0;
  const int total = offload_test::cases(150);
  for (int i = 0; i < total; ++i) {
    const int n = r.uniform(1, 10), k = r.uniform(1, 4), d = r.uniform(0, k - 1), branches = r.uniform(1, 3),
              passes = r.uniform(1, 4);
    const bool pinned = r.uniform(0, 3) != 0;
    const double c = r.log_uniform(1e-4, 1e-2), b = r.log_uniform(1e-4, 1e-2); // per block: compute, copy
    BOOST_TEST_CONTEXT("case " << i << ": " << n << " blocks, stream=" << k << ":prefetch=" << d << ", "
                               << branches << " branches, " << passes << " passes, "
                               << (pinned ? "pinned" : "pageable") << ", compute " << c << " s, copy " << b
                               << " s per block") {
      torch::manual_seed(100 + i);
      std::vector<at::Tensor> x;
      for (int j = 0; j < branches; ++j) x.push_back(torch::randn({3, 8}));
      const auto expected = fixture(n).model->forward(x);
      fixture f(n);
      offload::device_set devices;
      const double bw = static_cast<double>(f.block_bytes()) / b;
      auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB, .h2d_bytes_per_second = bw});
      f.comp.use_pinned_memory(pinned);
      f.comp.set_streaming({k, d});
      f.comp.place_on(gpu);
      f.model->on_block = [&](int) { devices.clock().advance(c); };
      offload::detail::slot_schedule model(n, k, d);
      const auto allocations = gpu.allocations();
      for (int pass = 0; pass < passes; ++pass) {
        const double t0 = devices.clock().now();
        const auto in0 = gpu.bytes_in();
        BOOST_TEST(identical(f.model->forward(x), expected), "pass " << pass);
        const auto bytes = gpu.bytes_in() - in0;
        const double elapsed = devices.clock().now() - t0;
        std::int64_t predicted_bytes = 0;
        const double predicted = model.run_passes_timed(1, *f.comp.blocks(), bw, std::vector<double>(n, c), pinned,
                                                        predicted_bytes);
        BOOST_TEST(bytes == predicted_bytes, "pass " << pass);
        kept += bytes < n * f.block_bytes();
        const double compute = n * c, copies = static_cast<double>(bytes) / bw;
        const double eps = 1e-12 + 1e-9 * (compute + copies);
        BOOST_TEST(std::abs(elapsed - predicted) <= eps, "pass " << pass << ": " << elapsed << " s, predicted "
                                                                  << predicted << " s");
        if (pinned && d > 0) {
          ++overlapped;
          if (c >= b && bytes == n * f.block_bytes()) {
            ++compute_bound;
            BOOST_TEST(std::abs(elapsed - (compute + b)) <= eps, "pass " << pass << ": " << elapsed << " s");
          }
        } else {
          ++serial;
          BOOST_TEST(std::abs(elapsed - (compute + copies)) <= eps, "pass " << pass << ": " << elapsed << " s");
        }
      }
      BOOST_TEST(gpu.allocations() == allocations);
      BOOST_TEST(gpu.copies_in_flight() == 0u);
      f.comp.place_on(devices.host());
      BOOST_TEST(gpu.used() == 0);
    }
  }
  BOOST_TEST_MESSAGE(overlapped << " overlapped passes (" << compute_bound << " compute-bound), " << serial
                                << " serial, " << kept << " reusing blocks of the pass before");
  BOOST_TEST(overlapped >= total * 2 / 3);
  BOOST_TEST(compute_bound >= total / 10);
  BOOST_TEST(serial >= total * 2 / 3);
  BOOST_TEST(kept >= total / 3);
}

BOOST_AUTO_TEST_CASE(random_policies_run_real_tensors_bit_identically_as_planned) {
  // The executor with real tensors (not sized components) under 120 random policies: an encoder,
  // the streamable toy as denoiser (two branches per step), a decoder with an auxiliary tensor,
  // and sometimes a last stage that uses the encoder and the decoder again. Each component on the
  // host or the mock GPU, loaded at init or first use, evicted never, after use or when idle,
  // pinned or pageable, the denoiser streamed with 1-3 slots; evict on demand and prefetch at
  // random; a capacity around the unlimited plan's peak. A plan that fits runs with the host's
  // outputs bit for bit, the planned bytes and peak, no copy read before it completes (the mock
  // checks every read) and none left in flight; one that does not fit runs out of memory in
  // simulation. Either way, reset() brings every tensor home and frees the device.
  offload_test::random_source r(offload_test::seed(0x5eed0005));
  int ran = 0, out_of_memory = 0, streamed = 0, prefetched = 0;
  const int total = offload_test::cases(120);
  for (int i = 0; i < total; ++i) {
    const int n = r.uniform(2, 8), steps = r.uniform(1, 4);
    const bool refine = r.uniform(0, 1) == 1;
    torch::manual_seed(200 + i);
    const std::vector<at::Tensor> x = {torch::randn({3, 8}), torch::randn({3, 8})};
    torch::nn::Linear enc(8, 8), dec(4, 4);
    at::Tensor scale = torch::linspace(0.5, 2.0, 4);
    fixture f(n);
    auto run = [&](offload::executor* ex) {
      torch::NoGradGuard g;
      auto scope = [&](const char* stage) { return ex ? std::optional<offload::stage_scope>(ex->enter(stage)) : std::nullopt; };
      std::vector<at::Tensor> h;
      {
        auto s = scope("encode");
        for (const auto& v : x) h.push_back(enc->forward(v));
      }
      at::Tensor acc = torch::zeros({3, 4});
      for (int k = 0; k < steps; ++k) {
        auto s = scope("denoise");
        for (const auto& o : f.model->forward(h)) acc = acc + 0.1 * o;
      }
      at::Tensor y;
      {
        auto s = scope("decode");
        y = dec->forward(acc) * scale;
      }
      if (refine) {
        auto s = scope("refine");
        y = dec->forward(y) * scale + enc->forward(x[0]).narrow(1, 0, 4);
      }
      if (ex) ex->finish();
      return y;
    };
    const at::Tensor expected = run(nullptr);

    offload::offloadable<torch::nn::Linear> c_enc("enc", enc), c_dec("dec", dec);
    c_dec.register_aux("scale", scale);
    std::vector<offload::stage> stages = {{"encode", {"enc"}, {{"enc", 4096}}},
                                          {"denoise", {"dit"}, {{"dit", std::int64_t{r.uniform(0, 4)} * 1024}}, steps},
                                          {"decode", {"dec"}, {{"dec", 2048}}}};
    if (refine) stages.push_back({"refine", {"enc", "dec"}, {{"dec", 1024}}});
    const std::vector<offload::component_info> infos = {offload::info_of(c_enc), offload::info_of(f.comp),
                                                        offload::info_of(c_dec)};
    offload::placement_policy pol;
    for (const auto& c : infos) pol.components[c.name] = offload_test::random_component_policy(r, c);
    pol.evict_on_demand = r.uniform(0, 2) == 0;
    pol.prefetch = r.uniform(0, 1) == 1;
    pol.set_label(pol.str());
    const device_id mock0 = device_id::mock(0);
    const auto unlimited = offload::schedule(stages, infos, pol, {.accelerator = mock0, .suggest = false});
    const std::int64_t capacity = std::max<std::int64_t>(1, unlimited.peak_of(mock0) * r.uniform(60, 120) / 100);
    const auto plan = offload::schedule(stages, infos, pol,
                                        {.accelerator = mock0, .devices = {{mock0, capacity}}, .suggest = false});
    BOOST_TEST_CONTEXT("case " << i << ": " << n << " blocks, " << steps << " steps" << (refine ? ", refine" : "")
                               << "; policy " << pol.str() << "; capacity " << capacity) {
      offload::device_set devices;
      auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = capacity});
      offload::executor ex(plan, devices, {&c_enc, &f.comp, &c_dec});
      if (plan.fits()) {
        ++ran;
        const at::Tensor y = run(&ex);
        BOOST_TEST(torch::equal(y, expected));
        BOOST_TEST(gpu.bytes_in() == plan.bytes_to_devices);
        BOOST_TEST(gpu.bytes_out() == 0);
        BOOST_TEST(gpu.peak() == plan.peak_of(mock0));
        BOOST_TEST(gpu.copies_in_flight() == 0u);
        streamed += plan.device_bytes.count("dit") > 0 ? 1 : 0;
        for (const auto& st : plan.steps) prefetched += !st.prefetch.empty();
      } else {
        ++out_of_memory;
        BOOST_TEST(offload::testing::error_id([&] { (void)run(&ex); }).rfind("offload.capacity.", 0) == 0u);
      }
      ex.reset();
      BOOST_TEST(gpu.used() == 0);
      for (const auto* c : {static_cast<const offload::component*>(&c_enc), static_cast<const offload::component*>(&f.comp),
                            static_cast<const offload::component*>(&c_dec)})
        BOOST_TEST(c->location() == device_id::cpu(), c->name());
      for (const auto& t : f.comp.tensors().tensors()) BOOST_TEST(t.device == device_id::cpu());
    }
  }
  BOOST_TEST_MESSAGE(ran << " ran (" << streamed << " streaming, " << prefetched << " prefetches), " << out_of_memory
                         << " out of memory");
  BOOST_TEST(ran >= total * 2 / 5);
  BOOST_TEST(out_of_memory >= total / 6);
  BOOST_TEST(streamed >= total / 8);
  BOOST_TEST(prefetched >= total / 12);
}

BOOST_AUTO_TEST_CASE(reading_before_waiting_is_caught) {
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB, .h2d_bytes_per_second = 1e6});
  at::Tensor buf = gpu.allocate_buffer(4096, "slot");
  at::Tensor view = buf.narrow(0, 0, 4096).view(at::kFloat);
  const at::Tensor src = torch::ones({1024});
  const auto e = gpu.copy_into_async(src, view, "dit.blocks.0.w", true);
  BOOST_TEST(e.ready_at > devices.clock().now());
  BOOST_TEST(offload::testing::error_id([&] { gpu.note_read(e, "dit.blocks.0.w"); }) == "offload.placement.read_before_transfer");
  gpu.wait(e);
  BOOST_TEST(devices.clock().now() == e.ready_at);
  gpu.note_read(e, "dit.blocks.0.w");
  BOOST_TEST(torch::equal(view, src));
  gpu.release(4096);
}

BOOST_AUTO_TEST_CASE(copies_into_fresh_buffers_wait_for_the_compute_before_them) {
  // On a GPU a buffer comes from the caching allocator on the compute stream, possibly memory that
  // kernels queued there still read; the transfer stream may write it only after those kernels.
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB, .h2d_bytes_per_second = 1e6});
  auto& clk = devices.clock();
  const at::Tensor src = torch::ones({1024});
  auto copy = [&](const offload::transfer_event& not_before) {
    at::Tensor buf = gpu.allocate_buffer(4096, "slot");
    at::Tensor view = buf.view(at::kFloat);
    offload::transfer_event e;
    try {
      e = gpu.copy_into_async(src, view, "dit.blocks.0.w", true, not_before);
    } catch (...) {
      gpu.release(4096);
      throw;
    }
    gpu.wait(e);
    gpu.release(4096);
    return torch::equal(view, src);
  };
  const auto races = [&](const offload::transfer_event& not_before) {
    return offload::testing::error_id([&] { (void)copy(not_before); }) == "offload.placement.copy_races_compute";
  };
  // Before any compute there is nothing to wait for.
  BOOST_TEST(clk.compute_issued() == 0u);
  BOOST_TEST(copy({}));
  const auto before = gpu.record_compute();
  clk.advance(1e-3); // compute
  BOOST_TEST(clk.compute_issued() == 1u);
  BOOST_TEST(races({}));
  BOOST_TEST(races(before)); // a point before the compute
  const auto after = gpu.record_compute();
  BOOST_TEST(after.compute_seq == 1u);
  BOOST_TEST(copy(after)); // recorded after the compute, before the allocation
  // Time spent waiting on copies is not compute: the point stays valid.
  const auto e = gpu.account_transfer_async(1000, "other", /*pinned=*/false);
  gpu.wait(e);
  BOOST_TEST(clk.compute_issued() == 1u);
  BOOST_TEST(copy(after));
  clk.note_compute(); // a stage ran real kernels
  BOOST_TEST(races(after));
  BOOST_TEST(copy(gpu.record_compute()));
  BOOST_TEST(gpu.used() == 0);
}

BOOST_AUTO_TEST_CASE(freeing_a_buffer_under_a_copy_is_caught) {
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB, .h2d_bytes_per_second = 1e6});
  const at::Tensor src = torch::ones({1024});
  offload::transfer_event e;
  {
    at::Tensor buf = gpu.allocate_buffer(4096, "slot");
    at::Tensor view = buf.view(at::kFloat);
    e = gpu.copy_into_async(src, view, "dit.blocks.0.w", true, gpu.record_compute());
    gpu.release(4096);
  } // the buffer is gone, its copy never waited on
  BOOST_TEST(offload::testing::error_id([&] { (void)gpu.allocate_buffer(4096, "slot"); }) ==
             "offload.placement.freed_under_copy");
  BOOST_TEST(gpu.used() == 0);
  // Reported once; waiting before dropping the buffer is the correct order.
  {
    at::Tensor buf = gpu.allocate_buffer(4096, "slot");
    at::Tensor view = buf.view(at::kFloat);
    e = gpu.copy_into_async(src, view, "dit.blocks.0.w", true, gpu.record_compute());
    gpu.wait(e);
    gpu.release(4096);
  }
  at::Tensor next = gpu.allocate_buffer(4096, "slot");
  gpu.release(4096);
  BOOST_TEST(gpu.used() == 0);
}

BOOST_AUTO_TEST_CASE(block_slots_are_filled_after_the_compute_before_them) {
  // A streamed component placed after compute ran (a stage before it, or its own earlier onload):
  // its slots may reuse memory that compute still reads, so their first fills wait for it.
  const auto x = inputs();
  fixture ref;
  const auto expected = ref.model->forward(x);
  for (auto [k, d] : {std::pair{1, 0}, std::pair{2, 1}, std::pair{3, 2}}) {
    BOOST_TEST_CONTEXT("stream=" << k << ":prefetch=" << d) {
      fixture f;
      offload::device_set devices;
      auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
      f.comp.set_streaming({k, d});
      f.model->on_block = [&](int) { devices.clock().advance(1e-3); };
      devices.clock().advance(1e-3); // an earlier stage's compute
      for (int onload = 0; onload < 2; ++onload) {
        f.comp.place_on(gpu);
        BOOST_TEST(identical(f.model->forward(x), expected));
        f.comp.place_on(devices.host());
      }
      BOOST_TEST(gpu.copies_in_flight() == 0u);
      BOOST_TEST(gpu.used() == 0);
    }
  }
}

BOOST_AUTO_TEST_CASE(prefetch_overlaps_compute_on_the_virtual_clock) {
  // Each block computes for 2 ms; its copy takes 1 ms: prefetching from pinned masters hides all
  // but the first copy. From pageable masters the host waits for each copy: nothing hides.
  const auto x = inputs();
  auto run = [&](int k, int d, std::vector<offload::testing::transfer_record>* log, bool pinned = true) {
    fixture f;
    offload::device_set devices;
    const double bw = static_cast<double>(f.block_bytes()) / 1e-3;
    auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB, .h2d_bytes_per_second = bw});
    f.comp.use_pinned_memory(pinned);
    f.comp.set_streaming({k, d});
    f.comp.place_on(gpu);
    const double t0 = devices.clock().now();
    f.model->on_block = [&](int) { devices.clock().advance(2e-3); };
    (void)f.model->forward(x);
    const double elapsed = devices.clock().now() - t0;
    if (log) *log = gpu.transfer_log();
    f.comp.place_on(devices.host());
    return elapsed;
  };
  std::vector<offload::testing::transfer_record> log;
  const double serial = run(1, 0, nullptr);
  const double overlapped = run(2, 1, &log);
  BOOST_TEST(serial == kBlocks * 3e-3, boost::test_tools::tolerance(1e-9));
  BOOST_TEST(overlapped == kBlocks * 2e-3 + 1e-3, boost::test_tools::tolerance(1e-9));
  BOOST_TEST(run(2, 1, nullptr, /*pinned=*/false) == kBlocks * 3e-3, boost::test_tools::tolerance(1e-9));
  // Every block copy ran on the transfer stream, one after the other, each within a 1 ms slot.
  std::size_t async = 0;
  for (std::size_t i = 0; i < log.size(); ++i) {
    if (!log[i].async) continue;
    ++async;
    if (i > 0 && log[i - 1].async) BOOST_TEST(log[i].start >= log[i - 1].end);
  }
  BOOST_TEST(async == 2u * kBlocks);
}

BOOST_AUTO_TEST_CASE(plan_counts_streamed_bytes_and_matches_the_mock) {
  fixture f;
  const auto x = inputs();
  const auto expected = [&] {
    fixture r;
    return r.model->forward(x);
  }();
  std::vector<offload::stage> stages = {{"encode", {}, {}, 1, 0}, {"denoise", {"dit"}, {{"dit", 1000}}, 4, 0}};
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
  const auto policy = offload::parse_policy("dit=mock:0:on_demand:stream=2:prefetch=1");
  offload::plan p = offload::schedule(stages, {offload::info_of(f.comp)}, policy,
                                      {.accelerator = gpu.id(), .devices = {{gpu.id(), 1_GiB}}});
  BOOST_REQUIRE(p.fits());
  const auto* step = p.step("denoise");
  const std::int64_t rest = f.comp.bytes() - kBlocks * f.block_bytes();
  const std::int64_t slot = f.comp.blocks()->slot_bytes;
  BOOST_TEST(p.device_bytes.at("dit") == rest + 2 * slot);
  BOOST_TEST(step->streamed_bytes.at("dit") == f.block_bytes() * 4 * kBlocks);
  BOOST_TEST(p.peak_of(gpu.id()) == rest + 2 * slot + 1000);
  BOOST_TEST(p.bytes_to_devices == rest + f.block_bytes() * 4 * kBlocks);
  BOOST_TEST(p.table().find("stream dit") != std::string::npos);
  BOOST_TEST(p.json().find(R"("streamed_bytes":{"dit":)") != std::string::npos);

  offload::executor ex(p, devices, {&f.comp});
  ex.start();
  { auto s = ex.enter("encode"); }
  for (int i = 0; i < 4; ++i) {
    auto s = ex.enter("denoise");
    BOOST_TEST(identical(f.model->forward(x), expected));
  }
  ex.finish();
  BOOST_TEST(gpu.bytes_in() == p.bytes_to_devices);
  BOOST_TEST(gpu.peak() == p.peak_of(gpu.id()));
  BOOST_TEST(gpu.used() == 0);
}

BOOST_AUTO_TEST_CASE(policy_errors_and_suggestion) {
  fixture f;
  std::vector<offload::stage> stages = {{"denoise", {"dit"}, {}, 2, 0}};
  const auto info = offload::info_of(f.comp);
  offload::component_info plain{"dit", info.bytes, std::nullopt};
  BOOST_TEST(offload::testing::error_id([&] {
               (void)offload::schedule(stages, {plain}, offload::parse_policy("dit=mock:0:stream=2"),
                                       {.accelerator = device_id::mock(0)});
             }) == "offload.config.not_streamable");
  // Too small for the whole DiT, large enough for everything but 4 of its blocks: the scheduler
  // suggests streaming.
  const std::int64_t cap = info.bytes - 2 * info.blocks->total() / kBlocks;
  const auto p = offload::schedule(stages, {info}, offload::parse_policy("resident"),
                                   {.accelerator = device_id::mock(0), .devices = {{device_id::mock(0), cap}}});
  BOOST_TEST(!p.fits());
  BOOST_TEST(p.suggestion.find("stream=2") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(faults_during_streaming_leave_everything_home) {
  const auto x = inputs();
  fixture ref;
  const auto expected = ref.model->forward(x);
  int faults = 0;
  for (int n = 1;; ++n) {
    fixture f;
    offload::device_set devices;
    auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
    f.comp.set_streaming({2, 1});
    f.comp.place_on(gpu);
    gpu.fail_transfer_at(n);
    bool failed = false;
    try {
      (void)f.model->forward(x);
    } catch (const offload::capacity_error& e) {
      failed = true;
      ++faults;
      BOOST_TEST(e.id() == "offload.capacity.injected_fault");
    }
    // A failed copy leaves no block in use, and the next pass computes the same result.
    for (int b = 0; b < kBlocks; ++b) BOOST_TEST(!f.comp.stream()->in_use(b));
    gpu.fail_transfer_at(0);
    BOOST_TEST(identical(f.model->forward(x), expected));
    f.comp.place_on(devices.host());
    BOOST_TEST(gpu.used() == 0);
    BOOST_TEST(gpu.copies_in_flight() == 0u);
    f.comp.audit(device_id::cpu(), {"after", "test"});
    if (!failed) break;
  }
  BOOST_TEST(faults == kBlocks * 2); // two tensors per block, each copy failed once
}

// Placing a streamed component records a compute point after allocating its slots (their first fills
// wait for it). When that fails (a device in an error state), nothing stays allocated and the
// message names the slots; placed again, the component streams the same output.
BOOST_AUTO_TEST_CASE(a_failed_compute_point_when_placing_leaves_nothing_allocated) {
  const auto x = inputs();
  fixture ref;
  const auto expected = ref.model->forward(x);
  fixture f;
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
  f.comp.set_streaming({2, 1});
  gpu.fail_record_compute_at(1);
  try {
    f.comp.place_on(gpu);
    BOOST_FAIL("expected capacity_error");
  } catch (const offload::capacity_error& e) {
    BOOST_TEST(e.id() == "offload.capacity.injected_fault");
    BOOST_TEST(std::string(e.what()).find("placing the block slots 'dit.blocks[slot 0..1]': injected failure on "
                                          "mock:0 while recording a compute point") != std::string::npos,
               e.what());
  }
  BOOST_TEST(gpu.used() == 0);
  BOOST_TEST(f.comp.location().is_host());
  f.comp.audit(device_id::cpu(), {"after", "test"});
  f.comp.place_on(gpu);
  BOOST_TEST(identical(f.model->forward(x), expected));
  f.comp.place_on(devices.host());
  BOOST_TEST(gpu.used() == 0);
}

// A CUDA device in an error state (a kernel failed) records no compute point, so releasing a block
// fails. While the block's failed compute unwinds, that second failure must not end the program
// (std::terminate from a destructor) nor hide the first error; either way the slot's last reader is
// unknown, so the stream refuses to refill slots until the component is evicted.
BOOST_AUTO_TEST_CASE(a_failed_release_keeps_the_first_error_and_stops_the_stream) {
  const auto x = inputs();
  fixture ref;
  const auto expected = ref.model->forward(x);
  for (const bool compute_fails : {true, false}) {
    BOOST_TEST_CONTEXT("the block's compute " << (compute_fails ? "fails too" : "succeeds")) {
      fixture f;
      offload::device_set devices;
      auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
      f.comp.set_streaming({2, 1});
      f.comp.place_on(gpu);
      BOOST_TEST(f.comp.stream()->lost().empty());
      f.model->on_block = [&](int i) {
        if (i != 2) return;
        gpu.fail_record_compute_at(1); // the release of block 2
        if (compute_fails) throw std::runtime_error("kernel failed in block 2");
      };
      std::string what;
      try {
        (void)f.model->forward(x);
      } catch (const offload::capacity_error& e) {
        what = e.id();
      } catch (const std::runtime_error& e) {
        what = e.what();
      }
      // The compute's own error when it failed; the release's otherwise.
      BOOST_TEST(what == (compute_fails ? "kernel failed in block 2" : "offload.capacity.injected_fault"));
      f.model->on_block = nullptr;
      const auto* stream = f.comp.stream();
      BOOST_TEST(!stream->in_use(2));
      BOOST_TEST(stream->lost().find("releasing block 2 failed (offload.capacity.injected_fault: injected failure on mock:0") == 0u,
                 stream->lost());
      BOOST_TEST(offload::testing::error_id([&] { (void)f.model->forward(x); }) == "offload.placement.stream_lost");
      try {
        (void)f.model->forward(x);
      } catch (const offload::placement_error& e) {
        const std::string m = e.what();
        BOOST_TEST(m.find("block 0 of 'dit' cannot be brought to mock:0: releasing block 2 failed") !=
                       std::string::npos,
                   m);
        BOOST_TEST(m.find("evict 'dit'") != std::string::npos, m);
      }
      // Evicting frees the slots; placed again, the component streams the same result.
      f.comp.place_on(devices.host());
      BOOST_TEST(gpu.used() == 0);
      BOOST_TEST(stream->lost().empty());
      f.comp.place_on(gpu);
      BOOST_TEST(identical(f.model->forward(x), expected));
      f.comp.place_on(devices.host());
      f.comp.audit(device_id::cpu(), {"after", "test"});
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(stream_policy)

BOOST_AUTO_TEST_CASE(grammar_round_trip_and_errors) {
  const auto p = offload::parse_policy("offload_model,dit=cuda:on_demand:stream=4:prefetch=2:pinned");
  const auto& dit = p.of("dit");
  BOOST_TEST(dit.stream.slots == 4);
  BOOST_TEST(dit.stream.prefetch == 2);
  BOOST_TEST((dit.memory == offload::host_memory::pinned));
  BOOST_TEST((offload::parse_policy(p.str()) == p));
  BOOST_TEST(p.str().find("dit=cuda:on_demand:stream=4:prefetch=2:pinned") != std::string::npos);
  // Defaults: stream alone is 2 slots; prefetch is every slot but the computing one.
  auto stream_of = [](const char* text) {
    const auto s = offload::parse_policy(text).of("dit").stream;
    return fmt::format("{}/{}", s.slots, s.prefetch);
  };
  BOOST_TEST(stream_of("dit=cuda:stream") == "2/1");
  BOOST_TEST(stream_of("dit=cuda:stream=3") == "3/2");
  BOOST_TEST(stream_of("dit=cuda:stream=1") == "1/0");
  BOOST_TEST(stream_of("dit=mock:0:stream=2:prefetch=0") == "2/0");
  for (const char* bad : {"dit=cpu:stream", "dit=cuda:prefetch=1", "dit=cuda:stream=0", "dit=cuda:stream=2:prefetch=2",
                          "dit=cuda:stream=x", "dit=cuda:stream=2:prefetch"})
    BOOST_TEST_CONTEXT(bad) { BOOST_TEST(offload::testing::error_id([&] { (void)offload::parse_policy(bad); }) == "offload.config.policy_syntax"); }
  // The message names the limit.
  try {
    (void)offload::parse_policy("dit=cuda:stream=2:prefetch=2");
  } catch (const offload::config_error& e) {
    BOOST_TEST(std::string(e.what()).find("at most 1 with stream=2") != std::string::npos);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// Storage dtype (`store=bf16`, storage.hpp) and tile options (`tile=N:overlap=M`) as policy options:
// the grammar, the stored sizes a storage rule reports, the plan that uses them, the executor that
// converts the selected masters (and only those) before the first placement, and the errors.
BOOST_AUTO_TEST_SUITE(storage_policy)

namespace {

// The toy DiT with a storage rule: the embedding's weight and every block tensor (not the head,
// not the embedding's bias).
bool toy_rule(std::string_view path) { return path == "embed.weight" || path.starts_with("blocks."); }

} // namespace

BOOST_AUTO_TEST_CASE(grammar_round_trip_and_errors) {
  const auto p = offload::parse_policy("dit=cuda:on_demand:stream=2:store=bf16:pinned,vae=cpu:tile=32,x=mock:0:tile=8:overlap=1:store=fp16");
  BOOST_TEST((p.of("dit").store == offload::storage_dtype::bf16));
  BOOST_TEST((p.of("x").store == offload::storage_dtype::fp16));
  BOOST_TEST((p.of("dit").tile == offload::tile_options{}));
  BOOST_TEST((p.of("vae").tile == offload::tile_options{32, 8})); // overlap defaults to a quarter
  BOOST_TEST((p.of("x").tile == offload::tile_options{8, 1}));
  BOOST_TEST(p.str() == "dit=cuda:on_demand:stream=2:prefetch=1:store=bf16:pinned,vae=cpu:tile=32:overlap=8,"
                        "x=mock:0:resident:store=fp16:tile=8:overlap=1");
  BOOST_TEST((offload::parse_policy(p.str()) == p));
  BOOST_TEST((offload::parse_policy("vae=cuda:tile=3").of("vae").tile == offload::tile_options{3, 0}));
  BOOST_TEST((offload::parse_policy("dit=cuda:store=bfloat16").of("dit").store == offload::storage_dtype::bf16));
  for (const char* bad : {"dit=cuda:store", "dit=cuda:store=fp8", "dit=cuda:store=", "vae=cuda:overlap=2",
                          "vae=cuda:tile=8:overlap=8", "vae=cuda:tile=0", "vae=cuda:tile", "vae=cuda:tile=x"})
    BOOST_TEST_CONTEXT(bad) {
      BOOST_TEST(offload::testing::error_id([&] { (void)offload::parse_policy(bad); }) == "offload.config.policy_syntax");
    }
  const std::string msg = offload::testing::error_message([] { (void)offload::parse_policy("vae=cuda:tile=8:overlap=9"); });
  BOOST_TEST(msg.find("an overlap smaller than the tile (8); found overlap=9") != std::string::npos, msg);
}

BOOST_AUTO_TEST_CASE(stored_sizes_plan_and_conversion) {
  fixture f;
  f.comp.declare_storage_rule(toy_rule);
  // By hand: embed.weight 8x16 and every block (16x16 + 16) in 2 bytes; embed.bias and the head
  // (16x4 + 4) stay float32. A bf16 block slot: 512 + 32 -> 512 + 256 (each tensor 256-aligned).
  const std::int64_t block16 = std::int64_t{16 * 16 + 16} * 2;
  const std::int64_t stored = 8 * 16 * 2 + 16 * 4 + kBlocks * block16 + std::int64_t{16 * 4 + 4} * 4;
  const auto sizes = f.comp.storage_sizes();
  BOOST_REQUIRE(sizes.size() == 2u);
  for (const auto& s : sizes) {
    BOOST_TEST(s.bytes == stored);
    BOOST_REQUIRE(s.blocks.has_value());
    BOOST_TEST(s.blocks->block_bytes == std::vector<std::int64_t>(kBlocks, block16));
    BOOST_TEST(s.blocks->slot_bytes == 512 + 256);
  }
  const auto info = offload::info_of(f.comp);
  BOOST_REQUIRE(info.stored_as(offload::storage_dtype::bf16) != nullptr);

  // The plan uses the stored sizes; the executor converts before the first placement, and the
  // mock moves exactly the planned bytes.
  std::vector<offload::stage> stages = {{"encode", {}, {}, 1, 0}, {"denoise", {"dit"}, {{"dit", 1000}}, 3, 0}};
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
  const auto policy = offload::parse_policy("dit=mock:0:on_demand:stream=2:store=bf16");
  const auto p = offload::schedule(stages, {info}, policy, {.accelerator = gpu.id(), .devices = {{gpu.id(), 1_GiB}}});
  BOOST_REQUIRE(p.fits());
  const std::int64_t rest = stored - kBlocks * block16;
  BOOST_TEST(p.component_bytes.at("dit") == stored);
  BOOST_TEST(p.device_bytes.at("dit") == rest + std::int64_t{2} * (512 + 256));
  BOOST_TEST(p.step("denoise")->streamed_bytes.at("dit") == block16 * 3 * kBlocks);

  std::vector<at::Tensor> expected;
  for (const auto& b : f.model->block_list) expected.push_back(b->weight.detach().to(torch::kBFloat16));
  const at::Tensor head = f.model->head->weight.detach().clone();
  offload::executor ex(p, devices, {&f.comp});
  BOOST_TEST(f.comp.bytes() == stored);
  BOOST_TEST((f.comp.tensors().master("embed.weight").scalar_type() == torch::kBFloat16));
  BOOST_TEST((f.comp.tensors().master("embed.bias").scalar_type() == torch::kFloat32));
  BOOST_TEST((f.comp.tensors().master("head.weight").scalar_type() == torch::kFloat32));
  BOOST_TEST(torch::equal(f.comp.tensors().master("head.weight"), head));
  ex.start();
  { auto s = ex.enter("encode"); }
  for (int r = 0; r < 3; ++r) {
    auto s = ex.enter("denoise");
    for (int i = 0; i < kBlocks; ++i) {
      offload::block_use use(f.model->stream, i);
      const auto& w = f.model->block_list[static_cast<std::size_t>(i)]->weight;
      BOOST_TEST((w.scalar_type() == torch::kBFloat16));
      BOOST_TEST(torch::equal(w, expected[static_cast<std::size_t>(i)]), "block " << i);
    }
  }
  ex.finish();
  BOOST_TEST(gpu.bytes_in() == p.bytes_to_devices);
  BOOST_TEST(gpu.peak() == p.peak_of(gpu.id()));
  BOOST_TEST(gpu.used() == 0);

  // One-way: the component now is what it was converted to; a policy without `store` plans with it.
  BOOST_TEST(offload::info_of(f.comp).bytes == stored);
  BOOST_TEST(f.comp.storage_sizes().front().bytes == stored);
  f.comp.set_storage(offload::storage_dtype::native);
  BOOST_TEST((f.comp.tensors().master("embed.weight").scalar_type() == torch::kBFloat16));
}

BOOST_AUTO_TEST_CASE(simulation_uses_the_stored_size) {
  fixture f;
  f.comp.declare_storage_rule(toy_rule);
  const auto info = offload::info_of(f.comp);
  std::vector<offload::stage> stages = {{"denoise", {"dit"}, {{"dit", 100}}, 2, 0.5}};
  const auto p = offload::schedule(stages, {info}, offload::parse_policy("dit=mock:0:store=fp16"),
                                   {.accelerator = device_id::mock(0)});
  const auto sim = offload::testing::simulate(p, {info});
  BOOST_TEST(sim.peak_bytes.at(device_id::mock(0)) == p.peak_of(device_id::mock(0)));
  BOOST_TEST(p.peak_of(device_id::mock(0)) == info.stored_as(offload::storage_dtype::fp16)->bytes + 100);
}

BOOST_AUTO_TEST_CASE(exact_storage_dtypes_are_declared_with_the_rule) {
  // Declared exact: the planner may choose it (stored_size::exact); the other dtype stays a user's choice.
  fixture f;
  f.comp.declare_storage_rule(toy_rule, {offload::storage_dtype::bf16});
  const auto info = offload::info_of(f.comp);
  BOOST_REQUIRE(info.stored_as(offload::storage_dtype::bf16) != nullptr);
  BOOST_TEST(info.stored_as(offload::storage_dtype::bf16)->exact);
  BOOST_TEST(!info.stored_as(offload::storage_dtype::fp16)->exact);
  // Without the list nothing is exact.
  fixture g;
  g.comp.declare_storage_rule(toy_rule);
  for (const auto& s : g.comp.storage_sizes()) BOOST_TEST(!s.exact, offload::to_string(s.dtype));
  // `native` is no storage to declare.
  fixture h;
  BOOST_TEST(offload::testing::error_id([&] { h.comp.declare_storage_rule(toy_rule, {offload::storage_dtype::native}); }) ==
             "offload.config.storage_rule");
}

BOOST_AUTO_TEST_CASE(errors_name_the_component_and_the_policy) {
  fixture f; // no storage rule, not tileable
  std::vector<offload::stage> stages = {{"denoise", {"dit"}, {}, 1, 0}};
  const auto info = offload::info_of(f.comp);
  BOOST_TEST(info.storage.empty());
  BOOST_TEST(!info.tileable);
  const auto plan_msg = offload::testing::error_message([&] {
    (void)offload::schedule(stages, {info}, offload::parse_policy("dit=mock:0:store=bf16"), {.accelerator = device_id::mock(0)});
  });
  BOOST_TEST(plan_msg.find("policy 'dit=mock:0:store=bf16' stores component 'dit' as bf16") != std::string::npos, plan_msg);
  BOOST_TEST(plan_msg.find("declares no storage rule") != std::string::npos, plan_msg);
  BOOST_TEST(offload::testing::error_id([&] {
               (void)offload::schedule(stages, {info}, offload::parse_policy("dit=mock:0:tile=4"), {.accelerator = device_id::mock(0)});
             }) == "offload.config.not_tileable");
  BOOST_TEST(offload::testing::error_id([&] { f.comp.set_storage(offload::storage_dtype::bf16); }) ==
             "offload.config.no_storage_rule");
  BOOST_TEST(offload::testing::error_id([&] { f.comp.set_tiling({4, 1}); }) == "offload.config.not_tileable");
  f.comp.set_storage(offload::storage_dtype::native); // nothing asked, nothing refused
  f.comp.set_tiling({});
  // Declared: the executor hands the policy's tiles to the component, which the model reads.
  f.comp.declare_tileable();
  BOOST_TEST(offload::info_of(f.comp).tileable);
  offload::device_set devices;
  offload::testing::add_mock(devices, 0);
  const auto p = offload::schedule(stages, {offload::info_of(f.comp)}, offload::parse_policy("dit=mock:0:tile=16:overlap=3"),
                                   {.accelerator = device_id::mock(0)});
  offload::executor ex(p, devices, {&f.comp});
  BOOST_TEST((f.comp.tiling() == offload::tile_options{16, 3}));
  // A rule declared twice, or after placement, is refused.
  f.comp.declare_storage_rule(toy_rule);
  BOOST_TEST(offload::testing::error_id([&] { f.comp.declare_storage_rule(toy_rule); }) ==
             "offload.placement.duplicate_storage_rule");
}

// A T5-like module: a token table it gathers from, blocks, a norm. The table stays on the host while
// the component streams (keep_on_host_while_streaming); the forward gathers where the table is.
struct toy_tableImpl : torch::nn::Module {
  torch::nn::Embedding table{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  std::vector<torch::nn::Linear> block_list;
  torch::nn::Linear norm{nullptr};
  offload::block_stream* stream = nullptr;
  std::function<void()> inside; // called inside each block (tests)

  toy_tableImpl() {
    table = register_module("table", torch::nn::Embedding(64, 16));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < kBlocks; ++i) {
      block_list.push_back(torch::nn::Linear(16, 16));
      blocks->push_back(block_list.back());
    }
    norm = register_module("norm", torch::nn::Linear(16, 16));
  }
  std::vector<at::Tensor> forward(const std::vector<at::Tensor>& ids) {
    std::vector<at::Tensor> h;
    for (const auto& i : ids) {
      const auto& w = table->weight;
      h.push_back(w.device() == i.device() ? table(i) : table(i.to(w.device())).to(i.device()));
    }
    for (int b = 0; b < kBlocks; ++b) {
      offload::block_use use(stream, b);
      if (inside) inside();
      for (auto& v : h) v = torch::gelu(block_list[static_cast<std::size_t>(b)](v)) + v;
    }
    for (auto& v : h) v = norm(v);
    return h;
  }
};
TORCH_MODULE(toy_table);

BOOST_AUTO_TEST_CASE(host_tables_stay_home_while_streaming) {
  const std::vector<at::Tensor> ids = {torch::tensor({1, 5, 63, 5}, torch::kLong), torch::tensor({0, 2, 2, 7}, torch::kLong)};
  torch::manual_seed(11);
  toy_table ref;
  const auto expected = ref->forward(ids);

  torch::manual_seed(11);
  toy_table model;
  offload::offloadable<toy_table> comp{"t5", model};
  comp.declare_blocks("blocks", kBlocks);
  comp.keep_on_host_while_streaming("table");
  model->stream = comp.stream();
  const std::int64_t table = std::int64_t{64} * 16 * 4, block = std::int64_t{16 * 16 + 16} * 4;
  const auto l = comp.blocks();
  BOOST_REQUIRE(l.has_value());
  BOOST_TEST(l->host_bytes == table);
  BOOST_TEST(l->total() == kBlocks * block);
  BOOST_TEST(l->streamed_rest(comp.bytes()) == comp.bytes() - kBlocks * block - table);
  BOOST_TEST(comp.bytes() == table + kBlocks * block + std::int64_t{16 * 16 + 16} * 4); // the host memory: everything

  // The plan: streamed, the table is neither on the device nor copied; whole, it moves.
  const std::vector<offload::stage> stages = {{"encode", {"t5"}, {{"t5", 100}}, 1, 0}};
  const auto info = offload::info_of(comp);
  offload::device_set devices;
  auto& gpu = offload::testing::add_mock(devices, 0, {.capacity = 1_GiB});
  const auto p = offload::schedule(stages, {info}, offload::parse_policy("t5=mock:0:on_demand:stream=2"),
                                   {.accelerator = gpu.id(), .devices = {{gpu.id(), 1_GiB}}});
  BOOST_REQUIRE(p.fits());
  const std::int64_t rest = std::int64_t{16 * 16 + 16} * 4;
  BOOST_TEST(p.device_bytes.at("t5") == rest + 2 * l->slot_bytes);
  BOOST_TEST(p.bytes_to_devices == rest + kBlocks * block);

  offload::executor ex(p, devices, {&comp});
  ex.start();
  {
    auto s = ex.enter("encode");
    BOOST_TEST(gpu.used() == rest + 2 * l->slot_bytes + 100); // + the stage's workspace
    // The table's tensor is its host master; the audit accepts it, inside blocks too.
    for (const auto& t : comp.tensors().tensors())
      if (t.path == "table.weight") BOOST_TEST(t.device == device_id::cpu());
    BOOST_TEST(model->table->weight.data_ptr() == comp.tensors().master("table.weight").data_ptr());
    comp.audit(gpu.id(), {"encode", "test"});
    model->inside = [&] { comp.audit(gpu.id(), {"encode", "test"}); };
    const auto got = model->forward(ids);
    for (std::size_t b = 0; b < ids.size(); ++b) BOOST_TEST(torch::equal(got[b], expected[b]), "branch " << b);
    model->inside = nullptr;
    // Replaced by hand: the audit names it.
    const at::Tensor master = model->table->weight.detach();
    model->table->weight.set_data(master.clone());
    const auto msg = offload::testing::error_message([&] { comp.audit(gpu.id(), {"encode", "test"}); });
    BOOST_TEST(msg.find("tensor 't5.table.weight' (kept on the host while streaming) expected its host master") !=
                   std::string::npos,
               msg);
    model->table->weight.set_data(master);
  }
  ex.finish();
  BOOST_TEST(gpu.bytes_in() == p.bytes_to_devices);
  BOOST_TEST(gpu.peak() == p.peak_of(gpu.id()));
  BOOST_TEST(gpu.used() == 0);

  // Placed whole, the table moves like any tensor.
  comp.set_streaming({});
  comp.place_on(gpu);
  BOOST_TEST(gpu.used() == comp.bytes());
  for (const auto& t : comp.tensors().tensors()) BOOST_TEST(t.device == gpu.id(), t.path);
  comp.audit(gpu.id(), {"encode", "test"});
  comp.place_on(devices.host());
  BOOST_TEST(gpu.used() == 0);
}

BOOST_AUTO_TEST_CASE(host_table_declaration_errors) {
  toy_table model;
  offload::offloadable<toy_table> comp{"t5", model};
  // Unknown path: no tensor under it ('tab' is not a module path prefix of 'table').
  BOOST_TEST(offload::testing::error_id([&] { comp.keep_on_host_while_streaming("tab"); }) ==
             "offload.placement.unknown_tensor");
  // A table inside a block, whichever is declared first.
  {
    toy_table m;
    offload::offloadable<toy_table> c{"t5", m};
    c.declare_blocks("blocks", kBlocks);
    BOOST_TEST(offload::testing::error_id([&] { c.keep_on_host_while_streaming("blocks.2"); }) ==
               "offload.config.host_table");
  }
  comp.keep_on_host_while_streaming("blocks.2.weight");
  BOOST_TEST(offload::testing::error_id([&] { comp.declare_blocks("blocks", kBlocks); }) == "offload.config.host_table");
}

BOOST_AUTO_TEST_SUITE_END()
