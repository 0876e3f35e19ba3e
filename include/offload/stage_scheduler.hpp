#pragma once
/// \file
/// The stage scheduler: from stages (in order), components (with sizes), devices and a policy, an
/// explicit plan with every onload and eviction, the resident set and the peak per device.
///
/// Evictions are derived, not hand-written: `after_use` and `when_idle` rules come from the policy;
/// with `evict_on_demand`, a stage that lacks room evicts the resident components needed latest
/// (Belady's rule), then keeps back any of them that turn out not to be needed (minimal set). The
/// seed's fix "the DiT leaves the GPU before T5 arrives" falls out of that rule.
///
/// **Example**
/// \code
/// auto p = offload::schedule(stages, {{"t5", 10.58_GiB}, {"dit", 5.29_GiB}, {"vae", 0.47_GiB}},
///                            offload::parse_policy("offload_model"),
///                            {.accelerator = offload::device_id::mock(0),
///                             .devices = {{offload::device_id::mock(0), 11.49_GiB}}});
/// if (!p.fits()) report(p.failure_message());   // names text_encode, suggests a policy
/// show(p.table());
/// \endcode

#include <offload/block_stream.hpp>
#include <offload/component.hpp>
#include <offload/errors.hpp>
#include <offload/placement_policy.hpp>
#include <offload/plan.hpp>
#include <offload/stage.hpp>
#include <offload/units.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace offload {

/// Capacity and bandwidth of one device, for planning.
struct device_spec {
  device_id id;
  std::optional<std::int64_t> capacity; ///< nullopt = unlimited
  double h2d_bytes_per_second = 0;      ///< 0 = transfers cost no predicted time
  double d2h_bytes_per_second = 0;
};

struct schedule_options {
  /// The device `cuda`/`gpu` in a policy means: a real `cuda:N` or a `mock:N`.
  device_id accelerator = device_id::cuda(0);
  /// Capacities of the devices; a device the policy uses but not listed here is unlimited.
  std::vector<device_spec> devices;
  /// Look for a policy that fits when this one does not (plan::suggestion).
  bool suggest = true;
};

namespace detail {

class scheduler {
public:
  scheduler(const std::vector<stage>& stages, const std::vector<component_info>& comps,
            const placement_policy& policy, const schedule_options& opt)
      : stages_(stages), comps_(stored_infos(comps, policy)), policy_(policy), opt_(opt) {}

