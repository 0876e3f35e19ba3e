// Compiled with -fsyntax-only by the `compat_cuda_stats_syntax` test against the stand-in CUDA
// headers of tests/compat/cuda_stub: the CUDA half of wan_bench's cuda_stats.cpp, which only a
// CUDA build of LibTorch compiles otherwise (on the GPU machine, docs/benchmark.md).
#include <offload/compat.hpp>

#if !OFFLOAD_HAS_CUDA_ALLOCATOR_STATS
#error "expected OFFLOAD_HAS_CUDA_ALLOCATOR_STATS == 1 with tests/compat/cuda_stub on the include path; found 0: offload/compat.hpp's guard no longer sees c10/cuda/CUDACachingAllocator.h and cuda_runtime_api.h"
#endif

#include "../../examples/wan_bench/cuda_stats.cpp"
