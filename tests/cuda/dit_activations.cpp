// The DiT activation model of the denoise stage (wan::dit_block_bytes_per_token_dim, stages.hpp)
// against LibTorch's CUDA caching allocator: one WanAttentionBlock forward at the real widths and
// token counts of T2V-1.3B 832x480x81 (32,760 tokens; its FFN phase binds) and T2V-14B 1280x720x81
// (75,600 tokens; its attention phase binds), matmul weights in bf16 as `store=bf16` and autocast
// compute them. The block's allocator peak, its input included, must lie within 2% below the
// model and never above it. Then a whole forward_branches with two guidance branches, of a T2V-1.3B
// with 2 blocks and a VACE-1.3B with 4 blocks and 2 VACE blocks, at 32,760 tokens: its peak against
// the stage model's forward part (the block, the other branch's residual stream, VACE's control
// streams and hints, the embedded contexts), within 2% below, never above. cuBLAS's workspaces
// (LibTorch takes them from the allocator at the first matmul, 32 MiB on Hopper; the stages count
// them apart, workspace_constants::library_workspace_bytes) are allocated before the measurement.
//
// CTest `cuda_dit_activations` (label cuda): exits 77 (skipped) where LibTorch finds no CUDA
// device, as on CI. It runs on the GPU machine (examples/wan_bench/device_run.sh) and on the fake
// CUDA runtime (tests/compat/debian_torch_cuda.sh with FAKE_CUDA=1), whose allocations are
// LibTorch's own with kernels that do nothing. Prints the figures either way.
#include "wan/model.hpp"
#include "wan/stages.hpp"
#include "wan/vace_model.hpp"

#include <offload/compat.hpp>

#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#if OFFLOAD_HAS_CUDA_ALLOCATOR_STATS
#include <c10/cuda/CUDACachingAllocator.h>

