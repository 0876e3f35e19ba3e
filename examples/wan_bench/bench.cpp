// wan_bench: one generation per policy and its measurements (see bench.hpp, docs/benchmark.md).
#include "bench.hpp"

#include "cuda_stats.hpp"
#include "host_memory.hpp"

#include "wan/image2video.hpp"
#include "wan/text2video.hpp"

#include <offload/block_stream.hpp>
#include <offload/errors.hpp>
#include <offload/executor.hpp>
#include <offload/offloadable.hpp>
#include <offload/testing/mock_device.hpp>
#include <offload/units.hpp>

#include <torch/cuda.h>
#include <torch/torch.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <numeric>

namespace wan_bench {

namespace {

using steady = std::chrono::steady_clock;

double seconds_since(steady::time_point t0) { return std::chrono::duration<double>(steady::now() - t0).count(); }

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

bool is_cuda(const options& o) { return o.device.kind == offload::device_kind::cuda; }

/// Waits for the accelerator's queued work (CUDA kernels are asynchronous); no-op elsewhere.
void sync(const options& o) {
  if (is_cuda(o)) torch::cuda::synchronize(o.device.index);
}

using byte_counts = std::map<std::string, std::int64_t>; ///< per component

/// A point of a run: a stage's entry (after its onloads), as the stage observer sees it.
struct mark {
  std::string stage;
  double t = 0;                  ///< seconds since the generate() call, after a device synchronize
  std::int64_t bytes_in = 0;     ///< the accelerator's host -> device bytes so far
  byte_counts streamed;          ///< each streaming component's block-stream bytes so far
  std::size_t spans = 0;         ///< executor trace spans recorded so far
};

template <class Module>
const offload::block_stream* stream_of(offload::component* c) {
  if (auto* o = dynamic_cast<offload::offloadable<Module>*>(c)) return o->stream();
  return nullptr;
}

/// Bytes each component's block stream copied so far (components that declare blocks: the DiT,
/// and whichever others the pipelines let stream).
byte_counts streamed_bytes(const wan::WanComponents& comps) {
  byte_counts out;
  for (auto* c : comps.components()) {
    const offload::block_stream* s = stream_of<wan::WanModel>(c);
    if (!s) s = stream_of<wan::T5Encoder>(c);
    if (!s) s = stream_of<wan::XLMRobertaCLIP>(c);
    if (!s) s = stream_of<wan::WanVAE_>(c);
    if (s) out[c->name()] = s->bytes_streamed();
  }
  return out;
}

/// a - b per component.
byte_counts minus(const byte_counts& a, const byte_counts& b) {
  byte_counts out = a;
  for (const auto& [name, bytes] : b) out[name] -= bytes;
  return out;
}

std::int64_t sum(const byte_counts& m) {
  std::int64_t total = 0;
  for (const auto& [name, bytes] : m) total += bytes;
  return total;
}

/// The fixed random prompt, negative prompt and (i2v) image of every run.
struct inputs {
  torch::Tensor prompt_ids, neg_prompt_ids; ///< int64 [n], below the T5 vocabulary
  torch::Tensor image;                      ///< i2v: float [3, H, W] in [-1, 1]
};

inputs make_inputs(const options& o, const built_models& m) {
  auto gen = at::detail::createCPUGenerator(static_cast<std::uint64_t>(o.seed));
  inputs in;
  in.prompt_ids = torch::randint(1, m.t5_vocab, {o.prompt_tokens}, gen, torch::kLong);
  in.neg_prompt_ids = torch::randint(1, m.t5_vocab, {o.neg_prompt_tokens}, gen, torch::kLong);
  if (m.components->kind == "i2v") in.image = torch::rand({3, o.height, o.width}, gen) * 2 - 1;
  return in;
}

/// One generation through the task's pipeline with the bench's fixed inputs; returns the video.
torch::Tensor generate(const options& o, const built_models& m, const inputs& in, const wan::execution& exec,
                       const wan::stage_observer& observer) {
  if (m.components->kind == "i2v") {
    wan::WanI2V pipe(o.task, m.components, exec);
    pipe.observer = observer;
    wan::i2v_params p;
    p.max_area = static_cast<std::int64_t>(o.width) * o.height;
    p.frame_num = o.frame_num;
    p.sampling_steps = o.steps;
    p.seed = o.seed;
    return pipe.generate(in.prompt_ids, in.neg_prompt_ids, in.image, p);
  } else {
    wan::WanT2V pipe(o.task, m.components, exec);
    pipe.observer = observer;
    wan::t2v_params p;
    p.size = {o.width, o.height};
    p.frame_num = o.frame_num;
    p.sampling_steps = o.steps;
    p.seed = o.seed;
    return pipe.generate(in.prompt_ids, in.neg_prompt_ids, p);
  }
}

/// Seconds to copy `bytes` of `component` host -> device at the measured bandwidth of its host
/// memory kind (the policy's `:pinned` or pageable); nullopt when that bandwidth is unknown.
std::optional<double> copy_seconds(const offload::plan& plan, const bandwidths& bw, const std::string& component,
                                   std::int64_t bytes) {
  if (bytes == 0) return 0.0;
  const bool pinned = plan.policy.of(component).memory == offload::host_memory::pinned;
  const auto rate = pinned ? bw.pinned : (bw.pageable ? bw.pageable : bw.pinned);
  if (!rate || *rate <= 0) return std::nullopt;
  return static_cast<double>(bytes) / *rate;
}

/// Transfer seconds of the onload spans [from, to) of the trace plus the `streamed` block bytes.
std::optional<double> transfer_seconds(const offload::plan& plan, const bandwidths& bw,
                                       const std::vector<offload::trace_span>& spans, std::size_t from,
                                       std::size_t to, const byte_counts& streamed) {
  double total = 0;
  for (std::size_t i = from; i < std::min(to, spans.size()); ++i) {
    const auto& s = spans[i];
    if (s.category != "onload") continue;
    const auto component = s.name.substr(s.name.find(' ') + 1); // "onload dit"
    const auto t = copy_seconds(plan, bw, component, s.bytes);
    if (!t) return std::nullopt;
    total += *t;
  }
  for (const auto& [component, bytes] : streamed) {
    const auto t = copy_seconds(plan, bw, component, bytes);
    if (!t) return std::nullopt;
    total += *t;
  }
  return total;
}

} // namespace

double policy_result::mean_step_seconds() const {
  if (denoise_step_seconds.empty()) return 0;
  return std::accumulate(denoise_step_seconds.begin(), denoise_step_seconds.end(), 0.0) /
         static_cast<double>(denoise_step_seconds.size());
}

bandwidths measure_bandwidths(const options& o, offload::device_set& devices) {
  bandwidths b;
  if (o.device.is_mock()) {
    const auto& mock = dynamic_cast<const offload::testing::mock_device&>(devices.get(o.device));
    b.pinned = mock.options().h2d_bytes_per_second;
    const double pageable = mock.options().h2d_pageable_bytes_per_second;
    b.pageable = pageable > 0 ? pageable : *b.pinned;
    b.source = fmt::format("simulated: {}'s bandwidth setting (its virtual clock charges bytes / bandwidth)",
                           o.device.str());
    return b;
  }
  if (!is_cuda(o)) {
    b.source = "none: every component executes on the host";
    return b;
  }
  const std::int64_t n = o.bandwidth_bytes;
  const auto dev = torch::empty({n}, torch::TensorOptions().dtype(torch::kUInt8).device(o.device.torch_device()));
  const auto pageable = torch::ones({n}, torch::kUInt8);
  const auto pinned = torch::empty({n}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
  pinned.copy_(pageable);
  const auto best_rate = [&](const torch::Tensor& src, bool non_blocking) {
    dev.copy_(src, non_blocking); // warm-up
    sync(o);
    double best = std::numeric_limits<double>::infinity();
    for (int i = 0; i < 5; ++i) {
      const auto t0 = steady::now();
      dev.copy_(src, non_blocking);
      sync(o);
      best = std::min(best, seconds_since(t0));
    }
    return static_cast<double>(n) / best;
  };
  b.pinned = best_rate(pinned, true);
  b.pageable = best_rate(pageable, false);
  b.source = fmt::format("measured: {} copied host -> {} from pinned and from pageable memory, best of 5",
                         offload::format_bytes(n), o.device.str());
  return b;
}

policy_result run_policy(const options& o, const built_models& m, const std::string& text,
                         offload::device_set& devices, const bandwidths& bw) {
  policy_result r;
  r.policy = text;
  offload::device* acc = o.device.is_host() ? nullptr : &devices.get(o.device);
  const auto bytes_in = [&] { return acc ? acc->bytes_in() : std::int64_t{0}; };
  const auto bytes_out = [&] { return acc ? acc->bytes_out() : std::int64_t{0}; };
  const auto streamed = [&] { return streamed_bytes(*m.components); };
  std::optional<offload::plan> plan;
  std::vector<mark> marks;
  std::vector<offload::trace_span> spans;
  byte_counts streamed_end;
  try {
    wan::execution exec;
    exec.devices = &devices;
    exec.accelerator = o.device;
    exec.policy = offload::parse_policy(text);
    r.canonical = exec.policy.str();
    exec.on_finish = [&](const offload::executor& ex) { spans = ex.trace().spans(); };
    const inputs in = make_inputs(o, m);

    // Host memory as the policy asks, before the clock starts: storage conversion and pinning are
    // one-time costs of a deployment, like loading. The executor makes the same calls (no-ops then).
    r.host_peak_reset = reset_host_peak();
    const auto t_prepare = steady::now();
    for (auto* c : m.components->components()) {
      const auto& cp = exec.policy.of(c->name());
      c->set_storage(cp.store);
      c->use_pinned_memory(cp.memory == offload::host_memory::pinned);
    }
    r.prepare_seconds = seconds_since(t_prepare);
    if (const auto mem = read_host_memory()) r.host_resident_prepared = mem->resident;
    for (auto* c : m.components->components()) {
      if (exec.policy.of(c->name()).memory != offload::host_memory::pinned) continue;
      r.pinned_master_bytes += c->bytes();
      r.predicted_pinned_bytes += offload::info_of(*c).pinned_as(offload::storage_dtype::native);
      r.pinned_host_bytes += c->pinned_host_bytes();
    }

    sync(o);
    if (is_cuda(o)) reset_cuda_peaks(o.device.index);
    if (acc) acc->reset_peak();
    // Peaks per stage: each stage's interval runs from just before its entry (its onloads) to just
    // before the next one's (its evictions after use); the whole run's peak is the largest of them.
    // The allocator knows its bytes when it hands them out: no synchronization is needed to read them.
    std::string in_stage = "init"; // before the first stage: the initial placement (the plan's `init` step)
    std::optional<cuda_memory_peaks> cuda_peak;
    std::int64_t accounted_peak = 0;
    const auto close_interval = [&] {
      std::optional<std::int64_t> measured;
      if (acc) {
        accounted_peak = std::max(accounted_peak, acc->peak());
        measured = acc->peak();
        acc->reset_peak();
      }
      if (is_cuda(o))
        if (const auto p = read_cuda_peaks(o.device.index)) {
          cuda_peak = cuda_memory_peaks{std::max(cuda_peak ? cuda_peak->allocated : 0, p->allocated),
                                        std::max(cuda_peak ? cuda_peak->reserved : 0, p->reserved)};
          measured = p->allocated;
          restart_cuda_peaks(o.device.index);
        }
      if (measured) r.stage_peak[in_stage] = std::max(r.stage_peak[in_stage], *measured);
    };
    exec.before_stage = [&](std::string_view next) {
      close_interval();
      in_stage = std::string(next);
    };
    const std::int64_t in0 = bytes_in(), out0 = bytes_out();
    const byte_counts streamed0 = streamed();
    const auto t0 = steady::now();
    const wan::stage_observer observer = [&](std::string_view stage, int, const offload::executor& ex) {
      sync(o);
      if (!plan) plan = ex.get_plan();
      marks.push_back({std::string(stage), seconds_since(t0), bytes_in(), streamed(), ex.trace().spans().size()});
    };
    const torch::Tensor video = generate(o, m, in, exec, observer);
    sync(o);
    r.total_seconds = seconds_since(t0);
    close_interval();
    r.output = video.to(torch::kCPU); // untimed; compared with the resident run's
    if (const auto mem = read_host_memory()) r.host_peak = mem->peak;

    r.bytes_to_device = bytes_in() - in0;
    r.bytes_to_host = bytes_out() - out0;
    streamed_end = streamed();
    r.streamed_by_component = minus(streamed_end, streamed0);
    r.bytes_streamed = sum(r.streamed_by_component);
    if (acc) r.accounted_peak = accounted_peak;
    if (cuda_peak) {
      r.peak_allocated = cuda_peak->allocated;
      r.peak_reserved = cuda_peak->reserved;
    }
    r.ok = true;
  } catch (const std::exception& e) {
    r.error = first_line(e.what());
    return r;
  }

  // Stage times: from each entry to the next (the last stage runs to the end of the call).
  if (!marks.empty()) r.setup_seconds = marks.front().t;
  std::size_t first_denoise = marks.size(), after_denoise = marks.size();
  for (std::size_t i = 0; i < marks.size(); ++i) {
    const double end = i + 1 < marks.size() ? marks[i + 1].t : r.total_seconds;
    r.stage_seconds[marks[i].stage] += end - marks[i].t;
    if (marks[i].stage == "denoise") {
      r.denoise_step_seconds.push_back(end - marks[i].t);
      first_denoise = std::min(first_denoise, i);
    } else if (first_denoise < marks.size() && after_denoise == marks.size()) {
      after_denoise = i;
    }
  }

  if (r.denoise_step_seconds.size() >= 2 && o.project_steps.value_or(0) > 0) {
    const auto& d = r.denoise_step_seconds;
    r.steady_step_seconds = std::accumulate(d.begin(), d.end() - 1, 0.0) / static_cast<double>(d.size() - 1);
    r.projected_seconds = r.total_seconds + (*o.project_steps - o.steps) * *r.steady_step_seconds;
  }

  if (plan) {
    if (acc) r.predicted_peak = plan->peak_of(o.device);
    for (const auto& s : plan->steps)
      if (const auto it = s.peak_bytes.find(o.device); acc && it != s.peak_bytes.end())
        r.predicted_stage_peak[s.stage] = std::max(r.predicted_stage_peak[s.stage], it->second);
    r.predicted_bytes_to_device = plan->bytes_to_devices;
    r.predicted_bytes_to_host = plan->bytes_to_host;
    for (const auto& s : plan->steps)
      for (const auto& [component, bytes] : s.streamed_bytes) r.predicted_bytes_streamed += bytes;
    if (const auto t = transfer_seconds(*plan, bw, spans, 0, spans.size(), r.streamed_by_component))
      r.transfer_seconds = *t;
    if (first_denoise < marks.size()) {
      const auto& a = marks[first_denoise];
      const std::size_t to_span = after_denoise < marks.size() ? marks[after_denoise].spans : spans.size();
      const byte_counts& to_streamed = after_denoise < marks.size() ? marks[after_denoise].streamed : streamed_end;
      if (const auto t = transfer_seconds(*plan, bw, spans, a.spans, to_span, minus(to_streamed, a.streamed)))
        r.denoise_transfer_seconds = *t;
    }
  }
  return r;
}

std::vector<onload_result> measure_onloads(const options& o, const built_models& m, offload::device_set& devices,
                                           const bandwidths& bw, int repeats) {
  std::vector<onload_result> out;
  if (o.device.is_host()) return out;
  offload::device& acc = devices.get(o.device);
  const auto now = [&] {
    sync(o);
    return devices.clock().now();
  };
  for (auto* c : m.components->components()) {
    onload_result r;
    r.component = c->name();
    try {
      c->set_streaming({}); // whole
      const auto t_pin = steady::now();
      c->use_pinned_memory(true);
      r.pin_seconds = seconds_since(t_pin);
      r.onload_seconds = r.evict_seconds = std::numeric_limits<double>::infinity();
      for (int i = 0; i < repeats; ++i) {
        const std::int64_t in0 = acc.bytes_in(), out0 = acc.bytes_out();
        const double t0 = now();
        c->place_on(acc);
        const double t1 = now();
        c->place_on(devices.host());
        const double t2 = now();
        r.bytes = acc.bytes_in() - in0;
        r.bytes_to_host += acc.bytes_out() - out0;
        r.onload_seconds = std::min(r.onload_seconds, t1 - t0);
        r.evict_seconds = std::min(r.evict_seconds, t2 - t1);
      }
      r.prefetch_seconds = std::numeric_limits<double>::infinity();
      for (int i = 0; i < repeats; ++i) {
        const std::int64_t in0 = acc.bytes_in(), out0 = acc.bytes_out();
        const double t0 = now();
        c->prefetch_onto(acc);
        c->finish_placement();
        const double t1 = now();
        c->place_on(devices.host());
        if (acc.bytes_in() - in0 != r.bytes)
          throw offload::placement_error(
              "offload.wan_bench.prefetch_bytes",
              fmt::format("prefetching '{}' to {} copied {} bytes, expected {} (what its synchronous onload "
                          "copied); the two onload paths disagree: report it",
                          r.component, o.device.str(), acc.bytes_in() - in0, r.bytes));
        r.bytes_to_host += acc.bytes_out() - out0;
        r.prefetch_seconds = std::min(r.prefetch_seconds, t1 - t0);
      }
      const auto rate = [&](double seconds, std::optional<double>& per_second, std::optional<double>& fraction) {
        if (seconds > 0) per_second = static_cast<double>(r.bytes) / seconds;
        if (per_second && bw.pinned && *bw.pinned > 0) fraction = *per_second / *bw.pinned;
      };
      rate(r.onload_seconds, r.bytes_per_second, r.fraction_of_pinned);
      rate(r.prefetch_seconds, r.prefetch_bytes_per_second, r.prefetch_fraction_of_pinned);
      r.ok = true;
    } catch (const std::exception& e) {
      r.error = first_line(e.what());
      try {
        c->place_on(devices.host());
      } catch (const std::exception&) { // NOLINT(bugprone-empty-catch): the first error is the one reported
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

void compare_with_resident(std::vector<policy_result>& results, bool timed_transfers) {
  const auto res = std::find_if(results.begin(), results.end(),
                                [](const policy_result& r) { return r.ok && r.policy == "resident"; });
  if (res == results.end()) return;
  const policy_result base = *res;
  for (auto& r : results) {
    if (!r.ok) continue;
    if (base.total_seconds > 0) r.time_ratio = r.total_seconds / base.total_seconds;
    if (base.mean_step_seconds() > 0) r.step_ratio = r.mean_step_seconds() / base.mean_step_seconds();
    if (r.projected_seconds && base.projected_seconds && *base.projected_seconds > 0)
      r.projected_time_ratio = *r.projected_seconds / *base.projected_seconds;
    if (const auto p = r.measured_peak(), b = base.measured_peak(); p && b && *b > 0)
      r.peak_ratio = static_cast<double>(*p) / static_cast<double>(*b);
    // Each video is compared once (this runs after every policy), then released unless it is the
    // resident run's: at 1280x720x81 a video takes 0.9 GB of host memory.
    if (!r.identical_to_resident && r.output.defined() && base.output.defined() &&
        r.output.sizes() == base.output.sizes()) {
      r.identical_to_resident = torch::equal(r.output, base.output);
      r.max_abs_diff_vs_resident =
          (r.output.to(torch::kFloat) - base.output.to(torch::kFloat)).abs().max().item<double>();
      if (r.policy != "resident") r.output = at::Tensor();
    }
    if (r.policy == "resident" || !timed_transfers) continue;
    if (r.transfer_seconds > 0)
      r.hidden_fraction = 1.0 - (r.total_seconds - base.total_seconds) / r.transfer_seconds;
    const auto denoise = [](const policy_result& x) {
      const auto it = x.stage_seconds.find("denoise");
      return it == x.stage_seconds.end() ? 0.0 : it->second;
    };
    if (r.denoise_transfer_seconds > 0)
      r.denoise_hidden_fraction = 1.0 - (denoise(r) - denoise(base)) / r.denoise_transfer_seconds;
  }
}

} // namespace wan_bench
