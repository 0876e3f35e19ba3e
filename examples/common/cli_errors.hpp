// Command-line helpers the Wan tools share (wan_generate, wan_bench): the usage error, offload's
// messages on one line, byte-size flags. No LibTorch (the fuzz targets include it).
#pragma once

#include <offload/errors.hpp>
#include <offload/units.hpp>

#include <fmt/format.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace cli_common {

/// A bad argument: one line for stderr (what was expected, what was found, what to do). The tools
/// report it with exit status 1, before any model is built.
class usage_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// The first line of an offload error message and its advice line, as one line. (The policy parser
/// puts a caret display between them; a last line that holds a caret is that display, not advice.)
inline std::string one_line(const std::string& what) {
  const auto first = what.find('\n');
  if (first == std::string::npos) return what;
  std::string out = what.substr(0, first);
  const std::string tail = what.substr(what.rfind('\n') + 1);
  if (tail.find_first_not_of(' ') != std::string::npos && tail.find('^') == std::string::npos) out += "; " + tail;
  return out;
}

/// A byte size given to `flag` ("24GiB", "11.49GiB", "8e9"). Positive unless `allow_zero`;
/// `example` is shown in the message when it is not.
inline std::int64_t parse_size_flag(std::string_view flag, const std::string& text, std::string_view example,
                                    bool allow_zero = false) {
  std::int64_t bytes = 0;
  try {
    bytes = offload::parse_bytes(text);
  } catch (const offload::config_error& e) {
    throw usage_error(fmt::format("{} '{}': {}", flag, text, one_line(e.what())));
  }
  if (bytes < 0 || (bytes == 0 && !allow_zero))
    throw usage_error(fmt::format("{} '{}': expected a {} size such as {}", flag, text,
                                  allow_zero ? "non-negative" : "positive", example));
  return bytes;
}

} // namespace cli_common
