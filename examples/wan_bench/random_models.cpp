// wan_bench's random models (see random_models.hpp).
#include "random_models.hpp"

#include "wan/clip.hpp"
#include "wan/configs/configs.hpp"
#include "wan/model.hpp"
#include "wan/t5.hpp"
#include "wan/vae.hpp"

#include <offload/errors.hpp>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/stack.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>

namespace wan_bench {

namespace {

// ---------------------------------------------------------------------------------------------
// fast_init: a dispatcher mode whose uniform_ / normal_ fill host tensors on every core.

/// The mode key. LibTorch reserves it for tests of mode-style dispatch; wan_bench is a program of
/// its own, so nothing else in the process registers it. Everything but uniform_ and normal_ falls
/// through to the usual kernels.
constexpr c10::DispatchKey mode_key = c10::DispatchKey::TESTING_ONLY_GenericMode;

std::atomic<std::uint64_t> next_stream{0x6a09e667f3bcc908ULL};

std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// Fills `t` (contiguous, on the host, floating point) with draw(64 random bits) for every element:
/// xorshift128+ within chunks of 64 Ki elements, each chunk seeded from (tensor stream, chunk index),
/// so the numbers do not depend on the thread count. Returns false for tensors it does not handle.
template <class Draw>
bool parallel_fill(at::Tensor& t, Draw draw) {
  if (!t.device().is_cpu() || !t.is_contiguous() || !t.is_floating_point() || t.numel() == 0) return false;
  const auto st = t.scalar_type();
  if (st != at::kFloat && st != at::kDouble && st != at::kHalf && st != at::kBFloat16) return false;
  const std::int64_t n = t.numel();
  const std::uint64_t stream = splitmix64(next_stream.fetch_add(0x9e3779b97f4a7c15ULL));
  constexpr std::int64_t chunk = std::int64_t{1} << 16;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "wan_bench_fill", [&] {
    scalar_t* p = t.data_ptr<scalar_t>();
    at::parallel_for(0, (n + chunk - 1) / chunk, 1, [&](std::int64_t cb, std::int64_t ce) {
      for (std::int64_t c = cb; c < ce; ++c) {
        std::uint64_t s0 = splitmix64(stream ^ static_cast<std::uint64_t>(2 * c + 1));
        std::uint64_t s1 = splitmix64(s0 ^ static_cast<std::uint64_t>(c));
        const std::int64_t end = std::min(n, (c + 1) * chunk);
        for (std::int64_t i = c * chunk; i < end; ++i) {
          std::uint64_t x = s0;
          const std::uint64_t y = s1;
          s0 = y;
          x ^= x << 23;
          s1 = x ^ y ^ (x >> 17) ^ (y >> 26);
          p[i] = static_cast<scalar_t>(draw(s1 + y));
        }
      }
    });
  });
  return true;
}

/// The boxed kernel of aten::uniform_(self, from, to, generator) and aten::normal_(self, mean, std,
/// generator) under the mode: without an explicit generator, a parallel fill; otherwise, and for
/// tensors parallel_fill does not handle, the usual kernel.
void fill_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  auto& s = *stack;
  const std::size_t base = s.size() - 4; // self, a, b, generator
  at::Tensor self = s[base].toTensor();
  const double a = s[base + 1].toDouble();
  const double b = s[base + 2].toDouble();
  const bool uniform = op.schema().name() == "aten::uniform_";
  bool done = false;
  if (s[base + 3].isNone()) {
    if (uniform)
      done = parallel_fill(self, [a, b](std::uint64_t bits) {
        return a + (b - a) * (static_cast<double>(bits >> 11) * 0x1.0p-53); // [a, b)
      });
    else // Irwin-Hall with 4 terms of 16 bits: mean 2, variance 1/3
      done = parallel_fill(self, [a, b](std::uint64_t bits) {
        const double sum = static_cast<double>(bits & 0xffffU) + static_cast<double>((bits >> 16) & 0xffffU) +
                           static_cast<double>((bits >> 32) & 0xffffU) + static_cast<double>(bits >> 48);
        return a + b * (sum * 0x1.0p-16 - 2.0) * 1.7320508075688772;
      });
  }
  if (!done) {
    c10::impl::ExcludeDispatchKeyGuard plain(mode_key);
    op.callBoxed(stack);
    return;
  }
  torch::jit::drop(s, 4);
  torch::jit::push(s, std::move(self));
}

struct registration {
  std::unique_ptr<torch::Library> fallthrough, kernels;
  std::string error;
};

