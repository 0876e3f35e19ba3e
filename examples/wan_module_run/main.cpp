// wan_module_run: runs one Wan component from a checkpoint on inputs read from a .safetensors file
// and writes its outputs to another, with the tensor names of the golden files, so a golden case
// file can be fed in as inputs and the output compared name by name. The parity suite and anyone
// debugging a port use it. The logic is wan::run_module (pipelines/wan/module_run.hpp).
//
//   wan_module_run --module dit --checkpoint tests/data/golden/checkpoints/t2v \
//                  --inputs tests/data/golden/cases/dit_t2v.safetensors --outputs out.safetensors
#include "wan/module_run.hpp"

#include <offload/safetensors.hpp>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <exception>
#include <optional>
#include <string>

namespace {

/// One line: newlines of multi-line messages (key lists) become "; ".
std::string one_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  std::string out;
  for (const char c : text) {
    if (c == '\n') out += "; ";
    else out += c;
  }
  return out;
}

} // namespace

int run(int argc, char** argv) {
  CLI::App app{"Runs one Wan component from a checkpoint on inputs read from a .safetensors file "
               "and writes its outputs (golden tensor names: in.* inputs -> out.* outputs).",
               "wan_module_run"};
  std::string module, dtype = "float32", sub_case, checkpoint, inputs, outputs;
  std::optional<std::int64_t> vision_heads;
  bool intermediates = false;
  app.add_option("--module", module, "Component to run")
      ->required()
      ->check(CLI::IsMember(wan::module_kind_names()));
  app.add_option("--checkpoint", checkpoint,
                 "Checkpoint file (t5, vae_*, clip_visual) or DiT directory with config.json "
                 "(dit, vace)")
      ->required()
      ->check(CLI::ExistingPath);
  app.add_option("--inputs", inputs, "Input tensors (.safetensors), e.g. a golden case file")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--outputs", outputs, "Where to write the output tensors (.safetensors)")
      ->required();
  app.add_option("--case", sub_case, "Run only sub-case cN (inputs in.cN.*; vae: index N)");
  app.add_option("--dtype", dtype, "Weight dtype (t5, dit, vace, clip_visual; the VAE is float32)")
      ->check(CLI::IsMember({"float32", "bfloat16"}))
      ->capture_default_str();
  app.add_option("--vision-heads", vision_heads,
                 "clip_visual: attention heads of the visual tower (not in the weights; default "
                 "16, the official value)");
  app.add_flag("--intermediates", intermediates,
               "dit, vace: also write the trace points as cN.mid.* (golden intermediate names)");
  CLI11_PARSE(app, argc, argv);

  try {
    wan::module_run_options options;
    options.module = wan::parse_module_kind(module);
    options.checkpoint = checkpoint;
    options.dtype = wan::parse_module_dtype(dtype);
    if (!sub_case.empty()) options.sub_case = wan::parse_case(sub_case);
    options.vision_heads = vision_heads;
    options.record_intermediates = intermediates;

    const auto result = wan::run_module(options, std::filesystem::path(inputs));
    offload::save_safetensors(outputs, result,
                              {{"module", module},
                               {"checkpoint", checkpoint},
                               {"inputs", inputs},
                               {"dtype", dtype},
                               {"case", sub_case.empty() ? std::string("all") : sub_case}});
    std::vector<std::string> listed;
    for (const auto& [name, t] : result)
      listed.push_back(fmt::format("{} [{}] {}", name, fmt::join(t.sizes(), ", "),
                                   wan::dtype_name(t.scalar_type())));
    fmt::print("wan_module_run: {} wrote {} tensor{} to {}: {}\n", module, result.size(),
               result.size() == 1 ? "" : "s", outputs, fmt::join(listed, "; "));
    return 0;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "wan_module_run: error: {}\n", one_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    fmt::print(stderr, "wan_module_run: error: {}\n", one_line(e.what()));
  }
  return 1;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) { // outside run()'s own handlers: setting up the command line
    fmt::print(stderr, "wan_module_run: error: {}\n", one_line(e.what()));
    return 1;
  }
}
