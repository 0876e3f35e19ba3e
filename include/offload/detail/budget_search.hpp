#pragma once
/// \file
/// Internals of the budget planner: the search over the policy space. Included by
/// offload/budget_planner.hpp after its public types (memory_budgets, budget_options, budget_plan).
///
/// 1. Holdings. For each component and each (load, evict) rule, the scheduler itself is asked
///    where the component is during every step (the other components on the host): a resident
///    pattern and an onload count. Rules with the same pattern and count are one holding (the
///    simplest rule is kept), so the search never tries two policies that plan alike.
/// 2. Without evict_on_demand the accelerator's peak of a step is additive: the bytes of the
///    components resident in it plus the workspace of the components that execute there. Per
///    execution assignment (each component on the host or the accelerator: compute time and host
///    peak are known), a depth-first search picks a holding per component, pruning a branch as
///    soon as one step exceeds the device budget or its time lower bound exceeds the best found.
///    Pinning is decided at each leaf: the subset of moved components whose pinned masters fit the
///    pinned budget and save the most transfer time.
/// 3. evict_on_demand plans are not additive: for execution assignments whose lower bound (compute
///    plus one pinned onload per component) beats the best static plan, the scheduler runs with
///    every accelerator component resident or lazy and evictions on demand.
/// 4. Ties (equal predicted time) go to the policy closest to all-resident, then the lower peak.
/// 5. Storage: an accelerator component with storage dtypes it declares exact (stored_size::exact)
///    gets holdings in each of them too, with the stored sizes (device, transfers, pinned and host
///    masters). The host peak of an execution assignment is first bounded with each accelerator
///    component's smallest master, then checked exactly per placement.
/// 6. Cross-stage prefetch is not additive either (a prefetched component is held one stage
///    early, where the scheduler finds room). Each holding carries a bound on what prefetch could
///    hide: per onload after the first stage, the pinned copy's time, at most the previous stage's
///    compute. The bounds keep the pruning valid; a priced placement whose time less its pinned
///    components' bounds beats the best is scheduled once more with `prefetch` under the device
///    budget, and offered with the time its prefetches hide (each stage's prefetched copies, at
///    most that stage's compute: the scheduler's own rule).
/// 7. Streaming: a component with a block list gets streamed holdings at each slot count of
///    slot_counts() (one slot without prefetch, then 2, 3, 4, 6, ... with one block prefetched: its
///    device bytes grow with the slots, its block copies shrink), less those another streamed
///    holding dominates. Block copies are priced at the master the leaf chooses, like the onloads.
///    From pageable memory nothing overlaps: every copy counts in full. From pinned memory a
///    stage's copies cost what the scheduler's timed slot model says they add to its compute, but
///    never less than one full copy of each block brought in for the first time since the
///    component's onload (priced as a whole onload is). So streaming never looks cheaper than a
///    whole copy, and more slots win only where they hide copies fewer slots expose.

#include <offload/cost_model.hpp>
#include <offload/errors.hpp>
#include <offload/placement_policy.hpp>
#include <offload/plan.hpp>
#include <offload/stage.hpp>
#include <offload/stage_scheduler.hpp>
#include <offload/units.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace offload {

namespace detail {

inline std::string budget_text(const std::optional<std::int64_t>& b) {
  return b ? format_bytes(*b) : std::string("unlimited");
}

class budget_search {
public:
  budget_search(const std::vector<stage>& stages, const std::vector<component_info>& comps,
                const budget_options& opt)
      : stages_(stages), comps_(comps), opt_(opt), n_(comps.size()), steps_(stages.size() + 1) {}

