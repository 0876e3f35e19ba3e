// Definitions of wan/model_config.hpp (the DiT config and its config.json reader). Included by
// exactly one translation unit of a program: pipelines/wan/model.cpp in offload::wan, the fuzz
// target in tests/fuzz. Needs no LibTorch.
#include "wan/model_config.hpp"

#include <offload/errors.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <initializer_list>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>

namespace wan {

std::vector<int64_t> WanModelConfig::resolved_vace_layers() const {
  if (vace_layers) return *vace_layers;
  std::vector<int64_t> v;
  for (int64_t i = 0; i < num_layers; i += 2) v.push_back(i);
  return v;
}

void WanModelConfig::validate() const {
  auto fail = [](const std::string& what) {
    throw offload::config_error("offload.wan.config.invalid", what);
  };
  if (model_type != "t2v" && model_type != "i2v" && model_type != "flf2v" && model_type != "vace")
    fail(fmt::format("WanModelConfig.model_type must be one of t2v, i2v, flf2v, vace; found '{}'",
                     model_type));
  for (auto [name, value] : std::initializer_list<std::pair<const char*, int64_t>>{
           {"text_len", text_len}, {"in_dim", in_dim}, {"dim", dim},
                             {"ffn_dim", ffn_dim}, {"freq_dim", freq_dim}, {"text_dim", text_dim},
                             {"out_dim", out_dim}, {"num_heads", num_heads},
                             {"num_layers", num_layers}, {"clip_dim", clip_dim},
                             {"patch_size[0]", patch_size[0]}, {"patch_size[1]", patch_size[1]},
                             {"patch_size[2]", patch_size[2]}})
    if (value <= 0 && !(value == 0 && std::string_view(name) == "num_layers"))
      fail(fmt::format("WanModelConfig.{} must be positive, found {}", name, value));
  // Upper bounds far above any Wan model (dim 5120, ffn_dim 13824, 40 layers) that keep every size
  // computed from the config (parameter_count, the default vace_layers) inside int64. Found by the
  // fuzzer (tests/fuzz, target config): num_layers = 2^63-1 made the default vace_layers a vector
  // of 2^62 entries, and dim = 2^62 overflowed parameter_count.
  constexpr int64_t max_width = int64_t{1} << 20, max_layers = 4096, max_patch = 64;
  for (auto [name, value, limit] : std::initializer_list<std::tuple<const char*, int64_t, int64_t>>{
           {"text_len", text_len, max_width}, {"in_dim", in_dim, max_width}, {"dim", dim, max_width},
           {"ffn_dim", ffn_dim, max_width}, {"freq_dim", freq_dim, max_width},
           {"text_dim", text_dim, max_width}, {"out_dim", out_dim, max_width},
           {"num_heads", num_heads, max_width}, {"clip_dim", clip_dim, max_width},
           {"num_layers", num_layers, max_layers}, {"patch_size[0]", patch_size[0], max_patch},
           {"patch_size[1]", patch_size[1], max_patch}, {"patch_size[2]", patch_size[2], max_patch},
           {"vace_in_dim", resolved_vace_in_dim(), max_width}})
    if (value > limit)
      fail(fmt::format("WanModelConfig.{} must be at most {}, found {}; this is not the config of a "
                       "Wan model (check the file)",
                       name, limit, value));
  if (dim % num_heads != 0 || (dim / num_heads) % 2 != 0)
    fail(fmt::format("WanModelConfig: dim ({}) must be divisible by num_heads ({}) with an even "
                     "head_dim (the reference asserts it for the RoPE table)",
                     dim, num_heads));
  if (freq_dim % 2 != 0)
    fail(fmt::format("WanModelConfig.freq_dim must be even (sinusoidal embedding), found {}",
                     freq_dim));
  if (model_type == "vace") {
    const auto layers = resolved_vace_layers();
    if (std::find(layers.begin(), layers.end(), 0) == layers.end())
      fail(fmt::format("WanModelConfig.vace_layers must contain 0 (the reference asserts it); "
                       "found [{}]",
                       fmt::join(layers, ", ")));
    std::set<int64_t> seen;
    for (auto l : layers)
      if (l < 0 || l >= num_layers || !seen.insert(l).second)
        fail(fmt::format("WanModelConfig.vace_layers must be distinct indices in [0, {}); found "
                         "[{}]",
                         num_layers, fmt::join(layers, ", ")));
    if (resolved_vace_in_dim() <= 0)
      fail(fmt::format("WanModelConfig.vace_in_dim must be positive, found {}",
                       resolved_vace_in_dim()));
  }
}

WanModelConfig from_config_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in)
    throw offload::config_error(
        "offload.wan.config.unreadable",
        fmt::format("cannot open '{}'; expected the diffusers config.json next to "
                    "diffusion_pytorch_model*.safetensors",
                    path.string()));
  // A config.json is a flat object of WanModel arguments. Deeper nesting is refused while parsing:
  // found by the fuzzer (tests/fuzz, target config), a value nested 10^5 levels deep overflowed the
  // stack in nlohmann's recursive dump() of the type-error message.
  constexpr int max_depth = 16;
  const nlohmann::json::parser_callback_t limit_depth = [&](int depth, nlohmann::json::parse_event_t,
                                                            nlohmann::json&) {
    if (depth > max_depth)
      throw offload::config_error(
          "offload.wan.config.parse",
          fmt::format("'{}': JSON nested deeper than {} levels; expected a flat object of WanModel "
                      "arguments (the diffusers config.json)",
                      path.string(), max_depth));
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in, limit_depth);
  } catch (const nlohmann::json::exception& e) {
    throw offload::config_error("offload.wan.config.parse",
                                fmt::format("'{}' is not valid JSON: {}", path.string(), e.what()));
  }
  if (!j.is_object())
    throw offload::config_error("offload.wan.config.parse",
                                fmt::format("'{}': expected a JSON object at top level, found {}",
                                            path.string(), j.type_name()));
  WanModelConfig c;
  if (auto it = j.find("_class_name"); it != j.end() && it->is_string()) {
    const auto cls = it->get<std::string>();
    if (cls == "VaceWanModel")
      c.model_type = "vace"; // VaceWanModel's default model_type
    else if (cls != "WanModel")
      throw offload::config_error(
          "offload.wan.config.class",
          fmt::format("'{}': _class_name is '{}', expected WanModel or VaceWanModel", path.string(),
                      cls));
  }
  auto type_error = [&](const std::string& key, const char* expected, const nlohmann::json& v) {
    return offload::config_error("offload.wan.config.type",
                                 fmt::format("'{}': key '{}' must be {}, found {} ({})",
                                             path.string(), key, expected, v.type_name(), v.dump()));
  };
  auto get_int = [&](const std::string& key, const nlohmann::json& v) {
    if (!v.is_number_integer()) throw type_error(key, "an integer", v);
    return v.get<int64_t>();
  };
  auto get_bool = [&](const std::string& key, const nlohmann::json& v) {
    if (!v.is_boolean()) throw type_error(key, "a boolean", v);
    return v.get<bool>();
  };
  auto get_ints = [&](const std::string& key, const nlohmann::json& v, std::size_t n) {
    if (!v.is_array() || (n != 0 && v.size() != n))
      throw type_error(key, n == 3 ? "an array of 3 integers" : "an array of integers", v);
    std::vector<int64_t> out;
    for (const auto& e : v) out.push_back(get_int(key, e));
    return out;
  };
  std::vector<std::string> unknown;
  for (const auto& [key, v] : j.items()) {
    if (!key.empty() && key[0] == '_') continue; // _class_name, _diffusers_version, ...
    if (key == "model_type") {
      if (!v.is_string()) throw type_error(key, "a string", v);
      c.model_type = v.get<std::string>();
    } else if (key == "patch_size") {
      auto p = get_ints(key, v, 3);
      c.patch_size = {p[0], p[1], p[2]};
    } else if (key == "window_size") {
      auto w = get_ints(key, v, 2);
      c.window_size = {w[0], w[1]};
    } else if (key == "text_len") c.text_len = get_int(key, v);
    else if (key == "in_dim") c.in_dim = get_int(key, v);
    else if (key == "dim") c.dim = get_int(key, v);
    else if (key == "ffn_dim") c.ffn_dim = get_int(key, v);
    else if (key == "freq_dim") c.freq_dim = get_int(key, v);
    else if (key == "text_dim") c.text_dim = get_int(key, v);
    else if (key == "out_dim") c.out_dim = get_int(key, v);
    else if (key == "num_heads") c.num_heads = get_int(key, v);
    else if (key == "num_layers") c.num_layers = get_int(key, v);
    else if (key == "clip_dim") c.clip_dim = get_int(key, v);
    else if (key == "qk_norm") c.qk_norm = get_bool(key, v);
    else if (key == "cross_attn_norm") c.cross_attn_norm = get_bool(key, v);
    else if (key == "eps") {
      if (!v.is_number()) throw type_error(key, "a number", v);
      c.eps = v.get<double>();
    } else if (key == "vace_layers") {
      if (!v.is_null()) c.vace_layers = get_ints(key, v, 0);
    } else if (key == "vace_in_dim") {
      if (!v.is_null()) c.vace_in_dim = get_int(key, v);
    } else
      unknown.push_back(key);
  }
  if (!unknown.empty())
    throw offload::config_error(
        "offload.wan.config.unknown_keys",
        fmt::format("'{}': unknown keys [{}]; expected WanModel / VaceWanModel __init__ arguments "
                    "(keys starting with '_' are ignored)",
                    path.string(), fmt::join(unknown, ", ")));
  c.validate();
  return c;
}

