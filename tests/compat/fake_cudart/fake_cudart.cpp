// A fake CUDA runtime (libcudart.so.12) for running a CUDA build of LibTorch on a machine without a
// GPU: device memory is host memory, every stream runs in order at once (a copy is done when its
// call returns, every event is complete), and kernels do nothing. What it makes testable without
// a GPU is the control flow of offload's CUDA paths and of LibTorch under them: the caching device
// allocator and its statistics, the pinned host allocator (cudaHostAlloc), streams from the pool,
// events recorded and waited on, copies between pinned, pageable and device memory, and
// out-of-memory errors. Copies move real bytes, so what was copied to the device and back can be
// compared; anything a kernel computes cannot (kernels are counted: fake_cudart_kernel_launches()).
//
// It implements the functions LibTorch 2.6's libc10_cuda and libtorch_cuda import from
// libcudart.so.12 (Debian trixie's libtorch-cuda-dev); tests/compat/fake_cuda.sh builds and uses
// it. Not for anything that needs a kernel's result, and not a model of timing: an event's elapsed
// time is the host time between its records.
//
// Environment: FAKE_CUDART_MEMORY (bytes of device memory, default 80 GiB), FAKE_CUDART_DEVICES
// (default 1), FAKE_CUDART_KERNELS=abort (abort on a kernel launch, naming it, instead of doing
// nothing), FAKE_CUDART_ZERO=1 (device allocations start zeroed: with LibTorch's caching allocator
// off, PYTORCH_NO_CUDA_MEMORY_CACHING=1, every tensor then reads 0 where a kernel should have
// written, so checks that read a kernel's result back, as linalg's error codes, pass; it touches
// every page, so not for runs at real sizes).
#include <cuda_runtime_api.h>

#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace {

enum class kind { device, host };
struct allocation {
  std::size_t bytes;
  kind where;
};

std::mutex mutex;
std::map<std::uintptr_t, allocation>& allocations() {
  static std::map<std::uintptr_t, allocation> m;
  return m;
}
std::size_t device_in_use = 0;
std::atomic<long> kernel_launches{0};
thread_local int current_device = 0;
thread_local cudaError_t last_error = cudaSuccess;

std::size_t env_size(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? static_cast<std::size_t>(std::strtoull(v, nullptr, 10)) : fallback;
}
std::size_t memory_bytes() { return env_size("FAKE_CUDART_MEMORY", std::size_t{80} << 30); }
int device_count() { return static_cast<int>(env_size("FAKE_CUDART_DEVICES", 1)); }

cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}

void* allocate(std::size_t bytes, kind where) {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, bytes ? bytes : 1) != 0) return nullptr;
  static const bool zero = std::getenv("FAKE_CUDART_ZERO") != nullptr;
  if (zero && where == kind::device) std::memset(p, 0, bytes);
  std::lock_guard<std::mutex> lock(mutex);
  allocations()[reinterpret_cast<std::uintptr_t>(p)] = {bytes, where};
  if (where == kind::device) device_in_use += bytes;
  return p;
}
cudaError_t release(void* p, kind where) {
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = allocations().find(reinterpret_cast<std::uintptr_t>(p));
    if (it == allocations().end() || it->second.where != where) return fail(cudaErrorInvalidValue);
    if (where == kind::device) device_in_use -= it->second.bytes;
    allocations().erase(it);
  }
  std::free(p);
  return cudaSuccess;
}
// The allocation holding `p`, if any.
const allocation* find(const void* p, std::uintptr_t* base) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  auto& m = allocations();
  auto it = m.upper_bound(a);
  if (it == m.begin()) return nullptr;
  --it;
  if (a >= it->first + (it->second.bytes ? it->second.bytes : 1)) return nullptr;
  *base = it->first;
  return &it->second;
}

struct fake_event {
  std::chrono::steady_clock::time_point at{};
};
struct fake_stream {
  int priority;
};

void launched(const void* func) {
  kernel_launches.fetch_add(1);
  const char* mode = std::getenv("FAKE_CUDART_KERNELS");
  if (mode && std::strcmp(mode, "abort") == 0) {
    Dl_info info{};
    dladdr(func, &info);
    std::fprintf(stderr, "fake_cudart: kernel launched: %s\n", info.dli_sname ? info.dli_sname : "(unknown)");
    std::abort();
  }
}

} // namespace

