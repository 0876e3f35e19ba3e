// Tests of pipelines/wan/tokenizers.hpp. The sentencepiece models and expected ids in
// tests/data/tokenizer were made by the real sentencepiece library (make_fixture.cpp there):
// spiece.model is a unigram model with nmt_nfkc normalisation and umT5's special ids (pad 0,
// eos 1, unk 2, no bos); spiece_bytes.model adds byte fallback and a user-defined symbol.
#include "parity_harness.hpp"
#include "wan/tokenizers.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>

#include <fmt/format.h>

#include <offload/errors.hpp>

namespace fs = std::filesystem;

namespace {

fs::path tokenizer_data() { return wan::testing::test_data_dir() / "tokenizer"; }

fs::path spiece() { return tokenizer_data() / "spiece.model"; }

std::string unhex(const std::string& h) {
  std::string out;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}

std::vector<std::int64_t> row(const torch::Tensor& t, std::int64_t b) {
  const auto r = t[b].contiguous();
  return {r.data_ptr<std::int64_t>(), r.data_ptr<std::int64_t>() + r.numel()};
}

template <class F>
void expect_error_id(F&& f, const std::string& id) {
  try {
    f();
    BOOST_ERROR("expected offload error " << id);
  } catch (const offload::error& e) {
    BOOST_TEST(e.id() == id);
    BOOST_TEST(std::string(e.what()).find(id) == 0u);
  }
}

} // namespace

BOOST_AUTO_TEST_SUITE(tokenizers)

BOOST_AUTO_TEST_CASE(whitespace_clean_collapses_unicode_whitespace) {
  BOOST_TEST(wan::whitespace_clean("  a \t\n b\r\n\n  c  ") == "a b c");
  // NBSP, ideographic space, em space, line separator are \s for the regex module
  BOOST_TEST(wan::whitespace_clean("x\u00A0y\u3000z\u2003w\u2028v") == "x y z w v");
  BOOST_TEST(wan::whitespace_clean("\u0085lead and trail\u3000") == "lead and trail");
  BOOST_TEST(wan::whitespace_clean("") == "");
  BOOST_TEST(wan::whitespace_clean(" \t ") == "");
  BOOST_TEST(wan::whitespace_clean("naïve café") == "naïve café");  // non-ASCII kept
  // zero-width space is not whitespace in Python
  BOOST_TEST(wan::whitespace_clean("a\u200Bb") == "a\u200Bb");
}

BOOST_AUTO_TEST_CASE(html_unescape_matches_python) {
  // named, with and without ';' (legacy names), longest-prefix rule, unknown names kept
  BOOST_TEST(wan::html_unescape("&lt;b&gt; &amp; &quot;x&quot; &apos;") == "<b> & \"x\" '");
  BOOST_TEST(wan::html_unescape("&amp &AMP; &copy2") == "& & ©2");
  BOOST_TEST(wan::html_unescape("&ampx; &notit;") == "&x; ¬it;");
  BOOST_TEST(wan::html_unescape("&foo; & alone &;") == "&foo; & alone &;");
  BOOST_TEST(wan::html_unescape("&hellip;&mdash;&euro;&alpha;&rang;") == "\u2026\u2014\u20AC\u03B1\u27E9");
  BOOST_TEST(wan::html_unescape("&apos") == "&apos");  // apos has no legacy form
  // numeric
  BOOST_TEST(wan::html_unescape("&#65;&#x42;&#X43;&#68") == "ABCD");
  BOOST_TEST(wan::html_unescape("&#0;&#x80;&#150;") == "\uFFFD€–");  // invalid charrefs
  BOOST_TEST(wan::html_unescape("a&#1;b&#x7F;c") == "abc");          // invalid code points dropped
  BOOST_TEST(wan::html_unescape("&#xD800;&#1114112;&#99999999999999999999999;") ==
             "\uFFFD\uFFFD\uFFFD");
  BOOST_TEST(wan::html_unescape("&#; &#x; &#xg;") == "&#; &#x; &#xg;");
  BOOST_TEST(wan::html_unescape("&#128512;") == "\U0001F600");
  // documented deviation: names only HTML 5 defines are left as written (Python: U+2713)
  BOOST_TEST(wan::html_unescape("&check;") == "&check;");
}

