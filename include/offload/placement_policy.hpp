#pragma once
/// \file
/// Declarative placement policies: per component, where it executes, when it comes to that device,
/// when it leaves, and what kind of host memory holds its master. A text form for the command line
/// (grammar in docs/policies.md) and presets equal to Wan's flags.
///
/// **Example**
/// \code
/// auto p = offload::placement_policy::parse("offload_model,vae=cuda:on_demand");
/// auto q = offload::placement_policy::parse("t5=cpu,vae=cuda:on_demand,dit=cuda");
/// auto s = offload::placement_policy::parse("dit=cuda:on_demand:stream=2:store=bf16,vae=cuda:tile=32");
/// auto r = offload::wan_flags({.offload_model = true, .vae_cpu = true});
/// std::string text = r.str();   // canonical form, parses back to the same policy
/// \endcode

#include <offload/device.hpp>
#include <offload/errors.hpp>
#include <offload/storage.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace offload {

/// When a component first comes to its execution device.
enum class load_rule : std::uint8_t {
  init,      ///< at the start of the run (the reference builds it there)
  first_use, ///< at the first stage that uses it
};

/// When a component leaves its execution device for the host.
enum class evict_rule : std::uint8_t {
  never,     ///< stays once loaded
  after_use, ///< after each run of stages that use it (Wan's offload_model)
  when_idle, ///< on the device only during stages that use it (also leaves before its first use
             ///< when loaded at init)
};

/// Host memory of a component's master copy.
enum class host_memory : std::uint8_t { pageable, pinned };

/// An execution target: the host, the run's accelerator (`cuda`/`gpu`, bound when planning — a
/// real `cuda:N` or a `mock:N`), or one named device.
struct target {
  enum class kind : std::uint8_t { host, accelerator, named } k = kind::accelerator;
  device_id id{};
  static target host() { return {kind::host, device_id::cpu()}; }
  static target accelerator() { return {kind::accelerator, {}}; }
  static target named(device_id d) { return d.is_host() ? host() : target{kind::named, d}; }
  [[nodiscard]] device_id resolve(device_id accelerator) const {
    switch (k) {
      case kind::host: return device_id::cpu();
      case kind::accelerator: return accelerator;
      case kind::named: return id;
    }
    return device_id::cpu();
  }
  [[nodiscard]] bool is_host() const noexcept { return k == kind::host; }
  friend bool operator==(const target& a, const target& b) {
    return a.k == b.k && (a.k != kind::named || a.id == b.id);
  }
};

/// Block streaming of a component's block list (`:stream=K:prefetch=D`): K device slots hold
/// blocks, the next D blocks are copied while the current one computes. 0 slots: not streamed
/// (the whole component moves as one).
struct stream_options {
  int slots = 0;
  int prefetch = 0;
  [[nodiscard]] bool enabled() const noexcept { return slots > 0; }
  friend bool operator==(const stream_options&, const stream_options&) = default;
};

/// Tiled execution of a component that offers it (`:tile=N:overlap=M`, e.g. the Wan VAE's
/// spatial tiles): tiles of `size` units overlapping by `overlap` (the component says what a unit
/// is; the Wan VAE counts latent pixels). 0: not tiled.
struct tile_options {
  int size = 0;
  int overlap = 0;
  [[nodiscard]] bool enabled() const noexcept { return size > 0; }
  friend bool operator==(const tile_options&, const tile_options&) = default;
};

/// The policy of one component.
struct component_policy {
  offload::target execute_on = target::accelerator();
  load_rule load = load_rule::init;
  evict_rule evict = evict_rule::never;
  host_memory memory = host_memory::pageable;
  stream_options stream{};
  /// Storage dtype of the tensors its storage rule selects (storage.hpp); native: as they are.
  storage_dtype store = storage_dtype::native;
  tile_options tile{};
  friend bool operator==(const component_policy&, const component_policy&) = default;
};

/// Wan's reference flags (generate.py), as a preset.
struct wan_flag_set {
  bool offload_model = false;
  bool t5_cpu = false;
  bool vae_cpu = false;
};

