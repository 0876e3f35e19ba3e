#pragma once
/// \file
/// The budget planner: given memory budgets, the fastest placement policy that fits, or an error
/// that says why none does.
///
/// Inputs: the stages (with workspaces and compute seconds on the accelerator), the components
/// (with sizes), budgets for device memory, pinned host memory and host memory, and a cost model
/// (cost_model.hpp). The search covers the policy space of placement_policy.hpp: per component,
/// where it executes (the accelerator or the host), when it loads (`init`, `first_use`), when it
/// leaves (`never`, `after_use`, `when_idle`), pinned or pageable master, streamed or whole, stored
/// natively or in a storage dtype it declares exact; `evict_on_demand`, and cross-stage `prefetch`
/// where it hides copies within the device budget. It never chooses what
/// changes results (a storage that is not exact, tiles): those are the user's call.
/// How it searches: offload/detail/budget_search.hpp and docs/planner.md.
///
/// Output: a budget_plan holding the scheduler's plan (the plan format of plan.hpp) for the chosen
/// policy, with its predicted peaks and time. When no placement fits, capacity_error
/// `offload.capacity.no_placement_fits` names the binding stage, the shortfall and the smallest
/// change that would fit (a larger device or host budget, or a smaller workspace in that stage).
///
/// **Example**
/// \code
/// using namespace offload::literals;
/// const auto mock0 = offload::device_id::mock(0);
/// auto chosen = offload::plan_for_budget(stages, sizes,
///     {.accelerator = mock0, .budgets = {.device = 12_GiB, .pinned = 8_GiB}});
/// show(chosen.plan.policy.str());          // e.g. t5=cuda:lazy:offload:pinned,...
/// show(chosen.summary());                  // predicted seconds, peaks against budgets
/// // nothing fits: offload::capacity_error, e.stage() == binding stage, e.needed() - e.available()
/// \endcode

#include <offload/cost_model.hpp>
#include <offload/detail/json.hpp>
#include <offload/device.hpp>
#include <offload/errors.hpp>
#include <offload/plan.hpp>
#include <offload/stage.hpp>
#include <offload/units.hpp>

#include <fmt/format.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace offload {

/// Memory a plan may use; nullopt = unlimited.
struct memory_budgets {
  std::optional<std::int64_t> device; ///< on the accelerator
  std::optional<std::int64_t> pinned; ///< page-locked host memory for masters of moved components
  std::optional<std::int64_t> host;   ///< host memory: every master plus the workspace of host stages
};

/// What the budget planner may choose and how it prices it.
struct budget_options {
  /// The device `cuda` in the chosen policy means (a real `cuda:N` or a `mock:N`).
  device_id accelerator = device_id::cuda(0);
  memory_budgets budgets;
  offload::cost_model cost = cost_model::defaults();
  /// Let components execute on the host (slower by cost.host_slowdown()).
  bool allow_host_execution = true;
  /// Consider evict_on_demand policies.
  bool allow_evict_on_demand = true;
  /// Consider streaming the block list of components that declare one: K = 2, 3, 4, 6, 8, 12, ...
  /// device slots up to the block count, one block prefetched (more slots keep more blocks from one
  /// pass to the next, so copy less), from pinned or pageable masters.
  bool allow_streaming = true;
  /// Consider cross-stage prefetch (`prefetch`): a pinned component the next stage brings in moves
  /// during the current stage's last repetition where the device budget leaves room, hiding its
  /// copy behind that repetition's compute. Costs no pinned or host memory; holds device memory
  /// a stage early, within the budget.
  bool allow_prefetch = true;
  /// Consider storing accelerator-executed components in the storage dtypes they declare exact
  /// (stored_size::exact: same bits, e.g. a DiT's matmul weights in bf16 under bf16 autocast): less
  /// device memory, host memory and transfer time. Storages that change results are never chosen.
  bool allow_exact_storage = true;
  /// Runs of the stage list per process (generations), over which the one-time cost of pinning
  /// masters (cost_model::pin_bytes_per_second) is spread: 1 for a single generation.
  int runs = 1;
  /// Components that run tiled in every policy the planner considers (`vae=...:tile=32`), by
  /// name. Tiles change results, so the planner never chooses them: the user does, and the stages
  /// must carry the tiled workspaces.
  std::map<std::string, tile_options, std::less<>> tiles;
};

