#!/usr/bin/env bash
# The short fuzz run of CI (CTest `fuzz_short`, label fuzz): configures and builds tests/fuzz with
# clang into <build-dir>, then runs every target for OFFLOAD_FUZZ_SECONDS (default 5) over its
# seed corpus. Exit 77 (CTest SKIP_RETURN_CODE) when no clang++ with libFuzzer is found.
# Usage: run_short.sh <build-dir>     (docs/robustness.md has the long run)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run_short.sh <build-dir>}
seconds=${OFFLOAD_FUZZ_SECONDS:-5}
targets=(safetensors index config policy cli pickle pth spiece prompt)

cxx=""
for c in ${OFFLOAD_FUZZ_CXX:-} clang++-14 clang++; do
  if command -v "$c" >/dev/null 2>&1; then cxx=$(command -v "$c"); break; fi
done
if [[ -z $cxx ]]; then
  echo "fuzz_short: SKIPPED: no clang++ (apt-get install clang-14 libclang-rt-14-dev)"
  exit 77
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <cstdint>\n#include <cstddef>\nextern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }\n' \
  > "$probe/p.cpp"
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" >"$probe/log" 2>&1; then
  echo "fuzz_short: SKIPPED: $cxx cannot link libFuzzer (apt-get install libclang-rt-14-dev):"
  cat "$probe/log"
  exit 77
fi

gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S "$here" -B "$build" "${gen[@]}" -DCMAKE_CXX_COMPILER="$cxx"
fi
cmake --build "$build"

status=0
for t in "${targets[@]}"; do
  work="$build/corpus/$t" # new inputs go here; the repository's seeds stay untouched
  mkdir -p "$work"
  # pth: LibTorch's zip reader leaks its state when a corrupt archive makes its constructor throw
  # (fuzz_targets.cpp); libFuzzer would stop to look for leaks after every such input (seconds
  # each). The pickle target, which reads the same pickles without the zip, keeps leak detection.
  flags=()
  [[ $t == pth ]] && flags=(-detect_leaks=0)
  echo "=== fuzz target $t: ${seconds}s"
  if ! OFFLOAD_FUZZ_TARGET=$t "$build/offload_fuzz" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$build/$t-" "${flags[@]}" \
        "$work" "$here/corpus/$t" >"$build/$t.log" 2>&1; then
    echo "fuzz target $t FAILED; the input that failed is $build/$t-*; log:"
    tail -n 60 "$build/$t.log"
    status=1
  else
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|cov:" "$build/$t.log" | tail -n 4
  fi
done
exit $status
