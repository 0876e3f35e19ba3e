#pragma once
/// \file
/// What wan_generate prints on stderr while a pipeline runs: one line per non-repeated stage (time,
/// where its components execute, the moves before it) and a progress bar with steps per second
/// for the denoising loop. Fed by the pipelines' stage observer (called at the start of every
/// stage repetition); finish() closes the last stage. The run's finish observer hands it the
/// executor's complete timeline (every stage span and move), for --trace.

#include <offload/device.hpp>
#include <offload/executor.hpp>
#include <offload/trace.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

namespace wan_cli {

class progress {
public:
  explicit progress(std::FILE* out = stderr);

  /// The stage observer: `stage` starts its `repetition`-th run (1-based).
  void on_stage(std::string_view stage, int repetition, const offload::executor& ex);
  /// The run's finish observer: the last stage closed and its after-actions applied.
  void on_run_finished(const offload::executor& ex);
  /// Closes the open stage (call when the pipeline returned).
  void finish();

  /// The executor's timeline (stage spans, transfers, memory counters) of the run.
  [[nodiscard]] const offload::timeline& trace() const noexcept { return trace_; }
  [[nodiscard]] int denoise_steps() const noexcept { return denoise_done_; }
  [[nodiscard]] double denoise_seconds() const noexcept { return denoise_seconds_; }

private:
  using steady = std::chrono::steady_clock;
  void close_stage(steady::time_point now);
  void draw_bar(int done, int total, double seconds, bool final);

  std::FILE* out_;
  bool tty_;
  std::string stage_;
  std::string stage_info_;
  int total_ = 0;
  int repetitions_ = 0;
  steady::time_point stage_start_{};
  offload::timeline trace_;
  int denoise_done_ = 0;
  double denoise_seconds_ = 0;
};

} // namespace wan_cli
