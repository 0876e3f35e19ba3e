// Port of Wan-Video/Wan2.1@9737cba, wan/modules/tokenizers.py, with an in-tree reader of
// sentencepiece unigram models; see tokenizers.hpp for the deviations (no ftfy, HTML 4 named
// references only, special-token strings not recognised) and why libsentencepiece is not linked.
#include "tokenizers.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_map>

#include <fmt/format.h>
#include <torch/torch.h>

#include <offload/errors.hpp>

namespace wan {

namespace {

// ---- UTF-8 <-> code points (strict) ---------------------------------------------------------

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  std::size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int len = 0;
    char32_t cp = 0;
    if (b0 < 0x80) {
      len = 1, cp = b0;
    } else if (b0 >= 0xC2 && b0 < 0xE0) {
      len = 2, cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 < 0xF0) {
      len = 3, cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 < 0xF5) {
      len = 4, cp = b0 & 0x07;
    }
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    // reject overlong 3/4-byte forms, surrogates and values above U+10FFFF
    ok = ok && !(len == 3 && cp < 0x800) && !(len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) &&
         !(cp >= 0xD800 && cp <= 0xDFFF);
    if (!ok) {
      throw offload::config_error(
          "offload.config.invalid_utf8",
          fmt::format("tokenizer input: expected valid UTF-8 text, found an invalid sequence at "
                      "byte {} of a {}-byte string (byte 0x{:02X}); convert the prompt to UTF-8",
                      i, s.size(), static_cast<unsigned>(b0)));
    }
    out.push_back(cp);
    i += static_cast<std::size_t>(len);
  }
  return out;
}

std::string encode_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char32_t cp : s) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

// ---- Python whitespace ----------------------------------------------------------------------

// Unicode White_Space: what `\s` of the `regex` module matches in whitespace_clean.
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// str.isspace(): White_Space plus the information separators U+001C..U+001F (used by strip()).
bool is_py_space(char32_t c) { return is_white_space(c) || (c >= 0x1C && c <= 0x1F); }

std::u32string py_strip(std::u32string_view s) {
  std::size_t b = 0, e = s.size();
  while (b < e && is_py_space(s[b])) ++b;
  while (e > b && is_py_space(s[e - 1])) --e;
  return std::u32string(s.substr(b, e - b));
}

// ---- html.unescape --------------------------------------------------------------------------

struct named_reference {
  std::string_view name;  // without the trailing ';'
  char32_t codepoint;
  bool legacy;  // also valid without ';' (html.entities.html5 holds the name without ';' too)
};

