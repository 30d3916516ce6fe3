// store_fp8_paged: quantize k_nope (bf16 [448]) to FP8 e4m3 in tiles of 64 with ue8m0 scales and store
// it with k_rope (bf16 [64]) into DSV4's paged cache (spec 4.3): the 576-byte row at
// page * page_stride + row * 576, the 7 scale bytes + 1 zero pad at page * page_stride + P * 576 + row * 8.
// Slots loc < 0 are padding: nothing of the cache is touched for them.
//
// Work split (shared with set_mla_kv_buffer.cu, see kv_writer.cuh): warps (a persistent grid, or one
// warp per task) walk tasks of kRows = 1, 2, 4 or 8 consecutive tokens. For each token of its task,
// lane l loads two 16-byte vectors
// (8 bf16 each):
//   a = nope vector l        (channels 8l .. 8l+7: tiles 0..3, eight lanes per tile)
//   b = nope vector 32 + l   for l < 24 (tiles 4..6), rope vector l - 24 for l >= 24
// and lane r < kRows loads the task's slot loc[row0 + r]: all 2 * kRows vectors and the slots are
// in flight before the first token is quantized, so token r's quantization overlaps the loads of
// the tokens after it. Every token of a task is quantized (padding too; only the stores check the
// slot), so no branch separates one token's work from the next and their shuffles overlap. A tile's
// amax is a max over an aligned group of 8 lanes (three xor shuffles); the 7 scale bytes are packed
// by two warp OR-reductions (redux.sync). Quantization in registers: scale exponent e = ceil(log2(max(amax, quant_eps) / 448))
// read exactly off amax's bits (the rule of kernels/_fp8.py, no division: see ue8m0_exponent),
// x * 2^-e converted to e4m3 with round-to-nearest-even and saturation (cvt.rn.satfinite, which is
// the reference's clamp to +-448; bit-identical to torch's float8_e4m3fn cast for finite inputs).
//
// The 576-byte row is written either straight from the lanes (kBulk = false: 8-byte FP8 stores and
// 16-byte rope stores, each a coalesced 256- or 128-byte warp access, with the cache hint kHint that
// the loads use too), or (kBulk = true, sm90+)
// staged in the warp's shared-memory slot and written by lane r with one cp.async.bulk per token
// (576 = 36 * 16 bytes; fence.proxy.async before it, wait_group.read before the slot is reused,
// wait_group 0 before exit). When the task's slots are one run of consecutive rows of one page (how
// serving engines allocate: a sequence's tokens fill its pages in order), the staged rows are already
// in cache order and lane 0 writes them all with one cp.async.bulk of kRows * 576 bytes. The 8 scale
// bytes of a token are not 16-byte aligned: one 8-byte store each, by lane 0 as the token is written
// (vector copy), or by lane r for token r after the task's rows (bulk copy: for a run of slots one
// coalesced 8 * kRows-byte warp access instead of kRows partial ones; the vector copy keeps no extra
// registers across its loop, where 4-row tasks sit at the 64-register cap).
#include <cuda_fp8.h>

#include "kv_writer.cuh"

namespace fg_store_fp8 {

using namespace fg_kv;

constexpr int kNope = 448;
constexpr int kRowBytes = 576;    // 448 e4m3 + 64 bf16
constexpr int kScaleBytes = 8;    // 7 ue8m0 + 1 pad

struct Params {
  RowsIn in;                  // bf16 k_nope [rows, 448], k_rope [rows, 64], slots
  unsigned char* cache;       // uint8 [pages, page_stride]
  int64_t page_stride;        // bytes between pages
  int64_t page_size;          // tokens per page (P)
  int page_shift;             // log2(P) when P is a power of two, else -1
  float quant_eps;
};

// bf16 value 2k (lo) and 2k + 1 (hi) of a 16-byte vector of 8 (little-endian pairs), as fp32. The
// kernel unpacks a vector where it uses it (amax, then the conversion) instead of holding 8 floats:
// fewer live registers while the other rows' loads are in flight.
__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ float amax8(const uint4& v) {  // max |x| over the 8 values, in channel order
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  float m = 0.0f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    m = fmaxf(m, fabsf(bf16_lo(w[k])));
    m = fmaxf(m, fabsf(bf16_hi(w[k])));
  }
  return m;
}

