#include <offload/placement_policy.hpp>

#include <boost/test/unit_test.hpp>

using offload::evict_rule;
using offload::load_rule;
using offload::placement_policy;

namespace {
std::string error_of(std::string_view text) {
  try {
    (void)placement_policy::parse(text);
  } catch (const offload::config_error& e) {
    return e.what();
  }
  return "<parsed>";
}
} // namespace

BOOST_AUTO_TEST_SUITE(placement_policy_grammar)

BOOST_AUTO_TEST_CASE(parses_the_issue_example) {
  const auto p = placement_policy::parse("t5=cpu,vae=cuda:on_demand,dit=cuda");
  BOOST_TEST(p.of("t5").execute_on.is_host());
  BOOST_TEST((p.of("vae").load == load_rule::first_use));
  BOOST_TEST((p.of("vae").evict == evict_rule::when_idle));
  BOOST_TEST((p.of("dit").load == load_rule::init));
  BOOST_TEST((p.of("dit").evict == evict_rule::never));
  BOOST_TEST(p.explicit_names.size() == 3u);
}

BOOST_AUTO_TEST_CASE(named_devices_and_options) {
  const auto p = placement_policy::parse("dit=cuda:1:offload:pinned, vae=mock:0:lazy");
  BOOST_TEST((p.of("dit").execute_on.resolve(offload::device_id::mock(0)) == offload::device_id::cuda(1)));
  BOOST_TEST((p.of("dit").evict == evict_rule::after_use));
  BOOST_TEST((p.of("dit").memory == offload::host_memory::pinned));
  BOOST_TEST((p.of("vae").execute_on.resolve(offload::device_id::cuda(0)) == offload::device_id::mock(0)));
  BOOST_TEST((p.of("vae").load == load_rule::first_use));
  // Unnamed components fall back to resident on the accelerator.
  BOOST_TEST((p.of("t5").evict == evict_rule::never));
}

BOOST_AUTO_TEST_CASE(presets_equal_the_reference_flags) {
  const auto none = placement_policy::parse("resident");
  BOOST_TEST((none.of("t5").load == load_rule::first_use)); // T5 comes at text encode and stays
  BOOST_TEST((none.of("dit").evict == evict_rule::never));
  const auto off = placement_policy::parse("offload_model");
  for (const char* c : {"t5", "clip", "dit"}) BOOST_TEST((off.of(c).evict == evict_rule::after_use));
  BOOST_TEST((off.of("vae").evict == evict_rule::never));
  const auto vae = placement_policy::parse("offload_model+vae_cpu");
  BOOST_TEST((vae.of("vae").load == load_rule::first_use));
  BOOST_TEST((vae.of("dit").evict == evict_rule::when_idle)); // critical fix 1
  const auto vae_t5 = placement_policy::parse("offload_model+vae_cpu+t5_cpu");
  BOOST_TEST((vae_t5.of("dit").evict == evict_rule::after_use)); // T5 on the host: no fix needed
  BOOST_TEST(vae_t5.of("t5").execute_on.is_host());
  BOOST_TEST((placement_policy::parse("vae_cpu+offload_model") == vae)); // order-free
  BOOST_TEST((offload::wan_flags({.offload_model = true, .vae_cpu = true}) == vae));
  // Explicit entries override presets.
  const auto mixed = placement_policy::parse("offload_model,dit=cuda:on_demand:preload");
  BOOST_TEST((mixed.of("dit").evict == evict_rule::when_idle));
  BOOST_TEST((mixed.of("t5").evict == evict_rule::after_use));
  BOOST_TEST(placement_policy::parse("offload_model,evict_on_demand").evict_on_demand);
  // Cross-stage prefetch is a flag too, kept with presets and entries in any order.
  const auto pre = placement_policy::parse("prefetch+offload_model,dit=cuda:on_demand");
  BOOST_TEST(pre.prefetch);
  BOOST_TEST((pre.of("t5").evict == evict_rule::after_use));
  BOOST_TEST(!placement_policy::parse("offload_model").prefetch);
  BOOST_TEST(!(pre == placement_policy::parse("offload_model,dit=cuda:on_demand")));
  // `pinned` pins every master that moves (presets, entries, the unnamed) unless an entry says
  // pageable; a component executing on the host never moves and stays pageable.
  const auto pin = placement_policy::parse("offload_model+t5_cpu,pinned,dit=cuda:on_demand,vae=cuda:pageable,x=cuda");
  BOOST_TEST((pin.of("dit").memory == offload::host_memory::pinned));
  BOOST_TEST((pin.of("x").memory == offload::host_memory::pinned));
  BOOST_TEST((pin.of("clip").memory == offload::host_memory::pinned));
  BOOST_TEST((pin.of("unnamed").memory == offload::host_memory::pinned));
  BOOST_TEST((pin.of("vae").memory == offload::host_memory::pageable));
  BOOST_TEST((pin.of("t5").memory == offload::host_memory::pageable));
  BOOST_TEST(pin.str().find("vae=cuda:resident:pageable") != std::string::npos, pin.str());
  BOOST_TEST((pin == placement_policy::parse(pin.str())), pin.str());
  BOOST_TEST((placement_policy::parse("offload_model").of("dit").memory == offload::host_memory::pageable));
}

BOOST_AUTO_TEST_CASE(canonical_text_round_trips) {
  for (const char* text : {"resident", "offload_model", "offload_model+vae_cpu", "t5_cpu,vae_cpu",
                           "t5=cpu:pinned,vae=cuda:on_demand,dit=cuda:1:offload,evict_on_demand",
                           "offload_model,prefetch", "evict_on_demand,prefetch,t5=cpu",
                           "x=cuda:lazy:offload,y=mock:3:on_demand:preload", "pinned",
                           "offload_model+vae_cpu,pinned,prefetch,dit=cuda:pageable"}) {
    const auto p = placement_policy::parse(text);
    const auto q = placement_policy::parse(p.str());
    BOOST_TEST((p.components == q.components), text);
    BOOST_TEST(p.evict_on_demand == q.evict_on_demand);
    BOOST_TEST((p == q), text << " -> " << p.str());
  }
}

BOOST_AUTO_TEST_CASE(errors_point_at_the_offending_position) {
  auto e = error_of("t5=cpu,vae=cuda:on_demnd");
  BOOST_TEST(e.find("offload.config.policy_syntax") != std::string::npos);
  BOOST_TEST(e.find("at position 16") != std::string::npos);
  BOOST_TEST(e.find("found 'on_demnd'") != std::string::npos);
  BOOST_TEST(e.find("\n" + std::string(2 + 16, ' ') + "^") != std::string::npos); // caret under the typo
  e = error_of("ofload_model");
  BOOST_TEST(e.find("at position 0") != std::string::npos);
  BOOST_TEST(e.find("a preset (offload_model") != std::string::npos);
  e = error_of("t5=tpu");
  BOOST_TEST(e.find("a target (cpu, cuda, gpu, cuda:N, mock:N), found 'tpu'") != std::string::npos);
  e = error_of("t5=cpu:offload");
  BOOST_TEST(e.find("only 'pinned', 'pageable', 'store' or 'tile' after 'cpu'") != std::string::npos);
  e = error_of("t5=cpu;vae=cuda");
  BOOST_TEST(e.find("',' or '+' between items") != std::string::npos);
  e = error_of("t5=cpu,t5=cuda");
  BOOST_TEST(e.find("component 't5' once") != std::string::npos);
  e = error_of("");
  BOOST_TEST(e.find("found end of text") != std::string::npos);
  e = error_of("dit=mock");
  BOOST_TEST(e.find("':N' after 'mock'") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