// HTML 4.01 named references (+ apos and the upper-case aliases) with their HTML 5 values,
// sorted by name (byte order) for binary search.
constexpr named_reference kNamedReferences[] = {
    {"AElig", 0xC6, true}, {"AMP", 0x26, true}, {"Aacute", 0xC1, true}, {"Acirc", 0xC2, true},
    {"Agrave", 0xC0, true}, {"Alpha", 0x391, false}, {"Aring", 0xC5, true}, {"Atilde", 0xC3, true},
    {"Auml", 0xC4, true}, {"Beta", 0x392, false}, {"COPY", 0xA9, true}, {"Ccedil", 0xC7, true},
    {"Chi", 0x3A7, false}, {"Dagger", 0x2021, false}, {"Delta", 0x394, false}, {"ETH", 0xD0, true},
    {"Eacute", 0xC9, true}, {"Ecirc", 0xCA, true}, {"Egrave", 0xC8, true},
    {"Epsilon", 0x395, false}, {"Eta", 0x397, false}, {"Euml", 0xCB, true}, {"GT", 0x3E, true},
    {"Gamma", 0x393, false}, {"Iacute", 0xCD, true}, {"Icirc", 0xCE, true}, {"Igrave", 0xCC, true},
    {"Iota", 0x399, false}, {"Iuml", 0xCF, true}, {"Kappa", 0x39A, false}, {"LT", 0x3C, true},
    {"Lambda", 0x39B, false}, {"Mu", 0x39C, false}, {"Ntilde", 0xD1, true}, {"Nu", 0x39D, false},
    {"OElig", 0x152, false}, {"Oacute", 0xD3, true}, {"Ocirc", 0xD4, true}, {"Ograve", 0xD2, true},
    {"Omega", 0x3A9, false}, {"Omicron", 0x39F, false}, {"Oslash", 0xD8, true},
    {"Otilde", 0xD5, true}, {"Ouml", 0xD6, true}, {"Phi", 0x3A6, false}, {"Pi", 0x3A0, false},
    {"Prime", 0x2033, false}, {"Psi", 0x3A8, false}, {"QUOT", 0x22, true}, {"REG", 0xAE, true},
    {"Rho", 0x3A1, false}, {"Scaron", 0x160, false}, {"Sigma", 0x3A3, false},
    {"THORN", 0xDE, true}, {"Tau", 0x3A4, false}, {"Theta", 0x398, false}, {"Uacute", 0xDA, true},
    {"Ucirc", 0xDB, true}, {"Ugrave", 0xD9, true}, {"Upsilon", 0x3A5, false}, {"Uuml", 0xDC, true},
    {"Xi", 0x39E, false}, {"Yacute", 0xDD, true}, {"Yuml", 0x178, false}, {"Zeta", 0x396, false},
    {"aacute", 0xE1, true}, {"acirc", 0xE2, true}, {"acute", 0xB4, true}, {"aelig", 0xE6, true},
    {"agrave", 0xE0, true}, {"alefsym", 0x2135, false}, {"alpha", 0x3B1, false},
    {"amp", 0x26, true}, {"and", 0x2227, false}, {"ang", 0x2220, false}, {"apos", 0x27, false},
    {"aring", 0xE5, true}, {"asymp", 0x2248, false}, {"atilde", 0xE3, true}, {"auml", 0xE4, true},
    {"bdquo", 0x201E, false}, {"beta", 0x3B2, false}, {"brvbar", 0xA6, true},
    {"bull", 0x2022, false}, {"cap", 0x2229, false}, {"ccedil", 0xE7, true}, {"cedil", 0xB8, true},
    {"cent", 0xA2, true}, {"chi", 0x3C7, false}, {"circ", 0x2C6, false}, {"clubs", 0x2663, false},
    {"cong", 0x2245, false}, {"copy", 0xA9, true}, {"crarr", 0x21B5, false},
    {"cup", 0x222A, false}, {"curren", 0xA4, true}, {"dArr", 0x21D3, false},
    {"dagger", 0x2020, false}, {"darr", 0x2193, false}, {"deg", 0xB0, true},
    {"delta", 0x3B4, false}, {"diams", 0x2666, false}, {"divide", 0xF7, true},
    {"eacute", 0xE9, true}, {"ecirc", 0xEA, true}, {"egrave", 0xE8, true},
    {"empty", 0x2205, false}, {"emsp", 0x2003, false}, {"ensp", 0x2002, false},
    {"epsilon", 0x3B5, false}, {"equiv", 0x2261, false}, {"eta", 0x3B7, false},
    {"eth", 0xF0, true}, {"euml", 0xEB, true}, {"euro", 0x20AC, false}, {"exist", 0x2203, false},
    {"fnof", 0x192, false}, {"forall", 0x2200, false}, {"frac12", 0xBD, true},
    {"frac14", 0xBC, true}, {"frac34", 0xBE, true}, {"frasl", 0x2044, false},
    {"gamma", 0x3B3, false}, {"ge", 0x2265, false}, {"gt", 0x3E, true}, {"hArr", 0x21D4, false},
    {"harr", 0x2194, false}, {"hearts", 0x2665, false}, {"hellip", 0x2026, false},
    {"iacute", 0xED, true}, {"icirc", 0xEE, true}, {"iexcl", 0xA1, true}, {"igrave", 0xEC, true},
    {"image", 0x2111, false}, {"infin", 0x221E, false}, {"int", 0x222B, false},
    {"iota", 0x3B9, false}, {"iquest", 0xBF, true}, {"isin", 0x2208, false}, {"iuml", 0xEF, true},
    {"kappa", 0x3BA, false}, {"lArr", 0x21D0, false}, {"lambda", 0x3BB, false},
    {"lang", 0x27E8, false}, {"laquo", 0xAB, true}, {"larr", 0x2190, false},
    {"lceil", 0x2308, false}, {"ldquo", 0x201C, false}, {"le", 0x2264, false},
    {"lfloor", 0x230A, false}, {"lowast", 0x2217, false}, {"loz", 0x25CA, false},
    {"lrm", 0x200E, false}, {"lsaquo", 0x2039, false}, {"lsquo", 0x2018, false},
    {"lt", 0x3C, true}, {"macr", 0xAF, true}, {"mdash", 0x2014, false}, {"micro", 0xB5, true},
    {"middot", 0xB7, true}, {"minus", 0x2212, false}, {"mu", 0x3BC, false},
    {"nabla", 0x2207, false}, {"nbsp", 0xA0, true}, {"ndash", 0x2013, false},
    {"ne", 0x2260, false}, {"ni", 0x220B, false}, {"not", 0xAC, true}, {"notin", 0x2209, false},
    {"nsub", 0x2284, false}, {"ntilde", 0xF1, true}, {"nu", 0x3BD, false}, {"oacute", 0xF3, true},
    {"ocirc", 0xF4, true}, {"oelig", 0x153, false}, {"ograve", 0xF2, true},
    {"oline", 0x203E, false}, {"omega", 0x3C9, false}, {"omicron", 0x3BF, false},
    {"oplus", 0x2295, false}, {"or", 0x2228, false}, {"ordf", 0xAA, true}, {"ordm", 0xBA, true},
    {"oslash", 0xF8, true}, {"otilde", 0xF5, true}, {"otimes", 0x2297, false},
    {"ouml", 0xF6, true}, {"para", 0xB6, true}, {"part", 0x2202, false}, {"permil", 0x2030, false},
    {"perp", 0x22A5, false}, {"phi", 0x3C6, false}, {"pi", 0x3C0, false}, {"piv", 0x3D6, false},
    {"plusmn", 0xB1, true}, {"pound", 0xA3, true}, {"prime", 0x2032, false},
    {"prod", 0x220F, false}, {"prop", 0x221D, false}, {"psi", 0x3C8, false}, {"quot", 0x22, true},
    {"rArr", 0x21D2, false}, {"radic", 0x221A, false}, {"rang", 0x27E9, false},
    {"raquo", 0xBB, true}, {"rarr", 0x2192, false}, {"rceil", 0x2309, false},
    {"rdquo", 0x201D, false}, {"real", 0x211C, false}, {"reg", 0xAE, true},
    {"rfloor", 0x230B, false}, {"rho", 0x3C1, false}, {"rlm", 0x200F, false},
    {"rsaquo", 0x203A, false}, {"rsquo", 0x2019, false}, {"sbquo", 0x201A, false},
    {"scaron", 0x161, false}, {"sdot", 0x22C5, false}, {"sect", 0xA7, true}, {"shy", 0xAD, true},
    {"sigma", 0x3C3, false}, {"sigmaf", 0x3C2, false}, {"sim", 0x223C, false},
    {"spades", 0x2660, false}, {"sub", 0x2282, false}, {"sube", 0x2286, false},
    {"sum", 0x2211, false}, {"sup", 0x2283, false}, {"sup1", 0xB9, true}, {"sup2", 0xB2, true},
    {"sup3", 0xB3, true}, {"supe", 0x2287, false}, {"szlig", 0xDF, true}, {"tau", 0x3C4, false},
    {"there4", 0x2234, false}, {"theta", 0x3B8, false}, {"thetasym", 0x3D1, false},
    {"thinsp", 0x2009, false}, {"thorn", 0xFE, true}, {"tilde", 0x2DC, false},
    {"times", 0xD7, true}, {"trade", 0x2122, false}, {"uArr", 0x21D1, false},
    {"uacute", 0xFA, true}, {"uarr", 0x2191, false}, {"ucirc", 0xFB, true}, {"ugrave", 0xF9, true},
    {"uml", 0xA8, true}, {"upsih", 0x3D2, false}, {"upsilon", 0x3C5, false}, {"uuml", 0xFC, true},
    {"weierp", 0x2118, false}, {"xi", 0x3BE, false}, {"yacute", 0xFD, true}, {"yen", 0xA5, true},
    {"yuml", 0xFF, true}, {"zeta", 0x3B6, false}, {"zwj", 0x200D, false}, {"zwnj", 0x200C, false},
};

