// set_mla_kv_buffer: kv_buffer[loc[i]] = cat(k_nope[i], k_rope[i]) for loc[i] >= 0 (bytes moved as is).
//
// One warp per row. Two ways to write the row, picked by the template flag kBulk so that the two can
// be measured against each other (public numbers say a ~1 KB row may be too small for the bulk copy
// to pay off):
//   kBulk = false  every lane loads kVec-byte vectors of the row and stores them straight to the
//                  destination row (all loads of a chunk issued before its stores);
//   kBulk = true   (sm90+) the lanes stage the row in the warp's shared-memory slot, then lane 0
//                  writes it with one cp.async.bulk.global.shared::cta (fence.proxy.async first, so
//                  the async proxy sees the generic-proxy writes; wait_group.read before the slot is
//                  reused; wait_group 0 before exit).
// PDL: cudaGridDependencySynchronize() before the first global access, and
// cudaTriggerProgrammaticLaunchCompletion() after the last store; the host launches with
// cudaLaunchKernelEx and the programmatic-serialization attribute.
//
// Alignment (checked by the Python provider, re-checked by the launcher): both parts' byte widths,
// the input row strides and addresses are multiples of kVec; for the bulk copy the row width, the
// buffer's row stride and its address are multiples of 16.
//
// Plain CUDA C++ (no torch headers): nvcc compiles this file alone.
#include <cuda_runtime.h>
#include <stdint.h>

namespace fg_set_mla {

constexpr int kUnroll = 4;          // vectors in flight per lane before the stores
constexpr int kMaxRowBytes = 4096;  // shared slot per warp (8 warps: 32 KB, under the 48 KB default)

template <int kVec> struct VecOf;
template <> struct VecOf<16> { using type = uint4; };
template <> struct VecOf<8> { using type = uint2; };
template <> struct VecOf<4> { using type = uint32_t; };

struct Params {
  unsigned char* buf;          // kv_buffer, bytes
  const void* loc;             // int32 or int64 [rows]
  const unsigned char* nope;   // k_nope, bytes
  const unsigned char* rope;   // k_rope, bytes
  int64_t rows;
  int64_t buf_stride;          // bytes between buffer rows
  int64_t nope_stride;         // bytes between k_nope rows
  int64_t rope_stride;         // bytes between k_rope rows
  int nope_bytes;
  int rope_bytes;
};

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

// -- bulk async copy shared -> global (sm90+; compiled out before, where kBulk is never launched) --
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

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

__device__ __forceinline__ void bulk_wait_read() {  // the slot may be overwritten afterwards
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
#endif
}

__device__ __forceinline__ void bulk_wait_all() {  // the global writes are done
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

template <int kVec, bool kBulk, typename Loc>
__global__ void set_mla_kernel(const Params p) {
  using Vec = typename VecOf<kVec>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const int row_bytes = p.nope_bytes + p.rope_bytes;
  const int n_nope = p.nope_bytes / kVec;
  const int n_all = row_bytes / kVec;
  unsigned char* slot = smem + warp * row_bytes;  // this warp's staging row (kBulk)

  pdl_wait();
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + warp; row < p.rows;
       row += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t dst_row = static_cast<int64_t>(__ldg(static_cast<const Loc*>(p.loc) + row));
    if (dst_row < 0) continue;  // padding row: no address is formed (uniform over the warp)
    const unsigned char* nope = p.nope + row * p.nope_stride;
    const unsigned char* rope = p.rope + row * p.rope_stride;
    unsigned char* dst = p.buf + dst_row * p.buf_stride;
    if (kBulk) {  // the previous row's bulk copy must have read the slot before it is rewritten
      if (lane == 0) bulk_wait_read();
      __syncwarp();
    }
    unsigned char* out = kBulk ? slot : dst;
    for (int base = 0; base < n_all; base += 32 * kUnroll) {
      Vec v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * 32 + lane;
        if (i < n_all) {
          const unsigned char* src = i < n_nope ? nope + i * kVec : rope + (i - n_nope) * kVec;
          v[u] = __ldg(reinterpret_cast<const Vec*>(src));
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = base + u * 32 + lane;
        if (i < n_all) *reinterpret_cast<Vec*>(out + i * kVec) = v[u];
      }
    }
    if (kBulk) {
      fence_proxy_async();  // every writer: make its shared-memory stores visible to the async proxy
      __syncwarp();
      if (lane == 0) bulk_store(dst, slot, static_cast<uint32_t>(row_bytes));
    }
  }
  if (kBulk && lane == 0) bulk_wait_all();
  pdl_launch_dependents();
}

template <int kVec, bool kBulk, typename Loc>
cudaError_t launch_typed(const Params& p, int warps, bool pdl, cudaStream_t stream) {
  const int64_t ctas = (p.rows + warps - 1) / warps;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(ctas < (1LL << 30) ? ctas : (1LL << 30)));
  config.blockDim = dim3(32 * warps);
  config.dynamicSmemBytes = kBulk ? static_cast<size_t>(warps) * (p.nope_bytes + p.rope_bytes) : 0;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, set_mla_kernel<kVec, kBulk, Loc>, p);
}

