#pragma once
/// \file
/// Checkpoint loading: `load_checkpoint` (any supported file layout -> state_dict) and the strict
/// `load_state` (state_dict -> module).
///
/// `load_state` is strict (style rule R6): it collects *every* missing key, unexpected key,
/// shape mismatch and incompatible dtype, and throws one offload::checkpoint_error
/// (`offload.checkpoint.state_mismatch`) listing them all, at most `load_options::max_listed`
/// names per category followed by "... and N more". Nothing is copied unless everything
/// matches. Opt-outs are explicit and named (load_options). Values are converted explicitly to
/// the dtype of the module's tensor (e.g. a bf16 checkpoint into a float32 module) within the
/// same kind (floating / integral / bool / complex); a cross-kind conversion is a mismatch.
///
/// **Example**
/// \code
/// wan::WanModel model(cfg);
/// offload::load_state(*model, offload::load_checkpoint("Wan2.1-T2V-1.3B/"));
/// offload::load_state(*vae, offload::load_checkpoint("Wan2.1_VAE.pth"),
///                     {.ignore_unexpected_prefixes = {"model.pos_ids"}});
/// \endcode

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <c10/core/ScalarType.h>
#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)
#include <torch/nn/module.h>

#include <offload/errors.hpp>
#include <offload/pth.hpp>
#include <offload/safetensors.hpp>

namespace offload {

/// A flat name -> tensor map, sorted by name (same alias as in safetensors.hpp and pth.hpp).
using state_dict = std::map<std::string, at::Tensor, std::less<>>;

/// Loads a checkpoint into a state_dict, choosing the reader by what `file_or_dir` is:
/// - `*.pth`, `*.pt`, `*.bin`, `*.ckpt`: a zip-format torch.save(state_dict) file (pth.hpp);
/// - `*.safetensors`: one safetensors file (tensors view its mapping);
/// - `*.safetensors.index.json`: a sharded safetensors checkpoint;
/// - a directory: its `diffusion_pytorch_model.safetensors.index.json` if present, otherwise its
///   `diffusion_pytorch_model*.safetensors` files (one, or several shards without an index: a
///   key found in two shards is an error).
/// Throws offload::checkpoint_error.
inline state_dict load_checkpoint(const std::filesystem::path& file_or_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto status = fs::status(file_or_dir, ec);
  if (ec || !fs::exists(status))
    throw checkpoint_error("offload.checkpoint.io",
                           fmt::format("checkpoint '{}' does not exist; check the path",
                                       file_or_dir.string()));
  if (fs::is_directory(status)) {
    const auto index = file_or_dir / "diffusion_pytorch_model.safetensors.index.json";
    if (fs::exists(index)) return load_safetensors_index(index);
    std::vector<fs::path> shards;
    for (const auto& e : fs::directory_iterator(file_or_dir)) {
      const std::string name = e.path().filename().string();
      if (e.is_regular_file() && name.rfind("diffusion_pytorch_model", 0) == 0 &&
          name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0)
        shards.push_back(e.path());
    }
    if (shards.empty())
      throw checkpoint_error(
          "offload.checkpoint.io",
          fmt::format("directory '{}' holds no diffusion_pytorch_model*.safetensors and no "
                      "diffusion_pytorch_model.safetensors.index.json; pass the checkpoint file "
                      "itself",
                      file_or_dir.string()));
    std::sort(shards.begin(), shards.end());
    state_dict sd;
    std::map<std::string, fs::path, std::less<>> origin;
    for (const auto& s : shards) {
      safetensors_file f(s);
      for (const auto& k : f.keys()) {
        auto [it, inserted] = origin.emplace(k, s);
        if (!inserted)
          throw checkpoint_error("offload.checkpoint.duplicate_key",
                                 fmt::format("tensor '{}' is in both '{}' and '{}' (no index file "
                                             "says which shard owns it)",
                                             k, it->second.string(), s.string()));
        sd.emplace(k, f.get(k));
      }
    }
    return sd;
  }
  const std::string name = file_or_dir.filename().string();
  const auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with(".safetensors.index.json")) return load_safetensors_index(file_or_dir);
  if (ends_with(".safetensors")) return load_safetensors(file_or_dir);
  if (ends_with(".pth") || ends_with(".pt") || ends_with(".bin") || ends_with(".ckpt"))
    return load_pth(file_or_dir);
  throw checkpoint_error(
      "offload.checkpoint.format",
      fmt::format("cannot tell the format of '{}' from its name; expected *.safetensors, "
                  "*.safetensors.index.json, *.pth/*.pt/*.bin/*.ckpt (torch.save zip) or a "
                  "directory of diffusion_pytorch_model*.safetensors",
                  file_or_dir.string()));
}

/// Explicit, named opt-outs for load_state. An entry `p` matches key `k` when `k == p`, or when
/// `k` starts with `p` followed by '.', or (for `p` ending in '.') when `k` starts with `p`.
struct load_options {
  /// Checkpoint keys (or dotted prefixes) that may be present without a module tensor.
  std::vector<std::string> ignore_unexpected_prefixes;
  /// Module tensors (or dotted prefixes) that may be absent from the checkpoint; they keep
  /// their current values.
  std::vector<std::string> ignore_missing_prefixes;
  /// Names listed per category in the error before "... and N more".
  std::size_t max_listed = 20;
  /// Where the state_dict came from, quoted in the error (load_state(module, path) sets it).
  std::string source;
};