// ceil(log2(fl(amax / 448))) for a positive normal fp32 amax, the reference's rule, without the
// division: with amax = m * 2^E (m in [1, 2)), amax / 448 = (m / 1.75) * 2^(E - 8), a power of two
// exactly when m = 1.75 and in (2^(E-8), 2^(E-7)) when m > 1.75, so the exponent is E - 8, plus one
// when m's fraction bits exceed 0x600000 (0.75). The rounded quotient never lands on the other side
// of a power of two (m on the fp32 grid keeps it at least 0.57 ulp away), so this equals the rule on
// fl(amax / 448); the CPU test checks it against kernels/_fp8.ue8m0_exponent on 4M values.
__device__ __forceinline__ int ue8m0_exponent(float amax) {
  const uint32_t bits = __float_as_uint(amax);
  return static_cast<int>(bits >> 23) - 127 - 8 + ((bits & 0x7fffffu) > 0x600000u ? 1 : 0);
}

// 2^e as fp32, e in [-126, 127]
__device__ __forceinline__ float pow2(int e) { return __uint_as_float(static_cast<uint32_t>(e + 127) << 23); }

// 8 values scaled by 2^-e, rounded to e4m3 (RNE): 8 bytes, channel order. The reference's clamp to
// +-448 is the conversion's saturation (satfinite: beyond 448 -> 448; and with 2^e >= amax / 448 no
// finite value gets there).
__device__ __forceinline__ uint2 quantize8(const uint4& v, int e) {
  const float inv_scale = pow2(-e);  // exact: multiplying by it equals dividing by the scale
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  uint32_t packed[2] = {0u, 0u};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float lo = bf16_lo(w[k]) * inv_scale;
    const float hi = bf16_hi(w[k]) * inv_scale;
    const __nv_fp8x2_storage_t pair = __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
    packed[k / 2] |= static_cast<uint32_t>(pair) << (16 * (k % 2));  // .x = lo byte, .y = hi byte
  }
  return make_uint2(packed[0], packed[1]);
}

__device__ __forceinline__ float group8_max(float v) {  // max over the aligned group of 8 lanes
  v = fmaxf(v, __shfl_xor_sync(kFullMask, v, 1));
  v = fmaxf(v, __shfl_xor_sync(kFullMask, v, 2));
  v = fmaxf(v, __shfl_xor_sync(kFullMask, v, 4));
  return v;
}

// One token's quantized nope bytes (this lane's two 8-byte pieces) and its 8 scale bytes.
struct QuantizedToken {
  uint2 q_a;     // fp8 bytes 8l .. 8l+7
  uint2 q_b;     // fp8 bytes 256 + 8l .. (lanes < 24)
  uint2 scales;  // 7 ue8m0 bytes + a zero pad byte (the same in every lane)
};

__device__ __forceinline__ QuantizedToken quantize_token(const uint4& a, const uint4& b, bool b_is_nope,
                                                         float quant_eps) {
  const float amax_a = group8_max(amax8(a));                     // tiles 0..3
  const float amax_b = group8_max(b_is_nope ? amax8(b) : 0.0f);  // tiles 4..6 (lanes 24..31: rope, unused)
  const int e_a = ue8m0_exponent(fmaxf(amax_a, quant_eps));
  const int e_b = ue8m0_exponent(fmaxf(amax_b, quant_eps));
  QuantizedToken t;
  t.q_a = quantize8(a, e_a);
  t.q_b = quantize8(b, e_b);
  // scale bytes: tile t's exponent lives in lane 8t (t < 4: e_a; t >= 4: e_b of lane 8(t-4)); lane 8t
  // puts its biased byte at byte t of a word and one OR over the warp packs each word (byte 7, the
  // pad, stays zero: lane 24 gives nothing to the second word)
  const int lane = threadIdx.x & 31;
  const bool leader = (lane & 7) == 0;
  const uint32_t shift = 8u * static_cast<uint32_t>(lane >> 3);
  const uint32_t lo = __reduce_or_sync(kFullMask, leader ? static_cast<uint32_t>(e_a + 127) << shift : 0u);
  const uint32_t hi = __reduce_or_sync(kFullMask, leader && b_is_nope ? static_cast<uint32_t>(e_b + 127) << shift : 0u);
  t.scales = make_uint2(lo, hi);
  return t;
}

