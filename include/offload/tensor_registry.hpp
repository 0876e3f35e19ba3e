#pragma once
/// \file
/// Every tensor a component owns — parameters, buffers and declared auxiliary tensors — with its
/// host master, its current placement, and the rules it follows. Non-template core of
/// `offloadable<M>` (which only discovers the module's tensors and forwards here).
///
/// **Example**
/// \code
/// offload::tensor_registry reg("vae");
/// reg.discover(*vae_module);                                     // parameters + buffers
/// reg.add_aux("mean", wrapper.mean, offload::dtype_rule::follow); // moved with the module
/// reg.place_on(gpu);                                             // everything, in one call
/// reg.audit(gpu.id(), {"decode", "vae_cpu"});
/// reg.place_on(devices.host());                                  // evict: frees, copies nothing
/// \endcode

#include <offload/block_stream.hpp>
#include <offload/component.hpp>
#include <offload/device.hpp>
#include <offload/errors.hpp>
#include <offload/detail/pinned_arena.hpp>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace offload {

/// What kind of tensor an entry is.
enum class tensor_kind : std::uint8_t { parameter, buffer, auxiliary };

/// Whether a tensor changes dtype when its component does (`convert`). RoPE's complex table keeps it.
enum class dtype_rule : std::uint8_t { follow, keep };

/// Immutable tensors (weights) are never copied back on eviction; mutable ones (caches) are.
enum class mutability : std::uint8_t { immutable, mutable_ };

[[nodiscard]] inline std::string_view to_string(tensor_kind k) {
  switch (k) {
    case tensor_kind::parameter: return "parameter";
    case tensor_kind::buffer: return "buffer";
    case tensor_kind::auxiliary: return "auxiliary";
  }
  return "?";
}

template <class Os>
auto operator<<(Os& os, tensor_kind k) -> decltype(os << std::string_view()) {
  return os << to_string(k);
}

/// Where one tensor is: for listings and tests.
struct tensor_location {
  std::string path; ///< dotted, without the component prefix
  tensor_kind kind;
  device_id device; ///< logical device (mock:N for tensors placed on a mock)
  c10::ScalarType dtype;
  std::int64_t bytes;
};

class tensor_registry {
public:
  explicit tensor_registry(std::string component) : component_(std::move(component)) {}
  /// Really pinned, with a cache_release: the masters are dropped and the chunks nothing else
  /// holds go back to the system, not to the pinned allocator's cache.
  ~tensor_registry() {
    if (pinned_host_bytes() == 0 || !pin_release_) return;
    entries_.clear();
    stream_.reset();
    try {
      pin_release_();
    } catch (...) { // NOLINT(bugprone-empty-catch): a destructor must not throw; the memory stays cached
    }
  }
  tensor_registry(const tensor_registry&) = delete;
  tensor_registry& operator=(const tensor_registry&) = delete;

  [[nodiscard]] const std::string& component_name() const noexcept { return component_; }

  /// Registers every parameter and buffer of `m` (recursively, dotted names). Tensors shared under
  /// two names are registered once. The module must be on the host.
  void discover(torch::nn::Module& m) {
    for (auto& item : m.named_parameters(/*recurse=*/true))
      add_module_tensor(item.key(), item.value(), tensor_kind::parameter);
    for (auto& item : m.named_buffers(/*recurse=*/true))
      add_module_tensor(item.key(), item.value(), tensor_kind::buffer);
  }

  /// Declares an auxiliary tensor: a plain `torch::Tensor` member that `Module::to` never moves.
  /// It always follows the component's device; `rule` says whether it follows its dtype. `slot`
  /// must outlive the registry; the registry assigns to it when it moves.
  void add_aux(std::string name, at::Tensor& slot, dtype_rule rule = dtype_rule::follow,
               mutability mut = mutability::immutable) {
    require_home("declare an auxiliary tensor");
    if (!slot.defined())
      throw placement_error("offload.placement.undefined_aux",
                            fmt::format("auxiliary tensor '{}.{}' is undefined; create it before "
                                        "declaring it (declare in the owner's constructor)",
                                        component_, name));
    if (find(name))
      throw placement_error("offload.placement.duplicate_tensor",
                            fmt::format("tensor '{}.{}' is already registered; each name once",
                                        component_, name));
    require_on_host(name, slot);
    entry e;
    e.path = std::move(name);
    e.kind = tensor_kind::auxiliary;
    e.dtype = rule;
    e.mut = mut;
    e.slot = &slot;
    e.master = slot;
    entries_.push_back(std::move(e));
  }

