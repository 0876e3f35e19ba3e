#pragma once
/// \file
/// Minimal JSON text helpers for plan, trace, cost model and safetensors header output (the library
/// depends on fmt only).

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace offload::detail {

/// Appends `s` as a JSON string literal (quotes included) to `out`.
inline void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", static_cast<int>(c));
        else out += c;
    }
  }
  out += '"';
}

/// A JSON string literal with quotes and escapes.
inline std::string json_string(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  append_json_string(out, s);
  return out;
}

/// Appends `item` to a comma-separated list held in `list`.
inline void json_append(std::string& list, std::string_view item) {
  if (!list.empty()) list += ',';
  list += item;
}

} // namespace offload::detail