  plan run() {
    validate();
    plan p;
    p.policy = policy_;
    p.accelerator = opt_.accelerator;
    p.capacity[device_id::cpu()] = std::nullopt;
    for (const auto& c : comps_) {
      const device_id d = exec(c.name);
      p.execute_on[c.name] = d;
      p.component_bytes[c.name] = c.bytes;
      if (streamed(c.name)) p.device_bytes[c.name] = footprint(c.name);
      if (!d.is_host()) p.capacity[d] = capacity_of(d);
      total_bytes_ += c.bytes;
    }
    for (const auto& [d, cap] : p.capacity) used_[d] = 0;
    used_[device_id::cpu()] = total_bytes_; // host masters always stay

    // init: components loaded at the start.
    plan_step init;
    init.stage = "init";
    running_ = used_;
    for (const auto& c : comps_) {
      const auto& cp = policy_.of(c.name);
      const device_id d = exec(c.name);
      if (d.is_host() || cp.load != load_rule::init) continue;
      // With eviction on demand a preload that does not fit waits for the component's first use.
      if (const auto cap = capacity_of(d); policy_.evict_on_demand && cap && used_[d] + c.bytes > *cap) continue;
      onload(p, init, c.name, "init", "loaded at init");
    }
    snapshot(init);
    finish_step(p, init, {});
    p.steps.push_back(std::move(init));

    for (std::size_t i = 0; i < stages_.size(); ++i) {
      const stage& s = stages_[i];
      plan_step step;
      step.stage = s.name;
      step.repeat = s.repeat;
      step.seconds = s.seconds;
      step.uses = s.uses;
      running_ = used_;
      // when_idle components that are on a device but not used here leave first.
      for (const auto& c : comps_)
        if (on_device(c.name) && !uses(s, c.name) && policy_.of(c.name).evict == evict_rule::when_idle)
          evict(p, step.before, c.name, fmt::format("when_idle: not used by '{}'", s.name));
      // Workspace per device.
      std::map<device_id, std::int64_t> ws;
      for (const auto& w : s.workspace) ws[exec(w.component)] += w.bytes;
      if (policy_.evict_on_demand) make_room(p, step, i, ws);
      for (const auto& name : s.uses)
        if (!exec(name).is_host() && loc_[name] != exec(name))
          onload(p, step, name, s.name, fmt::format("used by '{}'", s.name));
      step.workspace_bytes = ws;
      for (const auto& [d, b] : ws) {
        const auto cap = d.is_host() ? std::nullopt : capacity_of(d);
        if (cap && used_[d] + b > *cap) record_failure(p, s.name, d, "workspace", used_[d] + b, *cap);
        running_[d] = std::max(running_[d], used_[d] + b);
      }
      p.predicted_seconds += stage_seconds(p, step, s);
      if (policy_.prefetch && i + 1 < stages_.size()) prefetch_next(p, step, i);
      snapshot(step);
      // after: evict what the next stage does not use.
      const stage* next = i + 1 < stages_.size() ? &stages_[i + 1] : nullptr;
      for (const auto& name : s.uses) {
        const auto rule = policy_.of(name).evict;
        if (on_device(name) && (rule == evict_rule::after_use || rule == evict_rule::when_idle) &&
            !(next && uses(*next, name)))
          evict(p, step.after, name,
                next ? fmt::format("{}: not used by '{}'", detail::to_string(rule), next->name)
                     : fmt::format("{}: last stage", detail::to_string(rule)));
      }
      finish_step(p, step, ws);
      p.steps.push_back(std::move(step));
    }
    return p;
  }

private:
  void validate() const {
    std::set<std::string> names;
    for (const auto& c : comps_) {
      if (c.bytes < 0)
        throw config_error("offload.config.negative_size",
                           fmt::format("component '{}' has size {} bytes; expected >= 0", c.name, c.bytes));
      if (!names.insert(c.name).second)
        throw config_error("offload.config.duplicate_component",
                           fmt::format("component '{}' is given twice; name each component once", c.name));
    }
    auto known = [&] {
      std::string s;
      for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
      return s;
    };
    for (const auto& s : stages_) {
      for (const auto& u : s.uses)
        if (!names.count(u))
          throw config_error("offload.config.unknown_component",
                             fmt::format("stage '{}' uses component '{}', which is not declared "
                                         "(components: {}); declare it or fix the stage",
                                         s.name, u, known()));
      for (const auto& w : s.workspace)
        if (!names.count(w.component))
          throw config_error("offload.config.unknown_component",
                             fmt::format("stage '{}' declares workspace on component '{}', which is "
                                         "not declared (components: {})",
                                         s.name, w.component, known()));
      if (s.repeat < 1)
        throw config_error("offload.config.repeat",
                           fmt::format("stage '{}' repeats {} times; expected >= 1", s.name, s.repeat));
    }
    for (const auto& c : comps_) {
      const auto& st = policy_.of(c.name).stream;
      if (!st.enabled() || exec(c.name).is_host()) continue;
      if (!c.blocks || c.blocks->count() == 0)
        throw config_error("offload.config.not_streamable",
                           fmt::format("policy '{}' streams component '{}', which declares no block list; "
                                       "drop ':stream' for it or declare its blocks",
                                       policy_.label(), c.name));
      if (st.prefetch >= st.slots)
        throw config_error("offload.config.stream_prefetch",
                           fmt::format("policy '{}': component '{}' prefetches {} blocks with {} slots; "
                                       "expected a depth of at most {} (one slot computes)",
                                       policy_.label(), c.name, st.prefetch, st.slots, st.slots - 1));
    }
    for (const auto& n : policy_.explicit_names)
      if (!names.count(n))
        throw config_error("offload.config.unknown_component",
                           fmt::format("policy '{}' names component '{}', which this pipeline does "
                                       "not have (components: {}); fix the policy",
                                       policy_.label(), n, known()));
  }