// name (no ';'): any reference when `semicolon`, else a legacy one only.
const named_reference* find_reference(std::u32string_view name, bool semicolon) {
  std::string ascii;
  for (const char32_t c : name) {
    if (c >= 0x80) return nullptr;
    ascii.push_back(static_cast<char>(c));
  }
  const auto* first = std::begin(kNamedReferences);
  const auto* last = std::end(kNamedReferences);
  const auto* it = std::lower_bound(first, last, std::string_view(ascii),
                                    [](const named_reference& r, std::string_view n) {
                                      return r.name < n;
                                    });
  if (it == last || it->name != ascii || !(semicolon || it->legacy)) return nullptr;
  return it;
}

// Python's _invalid_charrefs (C1 controls read as windows-1252, NUL, CR).
char32_t invalid_charref(char32_t num, bool& found) {
  static constexpr std::array<char32_t, 32> c1 = {
      0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
      0x2039, 0x0152, 0x8D,   0x017D, 0x8F,   0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
      0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178};
  found = true;
  if (num == 0x00) return 0xFFFD;
  if (num == 0x0D) return 0x0D;
  if (num >= 0x80 && num <= 0x9F) return c1[num - 0x80];
  found = false;
  return 0;
}

// Python's _invalid_codepoints (dropped from the output).
bool invalid_codepoint(char32_t c) {
  return (c >= 0x1 && c <= 0x8) || c == 0xB || (c >= 0xE && c <= 0x1F) ||
         (c >= 0x7F && c <= 0x9F) || (c >= 0xFDD0 && c <= 0xFDEF) || (c & 0xFFFE) == 0xFFFE;
}

