#pragma once
/// \file
/// Parity harness: access to the vendored Wan2.1 golden set (tests/data/golden, see its
/// README.md) and tolerance-checked comparison of C++ outputs against it.
///
/// Tolerance rule (from the golden set): for a float golden tensor T,
/// `max|actual - golden| <= tol[T] * max|golden|`, with `tol[T]` taken from the case's manifest
/// entry `recommended_tolerance.tol`; integer and bool tensors must match exactly. A stored name
/// `out.X` uses the tolerance key `X`; other stored names (`mid.*`, `cN.mid.*`) use their own
/// name. Comparing a float tensor that has no tolerance (e.g. an input `in.*`), a name that is
/// not stored, or a tensor of another shape throws std::invalid_argument: a parity test cannot
/// silently pass on a typo.
///
/// **Example**
/// \code
/// wan::testing::golden_case g("dit_t2v");
/// auto x = g.tensor("in.c0.x.0");                  // [16, F, H, W]
/// g.expect_close("out.c0.out.0", model->forward(...)[0]);
/// \endcode

#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <nlohmann/json.hpp>

#include <offload/safetensors.hpp>

#include "wan/module_run.hpp"

namespace wan::testing {

/// `$WAN_GOLDEN_DIR` when set and non-empty, else the vendored tests/data/golden.
std::filesystem::path golden_dir();

/// `$OFFLOAD_TEST_DATA` when set and non-empty, else the vendored tests/data (the golden set, the
/// tokenizer files, the media).
std::filesystem::path test_data_dir();

/// golden_dir()/manifest.json, parsed once.
const nlohmann::json& manifest();

/// The manifest entry whose "file" is `file` (e.g. "cases/dit_t2v.safetensors",
/// "checkpoints/Wan2.1_VAE.pth"); throws std::invalid_argument when there is none.
const nlohmann::json& manifest_entry(std::string_view file);

/// golden_dir()/"checkpoints"/rel, e.g. checkpoint_path("t2v") or
/// checkpoint_path("models_t5_umt5-xxl-enc-bf16.pth").
std::filesystem::path checkpoint_path(std::string_view rel);

/// The manifest's spelling of a dtype: "float32", "bfloat16", "int64", "uint8", ...
using wan::dtype_name;

/// Result of comparing one tensor against its golden.
struct comparison {
  std::string name;            ///< stored golden name
  bool exact = false;          ///< integer/bool golden: compared for equality
  double tol = 0.0;            ///< relative tolerance (0 when exact)
  double max_abs_diff = 0.0;   ///< max|actual - golden| (NaN when actual has NaN/Inf where golden is finite)
  double max_abs_golden = 0.0; ///< max|golden|
  double ratio = 0.0;          ///< max_abs_diff / (tol * max_abs_golden); 0 when equal, inf when out with a zero bound
  bool ok = false;
  std::string detail;          ///< worst element: index, golden and actual values
};

/// One golden case file, cases/<name>.safetensors, with its manifest entry.
class golden_case {
public:
  /// Opens cases/<case_name>.safetensors; throws when the file or its manifest entry is missing.
  explicit golden_case(std::string case_name);
  golden_case(const golden_case&) = delete;
  golden_case& operator=(const golden_case&) = delete;
  /// Prints "<file>: N tensors compared, worst error X of tolerance (<tensor>)".
  ~golden_case();

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return file_.path(); }
  /// The manifest entry (spec, config, tensors, stored, recommended_tolerance, ...).
  [[nodiscard]] const nlohmann::json& entry() const noexcept { return *entry_; }
  /// The header `__metadata__` (holds "case" and "call").
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return file_.metadata(); }

  /// Any stored tensor (CPU, stored dtype); throws std::invalid_argument for an unknown name.
  [[nodiscard]] at::Tensor tensor(std::string_view name) const;
  [[nodiscard]] bool has(std::string_view name) const { return file_.contains(name); }
  /// All stored names, sorted.
  [[nodiscard]] std::vector<std::string> names() const { return file_.keys(); }
  /// Relative tolerance of a stored float tensor; nullopt when the manifest gives none.
  [[nodiscard]] std::optional<double> tolerance(std::string_view name) const;

  /// Compares without asserting or recording; throws std::invalid_argument for an unknown name,
  /// a float golden without tolerance, or a shape mismatch. A complex `actual` is compared
  /// through view_as_real (goldens store complex tensors that way).
  [[nodiscard]] comparison compare(std::string_view golden_name, const at::Tensor& actual) const;

  /// compare() + BOOST_CHECK of the tolerance rule + record of the worst error.
  void expect_close(std::string_view golden_name, const at::Tensor& actual);

  [[nodiscard]] std::size_t compared() const noexcept { return compared_; }
  /// Worst error so far as a fraction of its tolerance bound (0 if nothing compared).
  [[nodiscard]] double worst_ratio() const noexcept { return worst_ratio_; }
  [[nodiscard]] const std::string& worst_name() const noexcept { return worst_name_; }

private:
  std::string name_;
  offload::safetensors_file file_;
  const nlohmann::json* entry_;
  std::size_t compared_ = 0;
  double worst_ratio_ = 0.0;
  std::string worst_name_;

  [[noreturn]] void refuse(const std::string& msg) const;
};

} // namespace wan::testing
