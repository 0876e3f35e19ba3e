/* NVML (libnvidia-ml.so.1) beside the fake CUDA runtime (fake_cudart.cpp): LibTorch's caching
 * allocator initializes it to list the processes using a device when it reports an out-of-memory
 * error. It finds no process; NVLink queries are not supported. Arguments are declared by their
 * ABI, not with nvml.h's types. */
typedef int nvmlReturn_t;
enum { ok = 0, not_supported = 3 };
static int placeholder;

nvmlReturn_t nvmlInit_v2(void) { return ok; }
nvmlReturn_t nvmlShutdown(void) { return ok; }
nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char* bus_id, void** device) {
  (void)bus_id;
  *device = &placeholder;
  return ok;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(void* device, unsigned* count, void* infos) {
  (void)device, (void)infos;
  *count = 0;
  return ok;
}
/* An empty parameter list accepts any arguments (C17). */
nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType() { return not_supported; }
nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2() { return not_supported; }