bool is_digit(char32_t c, bool hex) {
  return (c >= '0' && c <= '9') || (hex && ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')));
}

// One pass of html.unescape over code points:
// regex  &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)  replaced by _replace_charref.
std::u32string unescape_once(std::u32string_view s) {
  if (s.find(U'&') == std::u32string_view::npos) return std::u32string(s);
  std::u32string out;
  out.reserve(s.size());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    if (s[i] != U'&') {
      out.push_back(s[i++]);
      continue;
    }
    std::size_t j = i + 1;
    if (j < n && s[j] == U'#') {  // numeric reference
      std::size_t k = j + 1;
      bool hex = false;
      if (k + 1 < n && (s[k] == U'x' || s[k] == U'X') && is_digit(s[k + 1], true)) {
        hex = true;
        ++k;
      }
      const std::size_t start = k;
      std::uint64_t num = 0;
      while (k < n && is_digit(s[k], hex)) {
        const char32_t c = s[k];
        const unsigned d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
        num = std::min<std::uint64_t>(num * (hex ? 16 : 10) + d, 0x110000);  // saturate
        ++k;
      }
      if (k == start) {  // no alternative matches: the '&' stays literal
        out.push_back(s[i++]);
        continue;
      }
      if (k < n && s[k] == U';') ++k;
      const auto cp = static_cast<char32_t>(num);
      bool mapped = false;
      const char32_t replacement = invalid_charref(cp, mapped);
      if (mapped) {
        out.push_back(replacement);
      } else if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
        out.push_back(0xFFFD);
      } else if (!invalid_codepoint(cp)) {
        out.push_back(cp);
      }
      i = k;
      continue;
    }
    // named reference: up to 32 characters outside [\t\n\f <&#;], then an optional ';'
    std::size_t k = j;
    while (k < n && k - j < 32 && s[k] != U'\t' && s[k] != U'\n' && s[k] != U'\f' &&
           s[k] != U' ' && s[k] != U'<' && s[k] != U'&' && s[k] != U'#' && s[k] != U';') {
      ++k;
    }
    if (k == j) {
      out.push_back(s[i++]);
      continue;
    }
    const std::u32string_view name = s.substr(j, k - j);
    const bool semicolon = k < n && s[k] == U';';
    const std::size_t end = semicolon ? k + 1 : k;
    if (const auto* r = find_reference(name, semicolon)) {
      out.push_back(r->codepoint);
    } else {
      // longest legacy prefix s[:x], x = len(s)-1 .. 2 (len(s) counts the ';')
      const std::size_t full = name.size() + (semicolon ? 1 : 0);
      bool done = false;
      for (std::size_t x = full - 1; x >= 2 && !done; --x) {
        if (const auto* p = find_reference(name.substr(0, x), false)) {
          out.push_back(p->codepoint);
          out.append(s.substr(j + x, end - (j + x)));
          done = true;
        }
      }
      if (!done) out.append(s.substr(i, end - i));
    }
    i = end;
  }
  return out;
}

} // namespace

std::string html_unescape(std::string_view text) {
  return encode_utf8(unescape_once(decode_utf8(text)));
}

std::string basic_clean(std::string_view text) {
  // ftfy.fix_text(text) is not applied (no C++ ftfy); see tokenizers.hpp.
  const std::u32string once = unescape_once(decode_utf8(text));
  return encode_utf8(py_strip(unescape_once(once)));
}

std::string whitespace_clean(std::string_view text) {
  const std::u32string s = decode_utf8(text);
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    if (is_white_space(s[i])) {
      while (i < s.size() && is_white_space(s[i])) ++i;
      out.push_back(U' ');
    } else {
      out.push_back(s[i++]);
    }
  }
  return encode_utf8(py_strip(out));
}

// ---- sentencepiece model (in-tree reader) ---------------------------------------------------
//
// What SentencePieceProcessor::Encode (sentencepiece 0.1.97) does for a unigram model:
// normalizer.cc (precompiled charsmap, dummy prefix, whitespace handling), unigram_model.cc
// (EncodeOptimized Viterbi) and sentencepiece_processor.cc (byte fallback, merging of
// consecutive unknown pieces). Verified against the library by tests/data/tokenizer fixtures.

namespace {

[[noreturn]] void bad_model(const std::filesystem::path& file, const std::string& what) {
  throw offload::checkpoint_error(
      "offload.checkpoint.tokenizer_unreadable",
      fmt::format("HuggingfaceTokenizer: expected a sentencepiece ModelProto in '{}', {}; "
                  "re-download spiece.model",
                  file.string(), what));
}

// Minimal protobuf wire-format reader.
struct pb_reader {
  const std::uint8_t* p;
  const std::uint8_t* end;
  const std::filesystem::path* file;

  explicit pb_reader(std::string_view s, const std::filesystem::path& f)
      : p(reinterpret_cast<const std::uint8_t*>(s.data())), end(p + s.size()), file(&f) {}
  [[nodiscard]] bool done() const { return p >= end; }
  std::uint64_t varint() {
    std::uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) bad_model(*file, "found a truncated varint");
      const std::uint8_t b = *p++;
      r |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return r;
    }
    bad_model(*file, "found an over-long varint");
  }
  std::uint32_t fixed32() {
    if (end - p < 4) bad_model(*file, "found a truncated fixed32");
    std::uint32_t v = 0;
    std::memcpy(&v, p, 4);  // little endian (x86 / ARM)
    p += 4;
    return v;
  }
  std::string_view bytes() {
    const std::uint64_t n = varint();
    if (n > static_cast<std::uint64_t>(end - p)) bad_model(*file, "found a truncated field");
    std::string_view v(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
    p += n;
    return v;
  }
  void skip(std::uint32_t wire) {
    switch (wire) {
    case 0: (void)varint(); break;
    case 1: if (end - p < 8) bad_model(*file, "found a truncated fixed64"); p += 8; break;
    case 2: (void)bytes(); break;
    case 5: (void)fixed32(); break;
    default: bad_model(*file, fmt::format("found unsupported wire type {}", wire));
    }
  }
};

