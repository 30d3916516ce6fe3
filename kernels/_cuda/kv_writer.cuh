// Shared device and host pieces of the CUDA KV writers (set_mla_kv_buffer.cu, store_fp8_paged.cu).
//
// Both writers have the same shape: warps walk "tasks" of kRows consecutive token rows; a warp issues
// every load of its task (the rows' input vectors and their cache slots, which do not depend on each
// other) before its first store, then writes each row whose slot is >= 0 either straight from
// registers (the "vector" copy) or staged in the warp's shared-memory slot and written by one
// cp.async.bulk per row (the "bulk" copy, sm90+); set_mla_kv_buffer also loads rows into shared memory
// with bulk copies on an mbarrier (the "tma" copy, sm90+). This header holds what they share: PDL, the
// bulk-copy and mbarrier primitives, the loads and stores with their cache hints (predicated forms),
// the task loop, the launch (persistent grid, one warp per task, or a capped grid) and the mapping of
// a runtime plan (kv_writer_args.h) onto the instantiated kernels.
//
// Memory-level parallelism: a warp keeps kRows rows' loads in flight at once, and the grid decides how
// many warps run at once. At 16384 DSV4 rows, 8 rows a warp is 2048 warps (16 an SM: one wave with
// room to spare), 4 rows a warp fits one wave at <= 64 registers; the host's plan picks, the benchmark
// (benchmarks/ops_hopper.py) measures. The register caps per task shape are kMinCtas below.
//
// PDL: every kernel calls pdl_wait() (cudaGridDependencySynchronize) before its first global access
// and pdl_launch_dependents() (cudaTriggerProgrammaticLaunchCompletion) right after it, not after
// its last store. That is safe: a dependent's cudaGridDependencySynchronize waits for this whole
// grid to complete and flush its writes wherever the trigger sits (every PDL-launched kernel of
// fusegraph waits before touching memory), and it lets the dependent's launch and prologue overlap
// this kernel. The dependent is launched only once every CTA of this grid has triggered, i.e. is
// resident, so its CTAs never hold an SM slot that a CTA of this grid still waits for.
//
// Plain CUDA C++ (no torch headers); found through -I kernels/_cuda by nvcc and the JIT build.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <mutex>
#include <type_traits>

#include "kv_writer_args.h"

namespace fg_kv {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxWarpsPerCta = 16;
constexpr size_t kMaxDynamicSmem = 48 * 1024;  // the default limit: no cudaFuncSetAttribute needed

// __launch_bounds__ minimum CTAs of 512 threads per SM by task shape, i.e. the register cap: 64
// registers up to 4 rows (4 rows a warp at 16384 rows is one wave only at <= 64), 128 for 8 rows (the
// loads of 8 rows in flight need them) and for the bulk copy of 4 (its staging needs a few more; its
// shared memory bounds its occupancy anyway).
__host__ __device__ constexpr int kMinCtas(int rows, bool bulk) {
  return rows >= 8 || (bulk && rows >= 4) ? 1 : 2;
}

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

// -- bulk async copy global -> shared, completed on an mbarrier (the tma copy, sm90+) -----------------
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// One thread: an mbarrier expecting one arrival a phase; the init made visible to the async proxy.
__device__ __forceinline__ void mbarrier_init(uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(bar) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

// The one arrival of this phase, which completes once `bytes` more bytes have landed.
__device__ __forceinline__ void mbarrier_arrive_expect(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
#endif
}

// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global to shared memory, counted
// on `bar`.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               :: "r"(shared_address(dst)), "l"(src), "r"(bytes), "r"(bar) : "memory");
#else
  __trap();
#endif
}

// Wait for the phase of parity `phase` of `bar` to complete. A transfer that never lands would hang
// the GPU: after ~2^24 polls (seconds) trap instead, so that the launch fails with an error.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t phase) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  for (uint32_t tries = 0;; ++tries) {
    uint32_t done;
    asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                 "selp.b32 %0, 1, 0, p;\n\t}"
                 : "=r"(done) : "r"(bar), "r"(phase) : "memory");
    if (done) return;
    if (tries > (1u << 24)) __trap();
  }
#endif
}