  /// Marks the module tensors whose path starts with `prefix` as mutable (copied back on eviction).
  void set_mutable(std::string_view prefix) {
    bool any = false;
    for (auto& e : entries_)
      if (e.path.compare(0, prefix.size(), prefix) == 0) {
        if (e.block >= 0)
          throw config_error("offload.config.blocks",
                             fmt::format("tensor '{}.{}' is part of block {}; streamed blocks must be immutable",
                                         component_, e.path, e.block));
        e.mut = mutability::mutable_, any = true;
      }
    if (!any)
      throw placement_error("offload.placement.unknown_tensor",
                            fmt::format("no tensor of '{}' starts with '{}'", component_, prefix));
  }

  /// Declares the block list `prefix` (`blocks`): the tensors `prefix.<i>.*` form block i, for
  /// i in 0..count-1. Declared blocks can be streamed (set_streaming). At home only, once.
  void set_blocks(const std::string& prefix, int count) {
    if (count < 1)
      throw config_error("offload.config.blocks",
                         fmt::format("component '{}': a block list needs at least 1 block, found {}", component_, count));
    for (const auto& e : entries_) {
      const std::string& path = e.path;
      if (path.size() <= prefix.size() + 1 || path.compare(0, prefix.size(), prefix) != 0 ||
          path[prefix.size()] != '.')
        continue;
      const auto dot = path.find('.', prefix.size() + 1);
      const std::string num = path.substr(prefix.size() + 1, dot - prefix.size() - 1);
      if (num.empty() || num.size() > 6 || num.find_first_not_of("0123456789") != std::string::npos) continue;
      if (const int b = std::stoi(num); b >= count)
        throw config_error("offload.config.blocks",
                           fmt::format("component '{}': tensor '{}' belongs to block {}, but the list '{}' was "
                                       "declared with {} blocks; declare the right count",
                                       component_, path, b, prefix, count));
    }
    std::vector<std::string> prefixes;
    for (int b = 0; b < count; ++b) prefixes.push_back(fmt::format("{}.{}", prefix, b));
    set_blocks(prefixes);
  }

  /// Declares the block list in execution order: block k is every tensor under `prefixes[k]`
  /// (`vace_blocks.0`, `blocks.0`, `blocks.1`, `vace_blocks.1`, ...), so one list can interleave
  /// several module lists the way the forward runs them. Block streaming prefetches in this
  /// order. At home only, once.
  void set_blocks(const std::vector<std::string>& prefixes) {
    require_home("declare blocks");
    if (stream_)
      throw placement_error("offload.placement.duplicate_blocks",
                            fmt::format("component '{}' already declares a block list; declare it once", component_));
    if (prefixes.empty())
      throw config_error("offload.config.blocks",
                         fmt::format("component '{}': a block list needs at least 1 block, found none", component_));
    std::map<std::string, int, std::less<>> index;
    for (std::size_t k = 0; k < prefixes.size(); ++k)
      if (prefixes[k].empty() || !index.emplace(prefixes[k], static_cast<int>(k)).second)
        throw config_error("offload.config.blocks",
                           fmt::format("component '{}': block {} of the list is named '{}', expected a non-empty "
                                       "module path named once",
                                       component_, k, prefixes[k]));
    const auto count = static_cast<int>(prefixes.size());
    std::vector<std::vector<block_stream::tensor_ref>> blocks(prefixes.size());
    std::vector<int> owner(entries_.size(), -1);
    for (std::size_t idx = 0; idx < entries_.size(); ++idx) {
      const std::string& path = entries_[idx].path;
      // Every dotted prefix of the path that names a block (`blocks.3` of `blocks.3.ffn.0.weight`).
      for (auto dot = path.find('.'); dot != std::string::npos; dot = path.find('.', dot + 1)) {
        const auto it = index.find(std::string_view(path).substr(0, dot));
        if (it == index.end()) continue;
        if (owner[idx] >= 0)
          throw config_error("offload.config.blocks",
                             fmt::format("component '{}': tensor '{}' lies under blocks '{}' and '{}'; a tensor "
                                         "belongs to one block, so name blocks that do not nest",
                                         component_, path, prefixes[static_cast<std::size_t>(owner[idx])], it->first));
        owner[idx] = it->second;
      }
      if (owner[idx] < 0) continue;
      if (entries_[idx].host_table)
        throw config_error("offload.config.host_table",
                           fmt::format("component '{}': tensor '{}' is kept on the host while streaming, so it "
                                       "cannot belong to block '{}'; name blocks that leave the tables out",
                                       component_, path, prefixes[static_cast<std::size_t>(owner[idx])]));
      if (entries_[idx].mut == mutability::mutable_)
        throw config_error("offload.config.blocks",
                           fmt::format("component '{}': tensor '{}' is mutable; streamed blocks must be "
                                       "immutable (they are never copied back)",
                                       component_, path));
      blocks[static_cast<std::size_t>(owner[idx])].push_back(
          {path, [this, idx]() -> const at::Tensor& { return entries_[idx].master; },
           [this, idx](const at::Tensor& t) { entries_[idx].assign(t); }});
    }
    for (int b = 0; b < count; ++b)
      if (blocks[static_cast<std::size_t>(b)].empty())
        throw config_error("offload.config.blocks",
                           fmt::format("component '{}': block {} ('{}') has no tensor (expected '{}.*'); "
                                       "declare the right prefix and count",
                                       component_, b, prefixes[static_cast<std::size_t>(b)],
                                       prefixes[static_cast<std::size_t>(b)]));
    std::vector<int> position(prefixes.size(), 0);
    for (std::size_t idx = 0; idx < entries_.size(); ++idx)
      if (owner[idx] >= 0) {
        entries_[idx].block = owner[idx];
        entries_[idx].block_pos = position[static_cast<std::size_t>(owner[idx])]++;
      }
    stream_ = std::make_unique<block_stream>(component_, std::move(blocks));
  }