std::vector<DitTensor> dit_tensors(const WanModelConfig& cfg) {
  cfg.validate();
  const int64_t d = cfg.dim;
  const int64_t p = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2];
  std::vector<DitTensor> n;
  // A Linear / Conv3d: weight and bias; matmul ones are what the storage rule converts.
  auto lin = [&](int64_t in, int64_t out, bool matmul = true) {
    n.push_back({in * out, matmul});
    n.push_back({out, matmul});
  };
  auto other = [&](int64_t count) { n.push_back({count, false}); }; // one norm weight or bias, modulation, emb_pos
  auto attn = [&] {
    for (int i = 0; i < 4; ++i) lin(d, d);                          // q, k, v, o
    if (cfg.qk_norm) other(d), other(d);                            // norm_q, norm_k
  };
  auto block = [&](bool i2v) {
    attn();                                                         // self_attn
    if (cfg.cross_attn_norm) other(d), other(d);                    // norm3
    attn();                                                         // cross_attn
    if (i2v) {
      lin(d, d), lin(d, d);                                         // k_img, v_img
      if (cfg.qk_norm) other(d);                                    // norm_k_img
    }
    lin(d, cfg.ffn_dim), lin(cfg.ffn_dim, d);                       // ffn
    other(6 * d);                                                   // modulation [1, 6, dim]
  };
  lin(cfg.in_dim * p, d);                                           // patch_embedding (Conv3d)
  lin(cfg.text_dim, d), lin(d, d);                                  // text_embedding
  lin(cfg.freq_dim, d, false), lin(d, d, false);                    // time_embedding
  lin(d, 6 * d, false);                                             // time_projection
  lin(d, p * cfg.out_dim, false), other(2 * d);                     // head (head.head, modulation [1, 2, dim])
  if (cfg.model_type == "vace") {
    const auto layers = cfg.resolved_vace_layers();
    for (int64_t i = 0; i < cfg.num_layers; ++i) block(false);      // blocks (t2v cross-attn)
    for (std::size_t i = 0; i < layers.size(); ++i) block(false), lin(d, d); // vace_blocks + after_proj
    lin(d, d);                                                      // vace_blocks.0.before_proj
    lin(cfg.resolved_vace_in_dim() * p, d);                         // vace_patch_embedding (Conv3d)
  } else {
    const bool i2v = cfg.model_type != "t2v";
    for (int64_t i = 0; i < cfg.num_layers; ++i) block(i2v);
    if (i2v) {
      const int64_t c = cfg.clip_dim;
      other(c), other(c), lin(c, c), lin(c, d), other(d), other(d); // img_emb.proj (LN, Linear, GELU, Linear, LN)
      if (cfg.model_type == "flf2v") other(FIRST_LAST_FRAME_CONTEXT_TOKEN_NUMBER * c); // emb_pos
    }
  }
  return n;
}

DitParameterCounts parameter_counts(const WanModelConfig& cfg) {
  DitParameterCounts n;
  for (const auto& t : dit_tensors(cfg)) {
    n.total += t.numel;
    if (t.matmul) n.matmul += t.numel;
  }
  return n;
}

int64_t parameter_count(const WanModelConfig& cfg) { return parameter_counts(cfg).total; }

} // namespace wan