  budget_plan run() {
    if (n_ > 12)
      throw config_error("offload.config.planner_components",
                         fmt::format("the budget planner enumerates placements of at most 12 components; "
                                     "found {}: group components or write the policy by hand",
                                     n_));
    opt_.cost.validate("budget planner cost model");
    if (opt_.runs < 1)
      throw config_error("offload.config.runs",
                         fmt::format("budget planner: {} runs per process; expected at least 1", opt_.runs));
    for (const auto& [name, b] : {std::pair{"device", opt_.budgets.device}, std::pair{"pinned", opt_.budgets.pinned},
                                  std::pair{"host", opt_.budgets.host}})
      if (b && *b < 0)
        throw config_error("offload.config.budget",
                           fmt::format("{} budget {}: expected a size >= 0", name, format_bytes(*b)));
    for (const auto& [name, tile] : opt_.tiles) {
      const auto c = index_of(name);
      if (!c)
        throw config_error("offload.config.unknown_component",
                           fmt::format("budget planner: tiles for component '{}', which is not among the components "
                                       "({}); drop it or name one of them",
                                       name, [&] {
                                         std::string names;
                                         for (const auto& i : comps_) names += (names.empty() ? "" : ", ") + i.name;
                                         return names;
                                       }()));
      if (tile.enabled() && !comps_[*c].tileable)
        throw config_error("offload.config.not_tileable",
                           fmt::format("budget planner: tiles for component '{}', which does not run tiled; drop "
                                       "them",
                                       name));
    }
    prepare();
    for (unsigned mask = 0; mask < (1u << n_); ++mask) {
      if (mask && !opt_.allow_host_execution) break;
      execs_.push_back(exec_of(mask));
    }
    // Most promising execution assignments first: the lower bound prunes the rest sooner.
    std::vector<std::size_t> order(execs_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return execs_[a].lower_bound < execs_[b].lower_bound; });
    for (const auto i : order) {
      const auto& e = execs_[i];
      if (opt_.budgets.host && e.host_peak > *opt_.budgets.host) continue;
      if (best_ && e.lower_bound > best_->time * (1 + 1e-9)) continue;
      search_static(e);
    }
    if (opt_.allow_evict_on_demand)
      for (const auto i : order) search_on_demand(execs_[i]);
    if (!best_) explain();
    return finish();
  }

private:
  struct holding {
    load_rule load = load_rule::init;
    evict_rule evict = evict_rule::never;
    std::vector<unsigned char> resident; ///< per step: on the accelerator
    int onloads = 0;
    /// 0 for resident (init, never); +1 streamed, +1 more without prefetch (one slot), +1 stored
    int deviation = 0;
    std::int64_t bytes = 0;        ///< on the device while resident (streamed: all but the blocks + slots)
    std::int64_t onload_bytes = 0; ///< copied per onload (streamed: all but the blocks)
    std::int64_t master_bytes = 0; ///< its host master, as stored
    std::int64_t pinned_bytes = 0; ///< the same pinned (packed into power-of-two chunks)
    bool pinnable = true;          ///< its pinned master fits the pinned budget
    storage_dtype store = storage_dtype::native;
    stream_options stream{};       ///< streamed: K slots, one block prefetched (one slot: none)
    std::int64_t stream_bytes = 0; ///< block copies of all its stages (streamed)
    std::vector<std::int64_t> stream_step; ///< the same per step
    /// Seconds its block copies add from a pinned master (streamed): per step, what the timed
    /// slot model adds to the stage's compute, at least a full copy of the blocks new since the
    /// onload.
    double stream_pinned = 0;
    std::vector<double> stream_pinned_step;
    double prefetch_credit = 0;    ///< at most what cross-stage prefetch hides of its onloads (pinned)
    std::vector<double> credit_step; ///< the same per step: of its onload before step s
    /// Seconds its block copies add from a master in `memory`: from pageable memory each copy
    /// holds the host, so all of them.
    [[nodiscard]] double streaming(const cost_model& cost, host_memory memory) const {
      return memory == host_memory::pinned ? stream_pinned : cost.transfer_seconds(stream_bytes, memory);
    }
    [[nodiscard]] double streaming_step(const cost_model& cost, host_memory memory, std::size_t s) const {
      return memory == host_memory::pinned ? stream_pinned_step[s] : cost.transfer_seconds(stream_step[s], memory);
    }
    /// Its copies from a master in `memory`: the onloads and what the block copies add.
    [[nodiscard]] double transfer(const cost_model& cost, host_memory memory) const {
      return onloads * cost.transfer_seconds(onload_bytes, memory) + streaming(cost, memory);
    }
    /// A lower bound of what its copies cost in any placement: from pinned memory less what
    /// prefetch could hide, where its master fits the pinned budget; from pageable memory, where
    /// nothing hides.
    [[nodiscard]] double transfer_lb(const cost_model& cost) const {
      const double pageable = transfer(cost, host_memory::pageable);
      return pinnable ? std::min(transfer(cost, host_memory::pinned) - prefetch_credit, pageable) : pageable;
    }
  };
  struct exec_info {
    unsigned host_mask = 0; ///< bit c: component c executes on the host
    double compute = 0;
    std::int64_t host_peak = 0;
    std::size_t host_step = 0;
    std::int64_t masters = 0; ///< host masters: each accelerator component at its smallest storage
    std::vector<std::int64_t> device_ws; ///< per step
    double lower_bound = 0;
  };
  struct candidate {
    unsigned host_mask = 0;
    std::vector<int> choice; ///< holding index per component (-1 on the host)
    bool on_demand = false;  ///< evict_on_demand with resident (0) / lazy (1) holdings
    bool prefetch = false;   ///< cross-stage prefetch
    unsigned pinned_mask = 0;
    double time = 0, compute = 0, transfer = 0;
    std::int64_t device_peak = 0, host_peak = 0, pinned_bytes = 0;
    std::int64_t pinned_host_extra = 0; ///< in host_peak: what the pinned chunks add to the masters
    int deviation = 0;
  };

