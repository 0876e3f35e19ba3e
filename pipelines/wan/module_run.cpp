// Runs one Wan component on named inputs (golden naming); see module_run.hpp.
#include "wan/module_run.hpp"

#include "wan/clip.hpp"
#include "wan/model.hpp"
#include "wan/t5.hpp"
#include "wan/vace_model.hpp"
#include "wan/vae.hpp"

#include <offload/errors.hpp>
#include <offload/safetensors.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <set>

namespace wan {

namespace {

constexpr const char* kNamingHint =
    "name the inputs as the golden case files do (tests/data/golden/README.md, 'tensor roles')";

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

int to_int(std::string_view s) {
  int v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

std::string shape_of(const torch::Tensor& t) {
  return fmt::format("{} [{}]", c10::toString(t.scalar_type()), fmt::join(t.sizes(), ", "));
}

/// The input tensors of one run, with the error reporting of module_run.
class input_set {
public:
  input_set(const offload::state_dict& sd, std::string_view source, module_kind module)
      : sd_(sd), source_(source), module_(module) {}

  [[nodiscard]] bool has(const std::string& name) const { return sd_.find(name) != sd_.end(); }

  /// The tensor `name` (a private CPU copy); throws naming it when absent.
  [[nodiscard]] torch::Tensor get(const std::string& name, std::string_view what) const {
    const auto it = sd_.find(name);
    if (it == sd_.end()) fail_missing(name, what);
    return it->second.to(torch::kCPU).clone();
  }

  /// get() and a check of the number of dimensions (and of size(0) when `dim0` > 0).
  [[nodiscard]] torch::Tensor get(const std::string& name, std::string_view what, int64_t dims,
                                  int64_t dim0 = 0) const {
    auto t = get(name, what);
    if (t.dim() != dims || (dim0 > 0 && t.size(0) != dim0))
      throw offload::config_error(
          "offload.wan.module_run.input_shape",
          fmt::format("module '{}': input tensor '{}' in {} expected {} ({}-D{}), found {}; {}",
                      to_string(module_), name, source_, what, dims,
                      dim0 > 0 ? fmt::format(", first dimension {}", dim0) : std::string(),
                      shape_of(t), kNamingHint));
    return t;
  }

  /// A scalar input as int64 / double.
  [[nodiscard]] int64_t get_int(const std::string& name, std::string_view what) const {
    return scalar(name, what).item<int64_t>();
  }
  [[nodiscard]] double get_double(const std::string& name, std::string_view what) const {
    return scalar(name, what).item<double>();
  }

  [[noreturn]] void fail_missing(const std::string& name, std::string_view what) const {
    throw offload::config_error(
        "offload.wan.module_run.missing_input",
        fmt::format("module '{}' needs input tensor '{}' ({}), not found in {} (it holds {}); {}",
                    to_string(module_), name, what, source_, listing(), kNamingHint));
  }

  /// The N of every `in.cN.*` name, sorted; `only` restricts to one (error when absent).
  [[nodiscard]] std::vector<int> sub_cases(std::optional<int> only, std::string_view example) const {
    std::set<int> found;
    for (const auto& [name, _] : sd_) {
      if (name.rfind("in.c", 0) != 0) continue;
      const auto dot = name.find('.', 4);
      if (dot == std::string::npos) continue;
      const std::string_view digits = std::string_view(name).substr(4, dot - 4);
      if (all_digits(digits)) found.insert(to_int(digits));
    }
    return select(found, only, fmt::format("in.cN.{}", example), "sub-case", "c");
  }

  /// The i of every `<prefix>i` name, sorted; `only` restricts to one (error when absent).
  [[nodiscard]] std::vector<int> indices(const std::string& prefix, std::optional<int> only) const {
    return select(index_set(prefix), only, prefix + "i", "index", "");
  }

  [[nodiscard]] std::set<int> index_set(const std::string& prefix) const {
    std::set<int> found;
    for (const auto& [name, _] : sd_) {
      if (name.rfind(prefix, 0) != 0) continue;
      const std::string_view rest = std::string_view(name).substr(prefix.size());
      if (all_digits(rest)) found.insert(to_int(rest));
    }
    return found;
  }

  [[nodiscard]] const std::string& source() const noexcept { return source_; }
  [[nodiscard]] module_kind module() const noexcept { return module_; }

private:
  const offload::state_dict& sd_;
  std::string source_;
  module_kind module_;

  [[nodiscard]] torch::Tensor scalar(const std::string& name, std::string_view what) const {
    auto t = get(name, what);
    if (t.numel() != 1)
      throw offload::config_error(
          "offload.wan.module_run.input_shape",
          fmt::format("module '{}': input tensor '{}' in {} expected a scalar ({}), found {}",
                      to_string(module_), name, source_, what, shape_of(t)));
    return t;
  }

  [[nodiscard]] std::string listing() const {
    if (sd_.empty()) return "no tensors";
    std::vector<std::string> names;
    for (const auto& [name, _] : sd_)
      if (names.size() < 8) names.push_back(name);
    return fmt::format("{} tensor{}: {}{}", sd_.size(), sd_.size() == 1 ? "" : "s",
                       fmt::join(names, ", "), sd_.size() > names.size() ? ", ..." : "");
  }

  [[nodiscard]] std::vector<int> select(const std::set<int>& found, std::optional<int> only,
                                        const std::string& pattern, std::string_view word,
                                        std::string_view label) const {
    if (found.empty())
      throw offload::config_error(
          "offload.wan.module_run.no_inputs",
          fmt::format("module '{}' found no input named '{}' in {} (it holds {}); {}",
                      to_string(module_), pattern, source_, listing(), kNamingHint));
    if (only) {
      if (found.count(*only) == 0)
        throw offload::config_error(
            "offload.wan.module_run.unknown_case",
            fmt::format("module '{}': {} has no {} {}{} (inputs '{}' exist for {}{}); pick one of "
                        "them or run every one",
                        to_string(module_), source_, word, label, *only, pattern, label,
                        fmt::join(found, fmt::format(", {}", label))));
      return {*only};
    }
    return {found.begin(), found.end()};
  }
};

torch::Tensor clone_cpu(const torch::Tensor& t) { return t.detach().to(torch::kCPU).contiguous().clone(); }

// ---- t5 -----------------------------------------------------------------------------------------

offload::state_dict run_t5(const module_run_options& o, const input_set& in) {
  offload::state_dict out;
  const auto cases = in.sub_cases(o.sub_case, "ids");
  std::optional<T5EncoderModel> enc;
  for (const int n : cases) {
    const auto p = fmt::format("in.c{}.", n);
    const auto ids = in.get(p + "ids", "int64 [B, L] token ids", 2);   // [B, L]
    const auto mask = in.get(p + "mask", "int64 [B, L] attention mask", 2);  // [B, L]
    if (mask.sizes() != ids.sizes())
      throw offload::config_error(
          "offload.wan.module_run.input_shape",
          fmt::format("module 't5': '{}mask' in {} expected the shape of '{}ids' {}, found {}", p,
                      in.source(), p, shape_of(ids), shape_of(mask)));
    // text_len only sizes the tokenizer, which is not used here
    if (!enc) enc.emplace(ids.size(1), o.dtype, torch::kCPU, o.checkpoint);
    const auto context = enc->model->forward(ids, mask);                       // [B, L, dim]
    out.emplace(fmt::format("out.c{}.context", n), clone_cpu(context));
    out.emplace(fmt::format("out.c{}.seq_lens", n), mask.gt(0).sum(1).to(torch::kLong));  // [B]
  }
  return out;
}

// ---- vae ----------------------------------------------------------------------------------------

offload::state_dict run_vae(const module_run_options& o, const input_set& in, bool encode) {
  if (o.dtype != torch::kFloat32)
    throw offload::config_error(
        "offload.wan.module_run.bad_dtype",
        fmt::format("module '{}': the VAE runs in float32 only, found dtype {} (the reference "
                    "keeps the VAE weights in float32 and its amp.autocast(dtype) is not ported, "
                    "see wan/vae.hpp); run it with float32",
                    to_string(in.module()), c10::toString(o.dtype)));
  offload::state_dict out;
  const std::string prefix = encode ? "in.video." : "in.z.";
  const auto indices = in.indices(prefix, o.sub_case);
  WanVAE vae(o.checkpoint, 16, torch::kFloat32, torch::kCPU);
  for (const int i : indices) {
    const auto name = fmt::format("{}{}", prefix, i);
    if (encode) {
      const auto video = in.get(name, "float32 [3, F, H, W] video in [-1, 1]", 4, 3);  // [3, F, H, W]
      const auto latent = vae.encode({video})[0];  // [16, T, H/8, W/8]
      out.emplace(fmt::format("out.latent.{}", i), clone_cpu(latent));
    } else {
      const auto z = in.get(name, "float32 [16, T, h, w] normalised latent", 4, vae.model->z_dim);
      // the golden decoded_raw: WanVAE_.decode before the wrapper's clamp
      const auto raw = vae.model->decode(z.unsqueeze(0), vae.scale())[0];  // [3, F, H, W]
      out.emplace(fmt::format("out.decoded_raw.{}", i), clone_cpu(raw));
    }
  }
  return out;
}

// ---- dit / vace ---------------------------------------------------------------------------------

struct dit_inputs {
  std::vector<torch::Tensor> x, context, y, vace_context;
  torch::Tensor t, clip_fea;
  int64_t seq_len = 0;
  double vace_context_scale = 1.0;
};

dit_inputs read_dit_inputs(const input_set& in, int n, const WanModelConfig& cfg, bool vace) {
  const auto p = fmt::format("in.c{}.", n);
  dit_inputs d;
  for (int b = 0; b == 0 || in.has(fmt::format("{}x.{}", p, b)); ++b) {
    d.x.push_back(in.get(fmt::format("{}x.{}", p, b), "float32 [in_dim, F, H, W] noisy latent", 4));
    d.context.push_back(
        in.get(fmt::format("{}context.{}", p, b), "float32 [L, text_dim] text embeddings", 2));
  }
  const auto batch = static_cast<int64_t>(d.x.size());
  d.t = in.get(p + "t", "int64 [B] timesteps", 1);
  if (d.t.size(0) != batch)
    throw offload::config_error(
        "offload.wan.module_run.input_shape",
        fmt::format("module '{}': '{}t' in {} expected {} timesteps (one per '{}x.b'), found {}",
                    to_string(in.module()), p, in.source(), batch, p, shape_of(d.t)));
  d.seq_len = in.get_int(p + "seq_len", "int64 scalar, padded token length");

  const bool image = cfg.model_type == "i2v" || cfg.model_type == "flf2v";
  if (image) {
    d.clip_fea = in.get(p + "clip_fea", "float32 [B, 257, clip_dim] CLIP features", 3);
    for (int64_t b = 0; b < batch; ++b)
      d.y.push_back(in.get(fmt::format("{}y.{}", p, b),
                           "float32 [20, F, H, W] mask + image-latent channels", 4));
  } else {
    for (const auto& name : {p + "clip_fea", p + "y.0"})
      if (in.has(name))
        throw offload::config_error(
            "offload.wan.module_run.unexpected_input",
            fmt::format("module '{}': {} holds '{}' but the checkpoint is a '{}' model (config.json "
                        "model_type), which takes no image conditioning; use an i2v/flf2v "
                        "checkpoint or drop the tensor",
                        to_string(in.module()), in.source(), name, cfg.model_type));
  }
  if (vace) {
    for (int64_t b = 0; b < batch; ++b)
      d.vace_context.push_back(in.get(fmt::format("{}vace_context.{}", p, b),
                                      "float32 [vace_in_dim, F, H, W] VACE context", 4));
    if (in.has(p + "vace_context_scale"))
      d.vace_context_scale = in.get_double(p + "vace_context_scale", "float64 scalar");
  }
  return d;
}

/// config.json of a DiT checkpoint given as a directory or as a weights file inside one.
std::filesystem::path dit_directory(const std::filesystem::path& checkpoint) {
  return std::filesystem::is_directory(checkpoint) ? checkpoint : checkpoint.parent_path();
}

template <class Model>
Model load_dit(const module_run_options& o, const WanModelConfig& cfg) {
  const auto dir = dit_directory(o.checkpoint);
  Model model{nullptr};
  if (std::filesystem::is_directory(o.checkpoint)) {
    if constexpr (std::is_same_v<Model, VaceWanModel>) model = load_vace_wan_model(dir);
    else model = load_wan_model(dir);
  } else {
    model = Model(cfg);
    offload::load_options opts;
    opts.source = o.checkpoint.string();
    offload::load_state(*model, offload::load_checkpoint(o.checkpoint), opts);
  }
  model->eval();
  if (o.dtype != torch::kFloat32) model->to(o.dtype);
  return model;
}

offload::state_dict run_dit(const module_run_options& o, const input_set& in, bool vace) {
  const auto dir = dit_directory(o.checkpoint);
  const auto cfg = from_config_json(dir / "config.json");
  if ((cfg.model_type == "vace") != vace)
    throw offload::config_error(
        "offload.wan.module_run.module_mismatch",
        fmt::format("module '{}': '{}' holds a {} (config.json model_type '{}'); run it as module "
                    "'{}'",
                    to_string(in.module()), (dir / "config.json").string(),
                    cfg.model_type == "vace" ? "VaceWanModel" : "WanModel", cfg.model_type,
                    cfg.model_type == "vace" ? "vace" : "dit"));
  const auto cases = in.sub_cases(o.sub_case, "x.0");

  offload::state_dict out;
  auto run = [&](auto model) {
    for (const int n : cases) {
      const auto d = read_dit_inputs(in, n, cfg, vace);
      const auto mid = fmt::format("c{}.mid.", n);
      if (o.record_intermediates)
        model->trace = [&](const std::string& name, const torch::Tensor& value) {
          out.insert_or_assign(mid + name, clone_cpu(value));
        };
      std::vector<torch::Tensor> result;
      if constexpr (std::is_same_v<decltype(model), VaceWanModel>)
        result = model->forward(d.x, d.t, d.vace_context, d.context, d.seq_len,
                                d.vace_context_scale, d.clip_fea, d.y);
      else
        result = model->forward(d.x, d.t, d.context, d.seq_len, d.clip_fea, d.y);
      model->trace = nullptr;
      for (size_t b = 0; b < result.size(); ++b)
        out.emplace(fmt::format("out.c{}.out.{}", n, b), clone_cpu(result[b]));  // [16, F, H, W]
      if (o.record_intermediates)
        out.insert_or_assign(mid + "freqs_first64",
                             clone_cpu(torch::view_as_real(model->freqs.slice(0, 0, 64))));
    }
  };
  if (vace) run(load_dit<VaceWanModel>(o, cfg));
  else run(load_dit<WanModel>(o, cfg));
  return out;
}

// ---- clip ---------------------------------------------------------------------------------------

offload::state_dict run_clip(const module_run_options& o, const input_set& in) {
  if (o.sub_case)
    throw offload::config_error(
        "offload.wan.module_run.no_sub_cases",
        fmt::format("module 'clip_visual' has no sub-cases (its inputs are in.image.i), found a "
                    "request for case {}; run without a case",
                    *o.sub_case));
  auto found = in.index_set("in.image.");
  found.merge(in.index_set("in.image_u8."));
  if (found.empty()) in.fail_missing("in.image.0", "float32 [3, H, W] image in [-1, 1]");
  for (const int i : found)
    if (i > 1)
      throw offload::config_error(
          "offload.wan.module_run.unexpected_input",
          fmt::format("module 'clip_visual': {} holds image {}, expected images 0 (i2v) and "
                      "optionally 1 (flf2v: first and last frame) only",
                      in.source(), i));
  auto image = [&](int i) -> torch::Tensor {
    const auto f = fmt::format("in.image.{}", i);
    if (in.has(f)) return in.get(f, "float32 [3, H, W] image in [-1, 1]", 3, 3);
    const auto u8 = fmt::format("in.image_u8.{}", i);
    if (!in.has(u8)) in.fail_missing(f, "float32 [3, H, W] image in [-1, 1], or in.image_u8.i");
    const auto hwc = in.get(u8, "uint8 [H, W, 3] RGB image", 3);  // [H, W, 3]
    if (hwc.size(2) != 3 || hwc.scalar_type() != torch::kUInt8)
      throw offload::config_error(
          "offload.wan.module_run.input_shape",
          fmt::format("module 'clip_visual': '{}' in {} expected uint8 [H, W, 3], found {}", u8,
                      in.source(), shape_of(hwc)));
    // TF.to_tensor(img).sub_(0.5).div_(0.5), as image2video.py
    return hwc.permute({2, 0, 1}).to(torch::kFloat32).div(255).sub_(0.5).div_(0.5);  // [3, H, W]
  };

  std::optional<CLIPConfig> cfg;
  if (o.vision_heads)
    cfg = CLIPConfig::infer_from_weights(offload::load_checkpoint(o.checkpoint), *o.vision_heads);
  CLIPModel clip(o.dtype, torch::kCPU, o.checkpoint, cfg);

  offload::state_dict out;
  const auto first = image(0).unsqueeze(1);  // [3, 1, H, W]
  out.emplace("out.features_i2v", clone_cpu(clip.visual({first})));  // [1, 257, dim]
  if (found.count(1))
    out.emplace("out.features_flf2v",
                clone_cpu(clip.visual({first, image(1).unsqueeze(1)})));  // [2, 257, dim]
  return out;
}

} // namespace

std::string_view to_string(module_kind kind) {
  switch (kind) {
    case module_kind::t5: return "t5";
    case module_kind::vae_encode: return "vae_encode";
    case module_kind::vae_decode: return "vae_decode";
    case module_kind::dit: return "dit";
    case module_kind::vace: return "vace";
    case module_kind::clip_visual: return "clip_visual";
  }
  return "?";
}

const std::vector<std::string>& module_kind_names() {
  static const std::vector<std::string> names = {"t5",  "vae_encode", "vae_decode",
                                                 "dit", "vace",       "clip_visual"};
  return names;
}

module_kind parse_module_kind(std::string_view text) {
  const auto& names = module_kind_names();
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == text) return static_cast<module_kind>(i);
  throw offload::config_error("offload.wan.module_run.bad_module",
                              fmt::format("unknown module '{}', expected one of {}", text,
                                          fmt::join(names, ", ")));
}

c10::ScalarType parse_module_dtype(std::string_view text) {
  if (text == "float32" || text == "fp32") return torch::kFloat32;
  if (text == "bfloat16" || text == "bf16") return torch::kBFloat16;
  throw offload::config_error(
      "offload.wan.module_run.bad_dtype",
      fmt::format("unknown dtype '{}', expected 'float32' or 'bfloat16'", text));
}

std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return "float32";
    case c10::ScalarType::Double: return "float64";
    case c10::ScalarType::Half: return "float16";
    case c10::ScalarType::BFloat16: return "bfloat16";
    case c10::ScalarType::Long: return "int64";
    case c10::ScalarType::Int: return "int32";
    case c10::ScalarType::Short: return "int16";
    case c10::ScalarType::Char: return "int8";
    case c10::ScalarType::Byte: return "uint8";
    case c10::ScalarType::Bool: return "bool";
    case c10::ScalarType::ComplexFloat: return "complex64";
    case c10::ScalarType::ComplexDouble: return "complex128";
    default: return c10::toString(t);
  }
}

