// libFuzzer targets for offload's parsers, all in one executable (one translation unit, plus the
// tokenizer's source pipelines/wan/tokenizers.cpp: a TU that includes LibTorch headers costs tens
// of seconds). The target is chosen by the environment variable OFFLOAD_FUZZ_TARGET:
//
//   safetensors  a whole .safetensors file: header length, JSON header, dtypes, shapes, offsets,
//                then every tensor read (views and misaligned copies) and its bytes touched
//   index        a *.safetensors.index.json next to three fixed shards (two valid, one corrupt)
//   config       a DiT config.json (wan::from_config_json), then parameter_count and the VACE layers
//   policy       the placement-policy grammar (offload::parse_policy) with the round trip
//                parse(p.str()) == p, and device_id::parse
//   pickle       the data.pkl record of a torch.save file (offload::detail::torch_unpickler), with
//                storages of the size the pickle asks for, or ("#<bytes>" keys) of any size
//   pth          a whole .pth file: the zip archive (LibTorch's PyTorchStreamReader) and its pickle
//                (offload::load_pth)
//   spiece       a sentencepiece model file (wan::HuggingfaceTokenizer's own protobuf reader, the
//                precompiled charsmap and its double-array trie), then fixed texts encoded with it
//   prompt       a prompt through the umT5 tokenizer of tests/data/tokenizer (html.unescape,
//                whitespace cleaning, UTF-8 checks, normalization, Viterbi, truncation, padding);
//                the first byte chooses the model with or without byte fallback
//   cli          wan_generate's --task/--size/--frame_num/--gpu_memory checks: the input is up to
//                four lines "task\nsize\nframe_num\ngpu_memory"; frame_num is converted as the CLI
//                does (CLI11), then size_frames.hpp and offload::parse_bytes run
//
// A bad input must end in the project's exceptions (offload::error, or wan_cli::usage_error for
// the CLI checks), which are caught here. Anything else escaping (std::bad_alloc, std::out_of_range,
// a JSON library exception), a sanitizer report, a leak or a hang is a bug in the parser.
//
// Usage (docs/robustness.md): OFFLOAD_FUZZ_TARGET=policy ./offload_fuzz corpus/policy
// clang 14 with libstdc++ 12 in C++20 rejects <ATen/ops/empty.h> (IValue incomplete inside a
// constexpr std::vector) unless ivalue.h is complete first; g++ needs no such order.
#include <ATen/core/ivalue.h>

#include <c10/core/CPUAllocator.h>
#include <c10/util/Logging.h>

#include <offload/errors.hpp>
#include <offload/placement_policy.hpp>
#include <offload/pth.hpp>
#include <offload/safetensors.hpp>
#include <offload/units.hpp>

#include "size_frames.hpp"
#include "wan/tokenizers.hpp"
#include "wan/model_config.hpp"
#include "wan/model_config.ipp" // the definitions (torch-free), compiled here as in model.cpp

#include <CLI/CLI.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <string_view>
#include <vector>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

enum class target { none, safetensors, index, config, policy, cli, pickle, pth, spiece, prompt };
target selected = target::none;
fs::path work_dir; // per-process scratch folder