  // ---- preparation -------------------------------------------------------------------------
  void prepare() {
    uses_.assign(stages_.size(), std::vector<unsigned char>(n_, 0));
    ws_.assign(n_, std::vector<std::int64_t>(steps_, 0));
    for (std::size_t s = 0; s < stages_.size(); ++s) {
      for (std::size_t c = 0; c < n_; ++c) {
        const auto& u = stages_[s].uses;
        uses_[s][c] = std::find(u.begin(), u.end(), comps_[c].name) != u.end();
      }
      for (const auto& w : stages_[s].workspace)
        if (const auto c = index_of(w.component)) ws_[*c][s + 1] += w.bytes;
    }
    max_prefetch_hide_ = 0;
    for (std::size_t s = 0; s + 1 < stages_.size(); ++s)
      max_prefetch_hide_ += std::max(opt_.cost.compute_seconds(stages_[s].seconds, false),
                                     opt_.cost.compute_seconds(stages_[s].seconds, true));
    // Holdings from the scheduler: component c with one rule, the others on the host.
    const std::pair<load_rule, evict_rule> rules[] = {
        {load_rule::init, evict_rule::never},          {load_rule::first_use, evict_rule::never},
        {load_rule::init, evict_rule::after_use},      {load_rule::first_use, evict_rule::after_use},
        {load_rule::first_use, evict_rule::when_idle}, {load_rule::init, evict_rule::when_idle}};
    holdings_.assign(n_, {});
    min_transfer_lb_.assign(n_, 0);
    min_master_.assign(n_, 0);
    for (std::size_t c = 0; c < n_; ++c) {
      const auto& info = comps_[c];
      // Its storages: native, and each storage it declares exact (when allowed).
      std::vector<const stored_size*> storages{nullptr};
      if (opt_.allow_exact_storage)
        for (const auto& st : info.storage)
          if (st.exact && st.dtype != storage_dtype::native) storages.push_back(&st);
      min_master_[c] = info.bytes;
      for (const stored_size* stored : storages) {
        const std::int64_t master = stored ? stored->bytes : info.bytes;
        const auto& blocks = stored ? stored->blocks : info.blocks;
        min_master_[c] = std::min(min_master_[c], master);
        const bool streamable = opt_.allow_streaming && blocks && blocks->count() > 1;
        std::vector<stream_options> streams{stream_options{}};
        if (streamable)
          for (const stream_options o : slot_counts(static_cast<int>(blocks->count()))) streams.push_back(o);
        for (const auto& [load, evict] : rules) {
          for (const stream_options stream : streams) {
            placement_policy p;
            p.fallback = component_policy{target::host()};
            // A streamed holding is timed from a pinned master (the scheduler's slot model at the
            // pinned bandwidth); residency, onloads and bytes are those of any master.
            component_policy cp{target::accelerator(), load, evict,
                                stream.enabled() ? host_memory::pinned : host_memory::pageable, stream};
            cp.store = stored ? stored->dtype : storage_dtype::native;
            p.components[info.name] = cp;
            schedule_options so{.accelerator = opt_.accelerator, .suggest = false};
            if (stream.enabled())
              so.devices.push_back({opt_.accelerator, std::nullopt, opt_.cost.h2d_pinned_bytes_per_second, 0});
            const plan pl = schedule(stages_, comps_, p, so);
            ++schedules_;
            holding h{load, evict, std::vector<unsigned char>(steps_, 0), 0,
                      (load == load_rule::init && evict == evict_rule::never ? 0 : 1) + (stream.enabled() ? 1 : 0) +
                          (stream.enabled() && stream.prefetch == 0 ? 1 : 0) + (stored ? 1 : 0)};
            h.bytes = stream.enabled() ? pl.device_bytes.at(info.name) : master;
            h.onload_bytes = stream.enabled() ? blocks->streamed_rest(master) : master;
            h.master_bytes = master;
            h.pinned_bytes = info.pinned_as(cp.store);
            h.pinnable = !opt_.budgets.pinned || h.pinned_bytes <= *opt_.budgets.pinned;
            h.store = cp.store;
            h.stream = stream;
            h.stream_step.assign(steps_, 0);
            h.stream_pinned_step.assign(steps_, 0.0);
            h.credit_step.assign(steps_, 0.0);
            bool fresh = false; // onloaded, its blocks not yet brought in
            for (std::size_t s = 0; s < steps_; ++s) {
              const auto it = pl.steps[s].resident.find(opt_.accelerator);
              if (it != pl.steps[s].resident.end())
                h.resident[s] = std::find(it->second.begin(), it->second.end(), info.name) != it->second.end();
              for (const auto& a : pl.steps[s].before)
                if (a.kind == action_kind::onload && a.component == info.name) {
                  ++h.onloads;
                  fresh = true;
                  // Prefetched into the previous stage, its copy hides behind that stage's compute.
                  if (opt_.allow_prefetch && s >= 2) {
                    h.credit_step[s] = std::min(opt_.cost.transfer_seconds(h.onload_bytes, host_memory::pinned),
                                                std::max(opt_.cost.compute_seconds(stages_[s - 2].seconds, false),
                                                         opt_.cost.compute_seconds(stages_[s - 2].seconds, true)));
                    h.prefetch_credit += h.credit_step[s];
                  }
                }
              // The block copies: from a pinned master, what they add to the stage's compute, but
              // at least a full copy of each block new since the onload (the first pass brings in
              // every block, as a whole onload would). So streaming never looks cheaper than one
              // whole copy, and is chosen only where the component cannot stay whole; unless it
              // keeps tables on the host (block_layout::host_bytes), which it then copies less.
              if (s > 0 && stream.enabled())
                if (const auto b = pl.steps[s].streamed_bytes.find(info.name); b != pl.steps[s].streamed_bytes.end()) {
                  h.stream_step[s] = b->second;
                  h.stream_bytes += b->second;
                  const double first =
                      fresh ? opt_.cost.transfer_seconds(blocks->total(), host_memory::pinned) : 0.0;
                  fresh = false;
                  h.stream_pinned_step[s] = std::max(pl.steps[s].stream_seconds, first);
                  h.stream_pinned += h.stream_pinned_step[s];
                }
            }
            const bool seen = std::any_of(holdings_[c].begin(), holdings_[c].end(), [&](const holding& o) {
              return o.resident == h.resident && o.onloads == h.onloads && o.stream == h.stream && o.store == h.store;
            });
            // A rule that holds the component as an earlier one does, does so at every slot count.
            if (seen && stream.enabled()) break;
            if (!seen) holdings_[c].push_back(std::move(h));
          }
        }
      }
    }
    // Memory is free when the device budget holds every component at its largest and every
    // workspace at once: then only time and deviation tell holdings apart.
    bool memory_is_free = !opt_.budgets.device;
    if (!memory_is_free) {
      std::int64_t all = 0, ws = 0;
      for (std::size_t c = 0; c < n_; ++c) {
        std::int64_t largest = comps_[c].bytes;
        for (const auto& h : holdings_[c]) largest = std::max(largest, h.bytes);
        all += largest;
      }
      for (std::size_t s = 0; s < steps_; ++s) {
        std::int64_t here = 0;
        for (std::size_t c = 0; c < n_; ++c) here += ws_[c][s];
        ws = std::max(ws, here);
      }
      memory_is_free = all + ws <= *opt_.budgets.device;
    }
    for (std::size_t c = 0; c < n_; ++c) {
      drop_dominated(holdings_[c], memory_is_free);
      // Cheapest first: the search meets good placements early and prunes the rest sooner.
      std::stable_sort(holdings_[c].begin(), holdings_[c].end(), [&](const holding& a, const holding& b) {
        return a.transfer_lb(opt_.cost) < b.transfer_lb(opt_.cost);
      });
      double lb = std::numeric_limits<double>::infinity();
      for (const auto& h : holdings_[c]) lb = std::min(lb, h.transfer_lb(opt_.cost));
      min_transfer_lb_[c] = lb;
    }
  }

  /// Stream options tried for a block list of n >= 2 blocks: one slot without prefetch (the least
  /// memory: every copy waits for the compute before it and the compute for the copy), then 2, 3,
  /// 4, 6, 8, 12, 16, ... slots (powers of two and one and a half times them) below n, and n, each
  /// with one block prefetched. Each slot beyond two keeps about one more block from one pass to
  /// the next, so copies less.
  static std::vector<stream_options> slot_counts(int n) {
    std::vector<stream_options> out{{1, 0}};
    for (int p = 2; p < n; p *= 2) {
      out.push_back({p, 1});
      if (p + p / 2 < n) out.push_back({p + p / 2, 1});
    }
    out.push_back({n, 1});
    return out;
  }