extern "C" {

long fake_cudart_kernel_launches(void) { return kernel_launches.load(); }
std::size_t fake_cudart_device_bytes_in_use(void) {
  std::lock_guard<std::mutex> lock(mutex);
  return device_in_use;
}

// --- registration of the fat binaries nvcc compiled into the libraries (nothing to load) ---
static void* fat_binary_handle = nullptr;
void** __cudaRegisterFatBinary(void*) { return &fat_binary_handle; }
void __cudaRegisterFatBinaryEnd(void**) {}
void __cudaUnregisterFatBinary(void**) {}
void __cudaRegisterFunction(void**, const char*, char*, const char*, int, uint3*, uint3*, dim3*, dim3*, int*) {}
void __cudaRegisterVar(void**, char*, char*, const char*, int, std::size_t, int, int) {}
unsigned __cudaPushCallConfiguration(dim3, dim3, std::size_t, void*) { return 0; }
cudaError_t __cudaPopCallConfiguration(dim3* grid, dim3* block, std::size_t* shared, void* stream) {
  *grid = dim3(1, 1, 1);
  *block = dim3(1, 1, 1);
  *shared = 0;
  *static_cast<void**>(stream) = nullptr;
  return cudaSuccess;
}

// --- devices ---
cudaError_t cudaGetDeviceCount(int* count) {
  *count = device_count();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties_v2(cudaDeviceProp* p, int device) {
  if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "fake CUDA device (tests/compat/fake_cudart)");
  p->totalGlobalMem = memory_bytes();
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->sharedMemPerBlock = 49152;
  p->sharedMemPerBlockOptin = 232448;
  p->sharedMemPerMultiprocessor = 233472;
  p->regsPerBlock = p->regsPerMultiprocessor = 65536;
  p->maxThreadsPerMultiProcessor = 2048;
  p->l2CacheSize = 50 << 20;
  p->memoryBusWidth = 5120;
  p->totalConstMem = 65536;
  p->asyncEngineCount = 2;
  p->concurrentKernels = 1;
  p->unifiedAddressing = 1;
  p->canMapHostMemory = 1;
  p->pciDeviceID = device;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  cudaDeviceProp p;
  if (const cudaError_t e = cudaGetDeviceProperties_v2(&p, device); e != cudaSuccess) return e;
  switch (attr) {
  case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
  case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
  case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
  case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
  case cudaDevAttrWarpSize: *value = p.warpSize; break;
  case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(p.sharedMemPerBlock); break;
  case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(p.sharedMemPerBlockOptin); break;
  case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = static_cast<int>(p.sharedMemPerMultiprocessor); break;
  case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.maxThreadsPerMultiProcessor; break;
  case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
  case cudaDevAttrMaxGridDimY: *value = p.maxGridSize[1]; break;
  case cudaDevAttrMaxGridDimZ: *value = p.maxGridSize[2]; break;
  case cudaDevAttrMaxBlockDimX: *value = p.maxThreadsDim[0]; break;
  case cudaDevAttrMaxBlockDimY: *value = p.maxThreadsDim[1]; break;
  case cudaDevAttrMaxBlockDimZ: *value = p.maxThreadsDim[2]; break;
  case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
  default: *value = 0; break;
  }
  return cudaSuccess;
}
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
  if (least) *least = 0;
  if (greatest) *greatest = -5;
  return cudaSuccess;
}
cudaError_t cudaDeviceCanAccessPeer(int* can, int, int) {
  *can = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceEnablePeerAccess(int, unsigned) { return fail(cudaErrorInvalidDevice); }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaDeviceGetPCIBusId(char* id, int len, int device) {
  if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
  std::snprintf(id, static_cast<std::size_t>(len), "0000:%02x:00.0", device);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(std::size_t* free_bytes, std::size_t* total) {
  std::lock_guard<std::mutex> lock(mutex);
  *total = memory_bytes();
  *free_bytes = *total > device_in_use ? *total - device_in_use : 0;
  return cudaSuccess;
}

// --- errors ---
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
  case cudaSuccess: return "cudaSuccess";
  case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
  case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
  case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
  case cudaErrorNotSupported: return "cudaErrorNotSupported";
  default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
  case cudaSuccess: return "no error";
  case cudaErrorMemoryAllocation: return "out of memory";
  case cudaErrorInvalidValue: return "invalid argument";
  case cudaErrorInvalidDevice: return "invalid device ordinal";
  case cudaErrorNotSupported: return "operation not supported (fake CUDA runtime)";
  default: return "unknown error";
  }
}

// --- memory ---
cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (device_in_use + bytes > memory_bytes()) {
      *p = nullptr;
      return fail(cudaErrorMemoryAllocation);
    }
  }
  *p = allocate(bytes, kind::device);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void* p) { return release(p, kind::device); }
cudaError_t cudaHostAlloc(void** p, std::size_t bytes, unsigned) {
  *p = allocate(bytes, kind::host);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* p) { return release(p, kind::host); }