namespace {

namespace alloc = c10::cuda::CUDACachingAllocator;

std::int64_t allocated_now() { return alloc::getDeviceStats(0).allocated_bytes[0].current; }
std::int64_t allocated_peak() { return alloc::getDeviceStats(0).allocated_bytes[0].peak; }

struct shape {
  std::string task;
  std::int64_t frames, height, width; // latent grid after patching: T_lat x H/16 x W/16
};

/// The block's peak above what it is given, plus its input: bytes per token x width.
double measure(const shape& s) {
  const auto cfg = wan::model_config(s.task);
  torch::NoGradGuard no_grad;
  wan::WanAttentionBlock blk(std::string("t2v_cross_attn"), cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.window_size,
                             cfg.qk_norm, cfg.cross_attn_norm, cfg.eps);
  wan::store_matmul_weights(*blk, torch::kBFloat16);
  blk->to(torch::kCUDA);
  const std::int64_t d = cfg.dim / cfg.num_heads, tokens = s.frames * s.height * s.width;
  const auto freqs = torch::cat({wan::rope_params(1024, d - 4 * (d / 6)), wan::rope_params(1024, 2 * (d / 6)),
                                 wan::rope_params(1024, 2 * (d / 6))},
                                1)
                         .to(torch::kCUDA);
  const auto on = torch::TensorOptions().device(torch::kCUDA);
  const auto x = torch::randn({1, tokens, cfg.dim}, on);
  const auto e = torch::randn({1, 6, cfg.dim}, on) * 0.1;
  const auto seq_lens = torch::tensor({tokens}, torch::kLong);
  const auto grid = torch::tensor(std::vector<std::int64_t>{s.frames, s.height, s.width}, torch::kLong).view({1, 3});
  const auto context = torch::randn({1, cfg.text_len, cfg.dim}, on);
  // cuBLAS's workspaces, before the measurement: a product, and a product with a bias in bf16 as
  // the block's linears (which LibTorch may run through cuBLASLt, with a workspace of its own).
  const auto w = torch::ones({64, 64}, on.dtype(torch::kBFloat16));
  (void)torch::mm(w, w);
  (void)torch::nn::functional::linear(w.unsqueeze(0), w, w[0]);
  torch::cuda::synchronize();
  alloc::resetPeakStats(0);
  const std::int64_t before = allocated_now();
  const auto out = blk->forward(x, e, seq_lens, grid, freqs, context, {});
  torch::cuda::synchronize();
  const std::int64_t held = allocated_peak() - before + static_cast<std::int64_t>(x.nbytes());
  return static_cast<double>(held) / static_cast<double>(tokens * cfg.dim);
}

/// A whole forward_branches with two guidance branches at T2V-1.3B's and VACE-1.3B's widths and
/// 832x480x81's 32,760 tokens, with few blocks (T2V: 2; VACE: 4 main blocks, VACE blocks before
/// blocks 0 and 2): its peak above its inputs and the model against the stage model's forward part,
/// (block + the other branch's residual stream (+ VACE's control streams and hints)) x tokens x
/// width + the embedded contexts (2 x [text_len, dim], float32 at most; denoise_held_bytes counts
/// them). Returns {measured, model} in bytes.
std::pair<double, double> measure_forward(const std::string& task) {
  using W = wan::workspace_constants;
  auto cfg = wan::model_config(task);
  const bool vace = task.starts_with("vace");
  cfg.num_layers = vace ? 4 : 2;
  if (vace) cfg.vace_layers = std::vector<std::int64_t>{0, 2};
  const std::int64_t frames = 21, h = 60, w = 104, tokens = frames * (h / 2) * (w / 2);
  torch::NoGradGuard no_grad;
  const auto on = torch::TensorOptions().device(torch::kCUDA);
  const std::vector<torch::Tensor> x{torch::randn({cfg.in_dim, frames, h, w}, on)};
  const auto t = torch::tensor({999}, torch::kLong).to(torch::kCUDA);
  const std::vector<std::vector<torch::Tensor>> contexts{{torch::randn({40, cfg.text_dim}, on)},
                                                         {torch::randn({120, cfg.text_dim}, on)}};
  std::vector<torch::Tensor> z;
  if (vace) z.push_back(torch::randn({cfg.resolved_vace_in_dim(), frames, h, w}, on));
  const auto run = [&](auto& model) {
    model->to(torch::kCUDA);
    model->freqs = model->freqs.to(torch::kCUDA);
    torch::cuda::synchronize();
    alloc::resetPeakStats(0);
    const std::int64_t before = allocated_now();
    {
      wan::autocast_guard autocast(torch::kBFloat16);
      if constexpr (requires { model->vace_layers; })
        (void)model->forward_branches(x, t, z, contexts, tokens);
      else
        (void)model->forward_branches(x, t, contexts, tokens);
    }
    torch::cuda::synchronize();
    return static_cast<double>(allocated_peak() - before);
  };
  double measured = 0;
  if (vace) {
    wan::VaceWanModel model(cfg, torch::kBFloat16);
    measured = run(model);
  } else {
    wan::WanModel model(cfg, torch::kBFloat16);
    measured = run(model);
  }
  const double per_token_dim = wan::dit_block_bytes_per_token_dim(cfg) + W::branch_residual_bytes_per_token_dim +
                               (vace ? W::vace_bytes_per_token_dim : 0.0);
  const double model = per_token_dim * static_cast<double>(tokens * cfg.dim) +
                       2.0 * static_cast<double>(cfg.text_len * cfg.dim) * 4.0;
  return {measured, model};
}

} // namespace

int main() {
  if (!torch::cuda::is_available()) {
    std::puts("offload_cuda_dit_activations: LibTorch finds no CUDA device here; skipped");
    return 77;
  }
  int failures = 0;
  for (const shape& s : {shape{"t2v-1.3B", 21, 30, 52}, shape{"t2v-14B", 21, 45, 80}}) {
    const double measured = measure(s);
    const double model = wan::dit_block_bytes_per_token_dim(wan::model_config(s.task));
    const bool ok = measured <= model && measured >= 0.98 * model;
    failures += ok ? 0 : 1;
    std::printf("offload_cuda_dit_activations: %s block, %ld tokens: %.3f bytes per token x width measured, %.3f "
                "modelled (%+.2f%%): %s\n",
                s.task.c_str(), static_cast<long>(s.frames * s.height * s.width), measured, model,
                100.0 * (measured / model - 1.0), ok ? "ok" : "FAILED (expected within 2% below the model)");
  }
  for (const std::string task : {"t2v-1.3B", "vace-1.3B"}) {
    const auto [measured, model] = measure_forward(task);
    const bool ok = measured <= model && measured >= 0.98 * model;
    failures += ok ? 0 : 1;
    std::printf("offload_cuda_dit_activations: %s forward, two branches, 32760 tokens: %.0f bytes measured, %.0f "
                "modelled (%+.2f%%): %s\n",
                task.c_str(), measured, model, 100.0 * (measured / model - 1.0),
                ok ? "ok" : "FAILED (expected within 2% below the model)");
  }
  return failures == 0 ? 0 : 1;
}

#else
int main() {
  std::puts("offload_cuda_dit_activations: this LibTorch has no CUDA allocator statistics; skipped");
  return 77;
}
#endif
