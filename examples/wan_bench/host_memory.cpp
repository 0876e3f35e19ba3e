// wan_bench's host memory figures (see host_memory.hpp).
#include "host_memory.hpp"

#include <fstream>
#include <sstream>
#include <string>

namespace wan_bench {

std::optional<host_memory> read_host_memory() {
  std::ifstream status("/proc/self/status");
  if (!status) return std::nullopt;
  std::optional<std::int64_t> rss, hwm;
  std::string line;
  while (std::getline(status, line)) {
    const auto field = [&](std::string_view name) -> std::optional<std::int64_t> {
      if (line.rfind(name, 0) != 0) return std::nullopt;
      std::istringstream in(line.substr(name.size()));
      std::int64_t kib = 0;
      if (!(in >> kib)) return std::nullopt;
      return kib * 1024; // "VmRSS:    13532 kB"
    };
    if (auto v = field("VmRSS:")) rss = v;
    if (auto v = field("VmHWM:")) hwm = v;
  }
  if (!rss || !hwm) return std::nullopt;
  return host_memory{*rss, *hwm};
}

bool reset_host_peak() {
  std::ofstream clear("/proc/self/clear_refs");
  if (!clear) return false;
  clear << "5";
  clear.flush();
  return static_cast<bool>(clear);
}

} // namespace wan_bench