  /// Keeps the tensors under the module path `prefix` (`token_embedding`) on the host while the
  /// component streams its blocks: lookup tables the forward gathers from where they are, moving
  /// only the rows it gathered (a gather gives the same values on any device). Placed whole, the
  /// component moves them like any other tensor. At home; the tensors must lie outside the blocks.
  void keep_on_host_while_streaming(std::string_view prefix) {
    require_home("keep tensors on the host");
    bool any = false;
    for (auto& e : entries_) {
      if (!under(e.path, prefix)) continue;
      if (e.block >= 0)
        throw config_error("offload.config.host_table",
                           fmt::format("component '{}': tensor '{}' is part of block {}; a table kept on the host "
                                       "while streaming lies outside the block list",
                                       component_, e.path, e.block));
      e.host_table = true;
      any = true;
    }
    if (!any)
      throw placement_error("offload.placement.unknown_tensor",
                            fmt::format("component '{}' has no tensor under '{}' to keep on the host; name a module "
                                        "path such as 'token_embedding'",
                                        component_, prefix));
  }

  /// The declared block list's sizes, if any (host_bytes: the tables kept on the host while streaming).
  [[nodiscard]] std::optional<block_layout> blocks() const {
    if (!stream_) return std::nullopt;
    block_layout l = stream_->layout();
    for (const auto& e : entries_)
      if (e.host_table) l.host_bytes += static_cast<std::int64_t>(e.master.nbytes());
    return l;
  }

  /// Streams the declared blocks when placed (0 slots: the component moves as a whole). At home.
  void set_streaming(stream_options options) {
    require_home("change streaming");
    if (options.enabled() && !stream_)
      throw config_error("offload.config.not_streamable",
                         fmt::format("component '{}' declares no block list, so it cannot be streamed; "
                                     "declare one (set_blocks) or drop ':stream' from its policy",
                                     component_));
    if (stream_) stream_->configure(options);
  }
  [[nodiscard]] bool streaming() const noexcept { return stream_ && stream_->enabled(); }
  /// The block stream models call (block_use), or nullptr without a block list.
  [[nodiscard]] block_stream* stream() noexcept { return stream_.get(); }

  /// A function that returns `bytes` of page-locked host memory as a 1-D kByte tensor
  /// (detail::pinned_host_bytes on a CUDA build; any host allocation in tests).
  using host_allocator = std::function<at::Tensor(std::int64_t bytes)>;
  /// A function that returns to the system the page-locked memory the allocator keeps cached for
  /// tensors already freed (detail::release_cached_pinned_memory on a CUDA build). LibTorch's
  /// pinned allocator keeps every freed block for a later request of the same power of two, so
  /// without it a chunk the registry lets go of stays page-locked until the process ends.
  using cache_release = std::function<void()>;