// page and row in the page of slot s (s >= 0): a shift for power-of-two pages (uniform branch), else a
// 32-bit division whenever the slot fits
__device__ __forceinline__ void split_slot(int64_t s, int64_t page_size, int page_shift, int64_t* page,
                                           int64_t* row) {
  if (page_shift >= 0) {
    *page = s >> page_shift;
    *row = s & (page_size - 1);
  } else if (s <= 0x7fffffff) {
    const uint32_t q = static_cast<uint32_t>(s) / static_cast<uint32_t>(page_size);
    *page = q;
    *row = s - static_cast<int64_t>(q) * page_size;
  } else {
    *page = s / page_size;
    *row = s - *page * page_size;
  }
}

template <int kRows, int kHint, bool kBulk>
__global__ void __launch_bounds__(32 * kMaxWarpsPerCta, kMinCtas(kRows, kBulk))
store_fp8_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const bool b_is_nope = lane < 24;
  const int rows = static_cast<int>(p.in.rows);  // < 2^30 (the launcher checks)
  unsigned char* stage = warp_stage(smem, kRows * kRowBytes);  // this warp's staging rows (kBulk)

  for_each_task<kRows>(rows, [&](const int row0) {
    const int64_t my_slot = load_slot_if(lane < kRows && row0 + lane < rows, p.in, row0 + lane);
    uint4 a[kRows] = {}, b[kRows] = {};  // rows past the end stay zero (quantized, never stored)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (row0 + r < rows) {  // uniform over the warp
        const unsigned char* nope = p.in.nope + (row0 + r) * p.in.nope_stride;
        const unsigned char* rope = p.in.rope + (row0 + r) * p.in.rope_stride;
        a[r] = load_vec<16, kHint>(nope + 16 * lane);
        b[r] = load_vec<16, kHint>(b_is_nope ? nope + 16 * (32 + lane) : rope + 16 * (lane - 24));
      }
    }
    if (kBulk) {  // my previous copies have read the slot before anyone rewrites it
      if (lane < kRows) bulk_wait_read();
      __syncwarp();
    }
    uint2 my_scales = make_uint2(0u, 0u);  // lane r < kRows: token r's scale bytes
    // Every token is quantized, padding too, and only the stores depend on the slot: no branch between
    // tokens, so the compiler can overlap token r + 1's shuffles and conversions with token r's.
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t s = __shfl_sync(kFullMask, my_slot, r);
      const QuantizedToken t = quantize_token(a[r], b[r], b_is_nope, p.quant_eps);
      if (kBulk) {  // staged for every token; a padding token's row is never copied out
        if (lane == r) my_scales = t.scales;
        unsigned char* out = stage + r * kRowBytes;
        reinterpret_cast<uint2*>(out)[lane] = t.q_a;
        if (b_is_nope) {
          reinterpret_cast<uint2*>(out)[32 + lane] = t.q_b;
        } else {
          reinterpret_cast<uint4*>(out + kNope)[lane - 24] = b[r];  // rope bf16, bytes as loaded
        }
      } else {
        const bool valid = s >= 0;  // padding or past the end: nothing stored (uniform over the warp)
        int64_t page = 0, in_page = 0;
        if (valid) split_slot(s, p.page_size, p.page_shift, &page, &in_page);
        unsigned char* page_base = p.cache + page * p.page_stride;
        unsigned char* out = page_base + in_page * kRowBytes;
        store_vec_if<8, kHint>(valid, out + 8 * lane, t.q_a);
        if (b_is_nope) {
          store_vec_if<8, kHint>(valid, out + 8 * (32 + lane), t.q_b);
        } else {
          store_vec_if<16, kHint>(valid, out + kNope + 16 * (lane - 24), b[r]);  // rope bf16, bytes as loaded
        }
        store_vec_if<8, kHint>(valid && lane == 0, page_base + p.page_size * kRowBytes + in_page * kScaleBytes,
                               t.scales);
      }
    }
    if (kBulk) {
      int64_t my_page = 0, my_row = 0;  // lane r < kRows with a slot: where token r goes
      if (lane < kRows && my_slot >= 0) {
        split_slot(my_slot, p.page_size, p.page_shift, &my_page, &my_row);
        store_vec<8, kHint>(p.cache + my_page * p.page_stride + p.page_size * kRowBytes + my_row * kScaleBytes,
                            my_scales);
      }
      fence_proxy_async();  // every writer: its shared-memory stores become visible to the async proxy
      __syncwarp();
      // one run: every token r has slot slot0 + r in slot0's page (lanes past kRows vote yes)
      const int64_t slot0 = __shfl_sync(kFullMask, my_slot, 0);
      const int64_t row0_in_page = __shfl_sync(kFullMask, my_row, 0);
      const bool one_run = __all_sync(kFullMask, lane >= kRows || (my_slot >= 0 && my_slot == slot0 + lane)) &&
                           row0_in_page + kRows <= p.page_size;
      unsigned char* const first_row = p.cache + __shfl_sync(kFullMask, my_page, 0) * p.page_stride;
      if (one_run) {
        if (lane == 0) bulk_store(first_row + row0_in_page * kRowBytes, stage, kRows * kRowBytes);
      } else if (lane < kRows && my_slot >= 0) {
        bulk_store(p.cache + my_page * p.page_stride + my_row * kRowBytes, stage + lane * kRowBytes, kRowBytes);
      }
    }
  });
  if (kBulk && lane < kRows) bulk_wait_all();
}

}  // namespace fg_store_fp8

