// store_fp8_paged: quantize k_nope (bf16 [448]) to FP8 e4m3 in tiles of 64 with ue8m0 scales and store
// it with k_rope (bf16 [64]) into DSV4's paged cache (spec 4.3): the 576-byte row at
// page * page_stride + row * 576, the 7 scale bytes + 1 zero pad at page * page_stride + P * 576 + row * 8.
// Slots loc < 0 are padding: nothing is read for them beyond loc, nothing is written.
//
// One warp per token. Lane l loads two 16-byte vectors (8 bf16 each):
//   a = nope vector l        (channels 8l .. 8l+7: tiles 0..3, eight lanes per tile)
//   b = nope vector 32 + l   for l < 24 (tiles 4..6), rope vector l - 24 for l >= 24
// so a tile's amax is a max over an aligned group of 8 lanes (three xor shuffles). Quantization is
// in registers: scale exponent e = ceil(log2(max(amax, quant_eps) / 448)) computed exactly from the
// bits of an IEEE division (the rule of kernels/_fp8.py), x * 2^-e clamped to +-448 and converted to
// e4m3 with round-to-nearest-even (cvt.rn.satfinite; bit-identical to torch's float8_e4m3fn cast).
//
// The 576-byte row is written either straight from the lanes (kBulk = false: 8-byte FP8 stores and
// 16-byte rope stores), or (kBulk = true, sm90+) staged in the warp's shared-memory slot and written
// by lane 0 with one cp.async.bulk.global.shared::cta (576 = 36 * 16 bytes; fence.proxy.async before
// it, wait_group.read before the slot is reused, wait_group 0 before exit). The 8 scale bytes are not
// 16-byte aligned: lane 0 writes them with one plain 8-byte store.
// PDL as in set_mla_kv_buffer.cu: cudaGridDependencySynchronize / cudaTriggerProgrammaticLaunchCompletion,
// launched with cudaLaunchKernelEx.
//
// Plain CUDA C++ (no torch headers): nvcc compiles this file alone.
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace fg_store_fp8 {

constexpr int kNope = 448;
constexpr int kRowBytes = 576;    // 448 e4m3 + 64 bf16
constexpr int kScaleBytes = 8;    // 7 ue8m0 + 1 pad
constexpr float kFp8Max = 448.0f;
constexpr unsigned kFull = 0xffffffffu;

struct Params {
  unsigned char* cache;       // uint8 [pages, page_stride]
  const void* loc;            // int32 or int64 [rows]
  const unsigned char* nope;  // bf16 [rows, 448], bytes
  const unsigned char* rope;  // bf16 [rows, 64], bytes
  int64_t rows;
  int64_t nope_stride;        // bytes between k_nope rows
  int64_t rope_stride;        // bytes between k_rope rows
  int64_t page_stride;        // bytes between pages
  int64_t page_size;          // tokens per page (P)
  float quant_eps;
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

__device__ __forceinline__ void bulk_wait_read() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
#endif
}

__device__ __forceinline__ void bulk_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

// 8 bf16 (one 16-byte vector, little-endian pairs) as fp32
__device__ __forceinline__ void unpack_bf16x8(const uint4& v, float (&x)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    x[2 * k] = __uint_as_float(w[k] << 16);
    x[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
  }
}

// exact ceil(log2(amax / 448)) for a positive normal fp32 amax
__device__ __forceinline__ int ue8m0_exponent(float amax) {
  const uint32_t bits = __float_as_uint(__fdiv_rn(amax, kFp8Max));
  const int exponent = static_cast<int>((bits >> 23) & 0xff) - 127;
  return exponent + ((bits & 0x7fffffu) != 0 ? 1 : 0);
}

// 2^e as fp32, e in [-126, 127]
__device__ __forceinline__ float pow2(int e) { return __uint_as_float(static_cast<uint32_t>(e + 127) << 23); }

// 8 values scaled by 2^-e, clamped, rounded to e4m3 (RNE): 8 bytes, channel order
__device__ __forceinline__ uint2 quantize8(const float (&x)[8], int e) {
  const float inv_scale = pow2(-e);  // exact: multiplying by it equals dividing by the scale
  uint32_t packed[2] = {0u, 0u};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float lo = fminf(fmaxf(x[2 * k] * inv_scale, -kFp8Max), kFp8Max);
    const float hi = fminf(fmaxf(x[2 * k + 1] * inv_scale, -kFp8Max), kFp8Max);
    const __nv_fp8x2_storage_t pair = __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
    packed[k / 2] |= static_cast<uint32_t>(pair) << (16 * (k % 2));  // .x = lo byte, .y = hi byte
  }
  return make_uint2(packed[0], packed[1]);
}

__device__ __forceinline__ float group8_max(float v) {  // max over the aligned group of 8 lanes
  v = fmaxf(v, __shfl_xor_sync(kFull, v, 1));
  v = fmaxf(v, __shfl_xor_sync(kFull, v, 2));
  v = fmaxf(v, __shfl_xor_sync(kFull, v, 4));
  return v;
}

