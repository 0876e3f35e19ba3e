#pragma once
// Compile-only stand-in for the header a CUDA build of LibTorch generates (see ../../../cuda_runtime_api.h).
#define C10_CUDA_BUILD_SHARED_LIBS