enum piece_type : int { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

// One UTF-8 character's length from its first byte, as sentencepiece's OneCharLen.
int one_char_len(unsigned char c) {
  static constexpr int len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return len[c >> 4];
}

// string_util::IsValidDecodeUTF8 for the first character: returns its length or 0 if malformed.
std::size_t valid_utf8_prefix(std::string_view s) {
  const auto b0 = static_cast<unsigned char>(s[0]);
  if (b0 < 0x80) return 1;
  std::size_t len = 0;
  char32_t cp = 0;
  if (b0 >= 0xC2 && b0 < 0xE0) len = 2, cp = b0 & 0x1F;
  else if (b0 >= 0xE0 && b0 < 0xF0) len = 3, cp = b0 & 0x0F;
  else if (b0 >= 0xF0 && b0 < 0xF5) len = 4, cp = b0 & 0x07;
  else return 0;
  if (s.size() < len) return 0;
  for (std::size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return len;
}

} // namespace

struct HuggingfaceTokenizer::impl {
  struct piece {
    std::string text;
    float score = 0;
    int type = normal;
  };
  std::vector<piece> pieces;
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  std::string unk_piece = "<unk>", eos_piece = "</s>", pad_piece = "<pad>";
  // normalizer_spec
  std::string charsmap;  // precompiled_charsmap blob
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
  // derived
  const std::uint32_t* trie = nullptr;  // Darts double array inside `charsmap`
  std::size_t trie_units = 0;
  std::string_view normalized_strings;
  std::unordered_map<std::string_view, int> vocab;     // normal / user-defined / unused pieces
  std::unordered_map<std::string_view, int> reserved;  // control / unknown / byte pieces
  std::vector<std::string_view> user_defined_pieces;
  std::size_t max_piece_bytes = 0;
  float min_score = std::numeric_limits<float>::max();
  float max_score = std::numeric_limits<float>::lowest();
  int unk_id = -1, eos_id = -1, pad_id = -1;

