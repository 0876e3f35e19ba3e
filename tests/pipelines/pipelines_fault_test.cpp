// Fault injection through whole Wan pipelines on a mock GPU (issue 7): for T2V and I2V on the tiny
// golden-set models, under policies that move components (offload_model+vae_cpu, t5_cpu) or
// stream them (T5 and DiT through block slots), a clean run counts the mock's allocations,
// transfers and compute points; then a failure is injected at every allocation and at every
// transfer in turn (I2V: every allocation), and for the streamed policy at every compute point
// (fail_allocation_at(n) / fail_transfer_at(n) / fail_record_compute_at(n)). None of these
// policies has a fallback, so each faulted run must end in an offload error whose message names
// the stage, the policy and the component (or the stage's workspace and its component). Afterwards:
//  * every component is home, where these policies keep it between runs, and its audit on the host
//    passes (every tensor is its host master again, nothing stranded on the mock);
//  * every host master is bit-identical to a copy taken before the faults;
//  * the mock's bytes are back to the baseline (0);
//  * the next run in the same process succeeds and its video is bit-identical to the clean run's.
#include "wan/image2video.hpp"
#include "wan/text2video.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <offload/errors.hpp>
#include <offload/offloadable.hpp>
#include <offload/testing/mock_device.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "parity_harness.hpp"
#include "tiny_components.hpp"

namespace wt = wan::testing;
using offload::device_id;

