// Compile-time checks: every concept accepts what it should and rejects what it should not.
#include <offload/concepts.hpp>

#include <offload/offloadable.hpp>
#include <offload/testing/sized_component.hpp>

#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

namespace {
struct not_a_module {};
struct plain_module : torch::nn::Module {};
} // namespace

static_assert(offload::OffloadableModule<torch::nn::Linear>);
static_assert(offload::OffloadableModule<torch::nn::Sequential>);
static_assert(offload::OffloadableModule<std::shared_ptr<torch::nn::LinearImpl>>);
static_assert(offload::OffloadableModule<std::shared_ptr<plain_module>>);
static_assert(!offload::OffloadableModule<int>);
static_assert(!offload::OffloadableModule<not_a_module>);
static_assert(!offload::OffloadableModule<std::shared_ptr<not_a_module>>);
static_assert(!offload::OffloadableModule<torch::nn::LinearImpl>); // by handle, not by value

static_assert(offload::Component<offload::offloadable<torch::nn::Linear>>);
static_assert(offload::Component<offload::testing::sized_component>);
static_assert(!offload::Component<torch::nn::Linear>);