  [[nodiscard]] device_id exec(const std::string& name) const {
    return policy_.of(name).execute_on.resolve(opt_.accelerator);
  }
  [[nodiscard]] std::optional<std::int64_t> capacity_of(device_id d) const {
    for (const auto& s : opt_.devices)
      if (s.id == d) return s.capacity;
    return std::nullopt;
  }
  [[nodiscard]] const device_spec* spec_of(device_id d) const {
    for (const auto& s : opt_.devices)
      if (s.id == d) return &s;
    return nullptr;
  }
  [[nodiscard]] const component_info* info(const std::string& name) const {
    for (const auto& c : comps_)
      if (c.name == name) return &c;
    return nullptr;
  }
  /// Whether `name` streams its blocks on its execution device.
  [[nodiscard]] bool streamed(const std::string& name) const {
    const auto* c = info(name);
    return c && c->blocks && policy_.of(name).stream.enabled() && !exec(name).is_host();
  }
  /// Slots actually allocated: never more than the blocks.
  [[nodiscard]] int slots_of(const std::string& name) const {
    return static_cast<int>(std::min<std::int64_t>(policy_.of(name).stream.slots, info(name)->blocks->count()));
  }
  /// Bytes on its device while placed: everything, or (streamed) all but the blocks and host tables
  /// plus K slots.
  [[nodiscard]] std::int64_t bytes_of(const std::string& name) const {
    const auto* c = info(name);
    if (!c) return 0;
    return streamed(name) ? footprint(name) : c->bytes;
  }
  [[nodiscard]] std::int64_t footprint(const std::string& name) const {
    const auto* c = info(name);
    return c->blocks->streamed_rest(c->bytes) + slots_of(name) * c->blocks->slot_bytes;
  }
  /// Bytes copied when placed: everything, or (streamed) all but the blocks and the host tables.
  [[nodiscard]] std::int64_t transfer_bytes_of(const std::string& name) const {
    const auto* c = info(name);
    if (!c) return 0;
    return streamed(name) ? c->blocks->streamed_rest(c->bytes) : c->bytes;
  }

  /// Compute plus streaming time of a stage; counts the bytes it streams into `step`.
  ///
  /// A streamed component's passes are timed as block streaming runs them
  /// (slot_schedule::run_passes_timed), with the stage's compute per repetition spread over its
  /// blocks by their bytes: exact for a stage whose compute is all in the blocks, as the mock
  /// device runs it; prefetch from pinned masters hides the copies behind compute except where a
  /// slot or the stream is not free. Each streamed component adds what its copies add to the
  /// stage's compute.
  double stage_seconds(plan& p, plan_step& step, const stage& s) {
    const double compute = s.seconds * s.repeat;
    double seconds = compute;
    for (const auto& name : s.uses) {
      if (!streamed(name)) continue;
      const auto* c = info(name);
      const device_id d = exec(name);
      auto it = sims_.find(name);
      if (it == sims_.end())
        it = sims_.emplace(name, slot_schedule(static_cast<int>(c->blocks->count()), slots_of(name),
                                               policy_.of(name).stream.prefetch)).first;
      const auto* spec = spec_of(d);
      std::int64_t bytes = 0;
      if (spec && spec->h2d_bytes_per_second > 0) {
        const auto& layout = *c->blocks;
        const double total = static_cast<double>(std::max<std::int64_t>(layout.total(), 1));
        std::vector<double> per_block;
        for (const auto b : layout.block_bytes) per_block.push_back(s.seconds * static_cast<double>(b) / total);
        const double timed = it->second.run_passes_timed(s.repeat, layout, spec->h2d_bytes_per_second, per_block,
                                                         policy_.of(name).memory == host_memory::pinned, bytes);
        seconds += std::max(0.0, timed - compute);
      } else {
        bytes = it->second.run_passes(s.repeat, *c->blocks);
      }
      step.streamed_bytes[name] = bytes;
      p.bytes_to_devices += bytes;
    }
    step.stream_seconds = seconds - compute;
    return seconds;
  }
  [[nodiscard]] bool on_device(const std::string& name) const {
    const auto it = loc_.find(name);
    return it != loc_.end() && !it->second.is_host();
  }
  static bool uses(const stage& s, const std::string& name) {
    return std::find(s.uses.begin(), s.uses.end(), name) != s.uses.end();
  }
  /// Index of the first stage after `i` that uses `name`, or infinity.
  [[nodiscard]] std::size_t next_use(std::size_t i, const std::string& name) const {
    for (std::size_t j = i + 1; j < stages_.size(); ++j)
      if (uses(stages_[j], name)) return j;
    return std::numeric_limits<std::size_t>::max();
  }

