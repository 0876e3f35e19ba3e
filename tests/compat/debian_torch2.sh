#!/usr/bin/env bash
# Builds this tree and runs its tests against a newer LibTorch from Debian, in a debootstrap'ed root:
# trixie has LibTorch 2.6 (g++ 14, fmt 10, Boost 1.83), sid 2.14 (g++ 16, fmt 11, Boost 1.92). It
# checks that the code builds and passes on LibTorch 2.x on the CPU (docs/building.md); it is not
# part of CI (a full build there takes about an hour on 2 cores). Needs root, debootstrap and
# deb.debian.org. The root is kept for the next run; the tree is cloned from the last commit.
#
#   tests/compat/debian_torch2.sh [SUITE [ROOT]]   SUITE: trixie (default) or sid; ROOT: /tmp/offload-SUITE
#   TARGETS="wan_generate wan_bench" ...           build only these targets (default: all)
#   TESTS=regex ...                                run only the CTest tests matching it (default: all)
# OPENBLAS_NUM_THREADS defaults to 1 in the root: Debian's OpenBLAS threads spin against LibTorch's
# OpenMP threads there and make the tiny-model tests about 3x slower (docs/building.md).
set -euo pipefail
suite=${1:-trixie}
root=${2:-/tmp/offload-$suite}
src=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/compat/debian_root.sh
source "$(dirname "$0")/debian_root.sh"
prepare_root "$suite" "$root" "$src" libtorch-dev
chroot "$root" env TARGETS="${TARGETS:-}" TESTS="${TESTS:-}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" bash -euo pipefail -c '
  cd /src
  dpkg-query -W libtorch-dev g++ libfmt-dev libboost-test-dev
  cmake -S . -B build -G Ninja
  if [[ -n $TARGETS ]]; then cmake --build build --target $TARGETS; else cmake --build build; fi
  ctest --test-dir build -j "$(nproc)" --output-on-failure ${TESTS:+-R "$TESTS"}'