/// A placement policy: one component_policy per named component, a default for the others, and
/// whether the scheduler may evict on demand when a stage lacks room.
class placement_policy {
public:
  /// Components not named: resident on the accelerator.
  component_policy fallback{};
  std::map<std::string, component_policy, std::less<>> components;
  /// Components named explicitly (`name=...` in the text): the scheduler checks that they exist.
  /// Preset entries for components a pipeline lacks (e.g. `clip` in text-to-video) are ignored.
  std::vector<std::string> explicit_names;
  /// When a stage needs room, evict the resident components needed latest (Belady), minimally.
  bool evict_on_demand = false;
  /// Cross-stage prefetch (`prefetch`): a component the next stage brings in starts moving during
  /// the current stage's last repetition, on the transfer stream, when its master is pinned, that
  /// stage streams no blocks on the device, and the device has room for it on top of that stage's
  /// peak. Its copy then overlaps compute instead of preceding the stage. The word `pinned` pins
  /// the master of every component that moves, unless its entry says `pageable`
  /// (`offload_model+vae_cpu,pinned,prefetch`).
  bool prefetch = false;

  [[nodiscard]] const component_policy& of(std::string_view component) const {
    const auto it = components.find(component);
    return it == components.end() ? fallback : it->second;
  }

  /// Parses the text form; throws config_error pointing at the offending position.
  static placement_policy parse(std::string_view text);

  /// Canonical text: presets are expanded into explicit entries; parse(str()) == *this.
  [[nodiscard]] std::string str() const;

  /// The name given at construction (the text it was parsed from, or a preset name), for messages.
  [[nodiscard]] const std::string& label() const noexcept { return label_; }
  placement_policy& set_label(std::string l) { label_ = std::move(l); return *this; }

  friend bool operator==(const placement_policy& a, const placement_policy& b) {
    return a.fallback == b.fallback && a.components == b.components &&
           a.evict_on_demand == b.evict_on_demand && a.prefetch == b.prefetch;
  }

private:
  std::string label_ = "custom";
};

/// The Wan presets. Component names: `t5`, `clip`, `dit`, `vae`. They reproduce the reference:
/// - no flag: T5 executes on the accelerator, arrives at text encode and stays; CLIP, DiT, VAE
///   are on the accelerator from the start and stay.
/// - `offload_model`: T5, CLIP and the DiT leave after their stages (`.cpu()` in the reference).
/// - `t5_cpu`: T5 executes on the host.
/// - `vae_cpu` (the seed plan): the VAE lives on the host and comes to the accelerator only for its
///   stages, its mean/std with it; with `offload_model` and T5 on the accelerator, the DiT leaves
///   before T5 arrives ("critical fix 1") and returns for the denoising loop.
inline placement_policy wan_flags(wan_flag_set f) {
  placement_policy p;
  component_policy t5{target::accelerator(), load_rule::first_use, evict_rule::never};
  component_policy clip{}, dit{}, vae{};
  if (f.offload_model) {
    t5.evict = evict_rule::after_use;
    clip.evict = evict_rule::after_use;
    dit.evict = evict_rule::after_use;
  }
  if (f.t5_cpu) t5 = component_policy{target::host(), load_rule::init, evict_rule::never};
  if (f.vae_cpu) {
    vae.load = load_rule::first_use;
    vae.evict = evict_rule::after_use;
    if (f.offload_model && !f.t5_cpu) dit.evict = evict_rule::when_idle;
  }
  p.components = {{"t5", t5}, {"clip", clip}, {"dit", dit}, {"vae", vae}};
  std::string label;
  for (auto [on, name] : {std::pair{f.offload_model, "offload_model"}, std::pair{f.t5_cpu, "t5_cpu"},
                          std::pair{f.vae_cpu, "vae_cpu"}})
    if (on) label += (label.empty() ? "" : "+") + std::string(name);
  p.set_label(label.empty() ? "resident" : label);
  return p;
}

namespace detail {

inline std::string_view to_string(load_rule r) { return r == load_rule::init ? "init" : "first_use"; }
inline std::string_view to_string(evict_rule r) {
  switch (r) {
    case evict_rule::never: return "never";
    case evict_rule::after_use: return "after_use";
    case evict_rule::when_idle: return "when_idle";
  }
  return "?";
}

class policy_parser {
public:
  explicit policy_parser(std::string_view text) : text_(text) {}