// -- the task loop ------------------------------------------------------------------------------------
// This warp's rows of the shared-memory staging area (bulk copies): `bytes` a warp.
__device__ __forceinline__ unsigned char* warp_stage(unsigned char* smem, int bytes) {
  return smem + (threadIdx.x >> 5) * bytes;
}

// Both writers' grid walk: after the PDL wait (and trigger), body(row0) for every task of this warp,
// the tasks of a grid of gridDim.x CTAs of blockDim.x / 32 warps (one round for a flat grid).
template <int kRows, typename Body>
__device__ __forceinline__ void for_each_task(int rows, Body&& body) {
  const int warps = blockDim.x >> 5;
  pdl_wait();
  pdl_launch_dependents();
  const int tasks = (rows + kRows - 1) / kRows;
#pragma unroll 1
  for (int task = blockIdx.x * warps + (threadIdx.x >> 5); task < tasks; task += gridDim.x * warps) {
    body(task * kRows);
  }
}

// -- loads and stores with a cache hint ----------------------------------------------------------------
// Read-once inputs and write-once cache rows. Loads after pdl_wait() only (which makes the
// predecessor's writes visible to this grid, so the non-coherent path is safe). The *_if forms are
// predicated inside the instruction (`@p ld` / `@p st`): a lane whose vector is past the row or whose
// row is padding issues nothing, without a branch around every access (an `if` around inline asm
// compiles to branches, which slow down issuing a task's loads back to back). A load whose predicate
// is false leaves its result undefined; the address of a predicated-off access is never used.
template <int kVec> struct VecOf;
template <> struct VecOf<16> { using type = uint4; };
template <> struct VecOf<8> { using type = uint2; };
template <> struct VecOf<4> { using type = unsigned int; };

template <int kVec, int kHint>
__device__ __forceinline__ typename VecOf<kVec>::type load_vec_if(bool pred, const unsigned char* p);
template <int kVec, int kHint>
__device__ __forceinline__ void store_vec_if(bool pred, unsigned char* p, const typename VecOf<kVec>::type& v);

// "{ .reg .pred p; setp.ne.b32 p, <pred operand>, 0; @p <instruction>; }"
#define FG_KV_PREDICATED(PRED, INSTRUCTION) \
  "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, " PRED ", 0;\n\t@p " INSTRUCTION ";\n\t}"

#define FG_KV_LOADS(HINT, QUAL)                                                                              \
  template <>                                                                                                \
  __device__ __forceinline__ uint4 load_vec_if<16, HINT>(bool pred, const unsigned char* p) {                \
    uint4 v;                                                                                                 \
    asm volatile(FG_KV_PREDICATED("%5", "ld.global" QUAL ".v4.u32 {%0, %1, %2, %3}, [%4]")                   \
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "r"(static_cast<int>(pred)));        \
    return v;                                                                                                \
  }                                                                                                          \
  template <>                                                                                                \
  __device__ __forceinline__ uint2 load_vec_if<8, HINT>(bool pred, const unsigned char* p) {                 \
    uint2 v;                                                                                                 \
    asm volatile(FG_KV_PREDICATED("%3", "ld.global" QUAL ".v2.u32 {%0, %1}, [%2]")                           \
                 : "=r"(v.x), "=r"(v.y) : "l"(p), "r"(static_cast<int>(pred)));                              \
    return v;                                                                                                \
  }                                                                                                          \
  template <>                                                                                                \
  __device__ __forceinline__ unsigned int load_vec_if<4, HINT>(bool pred, const unsigned char* p) {          \
    unsigned int v;                                                                                          \
    asm volatile(FG_KV_PREDICATED("%2", "ld.global" QUAL ".u32 %0, [%1]")                                    \
                 : "=r"(v) : "l"(p), "r"(static_cast<int>(pred)));                                           \
    return v;                                                                                                \
  }