  void onload(plan& p, plan_step& step, const std::string& name, const std::string& stage_name,
              std::string reason) {
    const device_id d = exec(name);
    const std::int64_t b = bytes_of(name);
    used_[d] += b;
    running_[d] = std::max(running_[d], used_[d]);
    if (const auto cap = capacity_of(d); cap && used_[d] > *cap)
      record_failure(p, stage_name, d, fmt::format("onload {}", name), used_[d], *cap);
    loc_[name] = d;
    step.before.push_back({action_kind::onload, name, d, b, std::move(reason)});
    const std::int64_t moved = transfer_bytes_of(name);
    p.bytes_to_devices += moved;
    if (const auto* s = spec_of(d); s && s->h2d_bytes_per_second > 0)
      p.predicted_seconds += static_cast<double>(moved) / s->h2d_bytes_per_second;
  }

  /// Cross-stage prefetch: the components stage i+1 brings in start moving during stage i's last
  /// repetition, on the device's transfer stream, when
  /// - their host masters are pinned: a copy from pageable memory holds the host thread that
  ///   queues the compute (cuda_device copies it synchronously), so it would hide nothing and only
  ///   hold device memory a stage early;
  /// - stage i streams no blocks on that device: its transfer stream carries the block copies, and
  ///   a prefetch queued ahead of them would delay the blocks by as much as it hides;
  /// - the device has room for them on top of what stage i holds while it runs: its resident set
  ///   and its workspace (not components its before-actions evicted).
  /// They are resident from then on; their copies overlap one repetition's compute, so only what
  /// exceeds it adds time.
  void prefetch_next(plan& p, plan_step& step, std::size_t i) {
    const stage& next = stages_[i + 1];
    std::set<device_id> streaming;
    for (const auto& name : stages_[i].uses)
      if (streamed(name)) streaming.insert(exec(name));
    std::map<device_id, double> transfer;
    for (const auto& name : next.uses) {
      const device_id d = exec(name);
      if (d.is_host() || loc_[name] == d || streaming.count(d)) continue;
      if (policy_.of(name).memory != host_memory::pinned) continue;
      const std::int64_t b = bytes_of(name);
      // On top of what the stage holds while it runs: its resident set (evictions and onloads done,
      // earlier prefetches included) and its workspace. Not on top of the stage's transition peak
      // (running_), which may still count components its before-actions evicted.
      const auto w = step.workspace_bytes.find(d);
      const std::int64_t during = used_[d] + (w == step.workspace_bytes.end() ? 0 : w->second);
      if (const auto cap = capacity_of(d); cap && during + b > *cap) continue; // no room: loaded before next
      used_[d] += b;
      running_[d] = std::max(running_[d], during + b);
      loc_[name] = d;
      step.prefetch.push_back({action_kind::onload, name, d, b, fmt::format("prefetch: used by '{}'", next.name)});
      const std::int64_t moved = transfer_bytes_of(name);
      p.bytes_to_devices += moved;
      if (const auto* sp = spec_of(d); sp && sp->h2d_bytes_per_second > 0)
        transfer[d] += static_cast<double>(moved) / sp->h2d_bytes_per_second;
    }
    for (const auto& [d, t] : transfer) p.predicted_seconds += std::max(0.0, t - stages_[i].seconds);
  }

