// wan_generate: the command line of the Wan pipelines, with the flags of the reference generate.py
// (Wan-Video/Wan2.1@9737cba) and offload's placement flags. Usage and exit codes: docs/cli.md.
#include "generate.hpp"
#include "options.hpp"

#include <offload/errors.hpp>

#include <exception>
#include <iostream>
#include <string>

namespace {

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

} // namespace

int main(int argc, char** argv) {
  using namespace wan_cli;
  try {
    const auto opts = parse_command_line(argc, argv);
    if (!opts) return exit_ok; // --help
    return opts->dry_run ? dry_run(*opts) : generate(*opts);
  } catch (const usage_error& e) {
    std::cerr << "wan_generate: error: " << first_line(e.what()) << '\n';
    return exit_usage;
  } catch (const offload::capacity_error& e) {
    std::cerr << "wan_generate: does not fit: " << first_line(e.what()) << '\n';
    return exit_does_not_fit;
  } catch (const offload::error& e) {
    // offload's messages are written for the user; a strict checkpoint load lists every
    // mismatched key on the lines after the first.
    std::cerr << "\nwan_generate: failed: " << e.what() << '\n';
    return exit_failed;
  } catch (const std::exception& e) {
    std::cerr << "\nwan_generate: failed: " << first_line(e.what()) << '\n'; // c10 errors add a backtrace
    return exit_failed;
  }
}
