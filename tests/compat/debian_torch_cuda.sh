#!/usr/bin/env bash
# Builds wan_bench (or TARGETS) against a CUDA-enabled LibTorch 2.x without a GPU: Debian trixie's
# contrib package libtorch-cuda-dev (LibTorch 2.6 built for CUDA 12.4, whose toolkit comes from
# non-free), in a debootstrap'ed root. It goes through what the first build on the GPU machine goes
# through and a CPU-only LibTorch never does (docs/building.md):
#   - find_package(Torch) with its CUDA parts (the toolkit's discovery, the CUDA targets);
#   - the CUDA branches of offload/compat.hpp (OFFLOAD_HAS_CUDA_ALLOCATOR_STATS: the caching
#     allocator's statistics in wan_bench's cuda_stats.cpp, with the real c10/cuda headers);
#   - linking against libtorch_cuda.
# Then it runs the CPU tests named by TESTS, if any (CUDA LibTorch without a GPU: no device found).
# Not part of CI (it downloads about 2 GB). Needs root, debootstrap and deb.debian.org. The root is
# kept for the next run; the tree is cloned from the last commit.
#
#   tests/compat/debian_torch_cuda.sh [ROOT]        ROOT: /var/tmp/offload-trixie-cuda
#   TARGETS="wan_bench offload_tests" ...           build these targets (default: wan_bench)
#   TESTS=regex ...                                 then run the CTest tests matching it (default: none)
#   FAKE_CUDA=1 ...                                 then run offload_cuda_tests and wan_bench's CUDA paths
#                                                   on a fake CUDA runtime (see below)
#
# Two packages are replaced by empty stand-ins in the root: nvidia-cudnn (its installer downloads
# cuDNN from NVIDIA's site, out of reach here) and libcuda1 (the driver's library, which only a
# machine with a GPU has). So the link allows libtorch_cuda's cuDNN symbols undefined
# (--allow-shlib-undefined), and the programs run with a stand-in libcudnn.so.9 whose functions
# abort (built here from libtorch_cuda's list; nothing calls them without a GPU).
#
# FAKE_CUDA=1 builds offload_cuda_tests, offload_cuda_dit_activations, wan_bench and wan_generate
# with the tiny checkpoints (whatever TARGETS says) and runs them on the fake CUDA runtime of
# tests/compat/fake_cudart (CUDA runtime, driver, NVML, cuBLAS, cuSOLVER and cuDNN stand-ins;
# build.sh there): device memory is host memory, streams run in order at once, kernels do nothing.
# So LibTorch's CUDA device, its caching allocators, streams and events work, and offload's CUDA
# paths run with real allocations and copies: offload_cuda_tests' cases that need no kernel's
# result, the DiT activation model against the allocator at real sizes (one block, and whole
# forwards of T2V and VACE; about 9 GB of host memory), wan_bench on the tiny models (three
# policies on cuda:0 and the onload probe), whose bytes copied, pinned bytes and allocator peaks
# check_run.cmake compares with the plans, and every pipeline through wan_generate on cuda:0
# (fake_cudart/pipelines_on_cuda.sh: where a tensor left on the host meets one on the GPU).
set -euo pipefail
root=${1:-/var/tmp/offload-trixie-cuda}
src=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/compat/debian_root.sh
source "$(dirname "$0")/debian_root.sh"
prepare_root trixie "$root" "$src"
echo "deb http://deb.debian.org/debian trixie main contrib non-free" > "$root/etc/apt/sources.list"
targets=${TARGETS:-wan_bench}
[[ -n ${FAKE_CUDA:-} ]] && targets="$targets offload_cuda_tests offload_cuda_dit_activations wan_bench wan_generate wan_tiny_model"
chroot "$root" env TARGETS="$targets" TESTS="${TESTS:-}" FAKE_CUDA="${FAKE_CUDA:-}" OPENBLAS_NUM_THREADS=1 bash -euo pipefail -c '
  export DEBIAN_FRONTEND=noninteractive
  # Empty stand-ins: Package, Version, Provides.
  stand_in() {
    local d=/tmp/stand-in/$1
    mkdir -p "$d/DEBIAN"
    printf "Package: %s\nVersion: %s\nArchitecture: amd64\nMaintainer: offload tests <none@example.org>\nDescription: empty stand-in for a build without a GPU\n%s" \
      "$1" "$2" "${3:+Provides: $3
}" > "$d/DEBIAN/control"
    dpkg-deb -b "$d" "/tmp/stand-in/$1.deb" > /dev/null
    dpkg -i "/tmp/stand-in/$1.deb" > /dev/null
  }
  installed() { [[ $(dpkg-query -W -f="\${Status}" "$1" 2> /dev/null) == "install ok installed" ]]; }
  if ! installed libtorch-cuda-dev || ! installed nvidia-cuda-toolkit; then
    apt-get update -q
    stand_in nvidia-cudnn 9.99
    stand_in libcuda1 999 "libcuda.so.1 (= 999)"
    apt-get install -y -q --no-install-recommends libtorch-cuda-dev nvidia-cuda-toolkit
  fi
  dpkg-query -W libtorch-cuda-dev nvidia-cuda-toolkit g++ cmake
  if [[ ! -f /opt/stand-in/libcudnn.so.9 ]]; then
    mkdir -p /opt/stand-in
    objdump -T /usr/lib/x86_64-linux-gnu/libtorch_cuda.so | awk "/libcudnn.so.9/ {print \$NF}" | sort -u |
      awk "BEGIN {print \"#include <stdlib.h>\"} {print \"void \" \$0 \"(void) { abort(); }\"}" > /tmp/cudnn_stand_in.c
    echo "libcudnn.so.9 { global: *; };" > /tmp/cudnn.map
    gcc -shared -fPIC -o /opt/stand-in/libcudnn.so.9 /tmp/cudnn_stand_in.c -Wl,-soname,libcudnn.so.9 \
      -Wl,--version-script=/tmp/cudnn.map
  fi
  export LD_LIBRARY_PATH=/opt/stand-in
  cd /src
  cmake -S . -B build -G Ninja -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined
  grep -E "^OFFLOAD_HAS|CUDA" build/CMakeCache.txt | grep -iE "found|version|has_" | head -n 20 || true
  cmake --build build --target $TARGETS
  if [[ -n $TESTS ]]; then ctest --test-dir build -j "$(nproc)" --output-on-failure -R "$TESTS"; fi
  if [[ -n $FAKE_CUDA ]]; then
    bash tests/compat/fake_cudart/build.sh /opt/fake
    export LD_LIBRARY_PATH=/opt/fake:/opt/stand-in
    build/tests/cuda/offload_cuda_tests --color_output=no --log_level=test_suite
    LD_PRELOAD=/opt/fake/no_cudnn.so build/tests/cuda/offload_cuda_dit_activations
    # Two steps: the caching allocator must stay on for its peaks (check_run.cmake), and with it on,
    # linalg reads its error flags back from kernels that do nothing here (the "any" of the infos
    # lands in a reused block), so the solve of UniPC from its third step fails on the fake, not on a
    # card. pipelines_on_cuda.sh runs that solve with the allocator off and memory zeroed.
    LD_PRELOAD=/opt/fake/no_cudnn.so build/examples/wan_bench/wan_bench --scale tiny --device cuda:0 --steps 2 \
      --onload_probe --policy resident --policy offload_model+t5_cpu \
      --policy "t5=cuda:on_demand:stream=2:pinned,dit=cuda:on_demand:stream=2:pinned,vae=cuda:on_demand:tile=32:pinned" \
      --json /tmp/fake_cuda.json
    cmake -DJSON_FILE=/tmp/fake_cuda.json -P tests/compat/fake_cudart/check_run.cmake
    LD_PRELOAD=/opt/fake/no_cudnn.so bash tests/compat/fake_cudart/pipelines_on_cuda.sh build tests/data/media
  fi'