  void evict(plan& p, std::vector<action>& into, const std::string& name, std::string reason) {
    (void)p;
    const device_id d = loc_[name];
    used_[d] -= bytes_of(name);
    loc_[name] = device_id::cpu();
    sims_.erase(name); // its slots are freed
    into.push_back({action_kind::evict, name, d, bytes_of(name), std::move(reason)});
  }

  /// Evict-on-demand: before the onloads of stage i, free room on every device that would
  /// overflow, evicting resident components not used by the stage, needed latest first, then
  /// keeping back those that are not needed after all.
  void make_room(plan& p, plan_step& step, std::size_t i, const std::map<device_id, std::int64_t>& ws) {
    const stage& s = stages_[i];
    std::map<device_id, std::int64_t> demand = ws;
    for (const auto& name : s.uses)
      if (!exec(name).is_host() && loc_[name] != exec(name)) demand[exec(name)] += bytes_of(name);
    for (const auto& [d, need] : demand) {
      const auto cap = d.is_host() ? std::nullopt : capacity_of(d);
      if (!cap || used_[d] + need <= *cap) continue;
      std::vector<std::string> candidates;
      for (const auto& c : comps_)
        if (loc_[c.name] == d && !uses(s, c.name)) candidates.push_back(c.name);
      std::stable_sort(candidates.begin(), candidates.end(), [&](const auto& a, const auto& b) {
        return next_use(i, a) > next_use(i, b);
      });
      std::vector<std::string> victims;
      std::int64_t freed = 0;
      for (const auto& c : candidates) {
        if (used_[d] - freed + need <= *cap) break;
        victims.push_back(c);
        freed += bytes_of(c);
      }
      if (used_[d] - freed + need > *cap) continue; // cannot fit even so: the onload records it
      // Minimality: keep back victims (soonest needed first) while it still fits.
      for (auto it = victims.rbegin(); it != victims.rend();) {
        if (used_[d] - freed + bytes_of(*it) + need <= *cap) {
          freed -= bytes_of(*it);
          it = std::make_reverse_iterator(victims.erase(std::next(it).base()));
        } else {
          ++it;
        }
      }
      for (const auto& v : victims) {
        const auto nu = next_use(i, v);
        evict(p, step.before, v,
              fmt::format("on demand: room for '{}' on {}; {}", s.name, d.str(),
                          nu == std::numeric_limits<std::size_t>::max()
                              ? std::string("not needed again")
                              : fmt::format("needed again at '{}'", stages_[nu].name)));
      }
    }
  }

  void record_failure(plan& p, const std::string& stage, device_id d, std::string during,
                      std::int64_t needed, std::int64_t available) {
    if (!p.failure) p.failure = plan_failure{stage, d, std::move(during), needed, available};
  }

  /// The resident sets while the stage runs (before its after-actions).
  void snapshot(plan_step& step) {
    for (const auto& c : comps_) {
      const device_id d = loc_.count(c.name) ? loc_[c.name] : device_id::cpu();
      step.resident[d].push_back(c.name);
    }
    for (const auto& [d, b] : used_) step.resident_bytes[d] = b;
    step.resident_bytes[device_id::cpu()] = total_bytes_;
  }

  void finish_step(plan& p, plan_step& step, const std::map<device_id, std::int64_t>& ws) {
    for (auto& [d, r] : running_) {
      const std::int64_t during = step.resident_bytes.count(d) ? step.resident_bytes.at(d) : used_[d];
      const std::int64_t peak = std::max(r, during + (ws.count(d) ? ws.at(d) : 0));
      step.peak_bytes[d] = peak;
      p.peak_bytes[d] = std::max(p.peak_bytes[d], peak);
    }
    for (auto& [d, b] : used_) running_[d] = b;
  }

