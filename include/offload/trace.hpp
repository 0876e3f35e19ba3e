#pragma once
/// \file
/// The timeline of an execution: stage spans, transfer spans and memory counters, exportable as a
/// Chrome / Perfetto trace (JSON trace events; open it at ui.perfetto.dev or chrome://tracing).
///
/// **Example**
/// \code
/// std::ofstream("run.trace.json") << executor.trace().chrome_json();
/// \endcode

#include <offload/detail/json.hpp>

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <vector>

namespace offload {

/// A span on one track.
struct trace_span {
  std::string name;
  std::string category; ///< `stage`, `onload`, `evict`, `workspace`
  std::string track;    ///< `stages`, `mock:0 transfers`, ...
  double start = 0, end = 0; ///< seconds on the run's clock
  std::int64_t bytes = 0;
};

/// A sample of a counter (bytes in use on a device).
struct trace_counter {
  std::string name;
  double time = 0;
  std::int64_t value = 0;
};

class timeline {
public:
  void span(trace_span s) { spans_.push_back(std::move(s)); }
  void counter(trace_counter c) { counters_.push_back(std::move(c)); }
  [[nodiscard]] const std::vector<trace_span>& spans() const noexcept { return spans_; }
  [[nodiscard]] const std::vector<trace_counter>& counters() const noexcept { return counters_; }
  void clear() { spans_.clear(), counters_.clear(); }

  /// Chrome trace event format: complete events ("X") per span, counter events ("C").
  [[nodiscard]] std::string chrome_json() const {
    std::vector<std::string> tracks;
    auto tid = [&](const std::string& track) {
      for (std::size_t i = 0; i < tracks.size(); ++i)
        if (tracks[i] == track) return static_cast<int>(i) + 1;
      tracks.push_back(track);
      return static_cast<int>(tracks.size());
    };
    std::string events;
    for (const auto& s : spans_) {
      const int t = tid(s.track);
      detail::json_append(
          events, fmt::format(R"({{"name":{},"cat":{},"ph":"X","ts":{:.3f},"dur":{:.3f},"pid":1,"tid":{},)"
                              R"("args":{{"bytes":{}}}}})",
                              detail::json_string(s.name), detail::json_string(s.category), s.start * 1e6,
                              (s.end - s.start) * 1e6, t, s.bytes));
    }
    for (const auto& c : counters_)
      detail::json_append(events, fmt::format(R"({{"name":{},"ph":"C","ts":{:.3f},"pid":1,"args":{{"bytes":{}}}}})",
                                              detail::json_string(c.name), c.time * 1e6, c.value));
    for (std::size_t i = 0; i < tracks.size(); ++i)
      detail::json_append(events,
                          fmt::format(R"({{"name":"thread_name","ph":"M","pid":1,"tid":{},"args":{{"name":{}}}}})",
                                      i + 1, detail::json_string(tracks[i])));
    return fmt::format(R"({{"displayTimeUnit":"ms","traceEvents":[{}]}})", events);
  }

private:
  std::vector<trace_span> spans_;
  std::vector<trace_counter> counters_;
};

} // namespace offload