template <int kVec, bool kBulk>
cudaError_t launch_loc(const Params& p, bool loc_is_64, int warps, bool pdl, cudaStream_t stream) {
  return loc_is_64 ? launch_typed<kVec, kBulk, int64_t>(p, warps, pdl, stream)
                   : launch_typed<kVec, kBulk, int32_t>(p, warps, pdl, stream);
}

template <int kVec>
cudaError_t launch_vec(const Params& p, bool loc_is_64, bool bulk, int warps, bool pdl, cudaStream_t stream) {
  return bulk ? launch_loc<kVec, true>(p, loc_is_64, warps, pdl, stream)
              : launch_loc<kVec, false>(p, loc_is_64, warps, pdl, stream);
}

bool aligned(const void* ptr, int64_t alignment) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(alignment) == 0;
}

}  // namespace fg_set_mla

// Host launcher (called by the torch binding). Returns cudaErrorInvalidValue for arguments the
// kernel does not take; the Python provider checks the same rules first and falls back to Triton.
cudaError_t fg_set_mla_kv_buffer(void* buf, const void* loc, bool loc_is_64, const void* nope, const void* rope,
                                 int64_t rows, int64_t buf_stride, int64_t nope_stride, int64_t rope_stride,
                                 int nope_bytes, int rope_bytes, int vec_bytes, bool bulk, int warps, bool pdl,
                                 cudaStream_t stream) {
  using namespace fg_set_mla;
  if (rows <= 0) return cudaSuccess;
  const int row_bytes = nope_bytes + rope_bytes;
  if (vec_bytes != 4 && vec_bytes != 8 && vec_bytes != 16) return cudaErrorInvalidValue;
  if (warps < 1 || warps > 32 || nope_bytes < 0 || rope_bytes < 0 || row_bytes == 0) return cudaErrorInvalidValue;
  // a part of zero bytes is never read: its pointer and stride do not matter
  const bool nope_ok = nope_bytes == 0 || (nope_stride % vec_bytes == 0 && aligned(nope, vec_bytes));
  const bool rope_ok = rope_bytes == 0 || (rope_stride % vec_bytes == 0 && aligned(rope, vec_bytes));
  if (nope_bytes % vec_bytes || rope_bytes % vec_bytes || !nope_ok || !rope_ok || buf_stride % vec_bytes ||
      !aligned(buf, vec_bytes))
    return cudaErrorInvalidValue;
  if (bulk && (row_bytes % 16 || buf_stride % 16 || !aligned(buf, 16) || row_bytes > kMaxRowBytes))
    return cudaErrorInvalidValue;
  Params p;
  p.buf = static_cast<unsigned char*>(buf);
  p.loc = loc;
  p.nope = static_cast<const unsigned char*>(nope);
  p.rope = static_cast<const unsigned char*>(rope);
  p.rows = rows;
  p.buf_stride = buf_stride;
  p.nope_stride = nope_stride;
  p.rope_stride = rope_stride;
  p.nope_bytes = nope_bytes;
  p.rope_bytes = rope_bytes;
  switch (vec_bytes) {
    case 16: return launch_vec<16>(p, loc_is_64, bulk, warps, pdl, stream);
    case 8: return launch_vec<8>(p, loc_is_64, bulk, warps, pdl, stream);
    default: return launch_vec<4>(p, loc_is_64, bulk, warps, pdl, stream);
  }
}