template <bool kBulk, typename Loc>
__global__ void store_fp8_kernel(const Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const bool b_is_nope = lane < 24;
  unsigned char* slot = smem + warp * kRowBytes;

  pdl_wait();
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + warp; row < p.rows;
       row += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t loc = static_cast<int64_t>(__ldg(static_cast<const Loc*>(p.loc) + row));
    if (loc < 0) continue;  // padding row (uniform over the warp)
    const unsigned char* nope = p.nope + row * p.nope_stride;
    const unsigned char* rope = p.rope + row * p.rope_stride;
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(nope) + lane);
    const uint4 b = b_is_nope ? __ldg(reinterpret_cast<const uint4*>(nope) + 32 + lane)
                              : __ldg(reinterpret_cast<const uint4*>(rope) + (lane - 24));

    float xa[8], xb[8];
    unpack_bf16x8(a, xa);
    unpack_bf16x8(b, xb);
    float amax_a = 0.0f, amax_b = 0.0f;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      amax_a = fmaxf(amax_a, fabsf(xa[k]));
      amax_b = fmaxf(amax_b, fabsf(xb[k]));
    }
    amax_a = group8_max(amax_a);                       // tiles 0..3
    amax_b = group8_max(b_is_nope ? amax_b : 0.0f);    // tiles 4..6 (lanes 24..31: rope, unused)
    const int e_a = ue8m0_exponent(fmaxf(amax_a, p.quant_eps));
    const int e_b = ue8m0_exponent(fmaxf(amax_b, p.quant_eps));
    const uint2 q_a = quantize8(xa, e_a);
    const uint2 q_b = quantize8(xb, e_b);

    // scale bytes: tile t's exponent lives in lane 8t (t < 4: e_a; t >= 4: e_b of lane 8(t-4))
    uint32_t scale_lo = 0u, scale_hi = 0u;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      scale_lo |= static_cast<uint32_t>(__shfl_sync(kFull, e_a, 8 * t) + 127) << (8 * t);
    }
#pragma unroll
    for (int t = 0; t < 3; ++t) {  // byte 7 (the pad) stays zero
      scale_hi |= static_cast<uint32_t>(__shfl_sync(kFull, e_b, 8 * t) + 127) << (8 * t);
    }

    const int64_t page = loc / p.page_size;
    const int64_t in_page = loc - page * p.page_size;
    unsigned char* page_base = p.cache + page * p.page_stride;
    unsigned char* row_dst = page_base + in_page * kRowBytes;
    if (kBulk) {
      if (lane == 0) bulk_wait_read();  // the previous row's copy has read the slot
      __syncwarp();
    }
    unsigned char* out = kBulk ? slot : row_dst;
    reinterpret_cast<uint2*>(out)[lane] = q_a;                          // fp8 bytes 8l .. 8l+7
    if (b_is_nope) {
      reinterpret_cast<uint2*>(out)[32 + lane] = q_b;                   // fp8 bytes 256 + 8l ..
    } else {
      reinterpret_cast<uint4*>(out + kNope)[lane - 24] = b;             // rope bf16, bytes as loaded
    }
    if (kBulk) {
      fence_proxy_async();
      __syncwarp();
      if (lane == 0) bulk_store(row_dst, slot, kRowBytes);
    }
    if (lane == 0) {
      *reinterpret_cast<uint2*>(page_base + p.page_size * kRowBytes + in_page * kScaleBytes) =
          make_uint2(scale_lo, scale_hi);
    }
  }
  if (kBulk && lane == 0) bulk_wait_all();
  pdl_launch_dependents();
}

template <bool kBulk, typename Loc>
cudaError_t launch_typed(const Params& p, int warps, bool pdl, cudaStream_t stream) {
  const int64_t ctas = (p.rows + warps - 1) / warps;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(ctas < (1LL << 30) ? ctas : (1LL << 30)));
  config.blockDim = dim3(32 * warps);
  config.dynamicSmemBytes = kBulk ? static_cast<size_t>(warps) * kRowBytes : 0;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = pdl ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, store_fp8_kernel<kBulk, Loc>, p);
}

bool aligned(const void* ptr, int64_t alignment) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(alignment) == 0;
}

}  // namespace fg_store_fp8

// Host launcher (called by the torch binding). Returns cudaErrorInvalidValue for arguments the
// kernel does not take; the Python provider checks the same rules first and falls back to Triton.
cudaError_t fg_store_fp8_paged(void* cache, const void* loc, bool loc_is_64, const void* nope, const void* rope,
                               int64_t rows, int64_t nope_stride, int64_t rope_stride, int64_t page_stride,
                               int64_t page_size, float quant_eps, bool bulk, int warps, bool pdl,
                               cudaStream_t stream) {
  using namespace fg_store_fp8;
  if (rows <= 0) return cudaSuccess;
  if (warps < 1 || warps > 32 || page_size <= 0 || !(quant_eps >= 1e-30f)) return cudaErrorInvalidValue;
  if (nope_stride % 16 || rope_stride % 16 || page_stride % 16 || !aligned(nope, 16) || !aligned(rope, 16) ||
      !aligned(cache, 16) || page_stride < page_size * (kRowBytes + kScaleBytes))
    return cudaErrorInvalidValue;
  Params p;
  p.cache = static_cast<unsigned char*>(cache);
  p.loc = loc;
  p.nope = static_cast<const unsigned char*>(nope);
  p.rope = static_cast<const unsigned char*>(rope);
  p.rows = rows;
  p.nope_stride = nope_stride;
  p.rope_stride = rope_stride;
  p.page_stride = page_stride;
  p.page_size = page_size;
  p.quant_eps = quant_eps;
  if (bulk) {
    return loc_is_64 ? launch_typed<true, int64_t>(p, warps, pdl, stream)
                     : launch_typed<true, int32_t>(p, warps, pdl, stream);
  }
  return loc_is_64 ? launch_typed<false, int64_t>(p, warps, pdl, stream)
                   : launch_typed<false, int32_t>(p, warps, pdl, stream);
}
