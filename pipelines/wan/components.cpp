// The offloadable components of the Wan pipelines (see components.hpp): loading in the official
// checkpoint layout (Wan-Video/Wan2.1@9737cba, the pipeline constructors in wan/text2video.py,
// image2video.py, first_last_frame2video.py, vace.py) and the offload run that places them.
#include "wan/components.hpp"

#include <torch/torch.h>

#include <offload/errors.hpp>
#include <offload/offloadable.hpp>
#include <offload/stage_scheduler.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <limits>
#include <random>

namespace wan {

namespace {

bool has_clip(std::string_view kind) { return kind == "i2v" || kind == "flf2v"; }

void check_kind(std::string_view kind) {
  if (kind != "t2v" && kind != "i2v" && kind != "flf2v" && kind != "vace")
    throw offload::config_error(
        "offload.wan.components.kind",
        fmt::format("unknown pipeline kind '{}'; expected t2v (also for t2i), i2v, flf2v or vace", kind));
}

void require_file(const std::filesystem::path& p, std::string_view what) {
  if (p.empty() || !std::filesystem::exists(p))
    throw offload::checkpoint_error(
        "offload.checkpoint.missing_file",
        fmt::format("{} not found: expected '{}'; download the checkpoint directory in the official "
                    "layout or set component_paths explicitly",
                    what, p.string()));
}

} // namespace

component_paths component_paths::official(const std::filesystem::path& checkpoint_dir,
                                          const configs::WanConfig& config) {
  component_paths p;
  p.t5_checkpoint = checkpoint_dir / config.t5_checkpoint;
  p.t5_tokenizer = checkpoint_dir / config.t5_tokenizer;
  p.vae_checkpoint = checkpoint_dir / config.vae_checkpoint;
  if (!config.clip_checkpoint.empty()) p.clip_checkpoint = checkpoint_dir / config.clip_checkpoint;
  p.dit_dir = checkpoint_dir;
  return p;
}

component_dtypes component_dtypes::reference(const configs::WanConfig& config) {
  component_dtypes d;
  d.t5 = config.t5_dtype;
  d.clip = config.clip_dtype.value_or(torch::kFloat16);
  d.dit = torch::kFloat32; // WanModel.from_pretrained keeps float32 storage (autocast computes bf16)
  d.vae = torch::kFloat32;
  return d;
}

WanComponents::~WanComponents() {
  // The DiT module may outlive its component (shared handle): forget the component's stream.
  if (model) model->block_stream = nullptr;
  if (text_encoder && text_encoder->model) text_encoder->model->block_stream = nullptr;
}

std::shared_ptr<WanComponents> WanComponents::load(std::string_view kind, const component_paths& paths,
                                                   const component_options& options) {
  const component_dtypes& dtypes = options.dtypes;
  check_kind(kind);
  require_file(paths.t5_checkpoint, "T5 checkpoint (models_t5_umt5-xxl-enc-bf16.pth)");
  require_file(paths.vae_checkpoint, "VAE checkpoint (Wan2.1_VAE.pth)");
  require_file(paths.dit_dir / "config.json", "DiT config (config.json)");
  if (has_clip(kind))
    require_file(paths.clip_checkpoint,
                 "CLIP checkpoint (models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)");

  std::shared_ptr<WanComponents> c(new WanComponents());
  c->kind = std::string(kind);

  // DiT first: its config.json gives T5's text_len.
  if (kind == "vace") {
    c->vace_model = load_vace_wan_model(paths.dit_dir, options.dit_matmul_storage);
    c->model = WanModel(std::static_pointer_cast<WanModelImpl>(c->vace_model.ptr()));
  } else {
    c->model = load_wan_model(paths.dit_dir, options.dit_matmul_storage);
    if (c->model->model_type != (kind == "t2v" ? std::string("t2v") : std::string(kind)))
      throw offload::config_error(
          "offload.wan.components.model_type",
          fmt::format("'{}' holds a '{}' DiT; the {} pipeline expects model_type '{}'",
                      (paths.dit_dir / "config.json").string(), c->model->model_type, kind, kind));
  }
  const bool tokenizer = !paths.t5_tokenizer.empty() && std::filesystem::exists(paths.t5_tokenizer);
  c->text_encoder = std::make_unique<T5EncoderModel>(c->model->text_len, dtypes.t5, torch::kCPU,
                                                     paths.t5_checkpoint,
                                                     tokenizer ? paths.t5_tokenizer : std::filesystem::path());
  c->vae = std::make_unique<WanVAE>(paths.vae_checkpoint, 16, dtypes.vae, torch::kCPU);
  if (has_clip(kind)) {
    // CLIPModel infers the config with the official 16 heads; other head counts need the weights
    // read once more here (tiny test models only).
    std::optional<CLIPConfig> clip_cfg;
    if (options.clip_vision_heads != 16)
      clip_cfg = CLIPConfig::infer_from_weights(offload::load_checkpoint(paths.clip_checkpoint),
                                                options.clip_vision_heads);
    c->clip = std::make_unique<CLIPModel>(dtypes.clip, torch::kCPU, paths.clip_checkpoint, clip_cfg);
  }
  c->wrap(options);
  return c;
}

std::shared_ptr<WanComponents> WanComponents::from_models(std::string_view kind, WanModel model,
                                                          std::unique_ptr<T5EncoderModel> text_encoder,
                                                          std::unique_ptr<WanVAE> vae,
                                                          std::unique_ptr<CLIPModel> clip,
                                                          const component_options& options) {
  check_kind(kind);
  const auto missing = [&](std::string_view what) {
    throw offload::config_error("offload.wan.components.missing_model",
                                fmt::format("WanComponents::from_models('{}'): expected {}, found none", kind, what));
  };
  if (!model) missing("a DiT");
  if (!text_encoder) missing("a T5 encoder");
  if (!vae) missing("a VAE");
  if (has_clip(kind) != static_cast<bool>(clip))
    throw offload::config_error(
        "offload.wan.components.missing_model",
        fmt::format("WanComponents::from_models('{}'): {} CLIP model expected, found {}", kind,
                    has_clip(kind) ? "a" : "no", clip ? "one" : "none"));
  std::shared_ptr<WanComponents> c(new WanComponents());
  c->kind = std::string(kind);
  if (kind == "vace") {
    c->vace_model = VaceWanModel(std::dynamic_pointer_cast<VaceWanModelImpl>(model.ptr()));
    if (!c->vace_model)
      throw offload::config_error("offload.wan.components.model_type",
                                  "WanComponents::from_models('vace'): expected a VaceWanModel, found a WanModel");
  }
  c->model = std::move(model);
  c->text_encoder = std::move(text_encoder);
  c->vae = std::move(vae);
  c->clip = std::move(clip);
  c->wrap(options);
  return c;
}

void WanComponents::wrap(const component_options& options) {
  const component_dtypes& dtypes = options.dtypes;
  model->eval();
  for (auto& p : model->parameters()) p.requires_grad_(false);

  // Components: every tensor each model owns, aux tensors declared.
  auto t5 = std::make_unique<offload::offloadable<T5Encoder>>(std::string(T5_COMPONENT), text_encoder->model);
  // T5's `blocks` can be streamed (t5=cuda:stream=K): T5Encoder::forward_branches uses them through
  // offload::block_use, for the prompt and the negative prompt together.
  t5->declare_blocks("blocks", static_cast<int>(text_encoder->model->blocks->size()));
  // Streamed, T5 keeps its token embedding (umT5-XXL: 2 GiB in bf16) on the host and gathers the
  // prompt's rows there (T5Encoder::forward_branches).
  t5->keep_on_host_while_streaming("token_embedding");
  text_encoder->model->block_stream = t5->stream();
  t5_component = std::move(t5);
  if (clip)
    clip_component = std::make_unique<offload::offloadable<XLMRobertaCLIP>>(std::string(CLIP_COMPONENT), clip->model);
  auto dit = std::make_unique<offload::offloadable<WanModel>>(
      std::string(DIT_COMPONENT), model,
      offload::offloadable_options{dtypes.dit == torch::kFloat32 ? std::nullopt
                                                                  : std::optional<c10::ScalarType>(dtypes.dit)});
  dit->register_aux("freqs", model->freqs, offload::dtype_rule::keep);
  // `dit=cuda:store=bf16`: the matmul weights in bf16, as autocast computes them (the same
  // selection as store_matmul_weights). Exact in the autocast dtype (dit_exact_storage): the
  // budget planner may choose it.
  std::vector<offload::storage_dtype> exact;
  if (dit_exact_storage() != offload::storage_dtype::native) exact.push_back(dit_exact_storage());
  dit->declare_storage_rule([paths = matmul_weight_paths(*model)](std::string_view path) {
    return paths.count(std::string(path)) > 0;
  }, std::move(exact));
  // The DiT's blocks can be streamed (dit=cuda:stream=K): WanModel::forward_branches uses them
  // through offload::block_use; VaceWanModel::forward_branches uses `vace_blocks` and `blocks`
  // interleaved, in its block_order().
  if (kind == "vace") dit->declare_blocks(vace_model->block_order());
  else dit->declare_blocks("blocks", static_cast<int>(model->num_layers));
  model->block_stream = dit->stream();
  dit_component = std::move(dit);
  auto vae_c = std::make_unique<offload::offloadable<WanVAE_>>(std::string(VAE_COMPONENT), vae->model);
  vae_c->register_aux("mean", vae->mean).register_aux("std", vae->std);
  vae_c->declare_tileable(); // `vae=cuda:tile=N`: the pipelines decode and encode through vae_tiling()
  vae_component = std::move(vae_c);
}

std::vector<offload::component*> WanComponents::components() const {
  std::vector<offload::component*> out{t5_component.get()};
  if (clip_component) out.push_back(clip_component.get());
  out.push_back(dit_component.get());
  out.push_back(vae_component.get());
  return out;
}

std::vector<offload::component_info> WanComponents::infos() const {
  std::vector<offload::component_info> out;
  for (auto* c : components()) out.push_back(offload::info_of(*c));
  return out;
}

offload::component& WanComponents::get(std::string_view name) const {
  for (auto* c : components())
    if (c->name() == name) return *c;
  throw offload::config_error("offload.config.unknown_component",
                              fmt::format("the {} pipeline has no component '{}'", kind, name));
}

std::int64_t WanComponents::text_len() const { return model->text_len; }

std::optional<VaeTiling> WanComponents::vae_tiling() const { return vae_tiling_of(vae_component->tiling()); }

std::optional<VaeTiling> vae_tiling_of(const offload::tile_options& tile) {
  if (!tile.enabled()) return std::nullopt;
  VaeTiling t = VaeTiling::square(tile.size, tile.overlap);
  t.validate();
  return t;
}

std::optional<VaeTiling> vae_tiling_of(const offload::placement_policy& policy) {
  return vae_tiling_of(policy.of(VAE_COMPONENT).tile);
}

std::optional<torch::Dtype> dit_matmul_storage_of(const offload::placement_policy& policy) {
  switch (policy.of(DIT_COMPONENT).store) {
    case offload::storage_dtype::bf16: return torch::kBFloat16;
    case offload::storage_dtype::fp16: return torch::kFloat16;
    case offload::storage_dtype::native: break;
  }
  return std::nullopt;
}

std::optional<torch::Dtype> dit_autocast(const execution& exec, const configs::WanConfig& config,
                                         torch::Device dit_device) {
  if (exec.autocast) return *exec.autocast == torch::kFloat32 ? std::nullopt : exec.autocast;
  if (dit_device.is_cuda()) return config.param_dtype;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// offload_run

offload_run::offload_run(const std::vector<offload::stage>& stages, const WanComponents& components,
                         const execution& exec, stage_observer observer)
    : observer_(std::move(observer)), on_finish_(exec.on_finish), before_stage_(exec.before_stage) {
  if (exec.devices == nullptr)
    throw offload::config_error("offload.config.no_devices",
                                "wan pipeline: execution.devices is null; pass the device_set that holds "
                                "the accelerator (offload::cuda_device or a testing mock)");
  offload::schedule_options opts;
  opts.accelerator = exec.accelerator;
  for (const auto* d : exec.devices->all())
    if (!d->id().is_host()) opts.devices.push_back({d->id(), d->capacity()});
  offload::plan p = offload::schedule(stages, components.infos(), exec.policy, opts);
  p.require_fit();
  executor_ = std::make_unique<offload::executor>(std::move(p), *exec.devices, components.components());
  try {
    executor_->start();
  } catch (...) {
    executor_->reset();
    throw;
  }
}

offload_run::~offload_run() {
  if (!finished_ && executor_) executor_->reset();
}

offload::stage_scope offload_run::enter(std::string_view stage) {
  if (before_stage_) before_stage_(stage);
  auto scope = executor_->enter(stage);
  repetition_ = current_ == stage ? repetition_ + 1 : 1;
  current_ = std::string(stage);
  if (observer_) observer_(stage, repetition_, *executor_);
  return scope;
}

torch::Device offload_run::device_of(std::string_view component) const {
  const auto& m = executor_->get_plan().execute_on;
  const auto it = m.find(std::string(component));
  if (it == m.end())
    throw offload::config_error("offload.config.unknown_component",
                                fmt::format("the plan has no component '{}'", component));
  return it->second.torch_device();
}

void offload_run::finish() {
  executor_->finish();
  if (on_finish_) on_finish_(*executor_);
  // Every run plans from an all-home start: components still on a device go home now.
  executor_->reset();
  finished_ = true;
}

// ---------------------------------------------------------------------------------------------
// helpers

namespace detail {

std::pair<torch::Tensor, torch::Tensor> pad_ids(const torch::Tensor& ids, std::int64_t text_len) {
  if (ids.dim() != 1 || ids.scalar_type() != torch::kLong)
    throw offload::config_error("offload.wan.prompt_ids",
                                fmt::format("prompt ids: expected int64 [n] (EOS included, no padding), "
                                            "found {} [{}]",
                                            c10::toString(ids.scalar_type()), fmt::join(ids.sizes(), ", ")));
  const std::int64_t n = std::min<std::int64_t>(ids.size(0), text_len);
  auto padded = torch::zeros({1, text_len}, torch::kLong); // [1, text_len]
  auto mask = torch::zeros({1, text_len}, torch::kLong);   // [1, text_len]
  padded[0].slice(0, 0, n).copy_(ids.slice(0, 0, n));
  mask[0].slice(0, 0, n).fill_(1);
  return {padded, mask};
}

std::vector<std::vector<torch::Tensor>> encode_prompts(T5EncoderModel& t5, const std::vector<prompt_source>& prompts,
                                                       torch::Device t5_device, torch::Device target) {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> inputs;
  for (const auto& p : prompts) {
    if (p.text) {
      inputs.push_back(t5.tokenize({*p.text}, t5_device));
    } else {
      auto [ids, mask] = pad_ids(p.ids, t5.text_len);
      inputs.emplace_back(ids.to(t5_device), mask.to(t5_device));
    }
  }
  auto out = t5.encode_branches(inputs);
  for (auto& ctx : out)
    for (auto& c : ctx) c = c.to(target); // [L, text_dim]
  return out;
}

torch::Tensor seeded_noise(at::IntArrayRef shape, std::int64_t seed) {
  auto gen = at::detail::createCPUGenerator(static_cast<std::uint64_t>(seed));
  return torch::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat32));
}

std::int64_t resolve_seed(std::int64_t seed) {
  if (seed >= 0) return seed;
  std::random_device rd;
  std::uniform_int_distribution<std::int64_t> dist(0, std::numeric_limits<std::int64_t>::max());
  return dist(rd);
}

void check_solver(std::string_view solver) {
  if (solver != "unipc" && solver != "dpm++")
    throw offload::config_error("offload.wan.solver",
                                fmt::format("unsupported sample_solver '{}'; expected 'unipc' or 'dpm++'", solver));
}

} // namespace detail

} // namespace wan
