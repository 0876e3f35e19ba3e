#pragma once
/// \file
/// fmt formatters for offload types: `fmt::format("{}", device_id)` prints `mock:0`.

#include <offload/device.hpp>
#include <offload/plan.hpp>

#include <fmt/format.h>

template <>
struct fmt::formatter<offload::device_id> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const offload::device_id& d, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(d.str(), ctx);
  }
};

template <>
struct fmt::formatter<offload::action_kind> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(offload::action_kind k, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(offload::to_string(k), ctx);
  }
};
