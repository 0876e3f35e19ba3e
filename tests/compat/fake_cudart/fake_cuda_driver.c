/* The driver library (libcuda.so.1) beside the fake CUDA runtime (fake_cudart.cpp): the functions
 * LibTorch 2.6 reaches through libcaffe2_nvrtc (its lazily loaded driver and NVRTC calls). There is
 * one primary context, always active; modules and functions are placeholders, and kernels launched
 * through the driver (LibTorch's just-in-time compiled ones) do nothing, as in the runtime.
 * Arguments are declared by their ABI (pointers, ints), not with cuda.h's types. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

typedef int CUresult;
enum { ok = 0, not_supported = 801 };
static int placeholder;
static void* const context = &placeholder;

CUresult cuGetErrorString(CUresult e, const char** s) {
  *s = e == ok ? "no error" : e == not_supported ? "operation not supported (fake CUDA driver)" : "unknown error";
  return ok;
}
CUresult cuDevicePrimaryCtxGetState(int dev, unsigned* flags, int* active) {
  (void)dev;
  *flags = 0;
  *active = 1;
  return ok;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int dev) {
  (void)dev;
  *ctx = context;
  return ok;
}
CUresult cuCtxGetCurrent(void** ctx) {
  *ctx = context;
  return ok;
}
CUresult cuCtxSetCurrent(void* ctx) {
  (void)ctx;
  return ok;
}
CUresult cuModuleLoadData(void** module, const void* image) {
  (void)image;
  *module = context;
  return ok;
}
CUresult cuModuleLoadDataEx(void** module, const void* image, unsigned n, void* options, void** values) {
  (void)n, (void)options, (void)values;
  return cuModuleLoadData(module, image);
}
CUresult cuModuleUnload(void* module) {
  (void)module;
  return ok;
}
CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
  (void)module, (void)name;
  *f = context;
  return ok;
}
CUresult cuFuncGetAttribute(int* value, int attr, void* f) {
  (void)attr, (void)f;
  *value = 0;
  return ok;
}
CUresult cuFuncSetAttribute(void* f, int attr, int value) {
  (void)f, (void)attr, (void)value;
  return ok;
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, void* f, int size, size_t shared) {
  (void)f, (void)size, (void)shared;
  *blocks = 1;
  return ok;
}
static CUresult launched(void) {
  const char* mode = getenv("FAKE_CUDART_KERNELS");
  if (mode && strcmp(mode, "abort") == 0) {
    fprintf(stderr, "fake_cuda_driver: kernel launched through the driver\n");
    abort();
  }
  return ok;
}
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void* stream, void** params, void** extra) {
  (void)f, (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shared, (void)stream, (void)params,
      (void)extra;
  return launched();
}
CUresult cuLaunchCooperativeKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                   unsigned bz, unsigned shared, void* stream, void** params) {
  (void)f, (void)gx, (void)gy, (void)gz, (void)bx, (void)by, (void)bz, (void)shared, (void)stream, (void)params;
  return launched();
}
CUresult cuDeviceGetAttribute(int* value, int attr, int dev) {
  (void)attr, (void)dev;
  *value = 0;
  return ok;
}
/* Not faked: linking, tensor maps, virtual memory (expandable segments), multicast. LibTorch's
 * c10::cuda::DriverAPI looks every one of these up when first used (an out-of-memory report is a
 * first use) and asserts each exists. An empty parameter list accepts any arguments (C17). */
#define NOT_SUPPORTED(name) \
  CUresult name() { return not_supported; }
NOT_SUPPORTED(cuLinkCreate_v2)
NOT_SUPPORTED(cuLinkAddData_v2)
NOT_SUPPORTED(cuLinkComplete)
NOT_SUPPORTED(cuTensorMapEncodeTiled)
NOT_SUPPORTED(cuMemAddressReserve)
NOT_SUPPORTED(cuMemRelease)
NOT_SUPPORTED(cuMemMap)
NOT_SUPPORTED(cuMemAddressFree)
NOT_SUPPORTED(cuMemSetAccess)
NOT_SUPPORTED(cuMemUnmap)
NOT_SUPPORTED(cuMemCreate)
NOT_SUPPORTED(cuMemGetAllocationGranularity)
NOT_SUPPORTED(cuMemExportToShareableHandle)
NOT_SUPPORTED(cuMemImportFromShareableHandle)
NOT_SUPPORTED(cuMemsetD32Async)
NOT_SUPPORTED(cuStreamWriteValue32)
NOT_SUPPORTED(cuMulticastAddDevice)
NOT_SUPPORTED(cuMulticastBindMem)
NOT_SUPPORTED(cuMulticastCreate)
