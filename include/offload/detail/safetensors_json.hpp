#pragma once
/// \file
/// A small, strict JSON reader/writer used for safetensors headers and `*.safetensors.index.json`.
///
/// The library's declared dependencies are LibTorch, fmt and range-v3 only, so the header parser
/// lives here instead of pulling in a JSON library. It accepts exactly RFC 8259 JSON:
/// no comments, no trailing commas, no NaN/Infinity, no leading zeros, no unescaped control
/// characters, valid UTF-8 only, no duplicate object keys, at most `max_depth` nesting levels.
/// Whitespace after the value is allowed (the reference safetensors writer pads the header
/// with spaces); anything else after it is an error.

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace offload::detail {

/// Thrown by parse_json; `offset()` is the byte offset in the parsed text.
class json_parse_error : public std::runtime_error {
public:
  json_parse_error(std::size_t offset, const std::string& what)
      : std::runtime_error(what), offset_(offset) {}
  [[nodiscard]] std::size_t offset() const noexcept { return offset_; }

private:
  std::size_t offset_;
};

struct json_member;

/// One parsed JSON value. Objects keep their members in document order.
struct json_value {
  enum class kind { null, boolean, number, string, array, object };
  kind type = kind::null;
  bool boolean = false;
  bool is_integer = false;     ///< number written without fraction/exponent and fits int64
  std::int64_t integer = 0;    ///< valid when is_integer
  double number = 0.0;         ///< always valid for numbers
  std::string text;            ///< string value (decoded), or the raw text of a number
  std::vector<json_value> array;
  std::vector<json_member> object;

  /// Member lookup (linear; headers are small enough). nullptr when absent or not an object.
  [[nodiscard]] inline const json_value* find(std::string_view key) const;
};

struct json_member {
  std::string key;
  json_value value;
};

inline const json_value* json_value::find(std::string_view key) const {
  if (type != kind::object) return nullptr;
  for (const auto& m : object)
    if (m.key == key) return &m.value;
  return nullptr;
}

/// Human-readable name of a JSON kind, for error messages.
inline const char* json_kind_name(json_value::kind k) {
  switch (k) {
  case json_value::kind::null: return "null";
  case json_value::kind::boolean: return "boolean";
  case json_value::kind::number: return "number";
  case json_value::kind::string: return "string";
  case json_value::kind::array: return "array";
  case json_value::kind::object: return "object";
  }
  return "?";
}

class json_parser {
public:
  static constexpr int max_depth = 64;

  explicit json_parser(std::string_view text) : s_(text) {}

  json_value parse_document() {
    skip_ws();
    json_value v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected data after the JSON value");
    return v;
  }

private:
  std::string_view s_;
  std::size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& msg) const {
    throw json_parse_error(pos_, fmt::format("invalid JSON at byte {}: {}", pos_, msg));
  }

  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }

  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }

  void expect_literal(std::string_view lit) {
    if (s_.substr(pos_, lit.size()) != lit) fail(fmt::format("expected '{}'", lit));
    pos_ += lit.size();
  }

  json_value parse_value(int depth) {
    if (depth > max_depth) fail(fmt::format("nesting deeper than {} levels", max_depth));
    if (pos_ >= s_.size()) fail("unexpected end of text, expected a value");
    json_value v;
    switch (s_[pos_]) {
    case '{': v = parse_object(depth); break;
    case '[': v = parse_array(depth); break;
    case '"':
      v.type = json_value::kind::string;
      v.text = parse_string();
      break;
    case 't':
      expect_literal("true");
      v.type = json_value::kind::boolean;
      v.boolean = true;
      break;
    case 'f':
      expect_literal("false");
      v.type = json_value::kind::boolean;
      break;
    case 'n':
      expect_literal("null");
      break;
    default:
      if (s_[pos_] == '-' || (s_[pos_] >= '0' && s_[pos_] <= '9')) {
        v = parse_number();
      } else {
        fail(fmt::format("unexpected character '{}'", printable(s_[pos_])));
      }
    }
    return v;
  }

  static std::string printable(char c) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string(1, c);
    return fmt::format("\\x{:02x}", u);
  }

  json_value parse_object(int depth) {
    json_value v;
    v.type = json_value::kind::object;
    ++pos_; // '{'
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return v;
    }
    for (;;) {
      skip_ws();
      if (peek() != '"') fail("expected a string object key");
      std::size_t key_pos = pos_;
      std::string key = parse_string();
      for (const auto& m : v.object)
        if (m.key == key) {
          pos_ = key_pos;
          fail(fmt::format("duplicate object key \"{}\"", key));
        }
      skip_ws();
      if (peek() != ':') fail("expected ':' after an object key");
      ++pos_;
      skip_ws();
      json_value member = parse_value(depth + 1);
      v.object.push_back(json_member{std::move(key), std::move(member)});
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      fail("expected ',' or '}' in an object");
    }
  }

  json_value parse_array(int depth) {
    json_value v;
    v.type = json_value::kind::array;
    ++pos_; // '['
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return v;
    }
    for (;;) {
      skip_ws();
      v.array.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      fail("expected ',' or ']' in an array");
    }
  }

  json_value parse_number() {
    const std::size_t start = pos_;
    bool integral = true;
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
      if (peek() >= '0' && peek() <= '9') fail("leading zeros are not allowed in numbers");
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++pos_;
    } else {
      fail("expected a digit");
    }
    if (peek() == '.') {
      integral = false;
      ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("expected a digit after '.'");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("expected a digit in the exponent");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    json_value v;
    v.type = json_value::kind::number;
    v.text = std::string(s_.substr(start, pos_ - start));
    const char* b = v.text.data();
    const char* e = b + v.text.size();
    if (integral) {
      auto [p, ec] = std::from_chars(b, e, v.integer);
      v.is_integer = (ec == std::errc() && p == e);
    }
    auto [p, ec] = std::from_chars(b, e, v.number);
    if (ec == std::errc::result_out_of_range) {
      pos_ = start;
      fail(fmt::format("number {} is out of range", v.text));
    }
    (void)p;
    return v;
  }

  unsigned parse_hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned cp = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      cp <<= 4;
      if (c >= '0' && c <= '9') cp |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') cp |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') cp |= unsigned(c - 'A' + 10);
      else fail("invalid hex digit in \\u escape");
    }
    return cp;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  // Validates one raw UTF-8 sequence starting at pos_ and appends it.
  void copy_utf8_sequence(std::string& out) {
    auto u = static_cast<unsigned char>(s_[pos_]);
    int n = 0;
    unsigned cp = 0;
    if (u >= 0xC2 && u <= 0xDF) { n = 1; cp = u & 0x1F; }
    else if (u >= 0xE0 && u <= 0xEF) { n = 2; cp = u & 0x0F; }
    else if (u >= 0xF0 && u <= 0xF4) { n = 3; cp = u & 0x07; }
    else fail(fmt::format("invalid UTF-8 lead byte 0x{:02x}", u));
    if (pos_ + std::size_t(n) >= s_.size()) fail("truncated UTF-8 sequence");
    for (int i = 1; i <= n; ++i) {
      auto c = static_cast<unsigned char>(s_[pos_ + std::size_t(i)]);
      if ((c & 0xC0) != 0x80) fail("invalid UTF-8 continuation byte");
      cp = (cp << 6) | (c & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      fail("invalid UTF-8 sequence (overlong, surrogate or out of range)");
    out.append(s_.substr(pos_, std::size_t(n) + 1));
    pos_ += std::size_t(n) + 1;
  }

  std::string parse_string() {
    ++pos_; // opening quote
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_];
      auto u = static_cast<unsigned char>(c);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (u < 0x20) fail("unescaped control character in a string");
      if (c == '\\') {
        ++pos_;
        if (pos_ >= s_.size()) fail("unterminated escape");
        char e = s_[pos_++];
        switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = parse_hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.substr(pos_, 2) != "\\u") fail("unpaired high surrogate in \\u escape");
            pos_ += 2;
            unsigned lo = parse_hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("invalid low surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired low surrogate in \\u escape");
          }
          append_utf8(out, cp);
          break;
        }
        default: --pos_; fail(fmt::format("invalid escape '\\{}'", printable(e)));
        }
        continue;
      }
      if (u < 0x80) {
        out += c;
        ++pos_;
      } else {
        copy_utf8_sequence(out);
      }
    }
  }
};

/// Parses a complete JSON document; throws json_parse_error.
inline json_value parse_json(std::string_view text) { return json_parser(text).parse_document(); }

} // namespace offload::detail