cudaError_t cudaHostRegister(void*, std::size_t, unsigned) { return fail(cudaErrorNotSupported); }
cudaError_t cudaHostUnregister(void*) { return fail(cudaErrorNotSupported); }
cudaError_t cudaHostGetDevicePointer(void** device, void* host, unsigned) {
  *device = host;
  return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* p) {
  std::memset(attr, 0, sizeof *attr);
  std::lock_guard<std::mutex> lock(mutex);
  std::uintptr_t base = 0;
  const allocation* a = find(p, &base);
  attr->type = !a ? cudaMemoryTypeUnregistered : a->where == kind::host ? cudaMemoryTypeHost : cudaMemoryTypeDevice;
  attr->device = a ? 0 : -2;
  attr->devicePointer = a ? const_cast<void*>(p) : nullptr;
  attr->hostPointer = a && a->where == kind::host ? const_cast<void*>(p) : nullptr;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t n, cudaMemcpyKind) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyPeerAsync(void* dst, int, const void* src, int, std::size_t n, cudaStream_t) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, std::size_t n) {
  std::memset(p, value, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, std::size_t n, cudaStream_t) {
  std::memset(p, value, n);
  return cudaSuccess;
}
// The stream-ordered allocator, IPC and graphs are not faked: LibTorch uses them only when asked to.
cudaError_t cudaMallocAsync(void**, std::size_t, cudaStream_t) { return fail(cudaErrorNotSupported); }
cudaError_t cudaFreeAsync(void*, cudaStream_t) { return fail(cudaErrorNotSupported); }
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t*, int) { return fail(cudaErrorNotSupported); }
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return fail(cudaErrorNotSupported); }
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return fail(cudaErrorNotSupported); }
cudaError_t cudaMemPoolSetAccess(cudaMemPool_t, const cudaMemAccessDesc*, std::size_t) {
  return fail(cudaErrorNotSupported);
}
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t, std::size_t) { return fail(cudaErrorNotSupported); }
cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t*, void*) { return fail(cudaErrorNotSupported); }
cudaError_t cudaIpcOpenMemHandle(void**, cudaIpcMemHandle_t, unsigned) { return fail(cudaErrorNotSupported); }
cudaError_t cudaIpcCloseMemHandle(void*) { return fail(cudaErrorNotSupported); }
cudaError_t cudaGraphDebugDotPrint(cudaGraph_t, const char*, unsigned) { return fail(cudaErrorNotSupported); }
cudaError_t cudaGraphDestroy(cudaGraph_t) { return fail(cudaErrorNotSupported); }
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t) { return fail(cudaErrorNotSupported); }
cudaError_t cudaGraphGetNodes(cudaGraph_t, cudaGraphNode_t*, std::size_t*) { return fail(cudaErrorNotSupported); }
cudaError_t cudaGraphInstantiate(cudaGraphExec_t*, cudaGraph_t, unsigned long long) {
  return fail(cudaErrorNotSupported);
}
cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t*, cudaGraph_t, unsigned long long) {
  return fail(cudaErrorNotSupported);
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t, cudaStream_t) { return fail(cudaErrorNotSupported); }
cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) { return fail(cudaErrorNotSupported); }
cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t*) { return fail(cudaErrorNotSupported); }

// --- streams and events: everything is complete when its call returns ---
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* s, unsigned, int priority) {
  *s = reinterpret_cast<cudaStream_t>(new fake_stream{priority});
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<fake_stream*>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* status) {
  *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaStreamGetCaptureInfo_v2(cudaStream_t, cudaStreamCaptureStatus* status, unsigned long long* id,
                                        cudaGraph_t* graph, const cudaGraphNode_t** deps, std::size_t* n) {
  *status = cudaStreamCaptureStatusNone;
  if (id) *id = 0;
  if (graph) *graph = nullptr;
  if (deps) *deps = nullptr;
  if (n) *n = 0;
  return cudaSuccess;
}
cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode*) { return cudaSuccess; }
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new fake_event{});
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<fake_event*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  reinterpret_cast<fake_event*>(e)->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  *ms = std::chrono::duration<float, std::milli>(reinterpret_cast<fake_event*>(end)->at -
                                                 reinterpret_cast<fake_event*>(start)->at)
            .count();
  return cudaSuccess;
}

// --- kernels: counted, not run ---
cudaError_t cudaLaunchKernel(const void* func, dim3, dim3, void**, std::size_t, cudaStream_t) {
  launched(func);
  return cudaSuccess;
}
cudaError_t cudaLaunchKernelExC(const cudaLaunchConfig_t*, const void* func, void**) {
  launched(func);
  return cudaSuccess;
}
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void*) {
  std::memset(attr, 0, sizeof *attr);
  attr->maxThreadsPerBlock = 1024;
  attr->numRegs = 32;
  attr->ptxVersion = attr->binaryVersion = 90;
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* blocks, const void*, int, std::size_t,
                                                                   unsigned) {
  *blocks = 1;
  return cudaSuccess;
}

} // extern "C"