  void load(const std::filesystem::path& file);
  int piece_to_id(std::string_view p) const;
  std::pair<std::string_view, std::size_t> normalize_prefix(std::string_view input) const;
  std::string normalize(std::string_view input) const;
  std::vector<std::int64_t> encode(std::string_view text) const;

private:
  std::size_t common_prefix_longest(std::string_view key, std::uint32_t& value) const;
};

void HuggingfaceTokenizer::impl::load(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string blob = ss.str();
  if (!in && blob.empty()) bad_model(file, "could not read the file");
  int model_type = 1;
  pb_reader r(blob, file);
  while (!r.done()) {
    const std::uint64_t tag = r.varint();
    const auto field = static_cast<std::uint32_t>(tag >> 3), wire = static_cast<std::uint32_t>(tag & 7);
    if (field == 1 && wire == 2) {  // SentencePiece pieces
      pb_reader m(r.bytes(), file);
      piece pc;
      while (!m.done()) {
        const std::uint64_t t = m.varint();
        const auto f = static_cast<std::uint32_t>(t >> 3), w = static_cast<std::uint32_t>(t & 7);
        if (f == 1 && w == 2) pc.text = std::string(m.bytes());
        else if (f == 2 && w == 5) {
          const std::uint32_t bits = m.fixed32();
          std::memcpy(&pc.score, &bits, 4);
        } else if (f == 3 && w == 0) pc.type = static_cast<int>(m.varint());
        else m.skip(w);
      }
      pieces.push_back(std::move(pc));
    } else if (field == 2 && wire == 2) {  // TrainerSpec
      pb_reader m(r.bytes(), file);
      while (!m.done()) {
        const std::uint64_t t = m.varint();
        const auto f = static_cast<std::uint32_t>(t >> 3), w = static_cast<std::uint32_t>(t & 7);
        if (f == 3 && w == 0) model_type = static_cast<int>(m.varint());
        else if (f == 24 && w == 0) treat_whitespace_as_suffix = m.varint() != 0;
        else if (f == 35 && w == 0) byte_fallback = m.varint() != 0;
        else if (f == 45 && w == 2) unk_piece = std::string(m.bytes());
        else if (f == 47 && w == 2) eos_piece = std::string(m.bytes());
        else if (f == 48 && w == 2) pad_piece = std::string(m.bytes());
        else m.skip(w);
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec
      pb_reader m(r.bytes(), file);
      while (!m.done()) {
        const std::uint64_t t = m.varint();
        const auto f = static_cast<std::uint32_t>(t >> 3), w = static_cast<std::uint32_t>(t & 7);
        if (f == 2 && w == 2) charsmap = std::string(m.bytes());
        else if (f == 3 && w == 0) add_dummy_prefix = m.varint() != 0;
        else if (f == 4 && w == 0) remove_extra_whitespaces = m.varint() != 0;
        else if (f == 5 && w == 0) escape_whitespaces = m.varint() != 0;
        else m.skip(w);
      }
    } else {
      r.skip(wire);
    }
  }
  if (model_type != 1) {
    throw offload::config_error(
        "offload.config.tokenizer_model_type",
        fmt::format("HuggingfaceTokenizer: expected a unigram sentencepiece model (umT5), found "
                    "model_type {} in '{}'; only unigram models are supported",
                    model_type, file.string()));
  }
  if (pieces.empty()) bad_model(file, "found no pieces");
  if (!charsmap.empty()) {  // DecodePrecompiledCharsMap: uint32 trie size, trie, strings
    std::uint32_t trie_size = 0;
    if (charsmap.size() < 4) bad_model(file, "found a truncated precompiled_charsmap");
    std::memcpy(&trie_size, charsmap.data(), 4);
    if (trie_size % 4 != 0 || trie_size > charsmap.size() - 4)
      bad_model(file, "found a malformed precompiled_charsmap");
    // An empty trie normalizes nothing: no trie at all (its lookup reads unit 0 first).
    trie = trie_size == 0 ? nullptr : reinterpret_cast<const std::uint32_t*>(charsmap.data() + 4);
    trie_units = trie_size / 4;
    normalized_strings = std::string_view(charsmap).substr(4 + trie_size);
  }
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const auto& pc = pieces[i];
    const int id = static_cast<int>(i);
    if (pc.type == normal || pc.type == user_defined || pc.type == unused) {
      vocab.emplace(pc.text, id);
      max_piece_bytes = std::max(max_piece_bytes, pc.text.size());
      if (pc.type == user_defined) user_defined_pieces.push_back(pc.text);
      if (pc.type == normal) {
        min_score = std::min(min_score, pc.score);
        max_score = std::max(max_score, pc.score);
      }
    } else {
      reserved.emplace(pc.text, id);
      if (pc.type == unknown) unk_id = id;
    }
  }
  if (unk_id < 0) bad_model(file, "found no unknown piece");
  const auto control_id = [&](const std::string& name) {
    const auto it = reserved.find(name);
    return it != reserved.end() && pieces[static_cast<std::size_t>(it->second)].type == control
               ? it->second
               : -1;
  };
  eos_id = control_id(eos_piece);
  pad_id = control_id(pad_piece);
}

int HuggingfaceTokenizer::impl::piece_to_id(std::string_view p) const {
  if (const auto it = reserved.find(p); it != reserved.end()) return it->second;
  if (const auto it = vocab.find(p); it != vocab.end()) return it->second;
  return unk_id;
}

// Darts::DoubleArray::commonPrefixSearch, keeping the longest match.
std::size_t HuggingfaceTokenizer::impl::common_prefix_longest(std::string_view key,
                                                             std::uint32_t& value) const {
  const auto offset = [](std::uint32_t u) { return (u >> 10) << ((u & (1U << 9)) >> 6); };
  const auto label = [](std::uint32_t u) { return u & ((1U << 31) | 0xFF); };
  const auto has_leaf = [](std::uint32_t u) { return ((u >> 8) & 1) == 1; };
  std::size_t longest = 0;
  std::uint32_t id = 0;
  std::uint32_t unit = trie[id];
  id ^= offset(unit);
  for (std::size_t i = 0; i < key.size(); ++i) {
    const auto c = static_cast<unsigned char>(key[i]);
    id ^= c;
    if (id >= trie_units) return longest;
    unit = trie[id];
    if (label(unit) != c) return longest;
    id ^= offset(unit);
    if (has_leaf(unit) && id < trie_units) {
      longest = i + 1;
      value = trie[id] & ((1U << 31) - 1);
    }
  }
  return longest;
}

// Normalizer::NormalizePrefix: (normalized piece, consumed bytes).
std::pair<std::string_view, std::size_t> HuggingfaceTokenizer::impl::normalize_prefix(
    std::string_view input) const {
  if (!user_defined_pieces.empty()) {  // PrefixMatcher over user-defined symbols
    std::size_t best = 0;
    for (const auto& u : user_defined_pieces)
      if (u.size() > best && input.substr(0, u.size()) == u) best = u.size();
    if (best > 0) return {input.substr(0, best), best};
  }
  std::uint32_t value = 0;
  const std::size_t longest = trie != nullptr ? common_prefix_longest(input, value) : 0;
  if (longest == 0) {
    const std::size_t len = valid_utf8_prefix(input);
    if (len == 0) return {std::string_view("\xEF\xBF\xBD", 3), 1};  // U+FFFD, one byte consumed
    return {input.substr(0, len), len};
  }
  if (value >= normalized_strings.size()) return {input.substr(0, longest), longest};
  const char* s = normalized_strings.data() + value;
  return {std::string_view(s, ::strnlen(s, normalized_strings.size() - value)), longest};
}

// Normalizer::Normalize (the text only, no alignment).
std::string HuggingfaceTokenizer::impl::normalize(std::string_view input) const {
  static constexpr std::string_view space_symbol = "\xE2\x96\x81";  // U+2581
  std::string out;
  if (remove_extra_whitespaces) {  // ignore heading spaces
    while (!input.empty()) {
      const auto [sp, n] = normalize_prefix(input);
      if (sp != " ") break;
      input.remove_prefix(n);
    }
  }
  if (input.empty()) return out;
  const auto add_ws = [&] {
    if (escape_whitespaces) out.append(space_symbol);
    else out.push_back(' ');
  };
  if (!treat_whitespace_as_suffix && add_dummy_prefix) add_ws();
  bool is_prev_space = remove_extra_whitespaces;
  while (!input.empty()) {
    auto [sp, n] = normalize_prefix(input);
    while (is_prev_space && !sp.empty() && sp.front() == ' ') sp.remove_prefix(1);
    if (!sp.empty()) {
      for (const char c : sp) {
        if (escape_whitespaces && c == ' ') out.append(space_symbol);
        else out.push_back(c);
      }
      is_prev_space = sp.back() == ' ';
    }
    input.remove_prefix(n);
    if (!remove_extra_whitespaces) is_prev_space = false;
  }
  if (remove_extra_whitespaces) {  // ignore trailing spaces
    const std::string_view space = escape_whitespaces ? space_symbol : std::string_view(" ");
    while (out.size() >= space.size() &&
           std::string_view(out).substr(out.size() - space.size()) == space) {
      out.resize(out.size() - space.size());
    }
  }
  if (treat_whitespace_as_suffix && add_dummy_prefix) add_ws();
  return out;
}

// unigram::Model::EncodeOptimized + SentencePieceProcessor's byte fallback / unknown merging.
std::vector<std::int64_t> HuggingfaceTokenizer::impl::encode(std::string_view text) const {
  const std::string normalized = normalize(text);
  const auto size = static_cast<std::int64_t>(normalized.size());
  std::vector<std::int64_t> ids;
  if (size == 0) return ids;
  struct node {
    int id = -1;
    float best_path_score = 0;
    std::int64_t starts_at = -1;
  };
  constexpr float unk_penalty = 10.0F;
  const float unk_score = min_score - unk_penalty;
  std::vector<node> best(static_cast<std::size_t>(size) + 1);
  std::int64_t starts_at = 0;
  while (starts_at < size) {
    const float till_here = best[static_cast<std::size_t>(starts_at)].best_path_score;
    bool has_single_node = false;
    const auto mblen = std::min<std::int64_t>(
        one_char_len(static_cast<unsigned char>(normalized[static_cast<std::size_t>(starts_at)])),
        size - starts_at);
    const auto longest = std::min<std::int64_t>(static_cast<std::int64_t>(max_piece_bytes), size - starts_at);
    for (std::int64_t length = 1; length <= longest; ++length) {
      const auto it = vocab.find(std::string_view(normalized).substr(
          static_cast<std::size_t>(starts_at), static_cast<std::size_t>(length)));
      if (it == vocab.end()) continue;
      const auto& pc = pieces[static_cast<std::size_t>(it->second)];
      if (pc.type == unused) continue;
      auto& target = best[static_cast<std::size_t>(starts_at + length)];
      // user-defined symbols receive a bonus to always be selected; the arithmetic types follow
      // the library: (float length * max_score - 0.1) is double, a normal piece's sum is float
      bool better = target.starts_at == -1;
      float new_score = 0;
      if (pc.type == user_defined) {
        const double candidate =
            (static_cast<double>(static_cast<float>(length) * max_score) - 0.1) + till_here;
        better = better || candidate > static_cast<double>(target.best_path_score);
        new_score = static_cast<float>(candidate);
      } else {
        const float candidate = pc.score + till_here;
        better = better || candidate > target.best_path_score;
        new_score = candidate;
      }
      if (better) {
        target.best_path_score = new_score;
        target.starts_at = starts_at;
        target.id = it->second;
      }
      if (!has_single_node && length == mblen) has_single_node = true;
    }
    if (!has_single_node) {
      auto& target = best[static_cast<std::size_t>(starts_at + mblen)];
      const float candidate = unk_score + till_here;
      if (target.starts_at == -1 || candidate > target.best_path_score) {
        target.best_path_score = candidate;
        target.starts_at = starts_at;
        target.id = unk_id;
      }
    }
    starts_at += mblen;
  }
  std::vector<std::pair<std::string_view, int>> path;  // backtrack
  for (std::int64_t ends_at = size; ends_at > 0;) {
    const auto& n = best[static_cast<std::size_t>(ends_at)];
    path.emplace_back(std::string_view(normalized).substr(static_cast<std::size_t>(n.starts_at),
                                                          static_cast<std::size_t>(ends_at - n.starts_at)),
                      n.id);
    ends_at = n.starts_at;
  }
  std::reverse(path.begin(), path.end());
  bool is_prev_unk = false;
  for (const auto& [w, id] : path) {
    const bool is_unk = id == unk_id;
    if (is_unk && byte_fallback) {  // decompose into <0xXX> byte pieces
      for (const char b : w) {
        ids.push_back(piece_to_id(fmt::format("<0x{:02X}>", static_cast<unsigned char>(b))));
      }
    } else if (!(is_prev_unk && is_unk)) {  // consecutive unknown pieces are merged into one
      ids.push_back(id);
    }
    is_prev_unk = is_unk;
  }
  return ids;
}

// ---- HuggingfaceTokenizer -------------------------------------------------------------------

HuggingfaceTokenizer::HuggingfaceTokenizer(std::filesystem::path name_, std::int64_t seq_len_,
                                           std::string clean_)
    : name(std::move(name_)), seq_len(seq_len_), clean(std::move(clean_)),
      impl_(std::make_unique<impl>()) {
  if (!clean.empty() && clean != "whitespace") {
    throw offload::config_error(
        "offload.config.tokenizer_clean",
        fmt::format("HuggingfaceTokenizer '{}': expected clean = \"\" or \"whitespace\" (what "
                    "T5EncoderModel uses), found \"{}\"; 'lower' and 'canonicalize' are not ported",
                    name.string(), clean));
  }
  std::filesystem::path model = name;
  if (std::filesystem::is_directory(model)) model /= "spiece.model";
  if (!std::filesystem::is_regular_file(model)) {
    throw offload::config_error(
        "offload.config.tokenizer_not_found",
        fmt::format("HuggingfaceTokenizer: expected a sentencepiece model at '{}' (a folder "
                    "holding spiece.model, e.g. <checkpoint dir>/google/umt5-xxl, or the .model "
                    "file), found nothing; pass the tokenizer folder of the Wan checkpoint",
                    model.string()));
  }
  impl_->load(model);
  if (impl_->eos_id < 0 || impl_->pad_id < 0) {
    throw offload::checkpoint_error(
        "offload.checkpoint.tokenizer_special_ids",
        fmt::format("HuggingfaceTokenizer: expected a model with eos and pad pieces (umT5: pad 0, "
                    "eos 1), found eos_id {} and pad_id {} in '{}'",
                    impl_->eos_id, impl_->pad_id, model.string()));
  }
}

HuggingfaceTokenizer::~HuggingfaceTokenizer() = default;
HuggingfaceTokenizer::HuggingfaceTokenizer(HuggingfaceTokenizer&&) noexcept = default;
HuggingfaceTokenizer& HuggingfaceTokenizer::operator=(HuggingfaceTokenizer&&) noexcept = default;

std::int64_t HuggingfaceTokenizer::vocab_size() const {
  return static_cast<std::int64_t>(impl_->pieces.size());
}
std::int64_t HuggingfaceTokenizer::eos_id() const { return impl_->eos_id; }
std::int64_t HuggingfaceTokenizer::pad_id() const { return impl_->pad_id; }

std::string HuggingfaceTokenizer::clean_text(std::string_view text) const {
  if (clean == "whitespace") return whitespace_clean(basic_clean(text));
  decode_utf8(text);  // validates
  return std::string(text);
}

std::vector<std::int64_t> HuggingfaceTokenizer::encode(std::string_view text) const {
  return impl_->encode(text);
}

tokenized HuggingfaceTokenizer::operator()(const std::vector<std::string>& sequence,
                                           bool add_special_tokens) const {
  std::vector<std::vector<std::int64_t>> rows;
  rows.reserve(sequence.size());
  for (const auto& text : sequence) {
    auto ids = encode(clean_text(text));
    if (seq_len > 0) {  // truncation=True: keep room for the special token
      const auto room = static_cast<std::size_t>(
          std::max<std::int64_t>(0, seq_len - (add_special_tokens ? 1 : 0)));
      if (ids.size() > room) ids.resize(room);
    }
    if (add_special_tokens) ids.push_back(eos_id());
    rows.push_back(std::move(ids));
  }
  std::int64_t width = seq_len;
  if (width <= 0) {  // no padding: every row must already have the same length
    width = rows.empty() ? 0 : static_cast<std::int64_t>(rows.front().size());
    for (std::size_t b = 0; b < rows.size(); ++b) {
      if (static_cast<std::int64_t>(rows[b].size()) != width) {
        throw offload::config_error(
            "offload.config.tokenizer_ragged",
            fmt::format("HuggingfaceTokenizer '{}' without seq_len: expected texts of equal "
                        "token length to form one tensor, found {} tokens for text 0 and {} for "
                        "text {}; give the tokenizer a seq_len",
                        name.string(), width, rows[b].size(), b));
      }
    }
  }
  const auto batch = static_cast<std::int64_t>(rows.size());
  auto ids = torch::full({batch, width}, pad_id(), torch::kLong);   // [B, L]
  auto mask = torch::zeros({batch, width}, torch::kLong);           // [B, L]
  auto ids_a = ids.accessor<std::int64_t, 2>();
  auto mask_a = mask.accessor<std::int64_t, 2>();
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto& row = rows[static_cast<std::size_t>(b)];
    for (std::size_t t = 0; t < row.size(); ++t) {
      ids_a[b][static_cast<std::int64_t>(t)] = row[t];
      mask_a[b][static_cast<std::int64_t>(t)] = 1;
    }
  }
  return {ids, mask};
}

} // namespace wan
