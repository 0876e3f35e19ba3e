#pragma once
/// \file
/// Capturing offload errors in tests: the id or the message of the offload::error a call throws.
///
/// **Example**
/// \code
/// BOOST_TEST(offload::testing::error_id([&] { offload::parse_policy("dit=cpu:stream"); }) ==
///            "offload.config.policy_syntax");
/// \endcode

#include <offload/errors.hpp>

#include <string>

namespace offload::testing {

/// The id of the offload::error `f` throws, or "<no error>".
template <class F>
[[nodiscard]] std::string error_id(F&& f) {
  try {
    f();
  } catch (const offload::error& e) {
    return e.id();
  }
  return "<no error>";
}

/// The message of the offload::error `f` throws, or "<no error>".
template <class F>
[[nodiscard]] std::string error_message(F&& f) {
  try {
    f();
  } catch (const offload::error& e) {
    return e.what();
  }
  return "<no error>";
}

} // namespace offload::testing
