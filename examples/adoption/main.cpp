// Adopting offload in your own model: an encoder -> denoiser -> decoder toy, its stages, its
// components (one with an auxiliary tensor), and two policies run on a mock GPU. The outputs must
// be identical to each other and to an all-host run; the program exits non-zero otherwise.
//
// Build against an installed offload:
//   cmake -S examples/adoption -B build-adoption -DCMAKE_PREFIX_PATH=/usr/local && cmake --build build-adoption
#include <offload/offload.hpp>
#include <offload/testing/mock_device.hpp>

#include <torch/torch.h>

#include <cstdio>
#include <iostream>

namespace toy {

// The decoder keeps a per-channel output scale as a plain tensor member: LibTorch's Module::to()
// would never move it. offload moves it with the module once it is declared auxiliary.
struct DecoderImpl : torch::nn::Module {
  torch::nn::Linear proj{nullptr};
  at::Tensor out_scale; // not a parameter, not a buffer
  DecoderImpl() {
    proj = register_module("proj", torch::nn::Linear(64, 8));
    out_scale = torch::linspace(0.5, 1.5, 8);
  }
  at::Tensor forward(const at::Tensor& h) { return proj->forward(h) * out_scale; }
};
TORCH_MODULE(Decoder);

struct model {
  torch::nn::Sequential encoder{torch::nn::Linear(16, 64), torch::nn::SiLU()};
  torch::nn::Sequential denoiser{torch::nn::Linear(64, 256), torch::nn::GELU(), torch::nn::Linear(256, 64)};
  Decoder decoder;

  // The stages, in order, with the components they use and their workspace estimates.
  static std::vector<offload::stage> stages(int steps, std::int64_t batch) {
    const std::int64_t f = 4 * batch; // float32 activations
    return {{"encode", {"encoder"}, {{"encoder", 64 * f}}},
            {"denoise", {"denoiser"}, {{"denoiser", 256 * f}}, steps},
            {"decode", {"decoder"}, {{"decoder", 8 * f}}}};
  }
};

} // namespace toy

int run_example() {
  torch::manual_seed(0);
  toy::model m;
  const at::Tensor x = torch::randn({32, 16});
  constexpr int steps = 8;

  // Components: each module wrapped once; the decoder's out_scale is declared auxiliary.
  offload::offloadable encoder("encoder", m.encoder);
  offload::offloadable denoiser("denoiser", m.denoiser);
  offload::offloadable decoder("decoder", m.decoder);
  decoder.register_aux("out_scale", m.decoder->out_scale);
  std::vector<offload::component*> components = {&encoder, &denoiser, &decoder};
  std::vector<offload::component_info> infos;
  for (auto* c : components) infos.push_back({c->name(), c->bytes()});

  auto run = [&](const char* policy_text, bool mock) {
    offload::device_set devices;
    const auto accel = offload::device_id::mock(0);
    // Room for the denoiser, its workspace and the decoder, but not for the encoder as well.
    const std::int64_t capacity = denoiser.bytes() + decoder.bytes() + std::int64_t{256} * 4 * x.size(0) + 512;
    if (mock) offload::testing::add_mock(devices, 0, {.capacity = capacity});
    const auto plan = offload::schedule(toy::model::stages(steps, x.size(0)), infos,
                                        offload::parse_policy(policy_text),
                                        {.accelerator = accel, .devices = {{accel, capacity}}});
    std::cout << plan.table();
    plan.require_fit();
    offload::executor ex(plan, devices, components);
    torch::NoGradGuard no_grad;
    at::Tensor h;
    {
      auto s = ex.enter("encode");
      h = m.encoder->forward(x);
    }
    for (int i = 0; i < steps; ++i) {
      auto s = ex.enter("denoise");
      h = h - 0.05 * m.denoiser->forward(h);
    }
    at::Tensor y;
    {
      auto s = ex.enter("decode");
      y = m.decoder->forward(h);
    }
    ex.finish();
    if (mock) {
      const auto& gpu = devices.get(accel);
      std::printf("  mock:0 peak %s, %lld transfers, %s in, %s back\n\n", offload::format_bytes(gpu.peak()).c_str(),
                  static_cast<long long>(gpu.transfers()), offload::format_bytes(gpu.bytes_in()).c_str(),
                  offload::format_bytes(gpu.bytes_out()).c_str());
    }
    return y;
  };

  const auto host = run("encoder=cpu,denoiser=cpu,decoder=cpu", false);
  // Everything on demand: each module visits the mock GPU only for its own stage.
  const auto on_demand = run("encoder=cuda:on_demand,denoiser=cuda:on_demand,decoder=cuda:on_demand", true);
  // Resident with eviction on demand: the scheduler decides what leaves.
  const auto derived = run("evict_on_demand", true);
  const bool same = torch::equal(host, on_demand) && torch::equal(host, derived);
  std::printf("outputs identical under all policies: %s\n", same ? "yes" : "NO");
  return same ? 0 : 1;
}

int main() {
  try {
    return run_example();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "adoption_example: %s\n", e.what());
    return 1;
  }
}