  /// Keeps host masters in pinned (page-locked) memory: faster and asynchronous host-to-device
  /// copies. With `allocate`, the masters are copied into a few power-of-two chunks from it
  /// (detail/pinned_arena.hpp: LibTorch's pinned allocator rounds every request up to a power of
  /// two, so pinning tensor by tensor would take about 1.5x the bytes) and each becomes a view of
  /// its chunk, with the same sizes, strides, dtype and values, chunk by chunk (the old masters are
  /// freed as they go, where nothing else holds them); unpinned, each gets a pageable copy, chunk
  /// by chunk. `release`, kept while pinned, is called after each chunk the registry lets go of
  /// (unpinning, repacking after a conversion, destruction), so that the host never holds much
  /// more than the masters: one chunk beyond them. Without `allocate` (a machine without CUDA) the
  /// flag is only recorded: mock devices charge pinned bandwidth. At home. When a chunk cannot be
  /// allocated (capacity_error `offload.capacity.pinned_allocation`), the component stays unpinned
  /// and every master keeps its values: those of the chunks before stay in them
  /// (pinned_host_bytes() says how much) until the component is pinned or unpinned again.
  void set_pinned(bool pinned, host_allocator allocate = {}, cache_release release = {}) {
    require_home("change host memory");
    if (release) pin_release_ = std::move(release);
    if (pinned && allocate) {
      repin(allocate);
    } else if (pinned_host_bytes() > 0) {
      replace_masters_chunk_by_chunk([](const entry& e) { return e.master.clone(); });
    }
    pin_allocator_ = pinned ? std::move(allocate) : host_allocator();
    if (!pin_allocator_ && pinned_host_bytes() == 0) pin_release_ = cache_release();
    pinned_ = pinned;
  }
  [[nodiscard]] bool pinned() const noexcept { return pinned_; }
  /// Bytes of the chunks that hold the pinned masters (0 unless they are really pinned): the
  /// masters' bytes, each aligned to detail::arena_alignment, and what the power-of-two chunks add.
  /// Counted from the chunks themselves: a chunk still alive after its masters moved out (a view
  /// of it held elsewhere) is counted until it is freed.
  [[nodiscard]] std::int64_t pinned_host_bytes() const noexcept {
    std::int64_t n = 0;
    for (const auto& c : chunks_)
      if (!c.storage.expired()) n += c.bytes;
    return n;
  }
  /// The bytes set_pinned would pin for the masters stored as `d` (native: as they are now): what
  /// the budget planner counts against the pinned budget.
  [[nodiscard]] std::int64_t pinned_bytes_as(storage_dtype d) const {
    std::vector<std::int64_t> sizes;
    sizes.reserve(entries_.size());
    for (const auto& e : entries_) {
      const std::int64_t extent = detail::arena_bytes(e.master);
      sizes.push_back(d == storage_dtype::native || !converts(e.path, e.master)
                          ? extent
                          : extent / static_cast<std::int64_t>(e.master.element_size()) * element_size(d));
    }
    return detail::plan_arena(sizes).total();
  }

  /// Converts floating parameters and buffers, and auxiliary tensors declared `dtype_rule::follow`,
  /// to `dtype`. Tensors declared `keep` (and integer tensors) keep theirs. Only at home.
  void convert(c10::ScalarType dtype) {
    require_home("convert dtype");
    const auto follows = [](const entry& e) { return e.kind != tensor_kind::auxiliary || e.dtype != dtype_rule::keep; };
    for (const auto& e : entries_)
      if (follows(e) && c10::isComplexType(e.master.scalar_type()) && !c10::isComplexType(dtype))
        throw placement_error(
            "offload.placement.complex_follows_dtype",
            fmt::format("tensor '{}.{}' is {} and declared to follow the component's dtype, which "
                        "would become {}; declare it with dtype_rule::keep",
                        component_, e.path, c10::toString(e.master.scalar_type()), c10::toString(dtype)));
    replace_masters_chunk_by_chunk([&](const entry& e) {
      return follows(e) && e.master.is_floating_point() ? e.master.to(dtype) : at::Tensor();
    });
    if (pin_allocator_) repin(pin_allocator_); // the converted masters are pageable copies
  }

  /// Declares the storage rule: `selects(path)` says which floating tensors (dotted paths without the
  /// component prefix) a policy's `store=bf16|fp16` converts. `exact`: the dtypes in which the
  /// component computes the same bits when it executes on the accelerator (stored_size::exact), so
  /// the budget planner may choose them. At home, once.
  void set_storage_rule(std::function<bool(std::string_view path)> selects, std::vector<storage_dtype> exact = {}) {
    require_home("declare a storage rule");
    if (storage_rule_)
      throw placement_error("offload.placement.duplicate_storage_rule",
                            fmt::format("component '{}' already declares a storage rule; declare it once", component_));
    if (!selects)
      throw config_error("offload.config.storage_rule",
                         fmt::format("component '{}': the storage rule is empty; pass a predicate over tensor paths",
                                     component_));
    for (const auto d : exact)
      if (d == storage_dtype::native)
        throw config_error("offload.config.storage_rule",
                           fmt::format("component '{}': an exact storage dtype must be bf16 or fp16, found native "
                                       "(the native storage needs no declaration)",
                                       component_));
    storage_rule_ = std::move(selects);
    exact_storage_ = std::move(exact);
  }
  [[nodiscard]] bool has_storage_rule() const noexcept { return static_cast<bool>(storage_rule_); }

