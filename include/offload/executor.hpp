#pragma once
/// \file
/// Executes a plan: applies its onloads and evictions at stage boundaries, accounts each stage's
/// workspace, audits every component's placement, and records the timeline. The same code runs on
/// real devices and on mock devices.
///
/// **Example**
/// \code
/// offload::executor run(plan, devices, {&t5, &dit, &vae});
/// run.start();                                   // the plan's init step
/// { auto s = run.enter("text_encode"); context = encode(prompt); }
/// for (int i = 0; i < steps; ++i) { auto s = run.enter("denoise"); latents = step(latents); }
/// { auto s = run.enter("decode"); video = decode(latents); }
/// run.finish();                                  // the last stage's after-actions
/// \endcode

#include <offload/component.hpp>
#include <offload/device.hpp>
#include <offload/errors.hpp>
#include <offload/plan.hpp>
#include <offload/trace.hpp>

#include <c10/util/Exception.h>

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace offload {

class executor;

/// RAII scope of one stage repetition: releases its workspace on exit.
class stage_scope {
public:
  stage_scope(const stage_scope&) = delete;
  stage_scope& operator=(const stage_scope&) = delete;
  stage_scope(stage_scope&& o) noexcept : ex_(o.ex_) { o.ex_ = nullptr; }
  ~stage_scope();
  /// Charges `seconds` of compute to a virtual clock (simulations); no effect on real time.
  void compute(double seconds);

  /// Runs the stage's compute `f` and returns what it returns. Errors of the compute come out with
  /// the stage and the policy in their message, as the errors of the stage's own moves do:
  /// - a capacity_error without a stage (a block copy of a streamed component failed, a device in
  ///   an error state) gets them;
  /// - a c10::OutOfMemoryError (the device's allocator ran out in the middle of the compute:
  ///   the plan's workspace for the stage was too small) becomes capacity_error
  ///   `offload.capacity.compute_out_of_memory` with the plan's figures for the stage.
  /// \code
  /// auto s = run.enter("denoise");
  /// latents = s.run([&] { return step(latents); });
  /// \endcode
  template <class F>
  decltype(auto) run(F&& f);

private:
  friend class executor;
  explicit stage_scope(executor* ex) : ex_(ex) {}
  executor* ex_;
};

class executor {
public:
  /// `components` must include every component of the plan (by name); they must outlive the
  /// executor, as must `devices`.
  executor(offload::plan p, device_set& devices, const std::vector<component*>& components)
      : plan_(std::move(p)), devices_(&devices) {
    for (auto* c : components) {
      if (!plan_.execute_on.count(c->name()))
        throw config_error("offload.config.unknown_component",
                           fmt::format("component '{}' is not in the plan (policy '{}'); give the "
                                       "scheduler every component",
                                       c->name(), plan_.policy.label()));
      comps_[c->name()] = c;
      if (c->location().is_host()) {
        const auto& cp = plan_.policy.of(c->name());
        c->set_storage(cp.store); // before pinning: converted masters are pinned as they are
        c->set_tiling(cp.tile);
        c->use_pinned_memory(cp.memory == host_memory::pinned);
        c->set_streaming(plan_.execute_on.at(c->name()).is_host() ? stream_options{} : cp.stream);
      }
    }
    for (const auto& [name, _] : plan_.execute_on)
      if (!comps_.count(name))
        throw config_error("offload.config.missing_component",
                           fmt::format("the plan places component '{}' but the executor was not "
                                       "given it; pass every component",
                                       name));
  }

  [[nodiscard]] const offload::plan& get_plan() const noexcept { return plan_; }
  [[nodiscard]] const timeline& trace() const noexcept { return trace_; }
  [[nodiscard]] timeline& trace() noexcept { return trace_; }
  /// Index of the current plan step (0 = init).
  [[nodiscard]] std::size_t step_index() const noexcept { return step_; }

  /// Applies the init step.
  void start() {
    if (started_)
      throw placement_error("offload.placement.stage_order",
                            fmt::format("executor for policy '{}' already started; create a new "
                                        "executor (or call reset()) for a new run",
                                        plan_.policy.label()));
    started_ = true;
    step_ = 0;
    apply(plan_.steps[0].before, "init");
    audit_step(plan_.steps[0]);
  }

  /// Enters `stage`: the next plan step, or the current one again (a repetition).
  [[nodiscard]] stage_scope enter(std::string_view stage) {
    if (!started_) start();
    if (in_stage_)
      throw placement_error("offload.placement.stage_order",
                            fmt::format("entering stage '{}' while stage '{}' is still open; close "
                                        "its scope first",
                                        stage, plan_.steps[step_].stage));
    if (step_ == 0 || plan_.steps[step_].stage != stage) {
      if (step_ + 1 >= plan_.steps.size() || plan_.steps[step_ + 1].stage != stage)
        throw placement_error(
            "offload.placement.stage_order",
            fmt::format("stage '{}' entered out of order (policy '{}'): expected {}{}; run the "
                        "stages in the order the pipeline declared them",
                        stage, plan_.policy.label(),
                        step_ + 1 < plan_.steps.size() ? fmt::format("'{}'", plan_.steps[step_ + 1].stage)
                                                       : std::string("no further stage"),
                        step_ > 0 ? fmt::format(" or a repetition of '{}'", plan_.steps[step_].stage)
                                  : std::string()));
      if (step_ > 0) apply(plan_.steps[step_].after, plan_.steps[step_].stage);
      ++step_;
      // The previous stage's prefetches: the compute stream waits for their copies now (or, when
      // that stage ran fewer repetitions than planned and never issued them, they load here).
      complete_prefetches(plan_.steps[step_ - 1], plan_.steps[step_].stage);
      apply(plan_.steps[step_].before, plan_.steps[step_].stage);
      audit_step(plan_.steps[step_]);
      repetition_ = 0;
    }
    const auto& st = plan_.steps[step_];
    ++repetition_;
    // Workspace: accounted on each device for the duration of the scope.
    std::vector<std::pair<device*, std::int64_t>> reserved;
    try {
      for (const auto& [d, b] : st.workspace_bytes) {
        if (b == 0) continue;
        device& dev = devices_->get(d);
        dev.allocate(b, workspace_label(st, d));
        reserved.emplace_back(&dev, b);
        sample(dev);
      }
    } catch (const capacity_error& e) {
      for (auto& [dev, b] : reserved) dev->release(b);
      rethrow_in_stage(e, st.stage);
    }
    workspace_ = std::move(reserved);
    // The stage's last repetition: the next stage's prefetches start on the transfer stream.
    if (repetition_ == st.repeat && !st.prefetch.empty()) {
      try {
        issue_prefetches(st);
      } catch (const capacity_error& e) {
        for (auto& [dev, b] : workspace_) dev->release(b);
        workspace_.clear();
        rethrow_in_stage(e, st.stage);
      }
    }
    in_stage_ = true;
    stage_start_ = devices_->clock().now();
    return stage_scope(this);
  }

  /// Applies the after-actions of the last stage. Every planned stage must have run.
  void finish() {
    if (in_stage_)
      throw placement_error("offload.placement.stage_order",
                            fmt::format("finish() while stage '{}' is open", plan_.steps[step_].stage));
    if (step_ + 1 != plan_.steps.size())
      throw placement_error("offload.placement.stage_order",
                            fmt::format("finish() after step {} of {}: stage '{}' has not run (policy "
                                        "'{}')",
                                        step_, plan_.steps.size() - 1, plan_.steps[step_ + 1].stage,
                                        plan_.policy.label()));
    apply(plan_.steps[step_].after, plan_.steps[step_].stage);
    finished_ = true;
  }

  /// Returns every component to the host and forgets progress: after an error, or between runs.
  void reset() noexcept {
    for (auto& [dev, b] : workspace_) dev->release(b);
    workspace_.clear();
    in_stage_ = false;
    for (auto& [name, c] : comps_) {
      try {
        c->place_on(devices_->host());
      } catch (...) {
      }
    }
    prefetched_.clear();
    started_ = finished_ = false;
    step_ = 0;
  }

private:
  friend class stage_scope;

  void leave() noexcept {
    // Whatever the stage ran was issued on the compute streams (mock devices: it orders copies
    // into fresh buffers, see device::allocate_buffer).
    devices_->clock().note_compute();
    const double now = devices_->clock().now();
    trace_.span({plan_.steps[step_].stage, "stage", "stages", stage_start_, now, 0});
    for (auto& [dev, b] : workspace_) {
      dev->release(b);
      sample(*dev);
    }
    workspace_.clear();
    in_stage_ = false;
  }

  void apply(const std::vector<action>& actions, const std::string& stage) {
    for (const auto& a : actions) {
      component& c = *comps_.at(a.component);
      device& target = a.kind == action_kind::onload ? devices_->get(a.device) : devices_->host();
      const double t0 = devices_->clock().now();
      try {
        c.place_on(target);
      } catch (const capacity_error& e) {
        rethrow_in_stage(e, stage);
      }
      trace_.span({fmt::format("{} {}", to_string(a.kind), a.component), std::string(to_string(a.kind)),
                   fmt::format("{} transfers", a.device.str()), t0, devices_->clock().now(), a.bytes});
      sample(devices_->get(a.device));
    }
  }

  /// `workspace:<stage> (<components executing on d in it>)`: an allocation failure names both.
  [[nodiscard]] std::string workspace_label(const plan_step& st, device_id d) const {
    std::string users;
    for (const auto& u : st.uses)
      if (const auto it = plan_.execute_on.find(u); it != plan_.execute_on.end() && it->second == d)
        users += (users.empty() ? "" : ",") + u;
    return users.empty() ? fmt::format("workspace:{}", st.stage)
                         : fmt::format("workspace:{} ({})", st.stage, users);
  }

  /// Audits the components resident in the stage, but for those it prefetches for the next one
  /// (they arrive during its last repetition).
  void audit_step(const plan_step& st) const {
    for (const auto& [d, names] : st.resident)
      for (const auto& n : names) {
        const bool later = std::any_of(st.prefetch.begin(), st.prefetch.end(),
                                       [&](const action& a) { return a.component == n && !prefetched_.count(n); });
        if (!later) comps_.at(n)->audit(d, {st.stage, plan_.policy.label()});
      }
  }

  void issue_prefetches(const plan_step& st) {
    for (const auto& a : st.prefetch) {
      if (prefetched_.count(a.component)) continue;
      device& target = devices_->get(a.device);
      const double t0 = devices_->clock().now();
      comps_.at(a.component)->prefetch_onto(target);
      prefetched_.insert(a.component);
      trace_.span({fmt::format("prefetch {}", a.component), "prefetch", fmt::format("{} transfers", a.device.str()),
                   t0, devices_->clock().now(), a.bytes});
      sample(target);
    }
  }

  void complete_prefetches(const plan_step& previous, const std::string& stage) {
    for (const auto& a : previous.prefetch) {
      component& c = *comps_.at(a.component);
      if (prefetched_.erase(a.component)) {
        c.finish_placement();
        continue;
      }
      // Not issued (the stage ran fewer repetitions than planned): a synchronous onload.
      const double t0 = devices_->clock().now();
      try {
        c.place_on(devices_->get(a.device));
      } catch (const capacity_error& e) {
        rethrow_in_stage(e, stage);
      }
      trace_.span({fmt::format("onload {}", a.component), "onload", fmt::format("{} transfers", a.device.str()), t0,
                   devices_->clock().now(), a.bytes});
      sample(devices_->get(a.device));
    }
  }

  void sample(device& d) {
    trace_.counter({fmt::format("{} used", d.id().str()), devices_->clock().now(), d.used()});
  }

  /// stage_scope::run's error paths (the non-template core).
  [[noreturn]] void rethrow_from_compute(const capacity_error& e) const {
    rethrow_in_stage(e, plan_.steps[step_].stage);
  }
  [[noreturn]] void compute_out_of_memory(const c10::Error& e) const {
    const plan_step& st = plan_.steps[step_];
    std::string planned, device;
    for (const auto& [d, peak] : st.peak_bytes) {
      if (d.is_host()) continue;
      device = planned.empty() ? d.str() : std::string(); // named when the stage uses one accelerator
      const auto ws = st.workspace_bytes.find(d);
      planned += fmt::format("{}{}: peak {} (workspace {})", planned.empty() ? "" : ", ", d.str(), format_bytes(peak),
                             format_bytes(ws == st.workspace_bytes.end() ? 0 : ws->second));
    }
    std::string what = e.what_without_backtrace();
    if (const auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    throw capacity_error(
        "offload.capacity.compute_out_of_memory",
        fmt::format("stage '{}', policy '{}': the device ran out of memory during the stage's compute, beyond the "
                    "plan ({}): {}; the stage needs more workspace than planned: plan for less of the device "
                    "(a smaller capacity), tile or stream more, or report the figures so the workspace model can "
                    "be corrected",
                    st.stage, plan_.policy.label(), planned.empty() ? "nothing on an accelerator" : planned, what),
        device, st.stage);
  }

  [[noreturn]] void rethrow_in_stage(const capacity_error& e, const std::string& stage) const {
    throw capacity_error(e.id(),
                         fmt::format("stage '{}', policy '{}': {}{}", stage, plan_.policy.label(),
                                     e.what() + e.id().size() + 2,
                                     plan_.suggestion.empty()
                                         ? std::string()
                                         : fmt::format("; policy '{}' would fit", plan_.suggestion)),
                         e.device(), stage, e.needed(), e.available());
  }

  offload::plan plan_;
  device_set* devices_;
  std::map<std::string, component*> comps_;
  std::set<std::string> prefetched_; ///< prefetches issued and not yet completed
  timeline trace_;
  std::vector<std::pair<device*, std::int64_t>> workspace_;
  std::size_t step_ = 0;
  int repetition_ = 0;
  bool started_ = false, finished_ = false, in_stage_ = false;
  double stage_start_ = 0;
};

inline stage_scope::~stage_scope() {
  if (ex_) ex_->leave();
}
inline void stage_scope::compute(double seconds) {
  if (ex_) ex_->devices_->clock().advance(seconds);
}
template <class F>
decltype(auto) stage_scope::run(F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const capacity_error& e) {
    if (!ex_ || !e.stage().empty()) throw;
    ex_->rethrow_from_compute(e);
  } catch (const c10::OutOfMemoryError& e) {
    if (!ex_) throw;
    ex_->compute_out_of_memory(e);
  }
}

} // namespace offload