  placement_policy run() {
    placement_policy p;
    wan_flag_set flags;
    bool any_flag = false, pin_rest = false;
    std::vector<std::string> default_memory; ///< entries that do not say pinned or pageable
    std::vector<std::pair<std::string, component_policy>> entries;
    skip_spaces();
    if (pos_ == text_.size()) fail("a preset name or an entry 'component=target'");
    while (true) {
      const std::size_t word_pos = pos_;
      const std::string word = identifier("a preset name or a component name");
      skip_spaces();
      if (peek() == '=') {
        ++pos_;
        skip_spaces();
        for (const auto& [n, _] : entries)
          if (n == word) fail_at(word_pos, fmt::format("component '{}' once (it is given twice)", word));
        memory_given_ = false;
        entries.emplace_back(word, entry());
        if (!memory_given_) default_memory.push_back(word);
      } else if (word == "offload_model") flags.offload_model = any_flag = true;
      else if (word == "t5_cpu") flags.t5_cpu = any_flag = true;
      else if (word == "vae_cpu") flags.vae_cpu = any_flag = true;
      else if (word == "resident") any_flag = true;
      else if (word == "evict_on_demand") p.evict_on_demand = true;
      else if (word == "prefetch") p.prefetch = true;
      else if (word == "pinned") pin_rest = true;
      else
        fail_at(word_pos, "a preset (offload_model, t5_cpu, vae_cpu, resident, evict_on_demand, prefetch, pinned) "
                          "or 'component=target'");
      skip_spaces();
      if (pos_ == text_.size()) break;
      if (peek() != ',' && peek() != '+') fail("',' or '+' between items");
      ++pos_;
      skip_spaces();
    }
    if (any_flag) {
      const bool eod = p.evict_on_demand, pre = p.prefetch;
      p = wan_flags(flags);
      p.evict_on_demand = eod;
      p.prefetch = pre;
    }
    for (auto& [name, cp] : entries) {
      p.components[name] = cp;
      p.explicit_names.push_back(name);
    }
    if (pin_rest) {
      // Every component that moves to the accelerator keeps a pinned master (the presets', the
      // unnamed, and the entries that do not say 'pageable'); one executing on the host never moves.
      p.fallback.memory = host_memory::pinned;
      for (auto& [name, cp] : p.components) {
        const bool named = std::find(p.explicit_names.begin(), p.explicit_names.end(), name) != p.explicit_names.end();
        const bool defaulted = std::find(default_memory.begin(), default_memory.end(), name) != default_memory.end();
        if (!cp.execute_on.is_host() && (!named || defaulted)) cp.memory = host_memory::pinned;
      }
    }
    p.set_label(std::string(text_));
    return p;
  }

private:
  component_policy entry() {
    component_policy cp;
    const std::size_t target_pos = pos_;
    const std::string head = identifier("a target: cpu, cuda, gpu, cuda:N or mock:N");
    bool explicit_index = false;
    if (head == "cpu" || head == "host") cp.execute_on = target::host();
    else if (head == "cuda" || head == "gpu" || head == "mock") {
      cp.execute_on = target::accelerator();
      if (peek() == ':' && pos_ + 1 < text_.size() && is_digit(text_[pos_ + 1])) {
        ++pos_;
        const std::size_t num_pos = pos_;
        int index = 0;
        while (pos_ < text_.size() && is_digit(text_[pos_])) {
          index = index * 10 + (text_[pos_++] - '0');
          if (index > 999) fail_at(num_pos, "a device index from 0 to 999");
        }
        if (head == "gpu") fail_at(target_pos, "'cuda:N' or 'mock:N' for a numbered device");
        cp.execute_on = target::named(head == "cuda" ? device_id::cuda(index) : device_id::mock(index));
        explicit_index = true;
      } else if (head == "mock") {
        fail_at(pos_, "':N' after 'mock' (mock devices are numbered: mock:0)");
      }
    } else {
      fail_at(target_pos, "a target (cpu, cuda, gpu, cuda:N, mock:N)");
    }
    (void)explicit_index;
    std::optional<int> prefetch, overlap;
    std::size_t prefetch_pos = 0, overlap_pos = 0, tile_pos = 0;
    static constexpr std::string_view all_options =
        "an option (resident, on_demand, offload, lazy, preload, pinned, pageable, stream, prefetch, "
        "store, tile, overlap)";
    while (peek() == ':') {
      ++pos_;
      const std::size_t opt_pos = pos_;
      const std::string opt = identifier(all_options);
      const bool host = cp.execute_on.is_host();
      if ((opt == "stream" || opt == "prefetch") && host)
        fail_at(opt_pos, "only 'pinned', 'pageable', 'store' or 'tile' after 'cpu' (a component that "
                         "executes on the host is not streamed)");
      if (opt == "stream") {
        cp.stream.slots = peek() == '=' ? (++pos_, number(1, 999, "the number of device slots (1-999)")) : 2;
        continue;
      }
      if (opt == "prefetch") {
        if (peek() != '=') fail("'=' and a prefetch depth after 'prefetch' (prefetch=1)");
        ++pos_;
        prefetch_pos = pos_;
        prefetch = number(0, 998, "a prefetch depth (0-998)");
        continue;
      }
      if (opt == "store") {
        if (peek() != '=') fail("'=' and a storage dtype after 'store' (store=bf16)");
        ++pos_;
        const std::size_t dtype_pos = pos_;
        const std::string name = identifier("a storage dtype: bf16 or fp16");
        const auto d = parse_storage_dtype(name);
        if (!d) fail_at(dtype_pos, "a storage dtype: bf16 or fp16");
        cp.store = *d;
        continue;
      }
      if (opt == "tile") {
        if (peek() != '=') fail("'=' and a tile size after 'tile' (tile=32)");
        ++pos_;
        tile_pos = pos_;
        cp.tile.size = number(1, 99999, "a tile size (1-99999)");
        continue;
      }
      if (opt == "overlap") {
        if (peek() != '=') fail("'=' and an overlap after 'overlap' (overlap=8)");
        ++pos_;
        overlap_pos = pos_;
        overlap = number(0, 99998, "an overlap (0-99998)");
        continue;
      }
      if (opt == "pinned") cp.memory = host_memory::pinned, memory_given_ = true;
      else if (opt == "pageable") cp.memory = host_memory::pageable, memory_given_ = true;
      else if (host)
        fail_at(opt_pos, "only 'pinned', 'pageable', 'store' or 'tile' after 'cpu' (a component that "
                         "executes on the host never moves)");
      else if (opt == "resident") cp.load = load_rule::init, cp.evict = evict_rule::never;
      else if (opt == "on_demand") cp.load = load_rule::first_use, cp.evict = evict_rule::when_idle;
      else if (opt == "offload") cp.evict = evict_rule::after_use;
      else if (opt == "lazy") cp.load = load_rule::first_use, cp.evict = evict_rule::never;
      else if (opt == "preload") cp.load = load_rule::init;
      else
        fail_at(opt_pos, all_options);
    }
    if (prefetch && !cp.stream.enabled())
      fail_at(prefetch_pos, "'stream' or 'stream=K' before 'prefetch' (prefetch applies to streamed blocks)");
    if (cp.stream.enabled()) {
      // Default: every slot but the one computing prefetches.
      cp.stream.prefetch = prefetch.value_or(cp.stream.slots - 1);
      if (cp.stream.prefetch > cp.stream.slots - 1)
        fail_at(prefetch_pos, fmt::format("a prefetch depth of at most {} with stream={} (one slot computes, "
                                          "the others prefetch); raise stream= or lower prefetch=",
                                          cp.stream.slots - 1, cp.stream.slots));
    }
    if (overlap && !cp.tile.enabled())
      fail_at(overlap_pos, "'tile=N' before 'overlap' (overlap applies to tiles)");
    if (cp.tile.enabled()) {
      // Default: a quarter of the tile.
      cp.tile.overlap = overlap.value_or(cp.tile.size / 4);
      if (cp.tile.overlap >= cp.tile.size)
        fail_at(overlap ? overlap_pos : tile_pos,
                fmt::format("an overlap smaller than the tile ({}); found overlap={}: raise tile= or lower overlap=",
                            cp.tile.size, cp.tile.overlap));
    }
    return cp;
  }

