#pragma once
/// \file
/// wan_bench's models: the components of a Wan task with random weights and no checkpoint, at the
/// task's real preset sizes or at a tiny scale with the same structure.
///
/// Real sizes are large (umT5-XXL's encoder alone has 5.7 billion parameters, the 14B DiT 14), and
/// LibTorch's default initialisation draws every number from one generator behind one lock, serially
/// (about 100 million numbers a second): minutes per model. While a `fast_init` is alive, the
/// `uniform_` and `normal_` calls of the modules' default initialisation on contiguous host tensors
/// fill them instead from a counter-based generator on every core (same bounds and moments; other
/// numbers); every other operation runs as usual.

#include "wan/components.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace wan_bench {

/// While alive, default initialisations on this thread draw from the fast parallel generator.
/// It works through a dispatcher mode key; when this LibTorch refuses the registration, it does
/// nothing and `active()` says so (the models are then built at LibTorch's speed).
class fast_init {
public:
  fast_init();
  ~fast_init();
  fast_init(const fast_init&) = delete;
  fast_init& operator=(const fast_init&) = delete;
  [[nodiscard]] bool active() const noexcept { return active_; }
  /// Why the mode is not available ("" when it is).
  [[nodiscard]] static std::string unavailable_reason();

private:
  bool active_ = false;
};

/// `real`: the task's preset configs; `tiny`: the same structure with small widths and few layers
/// (seconds on a CPU).
enum class model_scale { real, tiny };

/// What to build.
struct model_request {
  std::string task;            ///< a WAN_CONFIGS task: t2v-1.3B, t2v-14B, t2i-14B, i2v-14B
  model_scale scale = model_scale::real;
  wan::component_dtypes dtypes; ///< storage dtypes (component_dtypes::reference on CUDA)
};

/// The built components and what building them took.
struct built_models {
  std::shared_ptr<wan::WanComponents> components;
  std::int64_t t5_vocab = 0;     ///< prompt ids are drawn below it
  double seconds = 0;            ///< wall time of the construction
  bool fast_init = false;        ///< whether the fast generator filled the weights
};

/// "t2v" (t2v and t2i tasks) or "i2v"; throws offload::config_error for tasks wan_bench does not run
/// (flf2v, vace).
std::string pipeline_kind(const std::string& task);

/// Builds the DiT (WanModel of model_config(task)), the umT5-XXL encoder, the video VAE and, for
/// i2v, the CLIP visual tower, on the host, and wraps them with WanComponents::from_models.
built_models build_models(const model_request& request);

} // namespace wan_bench