  /// Its sizes stored as bf16 and as fp16 (none without a storage rule): what the scheduler plans
  /// with for `store=`. Computed from the masters as they are now, so a component already converted
  /// reports its current size.
  [[nodiscard]] std::vector<stored_size> stored_sizes() const {
    std::vector<stored_size> out;
    if (!storage_rule_) return out;
    for (const storage_dtype d : {storage_dtype::bf16, storage_dtype::fp16}) {
      stored_size s;
      s.dtype = d;
      s.exact = std::find(exact_storage_.begin(), exact_storage_.end(), d) != exact_storage_.end();
      for (const auto& e : entries_) s.bytes += stored_bytes(e.path, e.master, d);
      s.pinned_bytes = pinned_bytes_as(d);
      if (stream_) {
        s.blocks = stream_->layout([&](std::string_view qualified_path, const at::Tensor& master) {
          return stored_bytes(qualified_path.substr(component_.size() + 1), master, d);
        });
        for (const auto& e : entries_)
          if (e.host_table) s.blocks->host_bytes += stored_bytes(e.path, e.master, d);
      }
      out.push_back(std::move(s));
    }
    return out;
  }

  /// Converts the tensors the storage rule selects to `dtype` (native: nothing). Only at home. A
  /// pinned master stays pinned. One-way: a later `native` keeps the converted masters.
  void set_storage(storage_dtype dtype) {
    if (dtype == storage_dtype::native) return;
    if (!storage_rule_)
      throw config_error("offload.config.no_storage_rule",
                         fmt::format("component '{}' declares no storage rule, so it cannot be stored as {}; "
                                     "declare one (set_storage_rule) or drop ':store' from its policy",
                                     component_, to_string(dtype)));
    require_home("change the storage dtype");
    const c10::ScalarType to = dtype == storage_dtype::bf16 ? c10::ScalarType::BFloat16 : c10::ScalarType::Half;
    bool changed = false;
    replace_masters_chunk_by_chunk([&](const entry& e) {
      if (!converts(e.path, e.master) || e.master.scalar_type() == to) return at::Tensor();
      changed = true;
      return e.master.to(to);
    });
    // The converted masters are pageable copies: pin them again, packed as they now are (each old
    // chunk went back to the system once its masters were converted, see set_pinned).
    if (changed && pin_allocator_) repin(pin_allocator_);
  }

  [[nodiscard]] device_id location() const noexcept { return where_ ? where_->id() : device_id::cpu(); }

  /// Bytes of every tensor (each shared tensor once).
  [[nodiscard]] std::int64_t bytes() const {
    std::int64_t n = 0;
    for (const auto& e : entries_) n += static_cast<std::int64_t>(e.master.nbytes());
    return n;
  }

  /// Bytes per logical device right now.
  [[nodiscard]] std::map<device_id, std::int64_t> bytes_per_device() const {
    std::map<device_id, std::int64_t> out;
    for (const auto& t : tensors()) out[t.device] += t.bytes;
    return out;
  }