void write_file(const fs::path& p, const std::uint8_t* data, std::size_t size) {
  std::FILE* f = std::fopen(p.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size != 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

void write_file(const fs::path& p, std::string_view s) {
  write_file(p, reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
}

/// A valid safetensors file of the given tensors (name, dtype, shape, byte count), data zero.
std::string safetensors_bytes(std::string_view header_json, std::size_t data_bytes) {
  std::string header(header_json);
  while (header.size() % 8 != 0) header += ' ';
  std::string out(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  out += header;
  out.append(data_bytes, '\x01');
  return out;
}

volatile std::uint64_t sink = 0;

/// A tensor (a safetensors view of the mapping, or a .pth view of its storage): checks it lies
/// inside its storage (the readers' invariant; computed here on its own, in 128 bits), then reads
/// every storage byte of its extent in instrumented code, so that a view past the allocation is an
/// ASan report or a fault even though ATen's kernels are not instrumented.
void touch_view(const at::Tensor& t) {
  if (!t.defined()) return;
  if (t.storage_offset() < 0) std::abort();
  __int128 last = t.storage_offset();
  for (std::int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) < 0 || t.stride(d) < 0) std::abort();
    if (t.size(d) == 0) return; // empty: nothing is read
    last += __int128(t.size(d) - 1) * t.stride(d);
    if (last > (__int128(1) << 64)) std::abort();
  }
  const __int128 end = (last + 1) * t.element_size();
  if (end > static_cast<__int128>(t.storage().nbytes())) {
    std::fprintf(stderr, "tensor view past its storage: offset %lld, %lld dims, storage %zu bytes\n",
                 static_cast<long long>(t.storage_offset()), static_cast<long long>(t.dim()),
                 t.storage().nbytes());
    std::abort();
  }
  const auto* base = static_cast<const unsigned char*>(t.storage().data());
  std::uint64_t s = 0;
  const auto first = static_cast<std::size_t>(t.storage_offset() * t.element_size());
  for (auto i = first; i < static_cast<std::size_t>(end); ++i) s += base[i];
  sink = sink + s;
}

/// Every tensor reachable from `o` (the object graph may hold cycles).
void touch_all(const offload::detail::pickle_ref& o, std::set<const offload::detail::pickle_object*>& seen) {
  if (!o || !seen.insert(o.get()).second) return;
  if (o->type == offload::detail::pickle_object::kind::tensor) touch_view(o->tensor);
  for (const auto& i : o->items) touch_all(i, seen);
  for (const auto& [k, v] : o->entries) {
    touch_all(k, seen);
    touch_all(v, seen);
  }
}

void fuzz_pickle(const std::uint8_t* data, std::size_t size) {
  // A storage key "#<n>" gets n bytes whatever the pickle says its numel is (a record of the wrong
  // size); other keys get what numel asks for, up to 1 MiB (a larger one is a missing record).
  const auto loader = [](const std::string& key, c10::ScalarType dtype, std::int64_t numel) {
    std::size_t bytes = 0;
    if (key.size() > 1 && key.size() < 9 && key[0] == '#') {
      for (std::size_t i = 1; i < key.size(); ++i) bytes = bytes * 10 + static_cast<std::size_t>(key[i] - '0') % 10;
    } else {
      const auto want = static_cast<unsigned __int128>(numel) * c10::elementSize(dtype);
      if (want > (1u << 20)) throw offload::checkpoint_error("fuzz.storage", "storage too large for the fuzz target");
      bytes = static_cast<std::size_t>(want);
    }
    return at::Storage(c10::Storage::use_byte_size_t(), bytes, c10::GetCPUAllocator(), false);
  };
  try {
    offload::detail::torch_unpickler up(data, size, "fuzz data.pkl", loader);
    const auto root = up.run();
    std::set<const offload::detail::pickle_object*> seen;
    touch_all(root, seen);
  } catch (const offload::error&) {
  }
}

/// Whether a central-directory entry of the zip claims more than 1 MiB (or a zip64 size): LibTorch's
/// reader allocates what a record claims before reading it (docs/robustness.md), and freeing a
/// claimed 2 GB under ASan costs seconds. A crude scan for the signature, conservative on purpose.
bool claims_a_large_record(const std::uint8_t* data, std::size_t size) {
  for (std::size_t i = 0; i + 28 <= size; ++i)
    if (data[i] == 'P' && data[i + 1] == 'K' && data[i + 2] == 1 && data[i + 3] == 2) {
      std::uint32_t uncompressed = 0;
      std::memcpy(&uncompressed, data + i + 24, 4);
      if (uncompressed > (1u << 20)) return true;
    }
  return false;
}

void fuzz_pth(const std::uint8_t* data, std::size_t size) {
  if (claims_a_large_record(data, size)) return;
  const fs::path p = work_dir / "input.pth";
  write_file(p, data, size);
  try {
    const auto sd = offload::load_pth(p);
    for (const auto& [k, t] : sd) touch_view(t);
  } catch (const offload::error&) {
  }
}

/// Every id a valid piece, the mask 1 then 0, EOS after the pieces, pad after that.
void check_tokenized(const wan::HuggingfaceTokenizer& tok, const wan::tokenized& t, std::int64_t seq_len) {
  if (t.ids.dim() != 2 || t.ids.size(1) != seq_len || !t.ids.sizes().equals(t.mask.sizes())) std::abort();
  for (std::int64_t b = 0; b < t.ids.size(0); ++b) {
    std::int64_t n = 0;
    for (std::int64_t i = 0; i < seq_len; ++i) {
      const auto id = t.ids[b][i].item<std::int64_t>();
      const auto m = t.mask[b][i].item<std::int64_t>();
      if (id < 0 || id >= tok.vocab_size() || (m != 0 && m != 1)) std::abort();
      if (m == 1 && n != i) std::abort(); // the mask is a prefix of ones
      n += m;
      if (m == 0 && id != tok.pad_id()) std::abort();
    }
    if (n < 1 || t.ids[b][n - 1].item<std::int64_t>() != tok.eos_id()) std::abort();
  }
}

void fuzz_spiece(const std::uint8_t* data, std::size_t size) {
  const fs::path p = work_dir / "spiece.model";
  write_file(p, data, size);
  try {
    const wan::HuggingfaceTokenizer tok(p, 16, "whitespace");
    for (const char* text : {"a cat on a windowsill", "  Hello,   WORLD!  ", "\xEF\xBC\xA1\xE2\x85\xA0 caf\xC3\xA9",
                             "\xF0\x9F\x98\x80 &amp; &#x41;", ""}) {
      const auto ids = tok.encode(tok.clean_text(text));
      for (const auto id : ids)
        if (id < 0 || id >= tok.vocab_size()) std::abort();
    }
    check_tokenized(tok, tok({"a cat", "\xE2\x96\x81x y"}), 16);
  } catch (const offload::error&) {
  }
}

void fuzz_prompt(const std::uint8_t* data, std::size_t size) {
  static const wan::HuggingfaceTokenizer plain(fs::path(OFFLOAD_FUZZ_TOKENIZER_DIR) / "spiece.model", 24,
                                               "whitespace");
  static const wan::HuggingfaceTokenizer bytes(fs::path(OFFLOAD_FUZZ_TOKENIZER_DIR) / "spiece_bytes.model", 24,
                                               "whitespace");
  if (size == 0) return;
  const auto& tok = (data[0] & 1) != 0 ? bytes : plain;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    check_tokenized(tok, tok({text, "a cat"}), 24);
  } catch (const offload::error&) {
  }
}

void fuzz_safetensors(const std::uint8_t* data, std::size_t size) {
  const fs::path p = work_dir / "input.safetensors";
  write_file(p, data, size);
  try {
    offload::safetensors_file f(p);
    for (const auto& k : f.keys()) {
      const auto& info = f.info(k);
      at::Tensor t = f.get(k);
      if (t.nbytes() != info.end - info.begin) std::abort(); // the reader's own invariant
      touch_view(t);
    }
    (void)f.metadata();
    (void)f.info("no such tensor"); // throws checkpoint_error with a hint
  } catch (const offload::error&) {
  }
}

void fuzz_index(const std::uint8_t* data, std::size_t size) {
  const fs::path p = work_dir / "model.safetensors.index.json";
  write_file(p, data, size);
  try {
    const auto sd = offload::load_safetensors_index(p);
    for (const auto& [k, t] : sd) touch_view(t);
  } catch (const offload::error&) {
  }
}

void fuzz_config(const std::uint8_t* data, std::size_t size) {
  const fs::path p = work_dir / "config.json";
  write_file(p, data, size);
  try {
    const wan::WanModelConfig c = wan::from_config_json(p);
    sink = sink + static_cast<std::uint64_t>(wan::parameter_count(c));
    sink = sink + c.resolved_vace_layers().size();
  } catch (const offload::error&) {
  }
}

void fuzz_policy(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto p = offload::parse_policy(text);
    // The canonical text parses back to the same policy (placement_policy::str's contract).
    const auto again = offload::parse_policy(p.str());
    if (!(again == p)) {
      std::fprintf(stderr, "round trip failed: '%s' -> '%s'\n", std::string(text).c_str(), p.str().c_str());
      std::abort();
    }
    for (const auto& [name, c] : p.components) (void)offload::detail::entry_text(c);
  } catch (const offload::error&) {
  }
  try {
    const auto d = offload::device_id::parse(text);
    if (!(offload::device_id::parse(d.str()) == d)) std::abort();
  } catch (const offload::error&) {
  }
}