namespace {

const device_id gpu = device_id::mock(0);

std::shared_ptr<wan::WanComponents> components(const std::string& kind) { return wt::tiny_components(kind); }

/// One tiny generation (the problem of pipelines_test.cpp).
torch::Tensor generate(const std::string& kind, const wan::execution& exec) { return wt::tiny_generate(kind, exec); }

/// The registry behind a Wan component (its concrete offloadable type).
const offload::tensor_registry& registry_of(const offload::component& c) {
  if (const auto* t = dynamic_cast<const offload::offloadable<wan::T5Encoder>*>(&c)) return t->tensors();
  if (const auto* t = dynamic_cast<const offload::offloadable<wan::XLMRobertaCLIP>*>(&c)) return t->tensors();
  if (const auto* t = dynamic_cast<const offload::offloadable<wan::WanModel>*>(&c)) return t->tensors();
  if (const auto* t = dynamic_cast<const offload::offloadable<wan::WanVAE_>*>(&c)) return t->tensors();
  throw std::logic_error("component " + c.name() + " has an offloadable type this test does not know");
}

/// Copies of every host master, by "component.path".
std::map<std::string, torch::Tensor> snapshot_masters(const wan::WanComponents& comps) {
  std::map<std::string, torch::Tensor> out;
  for (const auto* c : comps.components()) {
    const auto& reg = registry_of(*c);
    for (const auto& t : reg.tensors()) out[c->name() + "." + t.path] = reg.master(t.path).clone();
  }
  return out;
}

/// The state every fault must leave: all home, audits pass, masters intact, mock back to baseline.
void check_intact(const wan::WanComponents& comps, const std::map<std::string, torch::Tensor>& masters,
                  const offload::testing::mock_device& mock, std::int64_t baseline, const std::string& where) {
  for (const auto* c : comps.components()) {
    BOOST_TEST(c->location().is_host(), where << ": " << c->name() << " is on " << c->location().str());
    try {
      c->audit(device_id::cpu(), {"after the fault", where});
    } catch (const offload::error& e) {
      BOOST_ERROR(where << ": audit after the fault: " << e.what());
    }
    const auto& reg = registry_of(*c);
    for (const auto& t : reg.tensors()) {
      const auto it = masters.find(c->name() + "." + t.path);
      BOOST_TEST_REQUIRE((it != masters.end()), where << ": new tensor " << c->name() << "." << t.path);
      const auto& m = reg.master(t.path);
      BOOST_TEST((m.device().is_cpu() && m.scalar_type() == it->second.scalar_type() &&
                  m.sizes() == it->second.sizes() && torch::equal(m, it->second)),
                 where << ": host master " << it->first << " changed");
    }
  }
  BOOST_TEST(mock.used() == baseline, where << ": mock holds " << mock.used() << " bytes, baseline " << baseline);
}

/// OFFLOAD_FAULT_STRIDE (a positive integer), else count / 40 (at least 1).
std::int64_t fault_stride(std::int64_t count) {
  if (const char* env = std::getenv("OFFLOAD_FAULT_STRIDE"); env != nullptr && *env != '\0') {
    const std::int64_t k = std::atoll(env);
    BOOST_TEST_REQUIRE(k > 0, "OFFLOAD_FAULT_STRIDE must be a positive integer, found '" << env << "'");
    return k;
  }
  return std::max<std::int64_t>(1, count / 40);
}

struct fault_counts {
  std::int64_t allocations = 0, transfers = 0, compute_points = 0;
};

/// What fails: an allocation (`fail_allocation_at`), a transfer (`fail_transfer_at`) or the
/// recording of a compute point (`fail_record_compute_at`: a CUDA device in an error state).
enum class fault { allocation, transfer, compute_point };

const char* name_of(fault f) {
  return f == fault::allocation ? "allocation" : f == fault::transfer ? "transfer" : "compute point";
}

/// Runs every injection of one kind.
void inject_every(const std::string& kind, const std::string& policy, fault what) {
  auto comps = components(kind);
  offload::device_set devices;
  auto& mock = offload::testing::add_mock(devices, 0);
  const wan::execution exec{&devices, gpu, offload::parse_policy(policy)};
  const std::int64_t baseline = mock.used();
  BOOST_TEST_REQUIRE(baseline == 0);
  const auto masters = snapshot_masters(*comps);

  // The clean run: counts and the reference video.
  const std::int64_t a0 = mock.allocations(), t0 = mock.transfers(), c0 = mock.compute_points();
  const torch::Tensor clean = generate(kind, exec);
  const fault_counts clean_counts{mock.allocations() - a0, mock.transfers() - t0, mock.compute_points() - c0};
  const std::int64_t count = what == fault::allocation ? clean_counts.allocations
                             : what == fault::transfer ? clean_counts.transfers
                                                       : clean_counts.compute_points;
  BOOST_TEST_MESSAGE(fmt::format("{} under '{}': clean run {} allocations, {} transfers, {} compute points on mock:0",
                                 kind, policy, clean_counts.allocations, clean_counts.transfers,
                                 clean_counts.compute_points));
  BOOST_TEST_REQUIRE(count > 0);
  check_intact(*comps, masters, mock, baseline, "clean run");

  std::map<std::string, std::string> component_names; // prefix -> name, for the message check
  for (const auto* c : comps->components()) component_names["'" + c->name() + "."] = c->name();
  std::map<std::string, int> failed_in_stage;
  // Which faults: every one with OFFLOAD_FAULT_STRIDE=1 (the full sweep, docs/robustness.md);
  // by default every k-th so that a sweep injects about 40 (the first and the last always), which
  // keeps CI short while still failing inside every stage's moves.
  const std::int64_t stride = fault_stride(count);
  std::vector<std::int64_t> faults;
  for (std::int64_t n = 1; n <= count; n += stride) faults.push_back(n);
  if (faults.back() != count) faults.push_back(count);
  for (const std::int64_t n : faults) {
    const std::string where = fmt::format("{} '{}' {} {}/{}", kind, policy, name_of(what), n, count);
    if (what == fault::allocation) mock.fail_allocation_at(n);
    else if (what == fault::transfer) mock.fail_transfer_at(n);
    else mock.fail_record_compute_at(n);
    bool threw = false;
    try {
      (void)generate(kind, exec);
    } catch (const offload::capacity_error& e) {
      threw = true;
      const std::string msg = e.what();
      BOOST_TEST(e.id() == "offload.capacity.injected_fault", where << ": " << msg);
      // The stage (from the executor), the policy, and the component whose tensor or workspace failed.
      BOOST_TEST(!e.stage().empty(), where << ": no stage in " << msg);
      BOOST_TEST(msg.find(fmt::format("stage '{}', policy '{}'", e.stage(), policy)) != std::string::npos,
                 where << ": " << msg);
      bool names_component = false;
      for (const auto& [prefix, name] : component_names)
        if (msg.find(prefix) != std::string::npos ||
            msg.find(fmt::format("'workspace:{} ({}", e.stage(), name)) != std::string::npos)
          names_component = true;
      BOOST_TEST(names_component, where << ": no component named in " << msg);
      ++failed_in_stage[e.stage()];
    } catch (const std::exception& e) {
      BOOST_ERROR(where << ": expected offload::capacity_error, got " << e.what());
      threw = true;
    }
    BOOST_TEST(threw, where << ": the injected fault did not fire");
    mock.fail_allocation_at(0);
    mock.fail_transfer_at(0);
    mock.fail_record_compute_at(0);
    check_intact(*comps, masters, mock, baseline, where);
    // The next run in the same process succeeds and gives the clean run's video, bit for bit.
    try {
      const torch::Tensor again = generate(kind, exec);
      BOOST_TEST(torch::equal(again, clean), where << ": the run after the fault differs from the clean run");
    } catch (const std::exception& e) {
      BOOST_ERROR(where << ": the run after the fault failed: " << e.what());
    }
    check_intact(*comps, masters, mock, baseline, where + " (next run)");
  }
  std::string stages;
  for (const auto& [s, k] : failed_in_stage) stages += fmt::format(" {}:{}", s, k);
  BOOST_TEST_MESSAGE(fmt::format("{} under '{}': {} of {} {} faults injected (stride {}), by stage:{}", kind,
                                 policy, faults.size(), count, name_of(what), stride, stages));
}

} // namespace

