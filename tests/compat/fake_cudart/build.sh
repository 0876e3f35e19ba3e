#!/usr/bin/env bash
# Builds the fake CUDA runtime into DIR (default /opt/fake), for a CUDA build of LibTorch 2.6 on a
# machine without a GPU (tests/compat/debian_torch_cuda.sh, FAKE_CUDA=1; run programs with
# LD_LIBRARY_PATH=DIR first):
#   libcudart.so.12    the runtime (fake_cudart.cpp): device memory is host memory, kernels do nothing;
#   libcuda.so.1       the driver functions LibTorch reaches (fake_cuda_driver.c);
#   libnvidia-ml.so.1  NVML, for the allocator's out-of-memory report (fake_nvml.c);
#   libcudnn.so.9      every function LIBTORCH_CUDA imports from cuDNN answers "not supported";
#   libcublas.so.12, libcublasLt.so.12
#                      every function LIBTORCH_CUDA imports succeeds and does nothing (a handle or
#                      descriptor is a placeholder, the heuristic offers one algorithm);
#   libcusolver.so.11  for libtorch_cuda_linalg: LU factorisation and solve succeed and do nothing,
#                      any other function aborts;
#   no_cudnn.so        to preload (LD_PRELOAD): turns cuDNN off in LibTorch, so that convolutions
#                      run LibTorch's own kernels (no-ops here) instead of failing.
# The cuDNN and cuBLAS libraries are generated here from LIBTORCH_CUDA's imports. With all of them a
# whole generation runs: every allocation and copy real, every kernel skipped.
# Needs the CUDA runtime's headers (cuda_runtime_api.h), LibTorch's headers, g++, gcc and objdump.
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
for lib in cublas cublasLt; do
  objdump -T "$libtorch_cuda" | awk -v v="(lib$lib.so.12)" '$0 ~ v {print $NF}' | sort -u | awk '
    BEGIN { print "#include <string.h>\nstatic int placeholder;" }
    $0 == "cublasCreate_v2" || $0 ~ /^cublasLt.*Create$/ { print "int " $0 "(void** h) { *h = &placeholder; return 0; }"; next }
    $0 == "cublasGetMathMode" || $0 == "cublasGetPointerMode_v2" { print "int " $0 "(void* h, int* m) { (void)h; *m = 0; return 0; }"; next }
    # Batched LU (LibTorch: lu_factor_batched_cublas, lu_solve_batched_cublas): report success in
    # the infos (device memory is host memory here) and identity pivots.
    $0 ~ /^cublas[SDCZ]getrfBatched$/ {
      print "int " $0 "(void* h, int n, void* a, int lda, int* p, int* info, int batch) {"
      print "  (void)h, (void)a, (void)lda;"
      print "  for (int b = 0; b < batch; ++b) { info[b] = 0; for (int i = 0; p && i < n; ++i) p[b * n + i] = i + 1; }"
      print "  return 0;"
      print "}"
      next }
    $0 ~ /^cublas[SDCZ]getrsBatched$/ {
      print "int " $0 "(void* h, int t, int n, int r, void* a, int lda, void* p, void* b, int ldb, int* info, int batch) {"
      print "  (void)h, (void)t, (void)n, (void)r, (void)a, (void)lda, (void)p, (void)b, (void)ldb, (void)batch;"
      print "  *info = 0;"
      print "  return 0;"
      print "}"
      next }
    $0 == "cublasLtMatmulAlgoGetHeuristic" {
      # (handle, op, A, B, C, D, preference, requested, results, returned): one zeroed result
      # (cublasLtMatmulHeuristicResult_t is 96 bytes: algorithm, workspace size, state, waves).
      print "int " $0 "(void* h, void* op, void* a, void* b, void* c, void* d, void* p, int n, void* r, int* count) {"
      print "  (void)h, (void)op, (void)a, (void)b, (void)c, (void)d, (void)p;"
      print "  if (n > 0) memset(r, 0, 96);"
      print "  *count = n > 0;"
      print "  return 0;"
      print "}"
      next }
    { print "int " $0 "() { return 0; }" }' > "$out/fake_$lib.c"
  echo "lib$lib.so.12 { global: *; };" > "$out/lib$lib.map"
  gcc -std=c17 "${flags[@]}" -o "$out/lib$lib.so.12" "$out/fake_$lib.c" -Wl,-soname,lib$lib.so.12 \
    -Wl,--version-script="$out/lib$lib.map"
done
# cuSOLVER, for libtorch_cuda_linalg (LibTorch loads it at the first linear-algebra call on the GPU,
# e.g. UniPC's torch.linalg.solve): handles are placeholders; LU factorisation and solve (getrf,
# getrs, the path of a single small system) need no workspace and report success in their info
# (device memory is host memory here); any other function aborts, naming itself, rather than leave
# an output unset.
linalg=$(dirname "$libtorch_cuda")/libtorch_cuda_linalg.so
objdump -T "$linalg" | awk '/libcusolver.so.11/ {print $NF}' | sort -u | awk '
  BEGIN { print "#include <stdio.h>\n#include <stdlib.h>\nstatic int placeholder;" }
  $0 ~ /^cusolverDnCreate/ { print "int " $0 "(void** h) { *h = &placeholder; return 0; }"; next }
  $0 ~ /^cusolverDn(Destroy|SetStream)/ { print "int " $0 "() { return 0; }"; next }
  $0 ~ /^cusolverDn[SDCZ]getrf_bufferSize$/ { print "int " $0 "(void* h, int m, int n, void* a, int lda, int* lwork) { (void)h, (void)m, (void)n, (void)a, (void)lda; *lwork = 0; return 0; }"; next }
  $0 ~ /^cusolverDn[SDCZ]getrf$/ { print "int " $0 "(void* h, int m, int n, void* a, int lda, void* w, int* ipiv, int* info) { (void)h, (void)m, (void)a, (void)lda, (void)w; for (int i = 0; i < n && ipiv; ++i) ipiv[i] = i + 1; *info = 0; return 0; }"; next }
  $0 ~ /^cusolverDn[SDCZ]getrs$/ { print "int " $0 "(void* h, int t, int n, int r, void* a, int lda, int* ipiv, void* b, int ldb, int* info) { (void)h, (void)t, (void)n, (void)r, (void)a, (void)lda, (void)ipiv, (void)b, (void)ldb; *info = 0; return 0; }"; next }
  { print "int " $0 "() { fprintf(stderr, \"fake cuSOLVER: " $0 " is not faked (tests/compat/fake_cudart/build.sh)\\n\"); abort(); }" }' > "$out/fake_cusolver.c"
echo "libcusolver.so.11 { global: *; };" > "$out/libcusolver.map"
gcc -std=c17 "${flags[@]}" -o "$out/libcusolver.so.11" "$out/fake_cusolver.c" -Wl,-soname,libcusolver.so.11 \
  -Wl,--version-script="$out/libcusolver.map"
g++ -std=c++17 "${flags[@]}" -o "$out/no_cudnn.so" "$here/no_cudnn.cpp" -ltorch_cpu -lc10

echo "fake CUDA runtime in $out: $(cd "$out" && ls ./*.so* | tr '\n' ' ')"
