// wan_generate's stage lines and denoising progress bar (see progress.hpp).
#include "progress.hpp"

#include <offload/units.hpp>

#include <fmt/format.h>

#include <algorithm>

#include <unistd.h>

namespace wan_cli {

progress::progress(std::FILE* out) : out_(out), tty_(::isatty(::fileno(out)) != 0) {}

void progress::on_stage(std::string_view stage, int repetition, const offload::executor& ex) {
  const auto now = steady::now();
  if (stage == stage_ && repetition > 1) {
    repetitions_ = repetition;
    const double s = std::chrono::duration<double>(now - stage_start_).count();
    draw_bar(repetition - 1, total_, s, false);
    return;
  }
  close_stage(now);
  const auto& step = ex.get_plan().steps.at(ex.step_index());
  stage_ = std::string(stage);
  total_ = step.repeat;
  repetitions_ = repetition;
  stage_start_ = now;
  // Where the stage's components execute, and the moves made before it.
  std::string where;
  for (const auto& u : step.uses) {
    const auto it = ex.get_plan().execute_on.find(u);
    where += fmt::format("{}{} on {}", where.empty() ? "" : ", ", u,
                         it == ex.get_plan().execute_on.end() ? std::string("?") : it->second.str());
  }
  std::string moves;
  for (const auto& a : step.before)
    moves += fmt::format("{}{} {} ({})", moves.empty() ? "" : ", ", offload::to_string(a.kind), a.component,
                         offload::format_bytes(a.bytes));
  stage_info_ = where + (moves.empty() ? std::string() : "; " + moves);
  if (total_ > 1) draw_bar(0, total_, 0, false);
}

void progress::on_run_finished(const offload::executor& ex) { trace_ = ex.trace(); }

void progress::finish() {
  close_stage(steady::now());
}

void progress::close_stage(steady::time_point now) {
  if (stage_.empty()) return;
  const double s = std::chrono::duration<double>(now - stage_start_).count();
  if (total_ > 1) {
    draw_bar(repetitions_, total_, s, true);
    denoise_done_ = repetitions_;
    denoise_seconds_ = s;
  } else {
    std::fprintf(out_, "%s\n", fmt::format("[wan_generate] {:<12} {:>8.2f} s   {}", stage_, s, stage_info_).c_str());
  }
  std::fflush(out_);
  stage_.clear();
}

void progress::draw_bar(int done, int total, double seconds, bool final) {
  if (!final && !tty_) return; // logs get the final line only
  constexpr int width = 30;
  const int filled = total > 0 ? std::min(width, done * width / total) : width;
  const double rate = seconds > 0 ? done / seconds : 0.0;
  const std::string bar = std::string(filled, '#') + std::string(width - filled, ' ');
  const std::string line =
      fmt::format("[wan_generate] {:<12} [{}] {}/{} steps {:>7.2f} s {:>7.2f} steps/s   {}", stage_, bar, done,
                  total, seconds, rate, final ? stage_info_ : std::string());
  if (tty_) std::fprintf(out_, "\r%s\033[K%s", line.c_str(), final ? "\n" : "");
  else std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

} // namespace wan_cli