BOOST_AUTO_TEST_SUITE(pipelines_fault)

// CI time: by default each sweep injects about 40 faults (see fault_stride); OFFLOAD_FAULT_STRIDE=1
// injects every one (about 1 900 faulted runs, each followed by a full run: minutes). offload_model
// alone and I2V's transfer sweep (both passed, docs/robustness.md) add no code path these five do
// not cover:
// t5_cpu moves the DiT and VAE at init and keeps them, offload_model+vae_cpu moves all three
// components per stage (DiT when idle, T5 and VAE after use), and I2V adds CLIP and VAE encode.
BOOST_AUTO_TEST_CASE(t2v_offload_model_vae_cpu_every_allocation) {
  inject_every("t2v", "offload_model+vae_cpu", fault::allocation);
}
BOOST_AUTO_TEST_CASE(t2v_offload_model_vae_cpu_every_transfer) {
  inject_every("t2v", "offload_model+vae_cpu", fault::transfer);
}
BOOST_AUTO_TEST_CASE(t2v_t5_cpu_every_allocation) { inject_every("t2v", "t5_cpu", fault::allocation); }
BOOST_AUTO_TEST_CASE(t2v_t5_cpu_every_transfer) { inject_every("t2v", "t5_cpu", fault::transfer); }
BOOST_AUTO_TEST_CASE(i2v_offload_model_vae_cpu_every_allocation) {
  inject_every("i2v", "offload_model+vae_cpu", fault::allocation);
}

// Streamed T5 and DiT (block copies during the stages' compute, into slots whose first fills wait
// for a compute point): faults inside a stage's compute must name the stage, the policy and the
// component too (stage_scope::run), and a failed compute point (a CUDA device in an error state)
// must leave everything home like any other fault.
const std::string streamed_policy =
    "t5=cuda:on_demand:stream=2:pinned,dit=cuda:on_demand:stream=2:pinned,vae=cuda:on_demand:pinned";
BOOST_AUTO_TEST_CASE(t2v_streamed_every_allocation) { inject_every("t2v", streamed_policy, fault::allocation); }
BOOST_AUTO_TEST_CASE(t2v_streamed_every_transfer) { inject_every("t2v", streamed_policy, fault::transfer); }
BOOST_AUTO_TEST_CASE(t2v_streamed_every_compute_point) {
  inject_every("t2v", streamed_policy, fault::compute_point);
}

BOOST_AUTO_TEST_SUITE_END()
