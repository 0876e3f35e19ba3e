#pragma once
// Compile-only stand-in (see cuda_runtime_api.h beside it).
#include <cuda_runtime_api.h>