BOOST_AUTO_TEST_CASE(basic_clean_unescapes_twice_and_strips) {
  BOOST_TEST(wan::basic_clean("  &amp;lt;b&amp;gt;  ") == "<b>");
  BOOST_TEST(wan::basic_clean("\x1c x \x1f") == "x");  // strip() uses str.isspace
  BOOST_TEST(wan::basic_clean("&amp;amp;amp;") == "&amp;");  // exactly two passes
}

BOOST_AUTO_TEST_CASE(invalid_utf8_is_rejected) {
  expect_error_id([] { (void)wan::whitespace_clean("bad \xC3\x28 byte"); },
                  "offload.config.invalid_utf8");
  expect_error_id([] { (void)wan::basic_clean("\xED\xA0\x80"); },  // encoded surrogate
                  "offload.config.invalid_utf8");
}

BOOST_AUTO_TEST_CASE(matches_sentencepiece_library) {
  std::ifstream in(tokenizer_data() / "expected_ids.tsv");
  BOOST_TEST_REQUIRE(static_cast<bool>(in), "missing tests/data/tokenizer/expected_ids.tsv");
  std::map<std::string, std::unique_ptr<wan::HuggingfaceTokenizer>> models;
  std::string line;
  int cases = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {  // "# <model> pieces=N unk=U eos=E pad=P bos=B"
      std::istringstream hs(line.substr(2));
      std::string model, pieces, unk, eos, pad;
      hs >> model >> pieces >> unk >> eos >> pad;
      auto tok = std::make_unique<wan::HuggingfaceTokenizer>(tokenizer_data() / model);
      BOOST_TEST(fmt::format("pieces={}", tok->vocab_size()) == pieces);
      BOOST_TEST(fmt::format("eos={}", tok->eos_id()) == eos);
      BOOST_TEST(fmt::format("pad={}", tok->pad_id()) == pad);
      models[model] = std::move(tok);
      continue;
    }
    const auto t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
    const std::string model = line.substr(0, t1);
    const std::string text = unhex(line.substr(t1 + 1, t2 - t1 - 1));
    std::vector<std::int64_t> want;
    std::istringstream ids(line.substr(t2 + 1));
    for (std::int64_t id = 0; ids >> id;) want.push_back(id);
    BOOST_TEST_CONTEXT(model << " text '" << text << "'") {
      BOOST_TEST_REQUIRE(models.count(model) == 1u);
      BOOST_TEST(models[model]->encode(text) == want, boost::test_tools::per_element());
    }
    ++cases;
  }
  BOOST_TEST(cases >= 28);
}

BOOST_AUTO_TEST_CASE(special_ids_and_folder_layout) {
  wan::HuggingfaceTokenizer tok(spiece(), 16, "whitespace");
  BOOST_TEST(tok.eos_id() == 1);
  BOOST_TEST(tok.pad_id() == 0);
  BOOST_TEST(tok.vocab_size() == 200);
  // the checkpoint layout: a folder (google/umt5-xxl) holding spiece.model
  std::random_device rd;
  const fs::path root = fs::temp_directory_path() / fmt::format("wan_tokenizers_test_{:08x}", rd());
  const fs::path dir = root / "google" / "umt5-xxl";
  fs::create_directories(dir);
  fs::copy_file(spiece(), dir / "spiece.model");
  wan::HuggingfaceTokenizer by_dir(dir, 16, "whitespace");
  BOOST_TEST(by_dir.encode("a cat") == tok.encode("a cat"));
  fs::remove_all(root);
}

BOOST_AUTO_TEST_CASE(ids_mask_shapes_eos_and_padding) {
  const std::int64_t L = 16;
  wan::HuggingfaceTokenizer tok(spiece(), L, "whitespace");
  const std::vector<std::string> texts = {"A small cat sits on the sofa.", "dog", ""};
  const auto [ids, mask] = tok(texts);
  BOOST_TEST(ids.sizes().vec() == (std::vector<std::int64_t>{3, L}), boost::test_tools::per_element());
  BOOST_TEST(mask.sizes().vec() == (std::vector<std::int64_t>{3, L}), boost::test_tools::per_element());
  BOOST_TEST(ids.scalar_type() == torch::kLong);
  BOOST_TEST(mask.scalar_type() == torch::kLong);
  for (std::int64_t b = 0; b < 3; ++b) {
    BOOST_TEST_CONTEXT("text " << b) {
      auto pieces = tok.encode(texts[static_cast<std::size_t>(b)]);
      BOOST_TEST_REQUIRE(static_cast<std::int64_t>(pieces.size()) < L);
      for (auto p : pieces) BOOST_TEST(p > 1);  // content ids never collide with pad/eos
      pieces.push_back(1);                      // EOS
      const auto n = static_cast<std::int64_t>(pieces.size());
      std::vector<std::int64_t> want_ids(static_cast<std::size_t>(L), 0), want_mask(static_cast<std::size_t>(L), 0);
      std::copy(pieces.begin(), pieces.end(), want_ids.begin());
      std::fill_n(want_mask.begin(), n, 1);
      BOOST_TEST(row(ids, b) == want_ids, boost::test_tools::per_element());
      BOOST_TEST(row(mask, b) == want_mask, boost::test_tools::per_element());
    }
  }
  BOOST_TEST(mask[2].sum().item<std::int64_t>() == 1);  // empty text -> EOS only
  BOOST_TEST(ids[2][0].item<std::int64_t>() == 1);
}

