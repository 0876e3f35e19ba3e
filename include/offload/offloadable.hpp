#pragma once
/// \file
/// `offloadable<M>`: a LibTorch module wrapped as a placeable component that knows every tensor it
/// owns — parameters, buffers and declared auxiliary tensors — and moves them all in one call.
///
/// A thin typed facade: discovery and forwarding only; the registry (tensor_registry.hpp) does the
/// work without depending on M.
///
/// **Example**
/// \code
/// wan::WanVAE vae = ...;                                   // wrapper with mean/std beside the module
/// offload::offloadable vae_c("vae", vae.model);
/// vae_c.register_aux("mean", vae.mean).register_aux("std", vae.std);
/// vae_c.place_on(gpu);                                     // model + mean + std
/// \endcode

#include <offload/component.hpp>
#include <offload/concepts.hpp>
#include <offload/compat.hpp>
#include <offload/tensor_registry.hpp>

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace offload {

namespace detail {
/// Where pinned memory comes from for offloadable::use_pinned_memory.
struct pinned_memory_source {
  tensor_registry::host_allocator allocate;
  tensor_registry::cache_release release;
};
/// When set, use_pinned_memory takes pinned memory from here instead of LibTorch's allocator, also
/// on a machine without CUDA: testing::scoped_pinned_memory sets it to a stand-in
/// (testing::caching_host_allocator), so that CPU tests run the executor and the pipelines on
/// packed masters as a CUDA build does. One per process; set it around single-threaded code.
inline std::optional<pinned_memory_source>& pinned_memory_override() {
  static std::optional<pinned_memory_source> source;
  return source;
}
} // namespace detail

/// Options of an offloadable component.
struct offloadable_options {
  /// Storage dtype: converts floating weights (and aux declared dtype_rule::follow) on wrapping.
  std::optional<c10::ScalarType> dtype;
};

/// Primary template: reached only when M is not a module handle.
template <class M>
class offloadable {
  static_assert(detail::dependent_false<M>,
                "offload::offloadable<M>: M must be a torch::nn::ModuleHolder (a TORCH_MODULE type "
                "such as torch::nn::Linear) or std::shared_ptr<T> with T derived from "
                "torch::nn::Module");
};

template <class M>
  requires OffloadableModule<M>
class offloadable<M> final : public component {
public:
  /// Wraps `module` (which must be on the host) under `name` and discovers its tensors.
  offloadable(std::string name, M module, offloadable_options options = {})
      : name_(std::move(name)), registry_(name_), module_(std::move(module)) {
    registry_.discover(*detail::module_pointer(module_));
    if (options.dtype) registry_.convert(*options.dtype);
  }

  /// Declares an auxiliary tensor (see tensor_registry::add_aux). Chainable.
  offloadable& register_aux(std::string aux_name, at::Tensor& slot, dtype_rule rule = dtype_rule::follow,
                            mutability mut = mutability::immutable) {
    registry_.add_aux(std::move(aux_name), slot, rule, mut);
    return *this;
  }

  [[nodiscard]] M& module() noexcept { return module_; }
  [[nodiscard]] const M& module() const noexcept { return module_; }
  [[nodiscard]] tensor_registry& tensors() noexcept { return registry_; }
  [[nodiscard]] const tensor_registry& tensors() const noexcept { return registry_; }

  /// Converts the component's storage dtype (see tensor_registry::convert).
  void convert(c10::ScalarType dtype) { registry_.convert(dtype); }

  [[nodiscard]] const std::string& name() const override { return name_; }
  [[nodiscard]] std::int64_t bytes() const override { return registry_.bytes(); }
  [[nodiscard]] device_id location() const override { return registry_.location(); }
  void place_on(device& target) override { registry_.place_on(target); }
  void prefetch_onto(device& target) override { registry_.place_on_async(target); }
  void finish_placement() override { registry_.finish_placement(); }
  void audit(device_id expected, const stage_context& where) const override {
    registry_.audit(expected, where);
  }
  /// Pins the host masters when LibTorch has CUDA, packed into power-of-two chunks
  /// (tensor_registry::set_pinned), and returns the chunks it lets go of to the system where
  /// LibTorch allows (detail::release_cached_pinned_memory); on a CPU-only build the flag is
  /// recorded (mock devices then charge pinned bandwidth), unless a test set
  /// detail::pinned_memory_override. A component flagged pinned without chunks is packed once
  /// there is memory to pin.
  void use_pinned_memory(bool pinned) override {
    const auto& source = detail::pinned_memory_override();
    const bool real = source.has_value() || detail::cuda_available();
    const std::int64_t chunks = registry_.pinned_host_bytes();
    if (pinned == registry_.pinned() &&
        (pinned ? !real || chunks > 0 || registry_.bytes() == 0 : chunks == 0))
      return;
    if (source) return registry_.set_pinned(pinned, source->allocate, source->release);
    if (!real) return registry_.set_pinned(pinned);
    tensor_registry::cache_release release;
    if (detail::can_release_cached_pinned_memory()) release = detail::release_cached_pinned_memory;
    registry_.set_pinned(pinned, detail::pinned_host_bytes, std::move(release));
  }
  /// Declares the module's block list (`blocks.<i>.*`), which policies may then stream. Chainable.
  offloadable& declare_blocks(const std::string& prefix, int count) {
    registry_.set_blocks(prefix, count);
    return *this;
  }
  /// Declares the block list in execution order, each block named by its module path
  /// (`{"vace_blocks.0", "blocks.0", "blocks.1", "vace_blocks.1", ...}`): one list may interleave
  /// several module lists as the forward runs them. Chainable.
  offloadable& declare_blocks(const std::vector<std::string>& block_paths) {
    registry_.set_blocks(block_paths);
    return *this;
  }
  /// Keeps the tensors under `prefix` (a lookup table such as `token_embedding`) on the host while
  /// the component streams its blocks; the module's forward gathers from the table where it is and
  /// moves the rows. See tensor_registry::keep_on_host_while_streaming. Chainable.
  offloadable& keep_on_host_while_streaming(std::string_view prefix) {
    registry_.keep_on_host_while_streaming(prefix);
    return *this;
  }
  [[nodiscard]] std::optional<block_layout> blocks() const override { return registry_.blocks(); }
  void set_streaming(stream_options options) override { registry_.set_streaming(options); }
  /// The block stream the module's forward uses (offload::block_use), or nullptr.
  [[nodiscard]] block_stream* stream() noexcept { return registry_.stream(); }

  /// Declares which tensors a policy's `store=bf16|fp16` converts (paths without the component
  /// prefix, e.g. `blocks.0.ffn.0.weight`); see storage.hpp. `exact`: the dtypes in which the
  /// module's forward computes the same bits on the accelerator (it casts those tensors to that
  /// dtype per op there anyway), which the budget planner may choose. Chainable.
  offloadable& declare_storage_rule(std::function<bool(std::string_view path)> selects,
                                    std::vector<storage_dtype> exact = {}) {
    registry_.set_storage_rule(std::move(selects), std::move(exact));
    return *this;
  }
  [[nodiscard]] std::vector<stored_size> storage_sizes() const override { return registry_.stored_sizes(); }
  /// Host bytes its masters take once pinned, packed into power-of-two chunks.
  [[nodiscard]] std::int64_t pinned_bytes() const override {
    return registry_.pinned_bytes_as(storage_dtype::native);
  }
  [[nodiscard]] std::int64_t pinned_host_bytes() const override { return registry_.pinned_host_bytes(); }
  void set_storage(storage_dtype dtype) override { registry_.set_storage(dtype); }

  /// Declares that the module runs tiled when a policy asks (`:tile=N:overlap=M`); the module's
  /// caller reads tiling() and tiles its work. Chainable.
  offloadable& declare_tileable() {
    tileable_ = true;
    return *this;
  }
  [[nodiscard]] bool tileable() const override { return tileable_; }
  void set_tiling(tile_options options) override {
    if (!tileable_) component::set_tiling(options); // throws when enabled
    tiling_ = options;
  }
  [[nodiscard]] tile_options tiling() const override { return tiling_; }

private:
  std::string name_;
  tensor_registry registry_; // destroyed after module_: it can then free pinned chunks (~tensor_registry)
  M module_;
  bool tileable_ = false;
  tile_options tiling_{};
};

template <class M>
offloadable(std::string, M) -> offloadable<M>;
template <class M>
offloadable(std::string, M, offloadable_options) -> offloadable<M>;

} // namespace offload
