// Regenerates the tokenizer fixtures in this folder with the real sentencepiece library.
// Not part of the build: sentencepiece cannot share a process with Debian's LibTorch (see
// pipelines/wan/tokenizers.hpp), so this runs as its own small program:
//   g++ -std=c++17 -O1 make_fixture.cpp -o /tmp/make_fixture -lsentencepiece -lsentencepiece_train
//   cd tests/data/tokenizer && /tmp/make_fixture
// Writes spiece.model (nmt_nfkc normalisation, like umT5), spiece_bytes.model (identity
// normalisation, byte fallback, one user-defined symbol) and expected_ids.tsv: one line per case,
// "<model file>\t<text as UTF-8 hex>\t<ids separated by spaces>", ids from SentencePieceProcessor.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace {

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

} // namespace

int main() {
  const std::string common =
      "--input=corpus.txt --model_type=unigram --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 "
      "--character_coverage=1.0 --hard_vocab_limit=false --minloglevel=2 --seed_sentencepiece_size=5000 "
      "--num_threads=1 ";
  auto st = sentencepiece::SentencePieceTrainer::Train(
      common + "--model_prefix=spiece --vocab_size=200 --normalization_rule_name=nmt_nfkc");
  if (!st.ok()) { std::cerr << st.ToString() << "\n"; return 1; }
  st = sentencepiece::SentencePieceTrainer::Train(
      common + "--model_prefix=spiece_bytes --vocab_size=420 --normalization_rule_name=identity "
               "--byte_fallback=true --user_defined_symbols=<extra_id_0>");
  if (!st.ok()) { std::cerr << st.ToString() << "\n"; return 1; }
  std::remove("spiece.vocab");
  std::remove("spiece_bytes.vocab");

  const std::vector<std::string> texts = {
      "",
      "   ",
      "a",
      "A small cat sits on a warm windowsill.",
      "  two   dogs\trun\nacross  the field  ",
      "Die Katze schläft auf dem Sofa, während draußen der Wind weht.",
      "ＦＵＬＬ ｗｉｄｔｈ ａｎｄ ﬁ ligature ① ½ \u00A0nbsp",
      "unknown: 猫 が 好き 🐱 ☃",
      "cafe\u0301 vs café",
      "<extra_id_0> sentinel <extra_id_0>x and </s> and <pad>",
      "zzzz qqqq xxyyzz 1234567890 !?;:()[]{}",
      "The camera slowly pans over a mountain lake at sunrise, mist rising from the water. "
      "An old man in a grey coat feeds pigeons in a city park on a cold winter morning.",
      "\u3000ideographic\u3000space\u2003em\u2028line",
      "tab\tseparated\tvalues\r\nand CRLF",
  };
  std::ofstream out("expected_ids.tsv");
  for (const std::string model : {"spiece.model", "spiece_bytes.model"}) {
    sentencepiece::SentencePieceProcessor sp;
    if (const auto s = sp.Load(model); !s.ok()) { std::cerr << s.ToString() << "\n"; return 1; }
    out << "# " << model << " pieces=" << sp.GetPieceSize() << " unk=" << sp.unk_id()
        << " eos=" << sp.eos_id() << " pad=" << sp.pad_id() << " bos=" << sp.bos_id() << "\n";
    for (const auto& t : texts) {
      std::vector<int> ids;
      if (const auto s = sp.Encode(t, &ids); !s.ok()) { std::cerr << s.ToString() << "\n"; return 1; }
      out << model << '\t' << hex(t) << '\t';
      for (std::size_t i = 0; i < ids.size(); ++i) out << (i ? " " : "") << ids[i];
      out << '\n';
    }
  }
  return 0;
}
