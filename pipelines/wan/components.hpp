#pragma once
/// \file
/// The offloadable components of the Wan pipelines and the offload run that moves them.
///
/// Not a port of one reference file: the reference's pipeline constructors (WanT2V.__init__,
/// WanI2V.__init__, WanFLF2V.__init__, WanVace.__init__ in Wan-Video/Wan2.1@9737cba,
/// wan/{text2video,image2video,first_last_frame2video,vace}.py) load the same four models from a
/// checkpoint directory and then move them with `.to(device)` / `.cpu()` by hand. Here loading
/// happens on the host only, and every model is wrapped as an `offload::offloadable` (T5 `t5`,
/// CLIP visual tower `clip`, DiT `dit`, VAE `vae`) with its auxiliary tensors declared (the VAE's
/// latent `mean`/`std`, dtype_rule::follow; the DiT's complex RoPE `freqs`, dtype_rule::keep).
/// Placement is decided by a plan (offload::schedule) and applied by an offload::executor:
/// `offload_run` below is the small RAII helper every pipeline uses for that.
///
/// Deliberate deviations from the reference constructors:
///  * T5EncoderModel's text_len is the DiT's config.json `text_len` (512 for every released
///    checkpoint, equal to the config's text_len); the golden set's tiny DiTs use 32.
///  * The tokenizer folder (google/umt5-xxl) is optional: without spiece.model only the token-id
///    form of generate() is available.
///  * Storage dtypes are explicit (`component_dtypes`); the default is float32 everywhere (the
///    golden parity setting), `component_dtypes::reference(config)` gives the reference's (T5
///    bf16, CLIP fp16, DiT fp32 storage, VAE fp32).
///
/// **Example**
/// \code
/// auto comps = wan::WanComponents::load("t2v", wan::component_paths::official(dir, cfg));
/// offload::device_set devices;
/// devices.emplace<offload::cuda_device>(0);
/// wan::WanT2V pipe("t2v-1.3B", comps, devices, offload::device_id::cuda(0),
///                  offload::parse_policy("offload_model+vae_cpu"));
/// \endcode

#include "wan/clip.hpp"
#include "wan/configs/configs.hpp"
#include "wan/model.hpp"
#include "wan/stages.hpp"
#include "wan/t5.hpp"
#include "wan/vace_model.hpp"
#include "wan/vae.hpp"

#include <offload/component.hpp>
#include <offload/device.hpp>
#include <offload/executor.hpp>
#include <offload/placement_policy.hpp>
#include <offload/plan.hpp>
#include <offload/stage.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace wan {

/// Files of the four models. `official()` fills them from a checkpoint directory in the layout
/// the reference reads (config.t5_checkpoint, config.t5_tokenizer, config.vae_checkpoint,
/// config.clip_checkpoint, and config.json + diffusion_pytorch_model*.safetensors for the DiT).
struct component_paths {
  std::filesystem::path t5_checkpoint;
  std::filesystem::path t5_tokenizer;    ///< folder with spiece.model; empty or absent: ids only
  std::filesystem::path vae_checkpoint;
  std::filesystem::path clip_checkpoint; ///< i2v / flf2v only
  std::filesystem::path dit_dir;         ///< config.json + diffusion_pytorch_model*.safetensors

  static component_paths official(const std::filesystem::path& checkpoint_dir,
                                  const configs::WanConfig& config);
};

/// Storage dtype of each component on the host (and therefore on its device).
struct component_dtypes {
  torch::Dtype t5 = torch::kFloat32;
  torch::Dtype clip = torch::kFloat32;
  torch::Dtype dit = torch::kFloat32;
  torch::Dtype vae = torch::kFloat32;
  /// What the reference stores: t5_dtype (bf16), clip_dtype (fp16), DiT fp32, VAE fp32.
  static component_dtypes reference(const configs::WanConfig& config);
};

/// How to build the components beyond their files.
struct component_options {
  component_dtypes dtypes;
  /// CLIP's attention heads: the one hyper-parameter its weights do not hold (official: 16).
  int64_t clip_vision_heads = 16;
  /// load(): build and load the DiT with its matmul weights (its storage rule's tensors) in this
  /// dtype, bf16 or fp16, as a policy's `dit=...:store=bf16` stores them, converting the
  /// checkpoint's values as they are copied in (load_wan_model(dir, dtype)): the host never holds
  /// the float32 DiT, whose peak the plan's host memory does not count. The same bits as loading in
  /// float32 and converting. Unset: float32 (a `store` policy converts the masters later).
  /// dit_matmul_storage_of(policy) gives the one a policy asks for.
  std::optional<torch::Dtype> dit_matmul_storage;
};

