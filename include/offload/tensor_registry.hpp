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

#include <offload/component.hpp>
#include <offload/device.hpp>
#include <offload/errors.hpp>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <map>
#include <string>
#include <unordered_set>
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
      if (e.path.compare(0, prefix.size(), prefix) == 0) e.mut = mutability::mutable_, any = true;
    if (!any)
      throw placement_error("offload.placement.unknown_tensor",
                            fmt::format("no tensor of '{}' starts with '{}'", component_, prefix));
  }

  /// Keeps host masters in pinned (page-locked) memory: faster and asynchronous host-to-device
  /// copies. On a machine without CUDA the flag is recorded (mock devices charge pinned bandwidth).
  void set_pinned(bool pinned, bool really_pin) {
    require_home("change host memory");
    pinned_ = pinned;
    if (!really_pin) return;
    for (auto& e : entries_) {
      e.master = pinned ? e.master.pin_memory() : e.master.clone();
      e.assign(e.master);
    }
  }
  [[nodiscard]] bool pinned() const noexcept { return pinned_; }

  /// Converts floating parameters and buffers, and auxiliary tensors declared `dtype_rule::follow`,
  /// to `dtype`. Tensors declared `keep` (and integer tensors) keep theirs. Only at home.
  void convert(c10::ScalarType dtype) {
    require_home("convert dtype");
    for (auto& e : entries_) {
      if (e.kind == tensor_kind::auxiliary && e.dtype == dtype_rule::keep) continue;
      if (c10::isComplexType(e.master.scalar_type()) && !c10::isComplexType(dtype))
        throw placement_error(
            "offload.placement.complex_follows_dtype",
            fmt::format("tensor '{}.{}' is {} and declared to follow the component's dtype, which "
                        "would become {}; declare it with dtype_rule::keep",
                        component_, e.path, c10::toString(e.master.scalar_type()), c10::toString(dtype)));
      if (!e.master.is_floating_point()) continue;
      e.master = e.master.to(dtype);
      e.assign(e.master);
    }
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
      out.push_back({e.path, e.kind, location(), t.scalar_type(), static_cast<std::int64_t>(t.nbytes())});
    }
    return out;
  }

  [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }

  /// Moves every tensor onto `target`, or home when `target` is the host. Transactional.
  void place_on(device& target) {
    if (where_ == &target) return;
    if (where_) evict();
    if (target.id().is_host()) return;
    std::size_t done = 0;
    try {
      for (auto& e : entries_) {
        const auto nbytes = static_cast<std::int64_t>(e.master.nbytes());
        target.allocate(nbytes, qualified(e.path));
        try {
          e.placed = target.copy_from_host(e.master, qualified(e.path), pinned_);
        } catch (...) {
          target.release(nbytes);
          throw;
        }
        e.assign(e.placed);
        ++done;
      }
    } catch (...) {
      for (std::size_t i = 0; i < done; ++i) {
        auto& e = entries_[i];
        target.release(static_cast<std::int64_t>(e.master.nbytes()));
        e.assign(e.master);
        e.placed = at::Tensor();
      }
      throw;
    }
    where_ = &target;
  }

  /// Throws placement_error naming the first tensor that is not on `expected` with its dtype.
  void audit(device_id expected, const stage_context& where) const {
    if (location() != expected)
      throw placement_error(
          "offload.placement.component_mismatch",
          fmt::format("component '{}' expected on {}, found on {} (stage '{}', policy '{}'); the "
                      "plan and the executor disagree: move components only through the scheduler",
                      component_, expected.str(), location().str(), where.stage, where.policy));
    const c10::Device physical = expected.torch_device();
    for (const auto& e : entries_) {
      const at::Tensor t = e.current();
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
    at::Tensor placed;          ///< device copy while placed
    [[nodiscard]] at::Tensor current() const { return slot ? *slot : handle; }
    void assign(const at::Tensor& t) {
      if (slot) *slot = t;
      else handle.set_data(t);
    }
  };

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
  void evict() {
    device& from = *where_;
    // Mutable tensors are copied back first, all of them, before anything is released: when a copy
    // fails the component is still wholly on `from` (its device copies authoritative; a master
    // already refreshed holds the same values) and a later eviction can retry. Interleaving the
    // copies with the releases left a half-evicted component whose next eviction released bytes
    // twice and copied from undefined tensors.
    for (auto& e : entries_)
      if (e.mut == mutability::mutable_) from.copy_to_host(e.placed, e.master, qualified(e.path));
    for (auto& e : entries_) {
      e.assign(e.master);
      e.placed = at::Tensor();
      from.release(static_cast<std::int64_t>(e.master.nbytes()));
    }
    where_ = nullptr;
  }

  std::string component_;
  std::vector<entry> entries_;
  std::unordered_set<const void*> seen_;
  device* where_ = nullptr;
  bool pinned_ = false;
};

} // namespace offload
