#pragma once
/// \file
/// Byte quantities: literals (`11.49_GiB`), parsing (`"11.49GiB"`) and formatting.
///
/// **Example**
/// \code
/// using namespace offload::literals;
/// std::int64_t cap = offload::parse_bytes("11.49GiB");   // == 11.49_GiB
/// std::string s = offload::format_bytes(cap);            // "11.49 GiB"
/// \endcode

#include <offload/errors.hpp>

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <system_error>
#include <cstdint>
#include <string>
#include <string_view>

namespace offload {

inline constexpr std::int64_t KiB = 1024;
inline constexpr std::int64_t MiB = 1024 * KiB;
inline constexpr std::int64_t GiB = 1024 * MiB;

namespace literals {
constexpr std::int64_t operator""_GiB(long double v) { return static_cast<std::int64_t>(v * GiB + 0.5L); }
constexpr std::int64_t operator""_GiB(unsigned long long v) { return static_cast<std::int64_t>(v) * GiB; }
constexpr std::int64_t operator""_MiB(long double v) { return static_cast<std::int64_t>(v * MiB + 0.5L); }
constexpr std::int64_t operator""_KiB(unsigned long long v) { return static_cast<std::int64_t>(v) * KiB; }
constexpr std::int64_t operator""_MiB(unsigned long long v) { return static_cast<std::int64_t>(v) * MiB; }
} // namespace literals

/// Bytes as a human-readable quantity with two decimals in the largest fitting binary unit.
inline std::string format_bytes(std::int64_t bytes) {
  const double b = static_cast<double>(bytes);
  const double a = std::fabs(b);
  if (a >= GiB) return fmt::format("{:.2f} GiB", b / GiB);
  if (a >= MiB) return fmt::format("{:.2f} MiB", b / MiB);
  if (a >= KiB) return fmt::format("{:.2f} KiB", b / KiB);
  return fmt::format("{} B", bytes);
}

/// Parses `<number>[unit]` with unit one of B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB
/// (powers of 1024), or K/M/G/T (binary, as nvidia-smi prints). No unit means bytes.
/// Throws config_error naming the offending position.
inline std::int64_t parse_bytes(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size() && text[i] == ' ') ++i;
  const std::size_t num_begin = i;
  bool digits = false, dot = false;
  while (i < text.size() && ((text[i] >= '0' && text[i] <= '9') || (text[i] == '.' && !dot))) {
    if (text[i] == '.') dot = true; else digits = true;
    ++i;
  }
  if (!digits)
    throw config_error("offload.config.bytes_syntax",
                       fmt::format("expected a number at position {} of '{}', found '{}'; write e.g. "
                                   "'11.49GiB' or '8000000000'",
                                   num_begin, text, text.substr(num_begin, 1)));
  // from_chars, not std::stod: a number beyond the double range must be a config_error, not
  // std::out_of_range.
  double value = 0;
  const auto [num_end, num_ec] = std::from_chars(text.data() + num_begin, text.data() + i, value);
  if (num_ec != std::errc() || num_end != text.data() + i)
    throw config_error("offload.config.bytes_range",
                       fmt::format("the number '{}' in '{}' is out of range; write a size such as "
                                   "'11.49GiB'",
                                   text.substr(num_begin, i - num_begin), text));
  while (i < text.size() && text[i] == ' ') ++i;
  const std::string_view unit = text.substr(i);
  struct u { std::string_view name; double scale; };
  static constexpr u units[] = {
      {"", 1},        {"B", 1},         {"KB", 1e3},     {"MB", 1e6},     {"GB", 1e9},
      {"TB", 1e12},   {"KiB", 1024.0},  {"MiB", 1048576.0}, {"GiB", 1073741824.0},
      {"TiB", 1099511627776.0}, {"K", 1024.0}, {"M", 1048576.0}, {"G", 1073741824.0},
      {"T", 1099511627776.0}};
  for (const auto& x : units)
    if (unit == x.name) {
      const double bytes = value * x.scale;
      // 2^63 is exactly representable; anything at or above it does not fit the int64 result.
      if (!(bytes < 9223372036854775808.0))
        throw config_error("offload.config.bytes_range",
                           fmt::format("'{}' is {:.4g} bytes, more than the largest size (8 EiB); "
                                       "check the number and the unit",
                                       text, bytes));
      return static_cast<std::int64_t>(std::llround(bytes));
    }
  throw config_error("offload.config.bytes_unit",
                     fmt::format("unknown unit '{}' at position {} of '{}'; expected one of B, KB, "
                                 "MB, GB, TB, KiB, MiB, GiB, TiB",
                                 unit, i, text));
}

} // namespace offload
