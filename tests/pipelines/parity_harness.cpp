// Parity harness: see parity_harness.hpp.
#include "parity_harness.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

namespace wan::testing {

namespace {

std::string shape_str(at::IntArrayRef s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

std::string unravel(int64_t flat, at::IntArrayRef shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = flat % shape[d];
    flat /= shape[d];
  }
  return fmt::format("[{}]", fmt::join(idx, ", "));
}

} // namespace

std::filesystem::path golden_dir() {
  if (const char* env = std::getenv("WAN_GOLDEN_DIR"); env != nullptr && *env != '\0')
    return std::filesystem::path(env);
#ifdef OFFLOAD_VENDORED_GOLDEN_DIR
  return std::filesystem::path(OFFLOAD_VENDORED_GOLDEN_DIR);
#else
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "data" / "golden";
#endif
}

std::filesystem::path test_data_dir() {
  if (const char* env = std::getenv("OFFLOAD_TEST_DATA"); env != nullptr && *env != '\0')
    return std::filesystem::path(env);
#ifdef OFFLOAD_VENDORED_GOLDEN_DIR
  return std::filesystem::path(OFFLOAD_VENDORED_GOLDEN_DIR).parent_path();
#else
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "data";
#endif
}

const nlohmann::json& manifest() {
  static const nlohmann::json m = [] {
    const auto p = golden_dir() / "manifest.json";
    std::ifstream in(p);
    if (!in)
      throw std::runtime_error(fmt::format(
          "parity: cannot open '{}'; set WAN_GOLDEN_DIR to a golden set or restore "
          "tests/data/golden",
          p.string()));
    return nlohmann::json::parse(in);
  }();
  return m;
}

const nlohmann::json& manifest_entry(std::string_view file) {
  const auto& files = manifest().at("files");
  for (const auto& f : files)
    if (f.at("file").get_ref<const std::string&>() == file) return f;
  std::vector<std::string> known;
  for (const auto& f : files) known.push_back(f.at("file").get<std::string>());
  throw std::invalid_argument(fmt::format("parity: manifest has no entry '{}'; it has: {}", file,
                                          fmt::join(known, ", ")));
}

std::filesystem::path checkpoint_path(std::string_view rel) {
  return golden_dir() / "checkpoints" / std::string(rel);
}

golden_case::golden_case(std::string case_name)
    : name_(std::move(case_name)),
      file_(golden_dir() / "cases" / (name_ + ".safetensors")),
      entry_(&manifest_entry("cases/" + name_ + ".safetensors")) {}

golden_case::~golden_case() {
  if (compared_ == 0) {
    std::cout << fmt::format("cases/{}.safetensors: 0 tensors compared\n", name_);
  } else {
    std::cout << fmt::format("cases/{}.safetensors: {} tensors compared, worst error {:.3g} of "
                             "tolerance ({})\n",
                             name_, compared_, worst_ratio_, worst_name_);
  }
}

void golden_case::refuse(const std::string& msg) const {
  throw std::invalid_argument(fmt::format("parity (cases/{}.safetensors): {}", name_, msg));
}

at::Tensor golden_case::tensor(std::string_view name) const {
  if (!file_.contains(name)) {
    // Suggest the stored names sharing the longest prefix with `name`.
    std::size_t best = 0;
    std::vector<std::string> near;
    for (const auto& n : file_.keys()) {
      std::size_t k = 0;
      while (k < n.size() && k < name.size() && n[k] == name[k]) ++k;
      if (k > best) {
        best = k;
        near.clear();
      }
      if (k == best && near.size() < 8) near.push_back(n);
    }
    refuse(fmt::format("no stored tensor '{}' ({} stored; closest: {})", name, file_.size(),
                       fmt::join(near, ", ")));
  }
  return file_.get(name);
}

std::optional<double> golden_case::tolerance(std::string_view name) const {
  const auto& rt = entry().find("recommended_tolerance");
  if (rt == entry().end()) return std::nullopt;
  const auto& tol = rt->at("tol");
  if (auto it = tol.find(std::string(name)); it != tol.end()) return it->get<double>();
  if (name.substr(0, 4) == "out.")
    if (auto it = tol.find(std::string(name.substr(4))); it != tol.end()) return it->get<double>();
  return std::nullopt;
}

comparison golden_case::compare(std::string_view golden_name, const at::Tensor& actual_in) const {
  if (!actual_in.defined()) refuse(fmt::format("actual tensor for '{}' is undefined", golden_name));
  const at::Tensor golden = tensor(golden_name);
  at::Tensor actual = actual_in.detach().to(at::kCPU);
  if (actual.is_complex() && !golden.is_complex()) actual = at::view_as_real(actual);

  comparison r;
  r.name = std::string(golden_name);
  if (actual.sizes() != golden.sizes())
    refuse(fmt::format("'{}': golden shape {} ({}), actual shape {} ({})", golden_name,
                       shape_str(golden.sizes()), dtype_name(golden.scalar_type()),
                       shape_str(actual.sizes()), dtype_name(actual.scalar_type())));

  const bool integral = !at::isFloatingType(golden.scalar_type()) && !golden.is_complex();
  if (integral) {
    r.exact = true;
  } else {
    auto tol = tolerance(golden_name);
    if (!tol)
      refuse(fmt::format("'{}' is a float tensor without a recommended tolerance in the manifest "
                         "(inputs in.* are not compared); compare an out.*/mid.* tensor",
                         golden_name));
    r.tol = *tol;
  }
  if (golden.numel() == 0) {
    r.ok = true;
    return r;
  }

  const at::Tensor g = golden.to(at::kDouble).reshape({-1});
  const at::Tensor a = actual.to(at::kDouble).reshape({-1});
  const at::Tensor diff = (a - g).abs();
  r.max_abs_golden = g.abs().max().item<double>();
  // A non-finite actual value where the golden is finite is the worst possible error.
  const at::Tensor bad = (~at::isfinite(a)) & at::isfinite(g);
  const bool has_bad = bad.any().item<bool>();
  const at::Tensor d_for_max = has_bad ? bad.to(at::kDouble) : diff;
  const int64_t worst = d_for_max.argmax().item<int64_t>();
  r.max_abs_diff = has_bad ? std::numeric_limits<double>::quiet_NaN() : diff.max().item<double>();
  r.detail = fmt::format("worst at {}: golden {:.9g}, actual {:.9g}", unravel(worst, golden.sizes()),
                         g[worst].item<double>(), a[worst].item<double>());

  const double bound = r.exact ? 0.0 : r.tol * r.max_abs_golden;
  if (has_bad) {
    r.ok = false;
    r.ratio = std::numeric_limits<double>::infinity();
  } else {
    r.ok = r.max_abs_diff <= bound;
    r.ratio = bound > 0 ? r.max_abs_diff / bound
                        : (r.max_abs_diff == 0 ? 0.0 : std::numeric_limits<double>::infinity());
  }
  return r;
}

void golden_case::expect_close(std::string_view golden_name, const at::Tensor& actual) {
  const comparison r = compare(golden_name, actual);
  ++compared_;
  if (compared_ == 1 || r.ratio > worst_ratio_) {
    worst_ratio_ = r.ratio;
    worst_name_ = r.name;
  }
  if (r.exact) {
    BOOST_CHECK_MESSAGE(r.ok, fmt::format("cases/{}.safetensors '{}': integer tensor differs "
                                          "(max|diff| = {}); {}",
                                          name_, r.name, r.max_abs_diff, r.detail));
  } else {
    BOOST_CHECK_MESSAGE(r.ok, fmt::format("cases/{}.safetensors '{}': max|diff| = {:.4g} > tol {:g} "
                                          "* max|golden| {:.4g} = {:.4g} ({:.3g}x the tolerance); {}",
                                          name_, r.name, r.max_abs_diff, r.tol, r.max_abs_golden,
                                          r.tol * r.max_abs_golden, r.ratio, r.detail));
  }
}

} // namespace wan::testing