/// The planner's choice: the scheduler's plan for it (fits every budget) and its prediction.
struct budget_plan {
  offload::plan plan;  ///< plan.policy is the chosen policy; plan.predicted_seconds the prediction
  memory_budgets budgets;
  double predicted_seconds = 0;
  double compute_seconds = 0;  ///< stages, host stages slowed down
  double transfer_seconds = 0; ///< host -> device copies, pinned or pageable, and pin_seconds
  double pin_seconds = 0;      ///< pinning the masters, per run (cost_model::pin_bytes_per_second / runs)
  std::int64_t device_peak_bytes = 0;
  std::int64_t pinned_bytes = 0; ///< masters the policy pins
  std::int64_t host_peak_bytes = 0;
  std::size_t placements_considered = 0; ///< complete placements priced
  std::size_t schedules_run = 0;         ///< scheduler runs (holdings, evict on demand, final)

  /// A few lines: policy, prediction, peaks against budgets, search statistics.
  [[nodiscard]] std::string summary() const;
  /// plan.json() with a `planner` member: policy, predicted/compute/transfer seconds, peaks, budgets.
  [[nodiscard]] std::string json() const;
};

} // namespace offload

#include <offload/detail/budget_search.hpp>

namespace offload {

/// The fastest policy (by options.cost) whose plan fits every budget, and its plan. Throws
/// capacity_error (`offload.capacity.no_placement_fits`) when none does, config_error on bad input.
inline budget_plan plan_for_budget(const std::vector<stage>& stages, const std::vector<component_info>& components,
                                   const budget_options& options) {
  return detail::budget_search(stages, components, options).run();
}

inline std::string budget_plan::summary() const {
  const auto accel = plan.accelerator;
  std::string out = fmt::format("budget planner: policy '{}'\n", plan.policy.str());
  out += fmt::format("  predicted {:.2f} s: compute {:.2f} s, transfers {:.2f} s{}\n", predicted_seconds,
                     compute_seconds, transfer_seconds,
                     pin_seconds > 0 ? fmt::format(" (pinning {:.2f} s)", pin_seconds) : std::string());
  out += fmt::format("  peaks: {} {} of {}, pinned {} of {}, host {} of {}\n", accel.str(),
                     format_bytes(device_peak_bytes), detail::budget_text(budgets.device), format_bytes(pinned_bytes),
                     detail::budget_text(budgets.pinned), format_bytes(host_peak_bytes),
                     detail::budget_text(budgets.host));
  out += fmt::format("  searched {} placements, {} scheduler runs\n", placements_considered, schedules_run);
  return out;
}

inline std::string budget_plan::json() const {
  auto opt = [](const std::optional<std::int64_t>& b) { return b ? std::to_string(*b) : std::string("null"); };
  std::string s = plan.json();
  s.pop_back(); // the closing brace
  s += fmt::format(
      R"(,"planner":{{"policy":{},"predicted_seconds":{},"compute_seconds":{},"transfer_seconds":{},"pin_seconds":{},)"
      R"("device_peak_bytes":{},"pinned_bytes":{},"host_peak_bytes":{},)"
      R"("budgets":{{"device":{},"pinned":{},"host":{}}},"placements_considered":{},"schedules_run":{}}}}})",
      detail::json_string(plan.policy.str()), predicted_seconds, compute_seconds, transfer_seconds, pin_seconds,
      device_peak_bytes,
      pinned_bytes, host_peak_bytes, opt(budgets.device), opt(budgets.pinned), opt(budgets.host),
      placements_considered, schedules_run);
  return s;
}

} // namespace offload