  /// Drops the streamed holdings another one with the same residency and storage beats or equals
  /// in everything the search weighs: device bytes, block copies (bytes, and seconds from a
  /// pinned master) and deviation (e.g. more slots for a component that runs one pass per onload,
  /// which copies every block once whatever the slots; or more slots where fewer already hide
  /// their copies). Where `memory_is_free`, a holding that is faster from pinned and from pageable
  /// masters alike, or as fast and closer to all-resident, beats one that holds less; between
  /// equally fast and equally deviating ones the lower peak decides.
  static void drop_dominated(std::vector<holding>& hs, bool memory_is_free) {
    // Seconds compare with the search's tolerance: sums of the same copies in another order differ
    // in the last bits.
    auto faster = [](double x, double y) { return x < y - 1e-9 * std::max(1.0, y); };
    auto dominates = [&](const holding& a, const holding& b) {
      if (!(a.stream.enabled() && b.stream.enabled() && a.resident == b.resident && a.onloads == b.onloads &&
            a.store == b.store && a.stream_bytes <= b.stream_bytes && !faster(b.stream_pinned, a.stream_pinned) &&
            a.deviation <= b.deviation))
        return false;
      // Where memory is free, a holding at least as fast from either master that is closer to
      // all-resident wins every tie before the peak counts (one slot against two).
      return a.bytes <= b.bytes ||
             (memory_is_free && ((a.stream_bytes < b.stream_bytes && faster(a.stream_pinned, b.stream_pinned)) ||
                                 a.deviation < b.deviation));
    };
    std::vector<unsigned char> dominated(hs.size(), 0);
    for (std::size_t i = 0; i < hs.size(); ++i)
      for (std::size_t j = 0; j < hs.size() && !dominated[i]; ++j)
        // Of two equal ones the first stays.
        dominated[i] = j != i && dominates(hs[j], hs[i]) && (j < i || !dominates(hs[i], hs[j]));
    std::vector<holding> kept;
    for (std::size_t i = 0; i < hs.size(); ++i)
      if (!dominated[i]) kept.push_back(std::move(hs[i]));
    hs = std::move(kept);
  }

  [[nodiscard]] std::optional<std::size_t> index_of(const std::string& name) const {
    for (std::size_t c = 0; c < n_; ++c)
      if (comps_[c].name == name) return c;
    return std::nullopt;
  }
  [[nodiscard]] bool on_host(unsigned mask, std::size_t c) const { return (mask >> c) & 1u; }

  exec_info exec_of(unsigned mask) const {
    exec_info e;
    e.host_mask = mask;
    for (std::size_t s = 0; s < stages_.size(); ++s) {
      bool host = false;
      for (std::size_t c = 0; c < n_; ++c) host = host || (uses_[s][c] && on_host(mask, c));
      e.compute += opt_.cost.compute_seconds(stages_[s].seconds, host) * stages_[s].repeat;
    }
    e.device_ws.assign(steps_, 0);
    for (std::size_t c = 0; c < n_; ++c) e.masters += on_host(mask, c) ? comps_[c].bytes : min_master_[c];
    e.host_peak = e.masters;
    for (std::size_t s = 0; s < steps_; ++s) {
      std::int64_t host_ws = 0;
      for (std::size_t c = 0; c < n_; ++c) (on_host(mask, c) ? host_ws : e.device_ws[s]) += ws_[c][s];
      if (e.masters + host_ws > e.host_peak) e.host_peak = e.masters + host_ws, e.host_step = s;
    }
    e.lower_bound = e.compute;
    for (std::size_t c = 0; c < n_; ++c)
      if (!on_host(mask, c)) e.lower_bound += min_transfer_lb_[c];
    return e;
  }

  // ---- pricing ----------------------------------------------------------------------------
  /// One choice of the pinned masters: which components (bit c), their bytes, the transfer time.
  struct pin_choice {
    unsigned mask = 0;
    std::int64_t bytes = 0;
    double transfer = 0;
    std::int64_t host_extra = 0; ///< host bytes the pinned chunks take beyond the masters' bytes
  };

  /// What a component's block copies add, from a pinned and from a pageable master (zero where
  /// it does not stream).
  struct streaming_seconds {
    double pinned = 0, pageable = 0;
  };

  /// Every choice of pinned masters within the pinned budget, with its transfer seconds: each moved
  /// component's `onloads` copies of `onload_bytes` and what its block copies add (`streams`), from
  /// its pinned or pageable master (a pinned component pins its whole master: `pinned_bytes`, its
  /// `master_bytes` packed into power-of-two chunks, which the host budget then holds instead,
  /// above `host_peak`). Pinning itself costs cost_model::pin_seconds of the pinned bytes, spread
  /// over budget_options::runs.
  [[nodiscard]] std::vector<pin_choice> pin_choices(const std::vector<int>& onloads,
                                                    const std::vector<std::int64_t>& onload_bytes,
                                                    const std::vector<std::int64_t>& master_bytes,
                                                    const std::vector<std::int64_t>& pinned_bytes,
                                                    const std::vector<streaming_seconds>& streams,
                                                    std::int64_t host_peak) const {
    std::vector<std::size_t> moved;
    for (std::size_t c = 0; c < n_; ++c)
      if (onloads[c] > 0 || streams[c].pageable > 0) moved.push_back(c);
    std::vector<pin_choice> out;
    for (unsigned sub = 0; sub < (1u << moved.size()); ++sub) {
      pin_choice ch;
      for (std::size_t i = 0; i < moved.size(); ++i) {
        const auto c = moved[i];
        const bool pin = (sub >> i) & 1u;
        if (pin) {
          ch.bytes += pinned_bytes[c];
          ch.host_extra += pinned_bytes[c] - master_bytes[c];
          ch.mask |= 1u << c;
        }
        const auto from = pin ? host_memory::pinned : host_memory::pageable;
        ch.transfer += onloads[c] * opt_.cost.transfer_seconds(onload_bytes[c], from) +
                       (pin ? streams[c].pinned : streams[c].pageable);
      }
      if (opt_.budgets.pinned && ch.bytes > *opt_.budgets.pinned) continue;
      if (opt_.budgets.host && host_peak + ch.host_extra > *opt_.budgets.host) continue;
      ch.transfer += opt_.cost.pin_seconds(ch.bytes) / opt_.runs; // pinning the masters, spread over the runs
      out.push_back(ch);
    }
    return out;
  }