/// Registers the mode's kernels once (never unregistered: the process is wan_bench).
const registration& mode_registration() {
  static const registration* r = [] {
    auto* reg = new registration();
    try {
      reg->fallthrough = std::make_unique<torch::Library>(torch::Library::IMPL, "_", mode_key, __FILE__, __LINE__);
      reg->fallthrough->fallback(torch::CppFunction::makeFallthrough());
      reg->kernels = std::make_unique<torch::Library>(torch::Library::IMPL, "aten", mode_key, __FILE__, __LINE__);
      reg->kernels->impl("uniform_", torch::CppFunction::makeFromBoxedFunction<&fill_kernel>());
      reg->kernels->impl("normal_", torch::CppFunction::makeFromBoxedFunction<&fill_kernel>());
    } catch (const std::exception& e) {
      const std::string what = e.what();
      reg->error = what.substr(0, what.find('\n'));
      reg->kernels.reset();
      reg->fallthrough.reset();
    }
    return reg;
  }();
  return *r;
}

thread_local int mode_depth = 0;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---------------------------------------------------------------------------------------------
// configs

/// The tiny scale: the real structure with small widths (every other hyper-parameter as the task's).
wan::WanModelConfig tiny_dit(wan::WanModelConfig c) {
  c.dim = 64;
  c.ffn_dim = 128;
  c.num_heads = 2;
  c.num_layers = 4; // more blocks than the 2 slots of a `stream=2` policy: streaming really streams
  c.text_dim = 64;  // = tiny_t5().dim
  c.clip_dim = 64;  // = tiny_clip().vision_dim
  return c;
}

wan::T5Config tiny_t5() {
  wan::T5Config c = wan::T5Config::umt5_xxl();
  c.vocab_size = 512;
  c.dim = 64;
  c.dim_attn = 64;
  c.dim_ffn = 128;
  c.num_heads = 4;
  c.encoder_layers = 2;
  return c;
}

wan::WanVAEConfig tiny_vae() {
  wan::WanVAEConfig c = wan::WanVAEConfig::video_vae();
  c.dim = 8;
  return c;
}

wan::CLIPConfig tiny_clip() {
  wan::CLIPConfig c = wan::CLIPConfig::clip_xlm_roberta_vit_h_14();
  c.embed_dim = 64;
  c.vision_dim = 64;
  c.vision_heads = 4;
  c.vision_layers = 3;
  return c;
}

} // namespace

fast_init::fast_init() {
  if (!mode_registration().error.empty()) return;
  if (mode_depth++ == 0) c10::impl::tls_set_dispatch_key_included(mode_key, true);
  active_ = true;
}

fast_init::~fast_init() {
  if (active_ && --mode_depth == 0) c10::impl::tls_set_dispatch_key_included(mode_key, false);
}

std::string fast_init::unavailable_reason() { return mode_registration().error; }

std::string pipeline_kind(const std::string& task) {
  (void)wan::configs::wan_config(task); // an unknown task: config_error naming the known ones
  if (task.starts_with("t2v") || task.starts_with("t2i")) return "t2v";
  if (task.starts_with("i2v")) return "i2v";
  throw offload::config_error("offload.wan_bench.task",
                              fmt::format("--task '{}': wan_bench runs t2v-1.3B, t2v-14B, t2i-14B and i2v-14B; "
                                          "{} is not benchmarked yet, choose one of those",
                                          task, task.substr(0, task.find('-'))));
}

built_models build_models(const model_request& request) {
  const std::string kind = pipeline_kind(request.task);
  const bool tiny = request.scale == model_scale::tiny;
  const auto t0 = std::chrono::steady_clock::now();
  built_models out;
  torch::NoGradGuard no_grad;
  fast_init mode;
  out.fast_init = mode.active();

  wan::WanModelConfig dit_cfg = wan::model_config(request.task);
  if (tiny) dit_cfg = tiny_dit(dit_cfg);
  const wan::T5Config t5_cfg = tiny ? tiny_t5() : wan::T5Config::umt5_xxl();
  out.t5_vocab = t5_cfg.vocab_size;

  wan::WanModel model(dit_cfg);
  auto t5 = std::make_unique<wan::T5EncoderModel>(dit_cfg.text_len, request.dtypes.t5, torch::kCPU, t5_cfg);
  auto vae = std::make_unique<wan::WanVAE>(tiny ? tiny_vae() : wan::WanVAEConfig::video_vae(), request.dtypes.vae,
                                           torch::kCPU);
  std::unique_ptr<wan::CLIPModel> clip;
  if (kind == "i2v")
    clip = std::make_unique<wan::CLIPModel>(request.dtypes.clip, torch::kCPU,
                                            tiny ? tiny_clip() : wan::CLIPConfig::clip_xlm_roberta_vit_h_14());
  wan::component_options options;
  options.dtypes = request.dtypes;
  out.components = wan::WanComponents::from_models(kind, model, std::move(t5), std::move(vae), std::move(clip), options);
  out.seconds = seconds_since(t0);
  return out;
}

} // namespace wan_bench
