#pragma once
/// \file
/// Runs a plan on mock devices with sized components (no weights): the simulated peaks, the
/// virtual time and the timeline of a schedule at real model sizes. A plan that does not fit fails
/// here with the mock's capacity_error — the simulated out-of-memory — naming the stage.
///
/// **Example**
/// \code
/// auto plan = offload::schedule(stages, components, policy, {.accelerator = offload::device_id::mock(0)});
/// auto sim = offload::testing::simulate(plan, components);
/// sim.peak_bytes.at(offload::device_id::mock(0));
/// \endcode

#include <offload/executor.hpp>
#include <offload/plan.hpp>
#include <offload/stage.hpp>
#include <offload/testing/mock_device.hpp>
#include <offload/testing/sized_component.hpp>

#include <map>
#include <memory>
#include <vector>

namespace offload::testing {

struct simulation_result {
  std::map<device_id, std::int64_t> peak_bytes; ///< per mock device
  std::map<device_id, std::int64_t> final_bytes;
  double seconds = 0;                           ///< virtual time of the whole run
  std::int64_t transfers = 0;
  timeline trace;
};

/// Simulates `p` on one mock device per accelerator of the plan (capacity from the plan, bandwidths
/// from `options`), running every stage `repeat` times with its compute seconds.
inline simulation_result simulate(const plan& p, const std::vector<component_info>& components,
                                  mock_options options = {}) {
  device_set devices;
  devices.clock().make_virtual();
  for (const auto& d : p.accelerators()) {
    if (!d.is_mock())
      throw config_error("offload.config.simulate_real_device",
                         fmt::format("simulate() runs on mock devices; the plan uses {}: plan with "
                                     "accelerator mock:N",
                                     d.str()));
    mock_options o = options;
    o.capacity = p.capacity.at(d).value_or(std::int64_t{1} << 62);
    devices.emplace<mock_device>(d.index, o, devices.clock());
  }
  std::vector<std::unique_ptr<sized_component>> owned;
  std::vector<component*> comps;
  for (const auto& c : detail::stored_infos(components, p.policy)) {
    const bool pinned = p.policy.of(c.name).memory == host_memory::pinned;
    owned.push_back(std::make_unique<sized_component>(c.name, c.bytes, pinned, c.blocks));
    comps.push_back(owned.back().get());
  }
  executor ex(p, devices, comps);
  ex.start();
  for (std::size_t i = 1; i < p.steps.size(); ++i)
    for (int r = 0; r < p.steps[i].repeat; ++r) {
      auto scope = ex.enter(p.steps[i].stage);
      // Streamed blocks are not moved block by block here: the stage's last repetition is charged
      // the plan's streaming time (plan_step::stream_seconds).
      scope.compute(p.steps[i].seconds + (r + 1 == p.steps[i].repeat ? p.steps[i].stream_seconds : 0.0));
    }
  ex.finish();
  simulation_result out;
  for (auto* d : devices.all()) {
    if (d->id().is_host()) continue;
    out.peak_bytes[d->id()] = d->peak();
    out.final_bytes[d->id()] = d->used();
    out.transfers += d->transfers();
  }
  out.seconds = devices.clock().now();
  out.trace = ex.trace();
  return out;
}

} // namespace offload::testing