// Host launcher (called by the torch binding), instantiated for every task shape of
// fg_kv::with_task_shape (1, 2, 4, 8 rows x vector copy with each cache hint, bulk copy; no tma copy,
// the rows are quantized in registers). Returns
// cudaErrorInvalidValue for arguments the kernel does not take; the Python provider checks the same
// rules first and falls back to Triton.
cudaError_t fg_store_fp8_paged(const fg_kv::RowsIn& in, void* cache, int64_t page_stride, int64_t page_size,
                               float quant_eps, const fg_kv::Plan& plan, cudaStream_t stream) {
  using namespace fg_store_fp8;
  if (in.rows <= 0) return cudaSuccess;
  if (page_size <= 0 || page_size > 0x7fffffff || !(quant_eps >= 1e-30f)) return cudaErrorInvalidValue;
  if (!rows_valid(in, kNope * 2, 64 * 2, 16) || page_stride % 16 || !aligned(cache, 16) ||
      page_stride < page_size * (kRowBytes + kScaleBytes) || !plan_valid(plan))
    return cudaErrorInvalidValue;
  int page_shift = -1;
  for (int shift = 0; shift < 31; ++shift) {
    if ((int64_t{1} << shift) == page_size) page_shift = shift;
  }
  const Params p{in, static_cast<unsigned char*>(cache), page_stride, page_size, page_shift, quant_eps};
  const size_t smem = plan.copy == kCopyBulk ? static_cast<size_t>(plan.warps) * plan.rows_per_task * kRowBytes : 0;
  return with_task_shape(plan, [&](auto rows, auto hint, auto copy) {  // no tma copy: quantized in registers
    constexpr int kRows = decltype(rows)::value;
    return launch_tasks(store_fp8_kernel<kRows, decltype(hint)::value, decltype(copy)::value == kCopyBulk>, p,
                        (in.rows + kRows - 1) / kRows, plan, smem, stream);
  });
}