  int number(int lo, int hi, std::string_view expected) {
    const std::size_t start = pos_;
    long v = 0;
    while (pos_ < text_.size() && is_digit(text_[pos_])) {
      v = v * 10 + (text_[pos_++] - '0');
      if (v > hi) fail_at(start, expected);
    }
    if (start == pos_ || v < lo) fail_at(start, expected);
    return static_cast<int>(v);
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  static bool is_word(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c == '-' ||
           c == '.';
  }
  [[nodiscard]] char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_spaces() {
    while (pos_ < text_.size() && text_[pos_] == ' ') ++pos_;
  }
  std::string identifier(std::string_view expected) {
    const std::size_t start = pos_;
    while (pos_ < text_.size() && is_word(text_[pos_])) ++pos_;
    if (start == pos_) fail(expected);
    return std::string(text_.substr(start, pos_ - start));
  }
  [[noreturn]] void fail(std::string_view expected) const { fail_at(pos_, expected); }
  [[noreturn]] void fail_at(std::size_t pos, std::string_view expected) const {
    const std::string found = pos >= text_.size() ? "end of text" : fmt::format("'{}'", text_.substr(pos, 12));
    throw config_error("offload.config.policy_syntax",
                       fmt::format("policy '{}' at position {}: expected {}, found {}\n  {}\n  {}^\n"
                                   "see docs/policies.md for the grammar, e.g. "
                                   "'t5=cpu,vae=cuda:on_demand,dit=cuda' or 'offload_model+vae_cpu'",
                                   text_, pos, expected, found, text_, std::string(pos, ' ')));
  }

  std::string_view text_;
  std::size_t pos_ = 0;
  bool memory_given_ = false; ///< the entry being parsed says pinned or pageable
};

/// `pinned_default`: the policy says `pinned` (placement_policy::fallback), so a pageable master
/// that moves is written out.
inline std::string entry_text(const component_policy& c, bool pinned_default = false) {
  std::string s;
  switch (c.execute_on.k) {
    case target::kind::host: s = "cpu"; break;
    case target::kind::accelerator: s = "cuda"; break;
    case target::kind::named: s = c.execute_on.id.str(); break;
  }
  if (!c.execute_on.is_host()) {
    if (c.load == load_rule::init && c.evict == evict_rule::never) s += ":resident";
    else if (c.load == load_rule::first_use && c.evict == evict_rule::when_idle) s += ":on_demand";
    else if (c.load == load_rule::first_use && c.evict == evict_rule::never) s += ":lazy";
    else {
      // init + after_use, init + when_idle, first_use + after_use
      if (c.evict == evict_rule::when_idle) s += ":on_demand:preload";
      else if (c.load == load_rule::first_use) s += ":lazy:offload";
      else s += ":offload";
    }
  }
  if (c.stream.enabled()) s += fmt::format(":stream={}:prefetch={}", c.stream.slots, c.stream.prefetch);
  if (c.store != storage_dtype::native) s += fmt::format(":store={}", to_string(c.store));
  if (c.tile.enabled()) s += fmt::format(":tile={}:overlap={}", c.tile.size, c.tile.overlap);
  if (c.memory == host_memory::pinned) s += ":pinned";
  else if (pinned_default && !c.execute_on.is_host()) s += ":pageable";
  return s;
}

} // namespace detail

inline placement_policy placement_policy::parse(std::string_view text) {
  return detail::policy_parser(text).run();
}

inline std::string placement_policy::str() const {
  std::string s;
  for (const auto& [name, c] : components)
    s += (s.empty() ? "" : ",") + name + "=" + detail::entry_text(c, fallback.memory == host_memory::pinned);
  if (evict_on_demand) s += (s.empty() ? "" : ",") + std::string("evict_on_demand");
  if (prefetch) s += (s.empty() ? "" : ",") + std::string("prefetch");
  if (fallback.memory == host_memory::pinned) s += (s.empty() ? "" : ",") + std::string("pinned");
  return s.empty() ? "resident" : s;
}

/// Looks a whole policy up by preset words or parses it; same as placement_policy::parse.
inline placement_policy parse_policy(std::string_view text) { return placement_policy::parse(text); }

} // namespace offload
