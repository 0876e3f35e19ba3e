// libFuzzer targets for offload's parsers, all in one executable (one translation unit: a TU that
// includes LibTorch headers costs tens of seconds). The target is chosen by the environment
// variable OFFLOAD_FUZZ_TARGET:
//
//   safetensors  a whole .safetensors file: header length, JSON header, dtypes, shapes, offsets,
//                then every tensor read (views and misaligned copies) and its bytes touched
//   index        a *.safetensors.index.json next to three fixed shards (two valid, one corrupt)
//   config       a DiT config.json (wan::from_config_json), then parameter_count and the VACE layers
//   policy       the placement-policy grammar (offload::parse_policy) with the round trip
//                parse(p.str()) == p, and device_id::parse
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

#include <offload/errors.hpp>
#include <offload/placement_policy.hpp>
#include <offload/safetensors.hpp>
#include <offload/units.hpp>

#include "size_frames.hpp"
#include "wan/model_config.hpp"
#include "wan/model_config.ipp" // the definitions (torch-free), compiled here as in model.cpp

#include <CLI/CLI.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

enum class target { none, safetensors, index, config, policy, cli };
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

void touch(const at::Tensor& t) {
  // Read every byte of the tensor: out-of-mapping views are caught by the sanitizers or a fault.
  if (!t.defined() || t.numel() == 0) return;
  const auto* p = static_cast<const unsigned char*>(t.data_ptr());
  const auto n = static_cast<std::size_t>(t.numel()) * t.element_size();
  std::uint64_t s = 0;
  for (std::size_t i = 0; i < n; ++i) s += p[i];
  sink = sink + s;
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
      touch(t);
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
    for (const auto& [k, t] : sd) touch(t);
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

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  const char* name = std::getenv("OFFLOAD_FUZZ_TARGET");
  const std::string n = name != nullptr ? name : "";
  if (n == "safetensors") selected = target::safetensors;
  else if (n == "index") selected = target::index;
  else if (n == "config") selected = target::config;
  else if (n == "policy") selected = target::policy;
  else if (n == "cli") selected = target::cli;
  else {
    std::fprintf(stderr, "offload_fuzz: set OFFLOAD_FUZZ_TARGET to one of safetensors, index, "
                         "config, policy, cli (found '%s')\n",
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
    case target::none: std::abort();
  }
  return 0;
}
