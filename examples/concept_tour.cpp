// A tour of offload's concepts in the order docs/ explains them: devices, tensors (offloadable and
// auxiliary tensors), policies, stages, plans, execution and traces. Every snippet in docs/ is
// taken from here, so they compile with the build and run as the test example_concept_tour.
#include <offload/offload.hpp>
#include <offload/testing/caching_host_allocator.hpp>
#include <offload/testing/host_memory_probe.hpp>
#include <offload/testing/mock_device.hpp>
#include <offload/testing/simulate.hpp>

#include <torch/torch.h>

#include <cassert>
#include <iostream>

using namespace offload::literals;

// [rope-module]
struct RotaryImpl : torch::nn::Module {
  torch::nn::Linear qkv{nullptr};
  at::Tensor freqs; // complex table: a plain member, not a buffer (not in checkpoints)
  RotaryImpl() {
    qkv = register_module("qkv", torch::nn::Linear(32, 96));
    freqs = torch::polar(torch::ones({64, 8}, torch::kFloat64), torch::rand({64, 8}, torch::kFloat64));
  }
};
TORCH_MODULE(Rotary);
// [rope-module]

// [streaming-module]
struct DeepImpl : torch::nn::Module {
  torch::nn::ModuleList blocks{nullptr}; // parameters "blocks.<i>.weight", "blocks.<i>.bias"
  std::vector<torch::nn::Linear> block_list;
  offload::block_stream* stream = nullptr; // set when wrapped; null = resident
  DeepImpl() {
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int i = 0; i < 4; ++i) blocks->push_back(block_list.emplace_back(torch::nn::Linear(32, 32)));
  }
  at::Tensor forward(at::Tensor h) {
    for (int i = 0; i < 4; ++i) {
      offload::block_use use(stream, i); // block i ready on the compute stream until released
      h = block_list[static_cast<std::size_t>(i)](h);
    }
    return h;
  }
};
TORCH_MODULE(Deep);
// [streaming-module]

// [host-table-module]
// A token table and a streamed block list (T5's layout): while streamed, the table stays on the
// host and the forward gathers from it there, moving only the rows.
struct LookupImpl : torch::nn::Module {
  torch::nn::Embedding table{nullptr};
  Deep deep{nullptr};
  LookupImpl() {
    table = register_module("table", torch::nn::Embedding(100, 32));
    deep = register_module("deep", Deep());
  }
  at::Tensor forward(const at::Tensor& ids) {
    const auto& w = table->weight;
    return deep->forward(w.device() == ids.device() ? table(ids) : table(ids.to(w.device())).to(ids.device()));
  }
};
TORCH_MODULE(Lookup);
// [host-table-module]