#define FG_KV_STORES(HINT, QUAL)                                                                             \
  template <>                                                                                                \
  __device__ __forceinline__ void store_vec_if<16, HINT>(bool pred, unsigned char* p, const uint4& v) {      \
    asm volatile(FG_KV_PREDICATED("%5", "st.global" QUAL ".v4.u32 [%0], {%1, %2, %3, %4}")                   \
                 :: "l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(static_cast<int>(pred)) : "memory"); \
  }                                                                                                          \
  template <>                                                                                                \
  __device__ __forceinline__ void store_vec_if<8, HINT>(bool pred, unsigned char* p, const uint2& v) {       \
    asm volatile(FG_KV_PREDICATED("%3", "st.global" QUAL ".v2.u32 [%0], {%1, %2}")                           \
                 :: "l"(p), "r"(v.x), "r"(v.y), "r"(static_cast<int>(pred)) : "memory");                     \
  }                                                                                                          \
  template <>                                                                                                \
  __device__ __forceinline__ void store_vec_if<4, HINT>(bool pred, unsigned char* p, const unsigned int& v) { \
    asm volatile(FG_KV_PREDICATED("%2", "st.global" QUAL ".u32 [%0], %1")                                    \
                 :: "l"(p), "r"(v), "r"(static_cast<int>(pred)) : "memory");                                 \
  }

FG_KV_LOADS(kHintPlain, "")
FG_KV_LOADS(kHintNc, ".nc.L1::no_allocate")
FG_KV_LOADS(kHintStream, ".cs")
FG_KV_STORES(kHintPlain, "")
FG_KV_STORES(kHintNc, "")
FG_KV_STORES(kHintStream, ".cs")
#undef FG_KV_LOADS
#undef FG_KV_STORES
#undef FG_KV_PREDICATED

// Unpredicated forms (the predicate folds away in ptxas).
template <int kVec, int kHint>
__device__ __forceinline__ typename VecOf<kVec>::type load_vec(const unsigned char* p) {
  return load_vec_if<kVec, kHint>(true, p);
}
template <int kVec, int kHint>
__device__ __forceinline__ void store_vec(unsigned char* p, const typename VecOf<kVec>::type& v) {
  store_vec_if<kVec, kHint>(true, p, v);
}

// loc[i] when pred, else -1; branch-free (one asm block, the width's load predicated), so that the
// load sits in the same basic block as the data loads after it and nothing waits for it before they
// are issued (the sign extension of an int32 slot happens where the slot is used).
__device__ __forceinline__ int64_t load_slot_if(bool pred, const RowsIn& in, int i) {
  const unsigned char* address =
      static_cast<const unsigned char*>(in.loc) + static_cast<int64_t>(i) * (in.loc_is_64 ? 8 : 4);
  uint32_t lo = 0xffffffffu, hi = 0xffffffffu;  // -1 unless a load replaces them
  asm volatile(
      "{\n\t.reg .pred p, q;\n\t"
      "setp.ne.b32 p, %2, 0;\n\t"
      "setp.ne.b32 q, %3, 0;\n\t"
      "@p ld.global.nc.v2.u32 {%0, %1}, [%4];\n\t"
      "@q ld.global.nc.u32 %0, [%4];\n\t}"
      : "+r"(lo), "+r"(hi)
      : "r"(static_cast<int>(pred && in.loc_is_64)), "r"(static_cast<int>(pred && !in.loc_is_64)), "l"(address));
  return in.loc_is_64 || !pred ? static_cast<int64_t>((static_cast<uint64_t>(hi) << 32) | lo)
                               : static_cast<int64_t>(static_cast<int>(lo));
}

// -- host ------------------------------------------------------------------------------------------
inline bool aligned(const void* ptr, int64_t alignment) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(alignment) == 0;
}

constexpr int64_t kMaxRows = int64_t{1} << 30;  // row and task indices are 32-bit in the kernels

// Fewer than kMaxRows rows; both parts of every row start on `vec`-byte boundaries and span whole
// vectors (a part of zero bytes is never read: its pointer and stride do not matter).
inline bool rows_valid(const RowsIn& in, int nope_bytes, int rope_bytes, int vec) {
  if (in.rows >= kMaxRows) return false;
  const bool nope_ok = nope_bytes == 0 || (in.nope_stride % vec == 0 && aligned(in.nope, vec));
  const bool rope_ok = rope_bytes == 0 || (in.rope_stride % vec == 0 && aligned(in.rope, vec));
  return nope_bytes >= 0 && rope_bytes >= 0 && nope_bytes % vec == 0 && rope_bytes % vec == 0 && nope_ok &&
         rope_ok;
}

// A plan some kernel was instantiated for (bulk and tma copies: the nc hint only).
inline bool plan_valid(const Plan& plan) {
  const int r = plan.rows_per_task;
  return (r == 1 || r == 2 || r == 4 || r == 8) && plan.warps >= 1 && plan.warps <= kMaxWarpsPerCta &&
         plan.hint >= 0 && plan.hint < kHints && plan.copy >= 0 && plan.copy < kCopies &&
         (plan.copy == kCopyVector || plan.hint == kHintNc) && plan.max_ctas >= 0;
}

// Resident CTAs per SM of `kernel` at this block shape, times the SM count of the current device:
// the persistent grid's size. Cached per (kernel, threads, shared bytes, device), so the occupancy
// query runs once per shape, never inside a CUDA-graph capture after the warm-up call.
inline cudaError_t resident_ctas(const void* kernel, int threads, size_t smem, int* ctas) {
  struct Entry { const void* kernel; int threads; size_t smem; int device; int ctas; };
  static std::mutex lock;
  static Entry cache[256];
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
  if (used < 256) cache[used++] = Entry{kernel, threads, smem, device, *ctas};
  return cudaSuccess;
}

// Launch `kernel(params)` over `tasks` warp tasks, plan.warps warps a CTA: one CTA per plan.warps
// tasks (one warp per task, the hardware schedules the CTAs), capped for a persistent plan at the CTAs
// that fit on the device at once and at plan.max_ctas if set (the warps then loop over the remaining
// tasks). cudaLaunchKernelEx with the programmatic-serialization attribute when plan.pdl.
template <typename Params>
cudaError_t launch_tasks(void (*kernel)(Params), const Params& params, int64_t tasks, const Plan& plan, size_t smem,
                         cudaStream_t stream) {
  if (tasks <= 0) return cudaSuccess;
  if (!plan_valid(plan) || smem > kMaxDynamicSmem) return cudaErrorInvalidValue;
  int64_t ctas = (tasks + plan.warps - 1) / plan.warps;
  if (plan.persistent) {
    int resident = 0;
    const cudaError_t err = resident_ctas(reinterpret_cast<const void*>(kernel), 32 * plan.warps, smem, &resident);
    if (err != cudaSuccess) return err;
    if (ctas > resident) ctas = resident;
  }
  if (plan.max_ctas > 0 && ctas > plan.max_ctas) ctas = plan.max_ctas;
  if (ctas > 0x7fffffff) return cudaErrorInvalidValue;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(ctas));
  config.blockDim = dim3(32 * plan.warps);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = plan.pdl ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, params);
}

