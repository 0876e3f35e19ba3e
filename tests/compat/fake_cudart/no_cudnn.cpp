// Preloaded (LD_PRELOAD) beside the fake CUDA runtime: turns LibTorch's use of cuDNN off before the
// program starts, so that convolutions take LibTorch's own CUDA path (im2col and cuBLAS, both of
// which the fake runs as no-ops) instead of cuDNN, which the fake only answers "not supported".
// Its constructor runs after those of LibTorch's libraries, on which it depends.
#include <ATen/Context.h>

namespace {
__attribute__((constructor)) void no_cudnn() { at::globalContext().setUserEnabledCuDNN(false); }
} // namespace
