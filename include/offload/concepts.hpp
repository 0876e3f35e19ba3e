#pragma once
/// \file
/// The concepts of offload, next to what they constrain. Each entry point that takes a template
/// parameter checks it here and fails with a readable message.

#include <offload/component.hpp>

#include <torch/nn/module.h>

#include <concepts>
#include <memory>
#include <type_traits>

namespace offload {

namespace detail {
template <class>
inline constexpr bool dependent_false = false;
} // namespace detail

/// A LibTorch module handle: a `torch::nn::ModuleHolder` (e.g. `torch::nn::Linear`, a
/// `TORCH_MODULE(...)` type) or a `std::shared_ptr<T>` with T derived from `torch::nn::Module`.
template <class M>
concept OffloadableModule =
    requires(const M& m) {
      { m.ptr() } -> std::convertible_to<std::shared_ptr<torch::nn::Module>>;
    } || requires(const M& m) {
      { std::shared_ptr<torch::nn::Module>(m) };
      requires std::derived_from<typename M::element_type, torch::nn::Module>;
    };

/// Something the scheduler can place: a `component` (directly or by derivation).
template <class C>
concept Component = std::derived_from<std::remove_cvref_t<C>, component>;

namespace detail {
template <OffloadableModule M>
std::shared_ptr<torch::nn::Module> module_pointer(const M& m) {
  if constexpr (requires { m.ptr(); }) return m.ptr();
  else return std::shared_ptr<torch::nn::Module>(m);
}
} // namespace detail

} // namespace offload