// Calls f(Int<kRows>, Int<kHint>, Int<kCopy>) with the plan's task shape as compile-time constants:
// every writer instantiates its kernel for rows 1, 2, 4, 8 x (vector copy with each hint, bulk copy,
// and with kWithTma the tma copy; a tma plan of a writer without one is refused).
template <int N> using Int = std::integral_constant<int, N>;

template <int kRows, bool kWithTma, typename F>
cudaError_t with_copy(const Plan& plan, F& f) {
  if (plan.copy == kCopyBulk) return f(Int<kRows>{}, Int<kHintNc>{}, Int<kCopyBulk>{});
  if (plan.copy == kCopyTma) {
    if constexpr (kWithTma) {
      return f(Int<kRows>{}, Int<kHintNc>{}, Int<kCopyTma>{});
    } else {
      return cudaErrorInvalidValue;
    }
  }
  switch (plan.hint) {
    case kHintPlain: return f(Int<kRows>{}, Int<kHintPlain>{}, Int<kCopyVector>{});
    case kHintStream: return f(Int<kRows>{}, Int<kHintStream>{}, Int<kCopyVector>{});
    default: return f(Int<kRows>{}, Int<kHintNc>{}, Int<kCopyVector>{});
  }
}

template <bool kWithTma = false, typename F>
cudaError_t with_task_shape(const Plan& plan, F&& f) {
  if (!plan_valid(plan)) return cudaErrorInvalidValue;
  switch (plan.rows_per_task) {
    case 8: return with_copy<8, kWithTma>(plan, f);
    case 4: return with_copy<4, kWithTma>(plan, f);
    case 2: return with_copy<2, kWithTma>(plan, f);
    default: return with_copy<1, kWithTma>(plan, f);
  }
}

}  // namespace fg_kv