void fuzz_cli(const std::uint8_t* data, std::size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  std::string_view field[4];
  std::size_t start = 0;
  for (int i = 0; i < 4 && start <= all.size(); ++i) {
    const auto nl = i == 3 ? std::string_view::npos : all.find('\n', start);
    field[i] = all.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
  const std::string task(field[0]), size_text(field[1]), frame_text(field[2]);
  try {
    const auto wh = wan_cli::parse_size(task, size_text);
    if (wh.width <= 0 || wh.height <= 0) std::abort();
  } catch (const wan_cli::usage_error&) {
  }
  // --frame_num as parse_command_line reads it: CLI11 converts the text to an int, 0 is refused,
  // then validate() resolves it for the task.
  int frame_num = 0;
  if (!frame_text.empty() && CLI::detail::lexical_cast(frame_text, frame_num)) {
    try {
      wan_cli::check_task(task);
      const int n = wan_cli::resolve_frame_num(task, frame_num);
      if (n < 1 || (n - 1) % 4 != 0) std::abort();
    } catch (const wan_cli::usage_error&) {
    }
  }
  try {
    const std::int64_t bytes = offload::parse_bytes(field[3]);
    sink = sink + static_cast<std::uint64_t>(bytes);
  } catch (const offload::error&) {
  }
}

} // namespace