  /// Every tensor with its logical device and dtype.
  [[nodiscard]] std::vector<tensor_location> tensors() const {
    std::vector<tensor_location> out;
    out.reserve(entries_.size());
    for (const auto& e : entries_) {
      const at::Tensor t = e.current();
      const bool at_home = streaming() && (e.host_table || (e.block >= 0 && !stream_->in_use(e.block)));
      out.push_back({e.path, e.kind, at_home ? device_id::cpu() : location(), t.scalar_type(),
                     static_cast<std::int64_t>(t.nbytes())});
    }
    return out;
  }

  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }

  /// Moves every tensor onto `target`, or home when `target` is the host. Transactional.
  void place_on(device& target) { place(target, /*async=*/false); }

  /// place_on, with the copies on the device's transfer stream (copy_into_async into buffers the
  /// device allocates, each after the compute work issued so far): the tensors are placed and
  /// accounted when it returns, the data arrives in the background. finish_placement() makes the
  /// compute stream wait; audit() reports reading them before (on mock devices). Transactional.
  void place_on_async(device& target) { place(target, /*async=*/true); }

  /// Makes the compute stream wait for the copies of place_on_async (no host wait).
  void finish_placement() {
    if (where_ && pending_.pending()) where_->wait(pending_);
    pending_ = {};
  }

  /// Throws placement_error naming the first tensor that is not on `expected` with its dtype.
  /// Auditing is reading: after place_on_async, before finish_placement(), a mock device throws
  /// `offload.placement.read_before_transfer`.
  void audit(device_id expected, const stage_context& where) const {
    if (where_ && pending_.pending()) where_->note_read(pending_, qualified("*"));
    if (location() != expected)
      throw placement_error(
          "offload.placement.component_mismatch",
          fmt::format("component '{}' expected on {}, found on {} (stage '{}', policy '{}'); the "
                      "plan and the executor disagree: move components only through the scheduler",
                      component_, expected.str(), location().str(), where.stage, where.policy));
    const c10::Device physical = expected.torch_device();
    for (const auto& e : entries_) {
      const at::Tensor t = e.current();
      if (!expected.is_host() && e.host_table && streaming()) {
        // A host table of a streamed component: its host master, where the forward gathers.
        if (t.defined() && t.data_ptr() == e.master.data_ptr() && t.scalar_type() == e.master.scalar_type()) continue;
        throw placement_error(
            "offload.placement.device_mismatch",
            fmt::format("tensor '{}' (kept on the host while streaming) expected its host master ({}/{}), found {} "
                        "(stage '{}', policy '{}'); the forward gathers from it where it is: never .to() it by hand",
                        qualified(e.path), device_id::cpu().str(), c10::toString(e.master.scalar_type()),
                        t.defined() ? fmt::format("{}/{}", t.device().str(), c10::toString(t.scalar_type()))
                                    : std::string("undefined"),
                        where.stage, where.policy));
      }
      if (!expected.is_host() && e.block >= 0 && streaming()) {
        // A streamed block: a view of its slot while in use, else its host master.
        const at::Tensor& want = stream_->expected(e.block, static_cast<std::size_t>(e.block_pos));
        if (t.defined() && want.defined() && t.data_ptr() == want.data_ptr() &&
            t.scalar_type() == e.master.scalar_type())
          continue;
        throw placement_error(
            "offload.placement.device_mismatch",
            fmt::format("tensor '{}' (block {}, streamed) expected {} ({}), found another tensor "
                        "(stage '{}', policy '{}'); streamed blocks are reached only through "
                        "block_use, never moved by hand",
                        qualified(e.path), e.block, stream_->in_use(e.block) ? "its slot on " + expected.str() : "its host master",
                        c10::toString(e.master.scalar_type()), where.stage, where.policy));
      }
      const bool on_device = t.defined() && t.device() == physical;
      const at::Tensor& ours = expected.is_host() ? e.master : e.placed;
      const bool ours_ok = t.defined() && ours.defined() && t.data_ptr() == ours.data_ptr();
      const bool dtype_ok = t.defined() && t.scalar_type() == e.master.scalar_type();
      if (on_device && ours_ok && dtype_ok) continue;
      std::string found = !t.defined() ? std::string("undefined")
                          : !on_device ? fmt::format("{}/{}", t.device().str(), c10::toString(t.scalar_type()))
                                       : fmt::format("{}/{}{}", expected.is_mock() ? "cpu" : t.device().str(),
                                                     c10::toString(t.scalar_type()),
                                                     ours_ok ? "" : " (not the copy offload placed)");
      throw placement_error(
          "offload.placement.device_mismatch",
          fmt::format("tensor '{}' ({}) expected {}/{}, found {} (stage '{}', policy '{}'); it was "
                      "moved or replaced outside offload: {}",
                      qualified(e.path), to_string(e.kind), expected.str(),
                      c10::toString(e.master.scalar_type()), found, where.stage, where.policy,
                      e.kind == tensor_kind::auxiliary
                          ? "assign to it only through the registry, never .to() it by hand"
                          : "declare plain tensor members with register_aux() and never .to() a "
                            "registered module by hand"));
    }
  }

  /// The master (host) copy of a tensor, for tests and checks. Throws if unknown.
  [[nodiscard]] const at::Tensor& master(std::string_view path) const {
    if (const auto* e = find(path)) return e->master;
    throw placement_error("offload.placement.unknown_tensor",
                          fmt::format("component '{}' has no tensor '{}'", component_, path));
  }