/// The loaded models of one pipeline kind, each wrapped as an offloadable component.
/// Not copyable or movable: the components hold pointers to the members (aux tensor slots).
class WanComponents {
public:
  /// `kind`: "t2v" (also t2i), "i2v", "flf2v" or "vace". Loads every model on the host, strictly.
  static std::shared_ptr<WanComponents> load(std::string_view kind, const component_paths& paths,
                                             const component_options& options = {});
  /// Wraps models already built (random weights for benchmarks, models loaded elsewhere) exactly as
  /// load() wraps the ones it reads: `model` is a VaceWanModel for "vace"; `clip` is given for i2v
  /// and flf2v only. `options.dtypes.dit` converts the DiT as in load(); the other models keep the
  /// dtype they were built with. Throws offload::config_error naming what is missing.
  static std::shared_ptr<WanComponents> from_models(std::string_view kind, WanModel model,
                                                    std::unique_ptr<T5EncoderModel> text_encoder,
                                                    std::unique_ptr<WanVAE> vae,
                                                    std::unique_ptr<CLIPModel> clip = nullptr,
                                                    const component_options& options = {});

  WanComponents(const WanComponents&) = delete;
  WanComponents& operator=(const WanComponents&) = delete;
  ~WanComponents();

  std::string kind;
  std::unique_ptr<T5EncoderModel> text_encoder;
  std::unique_ptr<CLIPModel> clip; ///< i2v / flf2v only
  std::unique_ptr<WanVAE> vae;
  WanModel model{nullptr};             ///< the DiT (for vace: the VaceWanModel as its base)
  VaceWanModel vace_model{nullptr};    ///< vace only (the same module as `model`)

  std::unique_ptr<offload::component> t5_component;
  std::unique_ptr<offload::component> clip_component; ///< i2v / flf2v only
  std::unique_ptr<offload::component> dit_component;
  std::unique_ptr<offload::component> vae_component;

  /// The components of this kind, in the order t5, clip, dit, vae (those present).
  [[nodiscard]] std::vector<offload::component*> components() const;
  /// Their names and sizes (bytes of every tensor), for the scheduler.
  [[nodiscard]] std::vector<offload::component_info> infos() const;
  /// The component of that name; throws offload::config_error if this kind has none.
  [[nodiscard]] offload::component& get(std::string_view name) const;
  /// DiT text_len (config.json), used for T5 padding.
  [[nodiscard]] std::int64_t text_len() const;
  /// The VAE's tiling in force (the policy's `vae=...:tile=N:overlap=M`, set by the executor), or
  /// nullopt: the pipelines pass it to WanVAE::decode / encode.
  [[nodiscard]] std::optional<VaeTiling> vae_tiling() const;

private:
  WanComponents() = default;
  /// Wraps the models as offloadable components (load and from_models).
  void wrap(const component_options& options);
};

/// Called inside every stage scope, at each repetition (after the executor applied the stage's
/// actions and audited it): tests check resident sets, tools sample memory.
using stage_observer =
    std::function<void(std::string_view stage, int repetition, const offload::executor& ex)>;

/// Called once when a run finished: the last stage's scope is closed and the plan's last
/// after-actions are applied, so `ex.trace()` holds the whole run (before components go home).
using finish_observer = std::function<void(const offload::executor& ex)>;

/// Receives named intermediates of a generation (parity tests): `context.cond`, `noise`,
/// `timesteps`, `latents.i`, `noise_pred_cond.i`, `x0`, `video`, ... (see each pipeline).
using recorder = std::function<void(const std::string& name, const torch::Tensor& value)>;

/// How a pipeline runs: the devices, the accelerator `cuda`/`gpu` stands for in the policy (a real
/// cuda:N, or mock:N in tests), and the placement policy.
struct execution {
  offload::device_set* devices = nullptr;
  offload::device_id accelerator = offload::device_id::cuda(0);
  offload::placement_policy policy = offload::parse_policy("resident");
  /// Optional: told when each run finished (tools write the complete trace from it).
  finish_observer on_finish;
  /// Optional: told before each stage is entered, with its name: the previous stage's scope is
  /// closed and this one's actions are not applied yet (tools that sample memory per stage read
  /// and restart their peaks here).
  std::function<void(std::string_view stage)> before_stage;
  /// The DiT's autocast dtype (wan::autocast_guard around the denoising loop). Unset: the
  /// reference's — config.param_dtype (bf16) when the DiT executes on a CUDA device, none elsewhere
  /// (float32, the golden parity setting). kFloat32: none.
  std::optional<torch::Dtype> autocast;
};