int tour() {
  // [devices]
  offload::device_set devices; // always holds the host, "cpu"
  auto& gpu = offload::testing::add_mock(devices, 0,
                                         {.capacity = 4_MiB, .h2d_bytes_per_second = 50e9,
                                          .d2h_bytes_per_second = 50e9});
  // A real GPU would be: devices.emplace<offload::cuda_device>(0);
  // [devices]

  // [tensors]
  Rotary attn;
  offload::offloadable rot("attn", attn);
  rot.register_aux("freqs", attn->freqs, offload::dtype_rule::keep); // moves, keeps complex128
  rot.convert(torch::kBFloat16);          // weights to bf16; freqs stays complex128
  rot.place_on(gpu);                      // parameters, buffers and freqs in one call
  rot.audit(gpu.id(), {"tour", "manual"}); // throws placement_error if anything is elsewhere
  rot.place_on(devices.host());           // eviction frees the mock's bytes, copies nothing back
  // [tensors]
  assert(attn->freqs.scalar_type() == torch::kComplexDouble);
  assert(gpu.used() == 0 && gpu.bytes_out() == 0);

  // [policies]
  auto reference = offload::parse_policy("offload_model");           // Wan's flag
  auto seed = offload::parse_policy("offload_model+vae_cpu");         // the seed plan
  auto custom = offload::parse_policy("t5=cpu,vae=cuda:on_demand,dit=cuda");
  try {
    offload::parse_policy("t5=cpu,vae=cuda:on_demnd");
  } catch (const offload::config_error& e) {
    std::cout << e.what() << "\n"; // points at position 16, says what was expected
  }
  // [policies]

  // [stages]
  const std::vector<offload::stage> stages = {
      {"text_encode", {"t5"}, {{"t5", 0.28_GiB}}},
      {"denoise", {"dit"}, {{"dit", 2.06_GiB}}, /*repeat=*/50},
      {"decode", {"vae"}, {{"vae", 8.28_GiB}}},
  };
  const std::vector<offload::component_info> sizes = {{"t5", 10.58_GiB}, {"dit", 5.29_GiB}, {"vae", 0.47_GiB}};
  // [stages]

  // [plans]
  const auto mock0 = offload::device_id::mock(0);
  for (const auto& policy : {reference, seed, custom}) {
    const auto plan = offload::schedule(stages, sizes, policy,
                                        {.accelerator = mock0, .devices = {{mock0, 11.49_GiB}}});
    std::cout << plan.table() << "\n"; // or plan.json()
  }
  // [plans]

  // [prefetch]
  // Cross-stage prefetch: the next stage's components start moving during the current stage's
  // last repetition, on the transfer stream, where the device has room on top of its peak.
  const auto ahead = offload::schedule(stages, sizes,
                                       offload::parse_policy("t5=cuda:on_demand,dit=cuda:on_demand,vae=cuda:on_demand,pinned,prefetch"),
                                       {.accelerator = mock0, .devices = {{mock0, 24_GiB}}});
  std::cout << ahead.table(); // text_encode: "prefetch: onload dit"; denoise: "prefetch: onload vae"
  // [prefetch]
  assert(ahead.steps[1].prefetch.size() == 1 && ahead.steps[1].prefetch[0].component == "dit");

  // [simulate]
  const auto plan = offload::schedule(stages, sizes, seed, {.accelerator = mock0, .devices = {{mock0, 11.49_GiB}}});
  const auto sim = offload::testing::simulate(plan, sizes, {.h2d_bytes_per_second = 25e9});
  std::cout << "simulated peak " << offload::format_bytes(sim.peak_bytes.at(mock0)) << ", "
            << sim.transfers << " transfers, " << sim.seconds << " s of transfers\n";
  // [simulate]
  assert(sim.peak_bytes.at(mock0) == plan.peak_of(mock0));

  // [budget]
  // The budget planner: the fastest policy whose plan fits the budgets, by a cost model.
  std::vector<offload::stage> timed = stages; // compute seconds per repetition on the accelerator
  timed[0].seconds = 0.03, timed[1].seconds = 1.45, timed[2].seconds = 3.3;
  auto cost = offload::cost_model::defaults(); // H100 figures; offload::cost_model::load("cost.json")
  const auto chosen = offload::plan_for_budget(
      timed, sizes, {.accelerator = mock0, .budgets = {.device = 12_GiB, .pinned = 8_GiB}, .cost = cost});
  std::cout << chosen.summary() << chosen.plan.table(); // policy, predicted seconds, peaks
  try {
    offload::plan_for_budget(timed, sizes, {.accelerator = mock0, .budgets = {.device = 4_GiB, .host = 20_GiB}});
  } catch (const offload::capacity_error& e) {
    std::cout << e.what() << "\n"; // the binding stage, the shortfall, the smallest change that fits
  }
  // A storage the component computes exactly (stored_size::exact: the DiT's matmul weights in bf16,
  // which autocast computes in bf16 anyway) the planner may choose; tiles stay the user's choice,
  // carried into every policy it considers (the stages must carry the tiled workspace).
  auto exact = sizes;
  exact[1].storage = {{offload::storage_dtype::bf16, 2.70_GiB, std::nullopt, /*exact=*/true}};
  exact[2].tileable = true;
  auto tiled_stages = timed;
  tiled_stages[2].workspace = {{"vae", 1.72_GiB}}; // the decode's workspace in 32x32 latent-px tiles
  const auto small = offload::plan_for_budget(
      tiled_stages, exact, {.accelerator = mock0, .budgets = {.device = 6_GiB}, .tiles = {{"vae", {32, 8}}}});
  std::cout << small.plan.policy.str() << "\n"; // dit=...:store=bf16..., vae=...:tile=32:overlap=8
  // [budget]
  assert(chosen.device_peak_bytes <= 12_GiB);
  assert(small.plan.policy.of("dit").store == offload::storage_dtype::bf16);
  assert(small.plan.policy.of("vae").tile.enabled());

  // [execute]
  const std::vector<offload::stage> tiny = {{"attend", {"attn"}, {{"attn", 64_KiB}}, 3}};
  const auto tiny_plan = offload::schedule(tiny, {{"attn", rot.bytes()}}, offload::parse_policy("attn=cuda:on_demand"),
                                           {.accelerator = mock0, .devices = {{mock0, gpu.capacity()}}});
  offload::executor run(tiny_plan, devices, {&rot});
  for (int i = 0; i < 3; ++i) {
    auto scope = run.enter("attend"); // onload on first entry, audit, workspace accounted
    torch::NoGradGuard g;
    (void)attn->qkv->forward(torch::rand({4, 32}, torch::kBFloat16));
  }
  run.finish(); // the stage's after-actions: attn leaves the mock
  std::cout << run.trace().chrome_json().size() << " bytes of Chrome trace\n";
  // [execute]

  // [streaming]
  // A model with a block list streams it through K device slots (docs/streaming.md).
  Deep net;
  offload::offloadable deep("deep", net);
  deep.declare_blocks("blocks", 4);
  net->stream = deep.stream();
  const auto streamed = offload::parse_policy("deep=cuda:on_demand:stream=2:prefetch=1");
  const std::vector<offload::stage> passes = {{"run", {"deep"}, {}, /*repeat=*/3}};
  const auto passes_of = [](const std::string& name) { return std::vector<offload::stage>{{"run", {name}, {}, 1}}; };
  const auto stream_plan = offload::schedule(passes, {offload::info_of(deep)}, streamed,
                                             {.accelerator = mock0, .devices = {{mock0, gpu.capacity()}}});
  std::cout << stream_plan.table(); // footprint: 2 slots; "stream deep" bytes per stage
  offload::executor streaming(stream_plan, devices, {&deep});
  at::Tensor h = torch::rand({4, 32});
  for (int pass = 0; pass < 3; ++pass) {
    auto scope = streaming.enter("run");
    torch::NoGradGuard g;
    // run(): a block copy that fails, or the device running out mid-compute, comes out naming the
    // stage and the policy (stage_scope::run).
    h = scope.run([&] { return net->forward(h); });
  }
  streaming.finish();
  // A lookup table the forward gathers from (T5's token embedding) may stay on the host while the
  // component streams: neither on the device nor copied (block_layout::host_bytes).
  Lookup lookup;
  offload::offloadable looked("lookup", lookup);
  looked.declare_blocks("deep.blocks", 4).keep_on_host_while_streaming("table");
  lookup->deep->stream = looked.stream();
  const auto table_plan = offload::schedule(passes_of("lookup"), {offload::info_of(looked)}, offload::parse_policy("lookup=cuda:stream=2"),
                                            {.accelerator = mock0});
  std::cout << "lookup: " << offload::format_bytes(table_plan.device_bytes.at("lookup")) << " on the device, "
            << offload::format_bytes(looked.blocks()->host_bytes) << " of table on the host\n";
  // [streaming]
  assert(table_plan.device_bytes.at("lookup") == 2 * looked.blocks()->slot_bytes);

  // [storage]
  // A storage rule says which tensors may be stored narrower; the policy picks the dtype
  // (docs/storage_and_tiling.md). The plan counts the stored bytes; the executor converts the
  // selected masters once, before the first placement.
  Deep narrow;
  offload::offloadable narrow_c("narrow", narrow);
  narrow_c.declare_storage_rule([](std::string_view path) { return path.ends_with(".weight"); });
  const auto stored_plan = offload::schedule(passes_of("narrow"), {offload::info_of(narrow_c)},
                                             offload::parse_policy("narrow=cuda:store=bf16"), {.accelerator = mock0});
  std::cout << "narrow: " << offload::format_bytes(stored_plan.component_bytes.at("narrow")) << " stored as bf16\n";
  { offload::executor convert(stored_plan, devices, {&narrow_c}); } // masters converted here
  assert(narrow_c.tensors().master("blocks.0.weight").scalar_type() == torch::kBFloat16);
  assert(narrow_c.tensors().master("blocks.0.bias").scalar_type() == torch::kFloat32);
  // A component that runs tiled reads the policy's tile options (`vae=cuda:tile=32:overlap=8`).
  narrow_c.declare_tileable();
  const auto tiled_plan = offload::schedule(passes_of("narrow"), {offload::info_of(narrow_c)},
                                            offload::parse_policy("narrow=cuda:tile=8:overlap=2"), {.accelerator = mock0});
  { offload::executor tiled(tiled_plan, devices, {&narrow_c}); }
  assert((narrow_c.tiling() == offload::tile_options{8, 2}));
  // [storage]

  // [probe]
  // What a forward allocates on the host, measured (offload/testing/host_memory_probe.hpp).
  {
    offload::testing::host_memory_probe probe;
    torch::NoGradGuard g;
    const auto out = net->forward(torch::rand({64, 32}));
    std::cout << "forward: peak " << offload::format_bytes(probe.peak()) << " over " << probe.allocations()
              << " allocations\n";
    assert(probe.peak() >= static_cast<std::int64_t>(out.nbytes()));
  }
  // [probe]

  // [pinned-cache]
  // Pinned and unpinned through a stand-in for LibTorch's caching pinned allocator: every chunk
  // goes back to the system, none stays cached (offload/testing/caching_host_allocator.hpp).
  {
    offload::testing::caching_host_allocator pinned;
    offload::offloadable<torch::nn::Linear> lin("lin", torch::nn::Linear(512, 512));
    lin.tensors().set_pinned(true, pinned.allocator(), pinned.release());
    std::cout << "pinned: " << offload::format_bytes(lin.tensors().pinned_host_bytes()) << " in chunks for "
              << offload::format_bytes(lin.bytes()) << " of masters\n";
    lin.tensors().set_pinned(false);
    assert(pinned.reserved() == 0 && pinned.peak_reserved() == lin.tensors().pinned_bytes_as(offload::storage_dtype::native));
  }
  // [pinned-cache]
  assert(gpu.bytes_in() > 0);
  return gpu.used() == 0 ? 0 : 1;
}

int main() {
  try {
    return tour();
  } catch (const std::exception& e) {
    std::cerr << "concept_tour: " << e.what() << '\n';
    return 1;
  }
}