private:
  struct entry {
    std::string path;
    tensor_kind kind = tensor_kind::parameter;
    dtype_rule dtype = dtype_rule::follow;
    mutability mut = mutability::immutable;
    at::Tensor handle;          ///< parameter/buffer: shares the module's TensorImpl
    at::Tensor* slot = nullptr; ///< auxiliary: the owner's member
    at::Tensor master;          ///< host master
    at::Tensor placed;          ///< device copy while placed (not for streamed blocks)
    int block = -1;             ///< index in the declared block list, or -1
    int block_pos = 0;          ///< position among its block's tensors
    bool host_table = false;    ///< kept on the host while streaming (keep_on_host_while_streaming)
    [[nodiscard]] at::Tensor current() const { return slot ? *slot : handle; }
    void assign(const at::Tensor& t) {
      if (slot) *slot = t;
      else handle.set_data(t);
    }
  };

  void place(device& target, bool async) {
    if (where_ == &target) return;
    if (where_) evict();
    if (target.id().is_host()) return;
    const bool streamed = streaming();
    // Asynchronous copies start after the compute work issued so far: a reused buffer's readers are done.
    transfer_event after_compute;
    try {
      if (async) after_compute = target.record_compute();
    } catch (const capacity_error& e) {
      throw capacity_error(e.id(),
                           fmt::format("prefetching '{}' to {}: {}", qualified("*"), target.id().str(),
                                       e.what() + e.id().size() + 2),
                           e.device(), e.stage(), e.needed(), e.available());
    }
    transfer_event last;
    std::size_t done = 0;
    try {
      for (auto& e : entries_) {
        if (streamed && stays_home(e)) {
          ++done;
          continue;
        }
        const auto nbytes = static_cast<std::int64_t>(e.master.nbytes());
        at::Tensor placed; // async: a view of a device buffer the copy fills; sync: the copy itself
        if (async)
          placed = target.allocate_buffer(nbytes, qualified(e.path)).view(e.master.scalar_type()).view(e.master.sizes());
        else
          target.allocate(nbytes, qualified(e.path));
        try {
          if (async) last = target.copy_into_async(e.master, placed, qualified(e.path), pinned_, after_compute);
          else placed = target.copy_from_host(e.master, qualified(e.path), pinned_);
        } catch (...) {
          target.release(nbytes);
          throw;
        }
        e.placed = placed;
        e.assign(e.placed);
        ++done;
      }
      if (streamed) stream_->attach(target, pinned_);
    } catch (...) {
      target.wait(last); // nothing is freed under a copy in flight
      for (std::size_t i = 0; i < done; ++i) {
        auto& e = entries_[i];
        if (streamed && stays_home(e)) continue;
        target.release(static_cast<std::int64_t>(e.master.nbytes()));
        e.assign(e.master);
        e.placed = at::Tensor();
      }
      throw;
    }
    where_ = &target;
    pending_ = last;
  }

  /// While streaming: the tensors the component does not place (its blocks, which the stream
  /// moves, and its host tables).
  [[nodiscard]] static bool stays_home(const entry& e) noexcept { return e.block >= 0 || e.host_table; }
  /// `path` is `prefix` or lies under it (`prefix.`...).
  [[nodiscard]] static bool under(std::string_view path, std::string_view prefix) noexcept {
    return path.compare(0, prefix.size(), prefix) == 0 && (path.size() == prefix.size() || path[prefix.size()] == '.');
  }
  /// Whether the storage rule converts this tensor (floating, not complex, selected).
  [[nodiscard]] bool converts(std::string_view path, const at::Tensor& master) const {
    return storage_rule_ && master.is_floating_point() && storage_rule_(path);
  }
  [[nodiscard]] std::int64_t stored_bytes(std::string_view path, const at::Tensor& master, storage_dtype d) const {
    return converts(path, master) ? static_cast<std::int64_t>(master.numel()) * element_size(d)
                                  : static_cast<std::int64_t>(master.nbytes());
  }
  [[nodiscard]] std::string qualified(std::string_view path) const {
    return fmt::format("{}.{}", component_, path);
  }
  [[nodiscard]] const entry* find(std::string_view path) const {
    for (const auto& e : entries_)
      if (e.path == path) return &e;
    return nullptr;
  }
  void require_home(std::string_view what) const {
    if (where_)
      throw placement_error("offload.placement.not_home",
                            fmt::format("cannot {} of component '{}' while it is on {}; evict it to "
                                        "the host first",
                                        what, component_, where_->id().str()));
  }
  void require_on_host(std::string_view path, const at::Tensor& t) const {
    if (!t.device().is_cpu())
      throw placement_error("offload.placement.not_on_host",
                            fmt::format("tensor '{}.{}' is on {} when registered; expected cpu: "
                                        "build or load the module on the host and let offload "
                                        "place it",
                                        component_, path, t.device().str()));
  }
  void add_module_tensor(const std::string& path, const at::Tensor& t, tensor_kind kind) {
    require_home("register tensors");
    if (!t.defined()) return;
    if (!seen_.insert(t.unsafeGetTensorImpl()).second) return;
    require_on_host(path, t);
    entry e;
    e.path = path;
    e.kind = kind;
    e.handle = t;
    e.master = t.detach();
    entries_.push_back(std::move(e));
  }
  void set_master(entry& e, at::Tensor t) {
    e.master = std::move(t);
    e.assign(e.master);
  }
  /// Replaces each master by `next(entry)` (an undefined tensor keeps it). Really pinned, the
  /// masters go chunk by chunk: those viewing one chunk, then pin_release_, so that a chunk freed
  /// with its last view goes back to the system before the next chunk's masters are copied. The
  /// host then holds the chunks not yet done plus the new masters: one chunk's worth more than
  /// before, not the whole component twice.
  template <class F>
  void replace_masters_chunk_by_chunk(F&& next) {
    std::vector<std::vector<std::size_t>> groups;
    const bool chunked = pinned_host_bytes() > 0;
    if (chunked) {
      std::unordered_map<const c10::StorageImpl*, std::size_t> group_of;
      for (std::size_t i = 0; i < entries_.size(); ++i) {
        const auto [it, added] = group_of.try_emplace(entries_[i].master.storage().unsafeGetStorageImpl(), groups.size());
        if (added) groups.emplace_back();
        groups[it->second].push_back(i);
      }
    } else {
      groups.emplace_back(entries_.size());
      std::iota(groups.back().begin(), groups.back().end(), std::size_t{0});
    }
    for (const auto& group : groups) {
      for (const std::size_t i : group)
        if (at::Tensor t = next(std::as_const(entries_[i])); t.defined()) set_master(entries_[i], std::move(t));
      if (chunked) release_cached_pinned();
    }
    forget_freed_chunks();
  }
  void forget_freed_chunks() {
    std::erase_if(chunks_, [](const pinned_chunk& c) { return c.storage.expired(); });
  }
  void release_cached_pinned() const {
    if (pin_release_) pin_release_();
  }
  /// Copies every master into one arena of chunks from `allocate` (detail::pack_into_arena), chunk
  /// by chunk; before each chunk is allocated, the chunks the copies before it freed go back to the
  /// system (pin_release_). On a failure the masters already copied stay (they hold the same
  /// values) and the component is left unpinned, so that pinning or unpinning it again starts from
  /// a known state.
  void repin(const host_allocator& allocate) {
    std::vector<at::Tensor> masters;
    masters.reserve(entries_.size());
    for (const auto& e : entries_) masters.push_back(e.master);
    const auto allocate_after_release = [&](std::int64_t bytes) {
      release_cached_pinned();
      at::Tensor chunk = allocate(bytes);
      if (chunk.defined()) chunks_.push_back({chunk.storage().getWeakStorageImpl(), bytes});
      return chunk;
    };
    try {
      (void)detail::pack_into_arena(
          std::move(masters), allocate_after_release,
          [this](std::size_t i, at::Tensor t) { set_master(entries_[i], std::move(t)); }, component_);
    } catch (...) {
      forget_freed_chunks(); // the wrong chunk pack_into_arena refused, the old ones emptied
      pin_allocator_ = host_allocator();
      pinned_ = false;
      try {
        release_cached_pinned(); // the chunks the copies freed before the failure
      } catch (...) { // NOLINT(bugprone-empty-catch): the allocation's error is the one to report
      }
      throw;
    }
    release_cached_pinned();
    forget_freed_chunks();
  }
  void evict() {
    device& from = *where_;
    finish_placement(); // an eviction never frees memory a prefetch is still writing
    // Mutable tensors are copied back first, all of them, before anything is released: when a copy
    // fails the component is still wholly on `from` (its device copies authoritative; a master
    // already refreshed holds the same values) and a later eviction can retry. Interleaving the
    // copies with the releases left a half-evicted component whose next eviction released bytes
    // twice and copied from undefined tensors.
    const bool streamed = streaming();
    for (auto& e : entries_)
      if (e.mut == mutability::mutable_ && !(streamed && e.host_table))
        from.copy_to_host(e.placed, e.master, qualified(e.path));
    if (streamed) stream_->detach();
    for (auto& e : entries_) {
      if (streamed && stays_home(e)) continue;
      e.assign(e.master);
      e.placed = at::Tensor();
      from.release(static_cast<std::int64_t>(e.master.nbytes()));
    }
    where_ = nullptr;
  }

  std::string component_;
  std::vector<entry> entries_;
  std::unordered_set<const void*> seen_;
  std::unique_ptr<block_stream> stream_;
  std::function<bool(std::string_view)> storage_rule_;
  std::vector<storage_dtype> exact_storage_; ///< storage dtypes that compute the same bits (stored_size::exact)
  device* where_ = nullptr;
  bool pinned_ = false;
  host_allocator pin_allocator_;      ///< set while the masters are really pinned
  cache_release pin_release_;         ///< set while some chunk may hold masters
  struct pinned_chunk {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage; ///< expired once freed
    std::int64_t bytes = 0;
  };
  std::vector<pinned_chunk> chunks_; ///< the chunks allocated for the masters and maybe still alive
  transfer_event pending_; ///< the last copy of place_on_async until finish_placement()
};

} // namespace offload
