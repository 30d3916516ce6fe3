// Shared device and host pieces of the CUDA KV writers (set_mla_kv_buffer.cu, store_fp8_paged.cu).
//
// Both writers have the same shape: a persistent grid of warps walks "tasks" of kRows consecutive
// token rows; a warp issues every load of its task (the rows' input vectors and their cache slots,
// which do not depend on each other) before its first store, then writes each row whose slot is
// >= 0 either straight from registers (the "vector" copy) or staged in the warp's shared-memory slot
// and written by one cp.async.bulk per row (the "bulk" copy, sm90+). This header holds what the two
// share: PDL, the bulk-copy primitives, streaming loads, and the persistent launch.
//
// PDL: every kernel calls pdl_wait() (cudaGridDependencySynchronize) before its first global access
// and pdl_launch_dependents() (cudaTriggerProgrammaticLaunchCompletion) right after it, not after
// its last store. That is safe: a dependent's cudaGridDependencySynchronize waits for this whole
// grid to complete and flush its writes wherever the trigger sits (every PDL-launched kernel of
// fusegraph waits before touching memory), and it lets the dependent's launch and prologue overlap
// this kernel. The dependent is launched only once every CTA of this grid has triggered, i.e. is
// resident, so its CTAs never hold an SM slot that a CTA of this grid still waits for.
// (Under graph replay of back-to-back writers this hides most of the launch gap between calls.)
//
// Plain CUDA C++ (no torch headers); found through -I kernels/_cuda by nvcc and the JIT build.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <mutex>

namespace fg_kv {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxWarpsPerCta = 8;
constexpr size_t kMaxDynamicSmem = 48 * 1024;  // the default limit: no cudaFuncSetAttribute needed

// -- PDL (no-ops before sm90 and when the launch did not ask for programmatic serialization) --
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cudaGridDependencySynchronize();
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cudaTriggerProgrammaticLaunchCompletion();
#endif
}

// -- bulk async copy shared -> global (sm90+; the host never launches a bulk kernel before) --
// Every thread that wrote the staged bytes with ordinary stores fences them into the async proxy.
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// One bulk copy of `bytes` (a multiple of 16; both addresses 16-byte aligned), committed as its own
// bulk group of the issuing thread.
__device__ __forceinline__ void bulk_store(void* dst, const void* src, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const uint32_t src_shared = static_cast<uint32_t>(__cvta_generic_to_shared(src));
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;"
               :: "l"(dst), "r"(src_shared), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
#else
  __trap();
#endif
}

// This thread's bulk copies have read their shared-memory source: the slot may be rewritten.
__device__ __forceinline__ void bulk_wait_read() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
#endif
}

// This thread's bulk copies are complete (before the kernel exits).
__device__ __forceinline__ void bulk_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

// -- loads ---------------------------------------------------------------------------------------
template <int kVec> struct VecOf;
template <> struct VecOf<16> { using type = uint4; };
template <> struct VecOf<8> { using type = uint2; };
template <> struct VecOf<4> { using type = unsigned int; };

// Read-once input, streamed: the non-coherent path without L1 allocation (the form of streaming
// copy kernels). Safe with PDL: every load comes after pdl_wait(), which makes the predecessor's
// writes visible to this grid.
template <int kVec>
__device__ __forceinline__ typename VecOf<kVec>::type load_stream(const unsigned char* p);

template <>
__device__ __forceinline__ uint4 load_stream<16>(const unsigned char* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

template <>
__device__ __forceinline__ uint2 load_stream<8>(const unsigned char* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

template <>
__device__ __forceinline__ unsigned int load_stream<4>(const unsigned char* p) {
  unsigned int v;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

template <typename Loc>
__device__ __forceinline__ int64_t load_slot(const void* loc, int64_t i) {
  return static_cast<int64_t>(__ldg(static_cast<const Loc*>(loc) + i));
}

// -- host ------------------------------------------------------------------------------------------
inline bool aligned(const void* ptr, int64_t alignment) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(alignment) == 0;
}

// Resident CTAs per SM of `kernel` at this block shape, times the SM count of the current device:
// the persistent grid's size. Cached per (kernel, threads, shared bytes, device), so the occupancy
// query runs once per shape, never inside a CUDA-graph capture after the warm-up call.
inline cudaError_t resident_ctas(const void* kernel, int threads, size_t smem, int* ctas) {
  struct Entry { const void* kernel; int threads; size_t smem; int device; int ctas; };
  static std::mutex lock;
  static Entry cache[64];
  static int used = 0;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  {
    std::lock_guard<std::mutex> guard(lock);
    for (int i = 0; i < used; ++i) {
      const Entry& e = cache[i];
      if (e.kernel == kernel && e.threads == threads && e.smem == smem && e.device == device) {
        *ctas = e.ctas;
        return cudaSuccess;
      }
    }
  }
  int sms = 0, per_sm = 0;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
  if (err != cudaSuccess) return err;
  *ctas = sms * (per_sm > 0 ? per_sm : 1);
  std::lock_guard<std::mutex> guard(lock);
  if (used < 64) cache[used++] = Entry{kernel, threads, smem, device, *ctas};
  return cudaSuccess;
}

// Launch `kernel(params)` over `tasks` warp tasks, `warps` warps a CTA: one CTA per `warps` tasks,
// at most as many CTAs as fit on the device at once (the warps then loop over the remaining tasks).
// cudaLaunchKernelEx with the programmatic-serialization attribute when `pdl`.
template <typename Params>
cudaError_t launch_persistent(void (*kernel)(Params), const Params& params, int64_t tasks, int warps, size_t smem,
                              bool pdl, cudaStream_t stream) {
  if (tasks <= 0) return cudaSuccess;
  if (warps < 1 || warps > kMaxWarpsPerCta || smem > kMaxDynamicSmem) return cudaErrorInvalidValue;
  int resident = 0;
  const cudaError_t err = resident_ctas(reinterpret_cast<const void*>(kernel), 32 * warps, smem, &resident);
  if (err != cudaSuccess) return err;
  const int64_t wanted = (tasks + warps - 1) / warps;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(wanted < resident ? wanted : resident));
  config.blockDim = dim3(32 * warps);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, params);
}

}  // namespace fg_kv
