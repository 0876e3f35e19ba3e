#!/usr/bin/env bash
# Builds the fake CUDA runtime into DIR (default /opt/fake), for a CUDA build of LibTorch 2.6 on a
# machine without a GPU (tests/compat/debian_torch_cuda.sh, FAKE_CUDA=1; run programs with
# LD_LIBRARY_PATH=DIR first):
#   libcudart.so.12    the runtime (fake_cudart.cpp): device memory is host memory, kernels do nothing;
#   libcuda.so.1       the driver functions LibTorch reaches (fake_cuda_driver.c);
#   libnvidia-ml.so.1  NVML, for the allocator's out-of-memory report (fake_nvml.c);
#   libcudnn.so.9      every function LIBTORCH_CUDA imports from cuDNN answers "not supported", so
#                      that a convolution fails with an error (generated here from its symbols).
# Needs the CUDA runtime's headers (cuda_runtime_api.h), g++, gcc and objdump.
#   build.sh [DIR] [LIBTORCH_CUDA]     LIBTORCH_CUDA: /usr/lib/x86_64-linux-gnu/libtorch_cuda.so
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-/opt/fake}
libtorch_cuda=${2:-/usr/lib/x86_64-linux-gnu/libtorch_cuda.so}
mkdir -p "$out"
flags=(-O1 -Wall -Wextra -Werror -shared -fPIC)
g++ -std=c++17 "${flags[@]}" -o "$out/libcudart.so.12" "$here/fake_cudart.cpp" -Wl,-soname,libcudart.so.12 \
  -Wl,--version-script="$here/libcudart.map" -ldl
gcc -std=c17 "${flags[@]}" -o "$out/libcuda.so.1" "$here/fake_cuda_driver.c" -Wl,-soname,libcuda.so.1
gcc -std=c17 "${flags[@]}" -o "$out/libnvidia-ml.so.1" "$here/fake_nvml.c" -Wl,-soname,libnvidia-ml.so.1

objdump -T "$libtorch_cuda" | awk '/libcudnn.so.9/ {print $NF}' | sort -u | awk '
  BEGIN { print "#include <stddef.h>\n#include <stdio.h>\nenum { not_supported = 3000 }; /* CUDNN_STATUS_NOT_SUPPORTED */" }
  $0 == "cudnnGetErrorString" { print "const char* cudnnGetErrorString(int s) { (void)s; return \"not supported (fake cuDNN)\"; }"; next }
  $0 == "cudnnGetLastErrorString" { print "void cudnnGetLastErrorString(char* m, size_t n) { snprintf(m, n, \"fake cuDNN\"); }"; next }
  $0 == "cudnnGetVersion" { print "size_t cudnnGetVersion(void) { return 90100; }"; next }
  $0 == "cudnnGetCudartVersion" { print "size_t cudnnGetCudartVersion(void) { return 12040; }"; next }
  { print "int " $0 "() { return not_supported; }" }' > "$out/fake_cudnn.c"
echo "libcudnn.so.9 { global: *; };" > "$out/libcudnn.map"
gcc -std=c17 "${flags[@]}" -Wno-unused-parameter -o "$out/libcudnn.so.9" "$out/fake_cudnn.c" -Wl,-soname,libcudnn.so.9 \
  -Wl,--version-script="$out/libcudnn.map"
echo "fake CUDA runtime in $out: $(cd "$out" && ls ./*.so.* | tr '\n' ' ')"