// LibTorch's zip reader leaks its archive state (about 300 bytes) when its constructor throws on a
// corrupt archive: PyTorchStreamReader::init() throws after mz_zip_reader_init, and a throwing
// constructor runs no destructor. Not ours to fix; leaks allocated inside libtorch_cpu (no frame
// pointers there, so its frames cannot be named) are not reported. Ours still are: every object
// the unpickler makes is allocated here.
extern "C" const char* __lsan_default_suppressions() { return "leak:libtorch_cpu.so\n"; }

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  const char* name = std::getenv("OFFLOAD_FUZZ_TARGET");
  const std::string n = name != nullptr ? name : "";
  if (n == "safetensors") selected = target::safetensors;
  else if (n == "index") selected = target::index;
  else if (n == "config") selected = target::config;
  else if (n == "policy") selected = target::policy;
  else if (n == "cli") selected = target::cli;
  else if (n == "pickle") selected = target::pickle;
  else if (n == "pth") selected = target::pth;
  else if (n == "spiece") selected = target::spiece;
  else if (n == "prompt") selected = target::prompt;
  else {
    std::fprintf(stderr, "offload_fuzz: set OFFLOAD_FUZZ_TARGET to one of safetensors, index, "
                         "config, policy, cli, pickle, pth, spiece, prompt (found '%s')\n",
                 n.c_str());
    std::exit(2);
  }
  const char* tmp = std::getenv("TMPDIR");
  work_dir = fs::path(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") /
             ("offload_fuzz_" + n + "_" + std::to_string(::getpid()));
  fs::create_directories(work_dir);
  std::atexit([] {
    std::error_code ec;
    fs::remove_all(work_dir, ec);
  });
  // LibTorch's errors (a corrupt zip) capture and symbolise a stack trace each, about 25 ms: the
  // pth target would run 40 inputs a second. Its messages are what load_pth keeps, not the trace.
  c10::SetStackTraceFetcher([] { return std::string("(stack trace not captured by offload_fuzz)"); });
  if (selected == target::index) {
    // Shards the fuzzed index may name: two valid ones and a corrupt one.
    write_file(work_dir / "model-00001-of-00002.safetensors",
               safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                 R"("b":{"dtype":"BF16","shape":[1,3],"data_offsets":[8,14]}})",
                                 14));
    write_file(work_dir / "model-00002-of-00002.safetensors",
               safetensors_bytes(R"({"__metadata__":{"format":"pt"},)"
                                 R"("c":{"dtype":"I64","shape":[],"data_offsets":[0,8]}})",
                                 8));
    write_file(work_dir / "corrupt.safetensors", std::string_view("\x10\0\0\0\0\0\0\0{\"a\":", 13));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  switch (selected) {
    case target::safetensors: fuzz_safetensors(data, size); break;
    case target::index: fuzz_index(data, size); break;
    case target::config: fuzz_config(data, size); break;
    case target::policy: fuzz_policy(data, size); break;
    case target::cli: fuzz_cli(data, size); break;
    case target::pickle: fuzz_pickle(data, size); break;
    case target::pth: fuzz_pth(data, size); break;
    case target::spiece: fuzz_spiece(data, size); break;
    case target::prompt: fuzz_prompt(data, size); break;
    case target::none: std::abort();
  }
  return 0;
}