  const std::vector<stage>& stages_;
  const std::vector<component_info> comps_; ///< as the policy stores them (stored_infos)
  const placement_policy& policy_;
  const schedule_options& opt_;
  std::map<std::string, device_id> loc_;
  std::map<std::string, slot_schedule> sims_; ///< slot contents of streamed components on a device
  std::map<device_id, std::int64_t> used_, running_;
  std::int64_t total_bytes_ = 0;
};

} // namespace detail

plan schedule(const std::vector<stage>& stages, const std::vector<component_info>& components,
              const placement_policy& policy, const schedule_options& options = {});

namespace detail {

/// The policy text that stands for `p` with `change` (entries and flags) applied: the label plus
/// the change when that text parses to the changed policy (the label stands for `p` and names
/// nothing the change names), else the canonical text of the changed policy. (Appending an entry
/// for a component the label already names would be a duplicate entry, which does not parse.)
inline std::string with_change(const placement_policy& p, const std::string& change) {
  const placement_policy delta = placement_policy::parse(change);
  placement_policy changed = p;
  for (const auto& [name, cp] : delta.components) changed.components[name] = cp;
  changed.evict_on_demand = changed.evict_on_demand || delta.evict_on_demand;
  std::string appended = p.label() + "," + change; // not const: returned by move
  try {
    if (placement_policy::parse(p.label()) == p && placement_policy::parse(appended) == changed) return appended;
  } catch (const config_error&) {
  }
  return changed.str();
}

/// Candidate changes, least disruptive first: evict on demand; one component on demand; one
/// component on the host; two components on demand.
inline std::string suggest(const std::vector<stage>& stages, const std::vector<component_info>& comps,
                           const placement_policy& policy, schedule_options opt) {
  opt.suggest = false;
  auto try_text = [&](const std::string& text) {
    try {
      const auto cand = placement_policy::parse(text);
      return schedule(stages, comps, cand, opt).fits();
    } catch (const config_error&) {
      return false;
    }
  };
  std::vector<std::string> tries;
  if (!policy.evict_on_demand) tries.push_back(with_change(policy, "evict_on_demand"));
  auto accel = [&](const std::string& n) { return !policy.of(n).execute_on.is_host(); };
  for (const auto& c : comps)
    if (accel(c.name) && policy.of(c.name).evict != evict_rule::when_idle)
      tries.push_back(with_change(policy, fmt::format("{}={}:on_demand", c.name,
                                                      policy.of(c.name).execute_on.k == target::kind::named
                                                          ? policy.of(c.name).execute_on.id.str()
                                                          : std::string("cuda"))));
  // Streaming a block list keeps its compute on the accelerator with a few blocks resident.
  for (const auto& c : comps)
    if (accel(c.name) && c.blocks && !policy.of(c.name).stream.enabled())
      tries.push_back(with_change(policy, fmt::format("{}={}:on_demand:stream=2", c.name,
                                                      policy.of(c.name).execute_on.k == target::kind::named
                                                          ? policy.of(c.name).execute_on.id.str()
                                                          : std::string("cuda"))));
  for (const auto& c : comps)
    if (accel(c.name)) tries.push_back(with_change(policy, fmt::format("{}=cpu", c.name)));
  for (const auto& t : tries)
    if (try_text(t)) return t;
  return {};
}

} // namespace detail

inline plan schedule(const std::vector<stage>& stages, const std::vector<component_info>& components,
                     const placement_policy& policy, const schedule_options& options) {
  plan p = detail::scheduler(stages, components, policy, options).run();
  if (!p.fits() && options.suggest) p.suggestion = detail::suggest(stages, components, policy, options);
  return p;
}

} // namespace offload