/// The VaeTiling of tile options (nullopt when disabled): square tiles of `size` latent pixels
/// overlapping by `overlap`. Throws offload::config_error for an invalid tiling.
std::optional<VaeTiling> vae_tiling_of(const offload::tile_options& tile);
/// The VaeTiling a policy asks of the `vae` component; pipelines put it in their
/// generation_shape (vae_tiling) so the plan carries the tiled decode workspace.
std::optional<VaeTiling> vae_tiling_of(const offload::placement_policy& policy);
/// The dtype a policy stores the DiT's matmul weights in (`dit=...:store=bf16` -> kBFloat16,
/// `store=fp16` -> kFloat16), or nullopt (native): component_options::dit_matmul_storage.
std::optional<torch::Dtype> dit_matmul_storage_of(const offload::placement_policy& policy);

/// The dtype the DiT computes its matmuls in for `exec` (see execution::autocast), or nullopt.
std::optional<torch::Dtype> dit_autocast(const execution& exec, const configs::WanConfig& config,
                                         torch::Device dit_device);

/// One run of a pipeline through offload: plans the stages for the components and the policy,
/// throws capacity_error if the plan does not fit, and executes it. `enter()` is the only way a
/// pipeline reaches a stage. After finish(), and on destruction without it (an error), every
/// component is home.
class offload_run {
public:
  offload_run(const std::vector<offload::stage>& stages, const WanComponents& components,
              const execution& exec, stage_observer observer = {});
  offload_run(const offload_run&) = delete;
  offload_run& operator=(const offload_run&) = delete;
  ~offload_run();

  /// Enters `stage` (next stage or a repetition) and notifies the observer.
  [[nodiscard]] offload::stage_scope enter(std::string_view stage);
  /// The torch device where `component` executes (mock devices execute on the host).
  [[nodiscard]] torch::Device device_of(std::string_view component) const;
  /// Applies the last after-actions (every stage must have run), then returns every component
  /// still on a device to the host: each run plans from an all-home start.
  void finish();

  [[nodiscard]] const offload::plan& plan() const noexcept { return executor_->get_plan(); }
  [[nodiscard]] const offload::executor& executor() const noexcept { return *executor_; }

private:
  std::unique_ptr<offload::executor> executor_;
  stage_observer observer_;
  finish_observer on_finish_;
  std::function<void(std::string_view)> before_stage_;
  std::string current_;
  int repetition_ = 0;
  bool finished_ = false;
};

namespace detail {

/// Token ids of one prompt (int64 [n], EOS included, no padding) -> (ids, mask) int64 [1, text_len]
/// padded with 0, as the umT5 tokenizer returns them (truncated to text_len).
std::pair<torch::Tensor, torch::Tensor> pad_ids(const torch::Tensor& ids, std::int64_t text_len);

/// The prompt of a generation: text (tokenized by the T5 tokenizer) or token ids.
struct prompt_source {
  std::optional<std::string> text;
  torch::Tensor ids; ///< int64 [n] when !text
};

/// text_encoder([p]) for each prompt on the T5 execution device, through one block-major pass
/// (T5Encoder::forward_branches: a streamed T5 copies each block once for all of them); the
/// results moved to `target`. The same numbers as one call per prompt.
std::vector<std::vector<torch::Tensor>> encode_prompts(T5EncoderModel& t5, const std::vector<prompt_source>& prompts,
                                                       torch::Device t5_device, torch::Device target);

/// torch.Generator(cpu).manual_seed(seed) + torch.randn(shape, float32): the reference noise on
/// the CPU generator (deviation: the reference draws on the GPU's generator when it runs there).
torch::Tensor seeded_noise(at::IntArrayRef shape, std::int64_t seed);

/// seed if >= 0, else a random one (random.randint(0, sys.maxsize)).
std::int64_t resolve_seed(std::int64_t seed);

/// Throws config_error unless `solver` is 'unipc' or 'dpm++'.
void check_solver(std::string_view solver);

} // namespace detail

} // namespace wan