  /// The fastest of `choices` (the fewest pinned bytes among equals) set into `k` (pinning nothing
  /// is always a choice).
  static void take_fastest(candidate& k, const std::vector<pin_choice>& choices) {
    const pin_choice* best = nullptr;
    for (const auto& ch : choices)
      if (!best || ch.transfer < best->transfer * (1 - 1e-12) ||
          (ch.transfer <= best->transfer * (1 + 1e-12) && ch.bytes < best->bytes))
        best = &ch;
    k.transfer = best ? best->transfer : std::numeric_limits<double>::infinity();
    k.pinned_mask = best ? best->mask : 0;
    k.pinned_bytes = best ? best->bytes : 0;
    k.host_peak += (best ? best->host_extra : 0) - k.pinned_host_extra;
    k.pinned_host_extra = best ? best->host_extra : 0;
  }

  /// Cross-stage prefetch for each choice of pinned masters that could beat the best: prefetch
  /// needs pinned masters, so the choice that is fastest without it is not always the one that is
  /// fastest with it. `bound(mask)` is at most what prefetch can hide with those masters pinned.
  template <class Bound>
  void offer_prefetched_choices(const candidate& base, const std::vector<pin_choice>& choices,
                                const std::vector<int>& onloads, const std::vector<std::int64_t>& onload_bytes,
                                Bound bound) {
    std::vector<std::pair<double, const pin_choice*>> order; // optimistic time, choice
    for (const auto& ch : choices)
      if (const double b = bound(ch.mask); b > 0) order.emplace_back(base.compute + ch.transfer - b, &ch);
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [optimistic, ch] : order) {
      if (best_ && optimistic >= best_->time * (1 + 1e-9)) break; // neither this nor any later one can win
      candidate k = base;
      k.transfer = ch->transfer;
      k.pinned_mask = ch->mask;
      k.pinned_bytes = ch->bytes;
      k.host_peak += ch->host_extra - base.pinned_host_extra;
      k.pinned_host_extra = ch->host_extra;
      k.time = k.compute + k.transfer;
      offer_prefetched(k, onloads, onload_bytes);
    }
  }

  [[nodiscard]] bool better(const candidate& a, const candidate& b) const {
    const double eps = 1e-9 * std::max(1.0, std::max(a.time, b.time));
    if (a.time < b.time - eps) return true;
    if (a.time > b.time + eps) return false;
    if (a.deviation != b.deviation) return a.deviation < b.deviation;
    return a.device_peak < b.device_peak;
  }

  void offer(candidate k) {
    ++considered_;
    if (!best_ || better(k, *best_)) best_ = std::move(k);
  }

  // ---- static placements -------------------------------------------------------------------
  void search_static(const exec_info& e) {
    std::vector<std::int64_t> peak = e.device_ws;
    if (opt_.budgets.device)
      for (const auto b : peak)
        if (b > *opt_.budgets.device) return;
    std::vector<int> choice(n_, -1);
    dfs(e, 0, peak, choice, 0.0);
  }

  void dfs(const exec_info& e, std::size_t c, const std::vector<std::int64_t>& peak, std::vector<int>& choice,
           double transfer_lb) {
    if (best_) {
      double lb = e.compute + transfer_lb;
      for (std::size_t r = c; r < n_; ++r)
        if (!on_host(e.host_mask, r)) lb += min_transfer_lb_[r];
      if (lb > best_->time * (1 + 1e-9)) return;
    }
    if (c == n_) return leaf(e, peak, choice);
    if (on_host(e.host_mask, c)) {
      choice[c] = -1;
      return dfs(e, c + 1, peak, choice, transfer_lb);
    }
    std::vector<std::int64_t> next(steps_);
    for (std::size_t h = 0; h < holdings_[c].size(); ++h) {
      const auto& hold = holdings_[c][h];
      bool fits = true;
      for (std::size_t s = 0; s < steps_; ++s) {
        next[s] = peak[s] + (hold.resident[s] ? hold.bytes : 0);
        if (opt_.budgets.device && next[s] > *opt_.budgets.device) fits = false;
      }
      if (!fits) continue;
      choice[c] = static_cast<int>(h);
      dfs(e, c + 1, next, choice, transfer_lb + hold.transfer_lb(opt_.cost));
    }
  }

  void leaf(const exec_info& e, const std::vector<std::int64_t>& peak, const std::vector<int>& choice) {
    candidate k;
    k.host_mask = e.host_mask;
    k.choice = choice;
    k.compute = e.compute;
    k.host_peak = e.host_peak;
    std::vector<int> onloads(n_, 0);
    std::vector<std::int64_t> onload_bytes(n_, 0), master_bytes(n_, 0), pinned_bytes(n_, 0);
    std::vector<streaming_seconds> streams(n_);
    for (std::size_t c = 0; c < n_; ++c) {
      if (choice[c] < 0) {
        ++k.deviation;
        master_bytes[c] = comps_[c].bytes;
        pinned_bytes[c] = comps_[c].pinned_as(storage_dtype::native);
        continue;
      }
      const auto& h = holdings_[c][static_cast<std::size_t>(choice[c])];
      onloads[c] = h.onloads;
      onload_bytes[c] = h.onload_bytes;
      master_bytes[c] = h.master_bytes;
      pinned_bytes[c] = h.pinned_bytes;
      k.host_peak += h.master_bytes - min_master_[c]; // exec_of counted its smallest storage
      k.deviation += h.deviation;
      streams[c] = {h.streaming(opt_.cost, host_memory::pinned), h.streaming(opt_.cost, host_memory::pageable)};
    }
    if (opt_.budgets.host && k.host_peak > *opt_.budgets.host) return;
    const auto choices = pin_choices(onloads, onload_bytes, master_bytes, pinned_bytes, streams, k.host_peak);
    take_fastest(k, choices);
    k.time = k.compute + k.transfer;
    k.device_peak = *std::max_element(peak.begin(), peak.end());
    if (opt_.allow_prefetch) {
      // Nothing moves ahead into a stage that streams blocks (the scheduler's rule: its transfer
      // stream is taken), so onloads after such a stage hide nothing.
      std::vector<unsigned char> streaming(stages_.size(), 0);
      for (std::size_t c = 0; c < n_; ++c)
        if (choice[c] >= 0 && holdings_[c][static_cast<std::size_t>(choice[c])].stream.enabled())
          for (std::size_t t = 0; t < stages_.size(); ++t) streaming[t] = streaming[t] || uses_[t][c];
      offer_prefetched_choices(k, choices, onloads, onload_bytes, [&](unsigned mask) {
        double credit = 0;
        for (std::size_t c = 0; c < n_; ++c)
          if (choice[c] >= 0 && ((mask >> c) & 1u)) {
            const auto& h = holdings_[c][static_cast<std::size_t>(choice[c])];
            for (std::size_t s = 2; s < steps_; ++s)
              if (!streaming[s - 2]) credit += h.credit_step[s];
          }
        return credit;
      });
    }
    offer(std::move(k));
  }

  /// `k` scheduled with cross-stage prefetch under the device budget, offered when its prefetches
  /// hide time: per stage, the pinned copies of what it prefetches, at most its compute.
  void offer_prefetched(const candidate& base, const std::vector<int>& onloads,
                        const std::vector<std::int64_t>& onload_bytes) {
    candidate k = base;
    k.prefetch = true;
    const plan pl = schedule(stages_, comps_, policy_of(k),
                             {.accelerator = opt_.accelerator,
                              .devices = {{opt_.accelerator, opt_.budgets.device}},
                              .suggest = false});
    ++schedules_;
    if (!pl.fits()) return; // prefetches go only where there is room: not expected
    // The same copies, some of them earlier (else the pricing of `base` would not hold).
    std::vector<int> counted(n_, 0);
    for (const auto& st : pl.steps)
      for (const auto* list : {&st.before, &st.prefetch})
        for (const auto& a : *list)
          if (a.kind == action_kind::onload)
            if (const auto c = index_of(a.component)) ++counted[*c];
    if (counted != onloads) return;
    double credit = 0;
    for (std::size_t s = 1; s < pl.steps.size(); ++s) {
      double t = 0;
      for (const auto& a : pl.steps[s].prefetch)
        if (const auto c = index_of(a.component))
          t += opt_.cost.transfer_seconds(onload_bytes[*c], host_memory::pinned);
      // One repetition of the stage, slowed down where it executes on the host.
      bool host = false;
      for (std::size_t c = 0; c < n_; ++c) host = host || (uses_[s - 1][c] && k.choice[c] < 0);
      credit += std::min(t, opt_.cost.compute_seconds(stages_[s - 1].seconds, host));
    }
    if (credit <= 0) return;
    k.transfer -= credit;
    k.time -= credit;
    k.device_peak = pl.peak_of(opt_.accelerator);
    ++k.deviation;
    offer(std::move(k));
  }

  // ---- evict on demand ---------------------------------------------------------------------
  void search_on_demand(const exec_info& e) {
    // Native storage throughout: its host peak is the assignment's with every master native.
    std::int64_t host_peak = e.host_peak;
    for (std::size_t c = 0; c < n_; ++c)
      if (!on_host(e.host_mask, c)) host_peak += comps_[c].bytes - min_master_[c];
    if (opt_.budgets.host && host_peak > *opt_.budgets.host) return;
    if (best_ && e.lower_bound >= best_->time * (1 - 1e-9)) return; // cannot beat it: ties go to static
    std::vector<std::size_t> accel;
    for (std::size_t c = 0; c < n_; ++c)
      if (!on_host(e.host_mask, c)) accel.push_back(c);
    if (accel.empty()) return;
    for (unsigned lazy = 0; lazy < (1u << accel.size()); ++lazy) {
      candidate k;
      k.host_mask = e.host_mask;
      k.on_demand = true;
      k.choice.assign(n_, -1);
      for (std::size_t i = 0; i < accel.size(); ++i) k.choice[accel[i]] = static_cast<int>((lazy >> i) & 1u);
      const placement_policy p = policy_of(k);
      plan pl = schedule(stages_, comps_, p,
                         {.accelerator = opt_.accelerator,
                          .devices = {{opt_.accelerator, opt_.budgets.device}},
                          .suggest = false});
      ++schedules_;
      if (!pl.fits()) continue;
      std::vector<int> onloads(n_, 0);
      for (const auto& st : pl.steps)
        for (const auto& a : st.before)
          if (a.kind == action_kind::onload)
            if (const auto c = index_of(a.component)) ++onloads[*c];
      std::vector<std::int64_t> onload_bytes(n_), pinned_bytes(n_);
      for (std::size_t c = 0; c < n_; ++c) {
        onload_bytes[c] = comps_[c].bytes;
        pinned_bytes[c] = comps_[c].pinned_as(storage_dtype::native);
      }
      k.compute = e.compute;
      k.host_peak = host_peak;
      const auto choices = pin_choices(onloads, onload_bytes, onload_bytes, pinned_bytes,
                                       std::vector<streaming_seconds>(n_), host_peak);
      take_fastest(k, choices);
      k.time = k.compute + k.transfer;
      k.deviation = 1 + static_cast<int>(std::count(k.choice.begin(), k.choice.end(), 1)) +
                    static_cast<int>(std::count(k.choice.begin(), k.choice.end(), -1));
      k.device_peak = pl.peak_of(opt_.accelerator);
      // What prefetch can hide: the pinned copies after the first stage, each at most one
      // repetition of the stage before it (the slower of host and accelerator: an upper bound).
      if (opt_.allow_prefetch)
        offer_prefetched_choices(k, choices, onloads, onload_bytes, [&](unsigned mask) {
          double copies = 0;
          for (std::size_t c = 0; c < n_; ++c)
            if ((mask >> c) & 1u) copies += onloads[c] * opt_.cost.transfer_seconds(onload_bytes[c], host_memory::pinned);
          return std::min(copies, max_prefetch_hide_);
        });
      offer(std::move(k));
    }
  }

  // ---- the chosen policy -------------------------------------------------------------------
  [[nodiscard]] placement_policy policy_of(const candidate& k) const {
    placement_policy p;
    for (std::size_t c = 0; c < n_; ++c) {
      component_policy cp;
      if (k.choice[c] < 0) {
        cp.execute_on = target::host();
      } else if (k.on_demand) {
        cp.execute_on = target::accelerator();
        cp.load = k.choice[c] == 1 ? load_rule::first_use : load_rule::init;
        cp.evict = evict_rule::never;
      } else {
        const auto& h = holdings_[c][static_cast<std::size_t>(k.choice[c])];
        cp.execute_on = target::accelerator();
        cp.load = h.load;
        cp.evict = h.evict;
        cp.stream = h.stream;
        cp.store = h.store;
      }
      if ((k.pinned_mask >> c) & 1u) cp.memory = host_memory::pinned;
      if (const auto t = opt_.tiles.find(comps_[c].name); t != opt_.tiles.end()) cp.tile = t->second;
      p.components[comps_[c].name] = cp;
    }
    p.evict_on_demand = k.on_demand;
    p.prefetch = k.prefetch;
    p.set_label(p.str());
    return p;
  }

  budget_plan finish() {
    candidate& k = *best_;
    const placement_policy p = policy_of(k);
    budget_plan out;
    // The pinned choice does not change residency: an evict-on-demand plan is re-made only to carry
    // the final policy (with its pinned flags).
    out.plan = schedule(stages_, comps_, p,
                        {.accelerator = opt_.accelerator, .devices = {{opt_.accelerator, opt_.budgets.device}},
                         .suggest = false});
    ++schedules_;
    out.plan.require_fit(); // the search and the scheduler agree; a disagreement is reported here
    for (std::size_t s = 1; s < out.plan.steps.size(); ++s) {
      bool host = false;
      for (std::size_t c = 0; c < n_; ++c) host = host || (uses_[s - 1][c] && k.choice[c] < 0);
      out.plan.steps[s].seconds = opt_.cost.compute_seconds(stages_[s - 1].seconds, host);
    }
    for (std::size_t c = 0; c < n_; ++c)
      if (k.choice[c] >= 0 && !k.on_demand) {
        const auto& h = holdings_[c][static_cast<std::size_t>(k.choice[c])];
        if (!h.stream.enabled()) continue;
        const auto from = (k.pinned_mask >> c) & 1u ? host_memory::pinned : host_memory::pageable;
        for (std::size_t s = 1; s < out.plan.steps.size(); ++s)
          out.plan.steps[s].stream_seconds += h.streaming_step(opt_.cost, from, s);
      }
    out.plan.predicted_seconds = k.time;
    out.budgets = opt_.budgets;
    out.predicted_seconds = k.time;
    out.compute_seconds = k.compute;
    out.transfer_seconds = k.transfer;
    out.pin_seconds = opt_.cost.pin_seconds(k.pinned_bytes) / opt_.runs;
    out.device_peak_bytes = out.plan.peak_of(opt_.accelerator);
    out.pinned_bytes = k.pinned_bytes;
    out.host_peak_bytes = k.host_peak;
    out.placements_considered = considered_;
    out.schedules_run = schedules_;
    return out;
  }

  // ---- when nothing fits -------------------------------------------------------------------
  struct least {
    std::int64_t peak = std::numeric_limits<std::int64_t>::max();
    int deviation = std::numeric_limits<int>::max();
    std::size_t step = 0;
    std::vector<int> choice;
  };

  /// The least device peak of an execution assignment over all holdings; among equal peaks, the
  /// one closest to all-resident (the least deviation: rather two slots than one where the one
  /// saves nothing at the binding step), then the placement met first with each component's
  /// holdings taken by increasing device bytes, then deviation. That is the placement the error
  /// names.
  least least_device_peak(const exec_info& e) const {
    least best;
    std::vector<int> choice(n_, -1);
    std::vector<std::vector<std::size_t>> by_bytes(n_);
    for (std::size_t c = 0; c < n_; ++c) {
      for (std::size_t h = 0; h < holdings_[c].size(); ++h) by_bytes[c].push_back(h);
      std::stable_sort(by_bytes[c].begin(), by_bytes[c].end(), [&](auto a, auto b) {
        const auto &x = holdings_[c][a], &y = holdings_[c][b];
        return x.bytes != y.bytes ? x.bytes < y.bytes : x.deviation < y.deviation;
      });
    }
    // Peaks and deviations only grow along a branch: prune where both already lose.
    auto rec = [&](auto&& self, std::size_t c, const std::vector<std::int64_t>& peak, int deviation) -> void {
      const auto mx = *std::max_element(peak.begin(), peak.end());
      if (mx > best.peak || (mx == best.peak && deviation >= best.deviation)) return;
      if (c == n_) {
        best.peak = mx;
        best.deviation = deviation;
        best.step = static_cast<std::size_t>(std::max_element(peak.begin(), peak.end()) - peak.begin());
        best.choice = choice;
        return;
      }
      if (on_host(e.host_mask, c)) return self(self, c + 1, peak, deviation);
      std::vector<std::int64_t> next(steps_);
      for (const auto h : by_bytes[c]) {
        for (std::size_t s = 0; s < steps_; ++s)
          next[s] = peak[s] + (holdings_[c][h].resident[s] ? holdings_[c][h].bytes : 0);
        choice[c] = static_cast<int>(h);
        self(self, c + 1, next, deviation + holdings_[c][h].deviation);
      }
      choice[c] = -1;
    };
    rec(rec, 0, e.device_ws, 0);
    return best;
  }

  [[nodiscard]] std::string step_name(std::size_t s) const { return s == 0 ? "init" : stages_[s - 1].name; }

  [[noreturn]] void explain() const {
    const auto D = opt_.budgets.device;
    const auto H = opt_.budgets.host;
    // A: the least device memory with the host budget kept; B: the least host memory with the
    // device budget kept; unconstrained minima when neither exists.
    std::optional<std::pair<least, const exec_info*>> a, a_any;
    std::optional<const exec_info*> b, b_any;
    for (const auto& e : execs_) {
      const least l = least_device_peak(e);
      const bool host_ok = !H || e.host_peak <= *H;
      const bool dev_ok = !D || l.peak <= *D;
      if (host_ok && (!a || l.peak < a->first.peak)) a = std::pair{l, &e};
      if (!a_any || l.peak < a_any->first.peak) a_any = std::pair{l, &e};
      if (dev_ok && (!b || e.host_peak < (*b)->host_peak)) b = &e;
      if (!b_any || e.host_peak < (*b_any)->host_peak) b_any = &e;
    }
    auto comps_text = [&] {
      std::string s;
      for (const auto& c : comps_) s += fmt::format("{}{} {}", s.empty() ? "" : ", ", c.name, format_bytes(c.bytes));
      return s;
    };
    auto host_names = [&](unsigned mask) {
      std::string s;
      for (std::size_t c = 0; c < n_; ++c)
        if (on_host(mask, c)) s += (s.empty() ? "" : ", ") + comps_[c].name;
      return s.empty() ? std::string("every component on the accelerator") : "running " + s + " on the host";
    };
    auto least_policy = [&](const least& l, const exec_info& e) {
      candidate k;
      k.host_mask = e.host_mask;
      k.choice = l.choice;
      return policy_of(k).str();
    };
    const std::string head =
        fmt::format("no placement of the components ({}) fits the budgets (device {} on {}, pinned {}, host {}{})",
                    comps_text(), budget_text(D), opt_.accelerator.str(), budget_text(opt_.budgets.pinned),
                    budget_text(H), opt_.allow_host_execution ? "" : ", host execution not allowed");
    const auto& [dl, de] = a ? *a : *a_any;
    std::string changes;
    if (a) changes += fmt::format("a device budget of at least {}", format_bytes(dl.peak));
    if (b && H)
      changes += fmt::format("{}a host budget of at least {} ({})", changes.empty() ? "" : "; or ",
                             format_bytes((*b)->host_peak), host_names((*b)->host_mask));
    if (!a && !b)
      changes = fmt::format("a device budget of at least {} and a host budget of at least {}",
                            format_bytes(a_any->first.peak), format_bytes((*b_any)->host_peak));
    if (!a && b) {
      // Only the host budget binds: name the step where the host peaks.
      const auto& e = **b;
      throw capacity_error(
          "offload.capacity.no_placement_fits",
          fmt::format("{}: every placement that fits the device needs {} of host memory in stage '{}' (the "
                      "masters {} + host workspace), short by {}; smallest change that fits: {}",
                      head, format_bytes(e.host_peak), step_name(e.host_step), format_bytes(e.masters),
                      format_bytes(e.host_peak - H.value_or(0)), changes),
          device_id::cpu().str(), step_name(e.host_step), e.host_peak, H.value_or(0));
    }
    // The device binds: the least-memory placement's peak step.
    const std::size_t s = dl.step;
    std::int64_t held = 0;
    std::string held_names;
    for (std::size_t c = 0; c < n_; ++c)
      if (dl.choice[c] >= 0 && holdings_[c][static_cast<std::size_t>(dl.choice[c])].resident[s]) {
        held += holdings_[c][static_cast<std::size_t>(dl.choice[c])].bytes;
        held_names += fmt::format("{}{}", held_names.empty() ? "" : " + ", comps_[c].name);
      }
    const std::int64_t ws = de->device_ws[s];
    const std::int64_t shortfall = dl.peak - D.value_or(0);
    std::string ws_advice;
    if (s > 0 && ws > 0) {
      ws_advice = D && held > *D
                      ? fmt::format("; the components of stage '{}' alone need {}: a smaller workspace cannot fit it",
                                    step_name(s), format_bytes(held))
                      : fmt::format("; or a workspace in stage '{}' smaller by {} (e.g. a lower resolution or fewer "
                                    "frames)",
                                    step_name(s), format_bytes(shortfall));
    }
    throw capacity_error(
        "offload.capacity.no_placement_fits",
        fmt::format("{}: the placement that needs the least device memory ('{}') needs {} in stage '{}' ({}{}{}), "
                    "short by {}; smallest change that fits: {}{}",
                    head, least_policy(dl, *de), format_bytes(dl.peak), step_name(s),
                    held_names.empty() ? std::string() : fmt::format("{} {}", held_names, format_bytes(held)),
                    held_names.empty() || ws == 0 ? "" : " + ",
                    ws == 0 ? std::string() : fmt::format("workspace {}", format_bytes(ws)), format_bytes(shortfall),
                    changes, ws_advice),
        opt_.accelerator.str(), step_name(s), dl.peak, D.value_or(0));
  }

  const std::vector<stage>& stages_;
  const std::vector<component_info>& comps_;
  const budget_options& opt_;
  std::size_t n_, steps_;
  std::vector<std::vector<unsigned char>> uses_; ///< per stage, per component
  std::vector<std::vector<std::int64_t>> ws_;    ///< per component, per step: its workspace
  std::vector<std::vector<holding>> holdings_;
  std::vector<double> min_transfer_lb_; ///< per component: the least transfer time of its holdings
  /// At most what cross-stage prefetch hides in all: one repetition of every stage but the last,
  /// the slower of host and accelerator.
  double max_prefetch_hide_ = 0;
  std::vector<std::int64_t> min_master_; ///< per component: its smallest master over the storages searched
  std::vector<exec_info> execs_;
  std::optional<candidate> best_;
  std::size_t considered_ = 0, schedules_ = 0;
};

} // namespace detail
} // namespace offload