namespace detail {

inline bool key_matches(std::string_view key, std::string_view p) {
  if (p.empty()) return false;
  if (key.size() < p.size() || key.compare(0, p.size(), p) != 0) return false;
  return key.size() == p.size() || p.back() == '.' || key[p.size()] == '.';
}

inline bool key_matches_any(std::string_view key, const std::vector<std::string>& prefixes) {
  return std::any_of(prefixes.begin(), prefixes.end(),
                     [&](const std::string& p) { return key_matches(key, p); });
}

enum class dtype_family { floating, integral, boolean, complex, other };

inline dtype_family family_of(c10::ScalarType t) {
  if (t == c10::ScalarType::Bool) return dtype_family::boolean;
  if (c10::isComplexType(t)) return dtype_family::complex;
  if (c10::isFloatingType(t)) return dtype_family::floating;
  if (c10::isIntegralType(t, /*includeBool=*/false)) return dtype_family::integral;
  return dtype_family::other;
}

inline std::string shape_string(c10::IntArrayRef s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

inline void append_category(std::string& msg, std::size_t max_listed, const char* title,
                            const std::vector<std::string>& items) {
  if (items.empty()) return;
  msg += fmt::format("\n  {} {}:", items.size(), title);
  const std::size_t shown = std::min(items.size(), max_listed);
  for (std::size_t i = 0; i < shown; ++i) msg += fmt::format("\n    {}", items[i]);
  if (items.size() > shown) msg += fmt::format("\n    ... and {} more", items.size() - shown);
}

} // namespace detail

/// Copies `sd` into the parameters and buffers of `m` (recursively, dotted names), strictly:
/// see the file comment. Throws offload::checkpoint_error (`offload.checkpoint.state_mismatch`)
/// before modifying anything when keys or shapes disagree.
inline void load_state(torch::nn::Module& m, const state_dict& sd, const load_options& opts = {}) {
  std::map<std::string, at::Tensor, std::less<>> targets;
  for (const auto& item : m.named_parameters(/*recurse=*/true)) targets.emplace(item.key(), item.value());
  for (const auto& item : m.named_buffers(/*recurse=*/true)) targets.emplace(item.key(), item.value());

  std::vector<std::string> missing, unexpected, shapes, dtypes;
  for (const auto& [name, t] : targets) {
    auto it = sd.find(name);
    if (it == sd.end()) {
      if (!detail::key_matches_any(name, opts.ignore_missing_prefixes))
        missing.push_back(fmt::format("'{}' {} {}", name, detail::shape_string(t.sizes()),
                                      c10::toString(t.scalar_type())));
      continue;
    }
    const at::Tensor& src = it->second;
    if (!src.defined()) {
      shapes.push_back(fmt::format("'{}': checkpoint tensor is undefined", name));
      continue;
    }
    if (src.sizes() != t.sizes())
      shapes.push_back(fmt::format("'{}': module expects {}, checkpoint has {}", name,
                                   detail::shape_string(t.sizes()), detail::shape_string(src.sizes())));
    if (detail::family_of(src.scalar_type()) != detail::family_of(t.scalar_type()))
      dtypes.push_back(fmt::format("'{}': module tensor is {}, checkpoint has {} (no implicit "
                                   "cross-kind conversion)",
                                   name, c10::toString(t.scalar_type()),
                                   c10::toString(src.scalar_type())));
  }
  for (const auto& [name, src] : sd)
    if (targets.find(name) == targets.end() &&
        !detail::key_matches_any(name, opts.ignore_unexpected_prefixes))
      unexpected.push_back(src.defined() ? fmt::format("'{}' {} {}", name,
                                                       detail::shape_string(src.sizes()),
                                                       c10::toString(src.scalar_type()))
                                         : fmt::format("'{}' (undefined)", name));

  if (!missing.empty() || !unexpected.empty() || !shapes.empty() || !dtypes.empty()) {
    std::string msg = fmt::format(
        "checkpoint{} does not match module '{}' ({} module tensors, {} checkpoint tensors):",
        opts.source.empty() ? std::string{} : fmt::format(" '{}'", opts.source), m.name(),
        targets.size(), sd.size());
    detail::append_category(msg, opts.max_listed, "missing key(s) (in the module, not in the checkpoint)", missing);
    detail::append_category(msg, opts.max_listed, "unexpected key(s) (in the checkpoint, not in the module)", unexpected);
    detail::append_category(msg, opts.max_listed, "shape mismatch(es)", shapes);
    detail::append_category(msg, opts.max_listed, "dtype mismatch(es)", dtypes);
    msg += "\n  check that the model config (dims, layer counts, variant) matches the checkpoint; "
           "to skip keys deliberately pass load_options{.ignore_unexpected_prefixes = {...}} or "
           ".ignore_missing_prefixes";
    throw checkpoint_error("offload.checkpoint.state_mismatch", msg);
  }

  c10::NoGradGuard no_grad;
  for (const auto& [name, t] : targets) {
    auto it = sd.find(name);
    if (it == sd.end()) continue;
    at::Tensor t_mut = t; // handles share the module's storage
    t_mut.copy_(it->second.to(t.scalar_type()));
  }
}

/// load_state(m, load_checkpoint(file), opts), with the file named in errors.
inline void load_state(torch::nn::Module& m, const std::filesystem::path& file,
                       load_options opts = {}) {
  if (opts.source.empty()) opts.source = file.string();
  load_state(m, load_checkpoint(file), opts);
}

} // namespace offload