BOOST_AUTO_TEST_CASE(truncation_keeps_eos) {
  const std::int64_t L = 8;
  wan::HuggingfaceTokenizer tok(spiece(), L, "whitespace");
  const std::string text = "The camera slowly pans over a mountain lake at sunrise, mist rising.";
  const auto pieces = tok.encode(text);
  BOOST_TEST_REQUIRE(static_cast<std::int64_t>(pieces.size()) > L);
  const auto [ids, mask] = tok({text});
  std::vector<std::int64_t> want(pieces.begin(), pieces.begin() + (L - 1));
  want.push_back(1);
  BOOST_TEST(row(ids, 0) == want, boost::test_tools::per_element());
  BOOST_TEST(mask.sum().item<std::int64_t>() == L);
  // without special tokens truncation keeps seq_len pieces and adds no EOS
  const auto plain = tok({text}, /*add_special_tokens=*/false);
  BOOST_TEST(row(plain.ids, 0) == std::vector<std::int64_t>(pieces.begin(), pieces.begin() + L),
             boost::test_tools::per_element());
  // exactly seq_len - 1 pieces: EOS is the last position, no padding
  std::string exact;
  for (const char* w : {"cat", "dog", "sky", "sea", "sun", "car", "owl", "red", "old"}) {
    const std::string next = exact.empty() ? std::string(w) : std::string(exact).append(" ").append(w);
    if (static_cast<std::int64_t>(tok.encode(next).size()) > L - 1) break;
    exact = next;
  }
  if (static_cast<std::int64_t>(tok.encode(exact).size()) == L - 1) {
    const auto r = tok({exact});
    BOOST_TEST(r.ids[0][L - 1].item<std::int64_t>() == 1);
    BOOST_TEST(r.mask.sum().item<std::int64_t>() == L);
  }
}

BOOST_AUTO_TEST_CASE(cleaning_is_applied_before_encoding) {
  wan::HuggingfaceTokenizer tok(spiece(), 32, "whitespace");
  const auto a = tok({"  two dogs\t run &amp;\n\n jump  "});
  const auto b = tok({"two dogs run & jump"});
  BOOST_TEST(torch::equal(a.ids, b.ids));
  BOOST_TEST(torch::equal(a.mask, b.mask));
  BOOST_TEST(tok.clean_text("  two dogs\t run &amp;\n\n jump  ") == "two dogs run & jump");
  wan::HuggingfaceTokenizer raw(spiece(), 32, "");
  BOOST_TEST(raw.clean_text(" x&amp; ") == " x&amp; ");
}

BOOST_AUTO_TEST_CASE(errors_name_the_problem) {
  expect_error_id([] { wan::HuggingfaceTokenizer t(fs::path("/nonexistent/google/umt5-xxl"), 8, "whitespace"); },
                  "offload.config.tokenizer_not_found");
  expect_error_id([] { wan::HuggingfaceTokenizer t(tokenizer_data() / "corpus.txt", 8); },
                  "offload.checkpoint.tokenizer_unreadable");
  expect_error_id([] { wan::HuggingfaceTokenizer t(spiece(), 8, "lower"); },
                  "offload.config.tokenizer_clean");
  wan::HuggingfaceTokenizer unpadded(spiece(), 0, "whitespace");
  expect_error_id([&] { (void)unpadded({"a", "two dogs run across a green field"}); },
                  "offload.config.tokenizer_ragged");
  const auto one = unpadded({"two dogs"});
  BOOST_TEST(one.ids.size(1) == static_cast<std::int64_t>(unpadded.encode("two dogs").size()) + 1);
}

BOOST_AUTO_TEST_SUITE_END()
