#pragma once
// Port of Wan-Video/Wan2.1@9737cba, wan/modules/tokenizers.py (HuggingfaceTokenizer as
// T5EncoderModel uses it: google/umt5-xxl, seq_len = text_len, clean='whitespace',
// padding='max_length', truncation=True, add_special_tokens=True, return_mask=True).
//
// The reference wraps transformers.AutoTokenizer (a T5TokenizerFast built from spiece.model).
// This port reads spiece.model itself and reproduces SentencePieceProcessor::Encode of
// sentencepiece 0.1.97 for unigram models: the normalizer (precompiled charsmap = nmt_nfkc for
// umT5, dummy prefix, extra-whitespace removal, U+2581 escaping, user-defined symbols), the
// optimized Viterbi of unigram_model.cc, merging of consecutive unknown pieces and byte fallback.
// tests/data/tokenizer holds models and ids produced by the real library to check it. Then it adds
// what the HF tokenizer adds around the pieces: truncation to seq_len - 1, EOS appended, right
// padding to seq_len, attention mask.
//
// Why not libsentencepiece: Debian's libsentencepiece.so.0 exports the symbols of its bundled
// protobuf-lite; loaded next to the libprotobuf.so.32 that LibTorch needs they interpose, and the
// process crashes in protobuf's static initialisation before main(). Linking it into offload_wan
// would break every executable that uses LibTorch.
//
// Deliberate deviations / differences to the HF fast tokenizer that cannot be removed here:
//  * basic_clean does NOT apply ftfy.fix_text (ftfy is a Python library with no C++ port): mojibake
//    and other encoding damage in prompts is not repaired. html.unescape is applied twice, as in
//    the reference, and strip() follows.
//  * html_unescape follows Python's html.unescape exactly for numeric references (including the
//    invalid-charref table) and for the named references of HTML 4.01 plus &apos; and the
//    upper-case aliases (&AMP; &COPY; &GT; &LT; &QUOT; &REG;), including the no-semicolon legacy
//    forms and the longest-prefix rule. The ~2,000 names that only HTML 5 defines (e.g. &check;)
//    are left as written.
//  * Special-token strings inside the text ("</s>", "<pad>", "<extra_id_0>") are split into ordinary
//    pieces by sentencepiece; the HF fast tokenizer would map them to their special ids.
//  * The HF T5 fast tokenizer is built from the same model (precompiled normalizer + Metaspace with
//    the dummy prefix + Unigram with fused unknowns), so ordinary text is expected to give the same
//    ids as sentencepiece, but that could not be checked offline (no transformers / real umT5
//    tokenizer files here); equality with the sentencepiece library itself is tested.
//  * Only unigram models are read (umT5's type); BPE / word / char models throw
//    offload::config_error. Sampling, n-best and the surface/offset outputs are not ported.
//  * Input strings must be valid UTF-8 (offload::config_error otherwise); Python strings are
//    always valid.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace wan {

/// ftfy.fix_text (not applied, see above) + html.unescape twice + strip (tokenizers.py basic_clean).
std::string basic_clean(std::string_view text);
/// Collapse every run of Unicode whitespace to one space, then strip (whitespace_clean).
std::string whitespace_clean(std::string_view text);
/// Python's html.unescape (see the header comment for the named-reference coverage).
std::string html_unescape(std::string_view text);

/// Token ids and attention mask, both int64 [B, seq_len].
struct tokenized {
  at::Tensor ids; // = torch::Tensor; this header includes only <ATen/core/Tensor.h>
  at::Tensor mask;
};

/// The tokenizer T5EncoderModel builds: HuggingfaceTokenizer(name, seq_len, clean).
///
/// **Example**
/// \code
/// wan::HuggingfaceTokenizer tok("Wan2.1-T2V-1.3B/google/umt5-xxl", 512, "whitespace");
/// auto [ids, mask] = tok({"a cat", "a dog"});  // int64 [2, 512] each; EOS = 1, pad = 0
/// \endcode
class HuggingfaceTokenizer {
public:
  /// `name`: a folder holding spiece.model (the checkpoint layout `google/umt5-xxl/`) or the
  /// .model file itself. `seq_len` <= 0 means no padding/truncation (every text must then have
  /// the same length to form one tensor). `clean`: "" (none) or "whitespace"; the reference's
  /// "lower" and "canonicalize" (Unicode case folding, punctuation tables) are not ported and
  /// throw offload::config_error.
  explicit HuggingfaceTokenizer(std::filesystem::path name, std::int64_t seq_len = 0,
                                std::string clean = "");
  ~HuggingfaceTokenizer();
  HuggingfaceTokenizer(HuggingfaceTokenizer&&) noexcept;
  HuggingfaceTokenizer& operator=(HuggingfaceTokenizer&&) noexcept;

  /// Cleans and tokenizes `sequence`; with add_special_tokens EOS is appended after truncation
  /// to seq_len - 1 pieces (as the HF tokenizer does), then pad ids fill up to seq_len.
  tokenized operator()(const std::vector<std::string>& sequence,
                       bool add_special_tokens = true) const;
  /// The cleaning step alone (`_clean` in the Python).
  std::string clean_text(std::string_view text) const;
  /// Pieces of one (already cleaned) text, without special tokens.
  std::vector<std::int64_t> encode(std::string_view text) const;

  [[nodiscard]] std::int64_t vocab_size() const;  ///< pieces in the sentencepiece model
  [[nodiscard]] std::int64_t eos_id() const;
  [[nodiscard]] std::int64_t pad_id() const;

  std::filesystem::path name;
  std::int64_t seq_len;
  std::string clean;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace wan