int parse_case(std::string_view text) {
  std::string_view digits = text;
  if (!digits.empty() && digits.front() == 'c') digits.remove_prefix(1);
  if (!all_digits(digits) || digits.size() > 6)
    throw offload::config_error(
        "offload.wan.module_run.bad_case",
        fmt::format("invalid case '{}', expected 'cN' or 'N' (e.g. 'c0', the sub-case of the "
                    "inputs named in.c0.*)",
                    text));
  return to_int(digits);
}

offload::state_dict run_module(const module_run_options& o, const offload::state_dict& inputs,
                               std::string_view inputs_source) {
  if (o.dtype != torch::kFloat32 && o.dtype != torch::kBFloat16)
    throw offload::config_error(
        "offload.wan.module_run.bad_dtype",
        fmt::format("module '{}': dtype {} is not supported, expected float32 or bfloat16",
                    to_string(o.module), c10::toString(o.dtype)));
  if (o.checkpoint.empty() || !std::filesystem::exists(o.checkpoint))
    throw offload::config_error(
        "offload.wan.module_run.no_checkpoint",
        fmt::format("module '{}': checkpoint '{}' does not exist; pass the {}", to_string(o.module),
                    o.checkpoint.string(),
                    (o.module == module_kind::dit || o.module == module_kind::vace)
                        ? "model directory (config.json + diffusion_pytorch_model*.safetensors)"
                        : "checkpoint file"));
  const input_set in(inputs, inputs_source, o.module);
  torch::NoGradGuard no_grad;
  switch (o.module) {
    case module_kind::t5: return run_t5(o, in);
    case module_kind::vae_encode: return run_vae(o, in, /*encode=*/true);
    case module_kind::vae_decode: return run_vae(o, in, /*encode=*/false);
    case module_kind::dit: return run_dit(o, in, /*vace=*/false);
    case module_kind::vace: return run_dit(o, in, /*vace=*/true);
    case module_kind::clip_visual: return run_clip(o, in);
  }
  return {};
}

offload::state_dict run_module(const module_run_options& options,
                               const std::filesystem::path& inputs_file) {
  const offload::safetensors_file file(inputs_file);
  return run_module(options, file.load_all(), fmt::format("'{}'", inputs_file.string()));
}

} // namespace wan
