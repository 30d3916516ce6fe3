// sparse_attn_sink decode (T <= 4): one launch, split-K over the CTAs of a thread-block cluster whose
// partials merge through distributed shared memory (sm90).
//
// Grid (cluster, head groups, T), cluster (cluster, 1, 1), 256 threads (8 warps). CTA = (token t, 16
// heads, split rank r): it owns entries [r * rows_per_split, (r + 1) * rows_per_split) of the token's
// concatenated index list (window list, then compressed list), walked in chunks of chunk_rows entries
// (one chunk at decode sizes: flash 640 entries / 16 = 40, pro 1152 / 16 = 72). Per chunk:
//
// 1. slots: thread i < chunk_pad loads entry i's index (int32 or int64) and turns it into the row's and
//    its scale bytes' addresses in shared memory (null: invalid or past the share: never read).
// 2. gather + dequant into a bf16 [chunk_pad][512] tile: the 28 FP8 16-byte pieces of each row go
//    through registers (kBatch pieces a thread in flight, each with its ue8m0 byte: e4m3 -> half (exact)
//    -> fp32 * 2^(byte - 127) -> bf16 RNE, gather_dequant's values bit for bit); the 8 rope pieces are
//    copied with cp.async (zero-filled for invalid rows, as are the FP8 pieces: V rows must be finite).
//    The q tile (16 heads x 512, cp.async) was issued before the first chunk's slots.
// 3. S = Q K^T with mma.sync m16n8k16 (bf16 in, fp32 out): warp w takes k range [128 (w % 4), +128) of
//    every n-tile (8 entries) with parity w / 4; its Q fragments (8 k-steps, 32 registers) are loaded
//    once and kept for every chunk. The 4 k-partials go to shared memory (aliasing the q tile, which is
//    in registers by then) and are summed in a fixed order.
// 4. online softmax (log2 domain, fp32) per head row by 16 threads: m, l in registers, P rounded to bf16
//    for the PV product (the Triton kernels do the same), the rescale factor to shared memory. -inf
//    guards: an all-invalid prefix keeps m = -inf, l = 0, acc = 0.
// 5. acc = acc * alpha + P V (mma.sync; V = the same tile read through ldmatrix.trans): warp w owns output
//    channels [64 w, 64 w + 64), 32 fp32 accumulators a thread.
//
// Merge (no global memory, no counters): each CTA stores its partial (acc [16][512] fp32 over the dead
// kv tile, m and l per head), cluster.sync() (barrier.cluster arrive.release / wait.acquire), then CTA r
// finishes output channels [r * 512 / cluster, (r + 1) * 512 / cluster) of its 16 heads: it reads every
// rank's m, l and acc slice through cluster.map_shared_rank (DSMEM loads, all in flight at once) and
// folds them in rank order with the sink: M = max(max_i m_i, sink), den = sum_i l_i 2^(m_i - M) +
// 2^(sink - M) (M = -inf -> 0; den = 0 -> output 0), o = sum_i acc_i 2^(m_i - M) / den, rounded to bf16;
// channels >= 448 are then rotated back (y0 = x0 cos + x1 sin, y1 = x1 cos - x0 sin on the bf16 values,
// fp32 without contraction, bf16 again) as the reference's inverse RoPE. A second cluster.sync() keeps
// every CTA's shared memory alive until the others have read it. The result does not depend on
// timing: fixed partition, fixed summation orders.
//
// PDL: cudaGridDependencySynchronize() before the first global load, cudaTriggerProgrammaticLaunchCompletion()
// after the output stores. Shared memory bank conflicts: q and kv rows are padded by 16 bytes (1040-byte
// stride: the 8 rows of an ldmatrix hit 8 distinct 16-byte bank groups), P rows by 16 bytes too.
//
// Not done: chunks of one CTA are serial (the gather of chunk c + 1 is not overlapped with chunk c's
// math), which only matters beyond 96 entries a CTA (> 1536 entries a token at cluster 16).
//
// Plain CUDA C++ (no torch headers); the whole kernel body is sm90-only (clusters, DSMEM, PDL): an
// older architecture compiles a trapping stub and the host launcher refuses it.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include <atomic>

#include "sparse_attn_decode_args.h"

namespace fg_sparse_decode {

using fg_sad::CacheIn;
using fg_sad::DecodeArgs;
using fg_sad::DecodePlan;

constexpr int kHeads = 16;              // heads a CTA: the mma M
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kDim = 512;
[[maybe_unused]] constexpr int kNope = 448;
constexpr int kRowBytes = 576;          // 448 e4m3 + 64 bf16
[[maybe_unused]] constexpr int kFp8Pieces = 28;          // 16-byte FP8 pieces of a row
[[maybe_unused]] constexpr int kRopePieces = 8;          // 16-byte rope pieces of a row
constexpr int kTileStride = kDim + 8;   // bf16 elements a shared-memory row of q / kv (16 bytes of pad)
constexpr int kMaxChunk = 96;           // entries staged at once (12 n-tiles: 6 per warp parity)
[[maybe_unused]] constexpr int kKSplit = 4;              // QK: k ranges of 128 channels
[[maybe_unused]] constexpr int kBatch = 6;               // FP8 pieces a thread has in flight (8 spills at the 128-register cap)
constexpr float kLog2e = 1.4426950408889634f;

__host__ __device__ constexpr int align16(int x) { return (x + 15) & ~15; }
__host__ __device__ constexpr int imax(int a, int b) { return a > b ? a : b; }

// Byte offsets of the shared-memory areas for a chunk of `chunk_pad` rows.
struct Layout {
  int a;      // q tile bf16 [16][520], later the QK k-partials fp32 [4][16][chunk_pad + 4]
  int kv;     // kv tile bf16 [chunk_pad][520], later this CTA's partial acc fp32 [16][512]
  int p;      // P bf16 [16][chunk_pad + 8]
  int ptr;    // row and scale addresses [2][chunk_pad]
  int alpha;  // fp32 [16]
  int ml;     // float2 [16]: (m, l) after the last chunk
  int total;
};

__host__ __device__ constexpr Layout layout_of(int chunk_pad) {
  Layout l{};
  l.a = 0;
  const int a_bytes = imax(kHeads * kTileStride * 2, kKSplit * kHeads * (chunk_pad + 4) * 4);
  l.kv = align16(l.a + a_bytes);
  const int kv_bytes = imax(chunk_pad * kTileStride * 2, kHeads * kDim * 4);
  l.p = align16(l.kv + kv_bytes);
  l.ptr = align16(l.p + kHeads * (chunk_pad + 8) * 2);
  l.alpha = align16(l.ptr + 2 * chunk_pad * 8);
  l.ml = align16(l.alpha + kHeads * 4);
  l.total = align16(l.ml + kHeads * 8);
  return l;
}
// kernels/sparse_attn_sink/cuda.py's smem_bytes mirrors layout_of; its CPU test asserts the same values.
static_assert(layout_of(16).total == 50624 && layout_of(48).total == 69312 && layout_of(80).total == 108992 &&
              layout_of(96).total == 130496, "shared-memory layout changed: update cuda.py's smem_bytes and its test");
// two CTAs of the pro-sized chunk (80 rows) fit an sm90 SM (228 KB, 1 KB reserved a CTA)
static_assert(2 * (layout_of(80).total + 1024) <= 228 * 1024, "pro-sized CTAs no longer pair up on an SM");

struct Params {
  DecodeArgs a;
  int swa_shift, cmp_shift;   // log2(page size) when a power of two, else -1
  int64_t rows_per_split;
  int chunk_rows, chunk_pad;
  float qk_scale;             // softmax_scale * log2(e)
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

namespace cg = cooperative_groups;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// c += a (16x16 bf16, row) * b (16x8 bf16, col), fp32 accumulators
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ int64_t load_index(const CacheIn& c, int64_t t, int64_t j) {
  const int64_t at = t * c.idx_stride + j;
  if (c.idx_is_64) return __ldg(static_cast<const long long*>(c.idx) + at);
  return __ldg(static_cast<const int*>(c.idx) + at);
}

// ue8m0 byte -> 2^(byte - 127) as fp32 (byte 0: the subnormal 2^-127; 255: inf, as torch.exp2 gives)
__device__ __forceinline__ float ue8m0_scale(uint32_t byte) {
  return byte == 0 ? __uint_as_float(0x00400000u) : __uint_as_float(byte << 23);
}

// 4 e4m3 bytes (channel order, low byte first) * scale -> 2 bf16x2 words
__device__ __forceinline__ uint2 dequant4(uint32_t word, float scale) {
  const __half2 lo = __half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(word & 0xffffu), __NV_E4M3));
  const __half2 hi = __half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(word >> 16), __NV_E4M3));
  const float2 flo = __half22float2(lo), fhi = __half22float2(hi);
  const __nv_bfloat162 blo = __floats2bfloat162_rn(flo.x * scale, flo.y * scale);
  const __nv_bfloat162 bhi = __floats2bfloat162_rn(fhi.x * scale, fhi.y * scale);
  return make_uint2(*reinterpret_cast<const uint32_t*>(&blo), *reinterpret_cast<const uint32_t*>(&bhi));
}

__device__ __forceinline__ void split_slot(int64_t s, int64_t page_size, int shift, int64_t* page, int64_t* row) {
  if (shift >= 0) {
    *page = s >> shift;
    *row = s & (page_size - 1);
  } else if (s <= 0x7fffffff && page_size <= 0x7fffffff) {
    const uint32_t q = static_cast<uint32_t>(s) / static_cast<uint32_t>(page_size);
    *page = q;
    *row = s - static_cast<int64_t>(q) * page_size;
  } else {
    *page = s / page_size;
    *row = s - *page * page_size;
  }
}

template <int kCluster>
__global__ void __launch_bounds__(kThreads, 2) sparse_attn_decode_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int chunk_pad = p.chunk_pad;
  const Layout L = layout_of(chunk_pad);
  __nv_bfloat16* q_s = reinterpret_cast<__nv_bfloat16*>(smem + L.a);
  float* spart = reinterpret_cast<float*>(smem + L.a);
  __nv_bfloat16* kv_s = reinterpret_cast<__nv_bfloat16*>(smem + L.kv);
  float* part_s = reinterpret_cast<float*>(smem + L.kv);
  __nv_bfloat16* p_s = reinterpret_cast<__nv_bfloat16*>(smem + L.p);
  const unsigned char** row_ptr = reinterpret_cast<const unsigned char**>(smem + L.ptr);
  const unsigned char** scale_ptr = row_ptr + chunk_pad;
  float* alpha_s = reinterpret_cast<float*>(smem + L.alpha);
  float2* ml_s = reinterpret_cast<float2*>(smem + L.ml);

  cg::cluster_group cluster = cg::this_cluster();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c4 = lane & 3;                  // mma fragment row / column pair
  const int rank = static_cast<int>(cluster.block_rank());  // == blockIdx.x (grid x == cluster x)
  const int head0 = blockIdx.y * kHeads;
  const int64_t t = blockIdx.z;
  const DecodeArgs& a = p.a;
  const int64_t K = a.swa.k + a.cmp.k;
  const int64_t begin = min(K, rank * p.rows_per_split);
  const int64_t end = min(K, begin + p.rows_per_split);
  const int p_stride = chunk_pad + 8;
  const int s_stride = chunk_pad + 4;
  const int srow = tid >> 4, ssub = tid & 15;                // softmax: 16 threads a head row

  cudaGridDependencySynchronize();

  float m_i = -INFINITY, l_i = 0.0f;                         // softmax state of head row srow
  float acc[8][4];                                           // channels 64 warp + 8 j, rows g, g + 8
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
  uint32_t qf[8][4];                                         // Q fragments of k range 128 (warp % 4)
  const int kq = warp & 3, nh = warp >> 2;

  if (begin < end) {  // q tile, 64 pieces of 16 bytes a head; heads >= H are zero rows
    const __nv_bfloat16* q = static_cast<const __nv_bfloat16*>(a.q);
    for (int i = tid; i < kHeads * 64; i += kThreads) {
      const int h = i >> 6, piece = i & 63;
      const bool ok = head0 + h < a.heads;
      const __nv_bfloat16* src = ok ? q + t * a.q_stride_t + (head0 + h) * a.q_stride_h + piece * 8 : q;
      cp_async16(q_s + h * kTileStride + piece * 8, src, ok ? 16 : 0);
    }
    cp_async_commit();
  }

  for (int64_t c0 = begin; c0 < end; c0 += p.chunk_rows) {
    const int rows = static_cast<int>(min(static_cast<int64_t>(p.chunk_rows), end - c0));
    // 1. slots -> addresses
    if (tid < chunk_pad) {
      const unsigned char* rp = nullptr;
      const unsigned char* sp = nullptr;
      if (tid < rows) {
        const int64_t e = c0 + tid;
        const bool is_swa = e < a.swa.k;
        const CacheIn& c = is_swa ? a.swa : a.cmp;
        const int64_t slot = load_index(c, t, is_swa ? e : e - a.swa.k);
        if (slot >= 0) {
          int64_t page, row;
          split_slot(slot, c.page_size, is_swa ? p.swa_shift : p.cmp_shift, &page, &row);
          const unsigned char* base = c.cache + page * c.page_stride;
          rp = base + row * kRowBytes;
          sp = base + c.page_size * kRowBytes + row * 8;
        }
      }
      row_ptr[tid] = rp;
      scale_ptr[tid] = sp;
    }
    __syncthreads();

    // 2. gather + dequant: rope pieces by cp.async, FP8 pieces through registers
    for (int i = tid; i < chunk_pad * kRopePieces; i += kThreads) {
      const int r = i >> 3, piece = i & 7;
      const unsigned char* rp = row_ptr[r];
      cp_async16(kv_s + r * kTileStride + kNope + piece * 8, rp ? rp + kNope + 16 * piece : static_cast<const void*>(a.q),
                 rp ? 16 : 0);
    }
    cp_async_commit();
    const int pieces = chunk_pad * kFp8Pieces;
    for (int base = 0; base < pieces; base += kThreads * kBatch) {
      uint4 raw[kBatch];
      uint32_t sbyte[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int i = base + b * kThreads + tid;
        raw[b] = make_uint4(0u, 0u, 0u, 0u);
        sbyte[b] = 127u;
        if (i < pieces) {
          const int r = i / kFp8Pieces, piece = i - r * kFp8Pieces;
          const unsigned char* rp = row_ptr[r];
          if (rp) {
            raw[b] = __ldg(reinterpret_cast<const uint4*>(rp) + piece);
            sbyte[b] = __ldg(scale_ptr[r] + (piece >> 2));
          }
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int i = base + b * kThreads + tid;
        if (i < pieces) {
          const int r = i / kFp8Pieces, piece = i - r * kFp8Pieces;
          const float scale = ue8m0_scale(sbyte[b]);
          const uint2 w0 = dequant4(raw[b].x, scale), w1 = dequant4(raw[b].y, scale);
          const uint2 w2 = dequant4(raw[b].z, scale), w3 = dequant4(raw[b].w, scale);
          uint4* dst = reinterpret_cast<uint4*>(kv_s + r * kTileStride + piece * 16);
          dst[0] = make_uint4(w0.x, w0.y, w1.x, w1.y);
          dst[1] = make_uint4(w2.x, w2.y, w3.x, w3.y);
        }
      }
    }
    cp_async_wait_all();   // rope pieces (and, on the first chunk, the q tile)
    __syncthreads();
    if (c0 == begin) {     // Q fragments once; the k-partials below overwrite the q tile
#pragma unroll
      for (int ks = 0; ks < 8; ++ks) {
        ldmatrix_x4(qf[ks], q_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * kTileStride + 128 * kq + 16 * ks +
                                (lane >> 4) * 8);
      }
      __syncthreads();
    }

    // 3. S = Q K^T: warp (kq, nh) -> k range 128 kq of the n-tiles nh, nh + 2, ...
    const int ntiles = chunk_pad / 8;
    for (int nt = nh; nt < ntiles; nt += 4) {
      const bool two = nt + 2 < ntiles;  // a second, independent accumulator chain
      float s0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const int k0 = 128 * kq + 32 * kk + (lane >> 3) * 8;
        uint32_t b[4];
        ldmatrix_x4(b, kv_s + (8 * nt + (lane & 7)) * kTileStride + k0);
        mma_bf16(s0, qf[2 * kk], b[0], b[1]);
        mma_bf16(s0, qf[2 * kk + 1], b[2], b[3]);
        if (two) {
          uint32_t b2[4];
          ldmatrix_x4(b2, kv_s + (8 * (nt + 2) + (lane & 7)) * kTileStride + k0);
          mma_bf16(s1, qf[2 * kk], b2[0], b2[1]);
          mma_bf16(s1, qf[2 * kk + 1], b2[2], b2[3]);
        }
      }
      float* out_lo = spart + (kq * kHeads + g) * s_stride + 2 * c4;
      float* out_hi = out_lo + 8 * s_stride;
      *reinterpret_cast<float2*>(out_lo + 8 * nt) = make_float2(s0[0], s0[1]);
      *reinterpret_cast<float2*>(out_hi + 8 * nt) = make_float2(s0[2], s0[3]);
      if (two) {
        *reinterpret_cast<float2*>(out_lo + 8 * (nt + 2)) = make_float2(s1[0], s1[1]);
        *reinterpret_cast<float2*>(out_hi + 8 * (nt + 2)) = make_float2(s1[2], s1[3]);
      }
    }
    __syncthreads();

    // 4. online softmax of head row srow over the chunk's columns ssub + 16 i
    {
      const int ncol = chunk_pad / 16;
      float s[kMaxChunk / 16];
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < kMaxChunk / 16; ++i) {
        if (i < ncol) {
          const int col = ssub + 16 * i;
          const float* sp = spart + srow * s_stride + col;
          const float v = ((sp[0] + sp[kHeads * s_stride]) + sp[2 * kHeads * s_stride]) + sp[3 * kHeads * s_stride];
          s[i] = row_ptr[col] != nullptr ? v * p.qk_scale : -INFINITY;
          mx = fmaxf(mx, s[i]);
        }
      }
#pragma unroll
      for (int o = 8; o >= 1; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m_i, mx);
      const float m_ref = m_new == -INFINITY ? 0.0f : m_new;  // nothing valid yet: keep exp2 finite
      const float alpha = exp2f(m_i - m_ref);
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < kMaxChunk / 16; ++i) {
        if (i < ncol) {
          const float pv = exp2f(s[i] - m_ref);
          sum += pv;
          p_s[srow * p_stride + ssub + 16 * i] = __float2bfloat16_rn(pv);
        }
      }
#pragma unroll
      for (int o = 8; o >= 1; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      l_i = l_i * alpha + sum;
      m_i = m_new;
      if (ssub == 0) alpha_s[srow] = alpha;
    }
    __syncthreads();

    // 5. acc = acc * alpha + P V over channels [64 warp, 64 warp + 64)
    {
      const float a_lo = alpha_s[g], a_hi = alpha_s[g + 8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        acc[j][0] *= a_lo;
        acc[j][1] *= a_lo;
        acc[j][2] *= a_hi;
        acc[j][3] *= a_hi;
      }
      for (int kt = 0; kt < chunk_pad / 16; ++kt) {
        uint32_t pa[4];
        ldmatrix_x4(pa, p_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * p_stride + 16 * kt + (lane >> 4) * 8);
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, kv_s + (16 * kt + (lane & 7) + ((lane >> 3) & 1) * 8) * kTileStride + 64 * warp +
                                   16 * jj + (lane >> 4) * 8);
          mma_bf16(acc[2 * jj], pa, b[0], b[1]);
          mma_bf16(acc[2 * jj + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // the next chunk (or the partial below) overwrites the tiles
  }

  // this CTA's partial: acc over the kv tile, (m, l) per head
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    float* lo = part_s + g * kDim + 64 * warp + 8 * j + 2 * c4;
    *reinterpret_cast<float2*>(lo) = make_float2(acc[j][0], acc[j][1]);
    *reinterpret_cast<float2*>(lo + 8 * kDim) = make_float2(acc[j][2], acc[j][3]);
  }
  if (ssub == 0) ml_s[srow] = make_float2(m_i, l_i);
  cluster.sync();   // every rank's partial written (release / acquire over the cluster)

  // merge: this rank's slice of channels, every rank's partial read through DSMEM in rank order
  constexpr int kSlice = kDim / kCluster;
  constexpr int kPairsPerHead = kSlice / 2;
  constexpr int kPairsPerThread = kHeads * kPairsPerHead / kThreads;
  __nv_bfloat16* out = static_cast<__nv_bfloat16*>(a.out);
#pragma unroll
  for (int k = 0; k < kPairsPerThread; ++k) {
    const int pid = tid + k * kThreads;
    const int h = pid / kPairsPerHead;
    const int ch = rank * kSlice + 2 * (pid % kPairsPerHead);
    float2 ml[kCluster], v[kCluster];
#pragma unroll
    for (int i = 0; i < kCluster; ++i) {
      ml[i] = cluster.map_shared_rank(ml_s, i)[h];
      v[i] = *reinterpret_cast<const float2*>(cluster.map_shared_rank(part_s, i) + h * kDim + ch);
    }
    if (head0 + h < a.heads) {
      const float sink2 = a.sink[head0 + h] * kLog2e;
      float M = sink2;
#pragma unroll
      for (int i = 0; i < kCluster; ++i) M = fmaxf(M, ml[i].x);
      if (M == -INFINITY) M = 0.0f;
      float den = 0.0f;
#pragma unroll
      for (int i = 0; i < kCluster; ++i) den += ml[i].y * exp2f(ml[i].x - M);
      den += exp2f(sink2 - M);
      float o0 = 0.0f, o1 = 0.0f;
      if (den > 0.0f) {
#pragma unroll
        for (int i = 0; i < kCluster; ++i) {
          const float w = exp2f(ml[i].x - M) / den;
          o0 += v[i].x * w;
          o1 += v[i].y * w;
        }
      }
      __nv_bfloat162 res = __floats2bfloat162_rn(o0, o1);
      if (ch >= kNope) {  // inverse RoPE of pair (ch - 448) / 2 on the bf16-rounded values
        const float x0 = __low2float(res), x1 = __high2float(res);
        const int i = (ch - kNope) >> 1;
        const float cs = a.cos[t * a.cos_stride + i], sn = a.sin[t * a.sin_stride + i];
        const float y0 = __fadd_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
        const float y1 = __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x0, sn));
        res = __floats2bfloat162_rn(y0, y1);
      }
      *reinterpret_cast<__nv_bfloat162*>(out + t * a.out_stride_t + (head0 + h) * a.out_stride_h + ch) = res;
    }
  }
  cudaTriggerProgrammaticLaunchCompletion();
  cluster.sync();   // keep this CTA's shared memory alive until every rank has read it
}

#else  // before sm90: no clusters; the host launcher refuses these devices

template <int kCluster>
__global__ void sparse_attn_decode_kernel(const __grid_constant__ Params p) {
  __trap();
}

#endif

// cudaFuncSetAttribute once per (instantiation, device): the dynamic shared memory limit and, for
// clusters of 16, the non-portable cluster size.
template <int kCluster>
cudaError_t prepare(int device) {
  static std::atomic<uint64_t> done{0};
  const uint64_t bit = uint64_t{1} << (device & 63);
  if (done.load(std::memory_order_acquire) & bit) return cudaSuccess;
  const void* fn = reinterpret_cast<const void*>(sparse_attn_decode_kernel<kCluster>);
  cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, layout_of(kMaxChunk).total);
  if (err == cudaSuccess && kCluster > 8) err = cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

template <int kCluster>
cudaError_t launch(const Params& p, const DecodePlan& plan, int device, cudaStream_t stream) {
  const cudaError_t err = prepare<kCluster>(device);
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(kCluster, static_cast<unsigned>((p.a.heads + kHeads - 1) / kHeads),
                        static_cast<unsigned>(p.a.tokens));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = layout_of(p.chunk_pad).total;
  config.stream = stream;
  cudaLaunchAttribute attribute[2];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = kCluster;
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  attribute[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[1].val.programmaticStreamSerializationAllowed = plan.pdl ? 1 : 0;
  config.attrs = attribute;
  config.numAttrs = 2;
  return cudaLaunchKernelEx(&config, sparse_attn_decode_kernel<kCluster>, p);
}

inline int page_shift(int64_t page_size) {
  for (int s = 0; s < 62; ++s) {
    if ((int64_t{1} << s) == page_size) return s;
  }
  return -1;
}

inline bool aligned(const void* ptr, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

}  // namespace fg_sparse_decode

// Host launcher (called by the torch binding). cudaErrorInvalidValue for arguments the kernel does not
// take (the Python provider's supports_args checks the same rules first), cudaErrorInvalidDeviceFunction
// before sm90.
cudaError_t fg_sparse_attn_decode(const fg_sad::DecodeArgs& a, const fg_sad::DecodePlan& plan, cudaStream_t stream) {
  using namespace fg_sparse_decode;
  if (a.tokens <= 0) return cudaSuccess;
  if (a.tokens > 65535 || a.heads <= 0 || (a.heads + kHeads - 1) / kHeads > 65535) return cudaErrorInvalidValue;
  if (plan.chunk_pad < 16 || plan.chunk_pad > kMaxChunk || plan.chunk_pad % 16 || plan.chunk_rows < 1 ||
      plan.chunk_rows > plan.chunk_pad)
    return cudaErrorInvalidValue;
  if (!aligned(a.q, 16) || a.q_stride_h % 8 || a.q_stride_t % 8 || !aligned(a.out, 4) || a.out_stride_h % 2 ||
      a.out_stride_t % 2)
    return cudaErrorInvalidValue;
  for (const CacheIn* c : {&a.swa, &a.cmp}) {
    if (c->k < 0) return cudaErrorInvalidValue;
    if (c->k > 0 && (c->page_size <= 0 || c->page_stride % 16 || !aligned(c->cache, 16) ||
                     c->page_stride < c->page_size * (kRowBytes + 8)))
      return cudaErrorInvalidValue;
  }
  int device = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return err;
  if (major < 9) return cudaErrorInvalidDeviceFunction;
  Params p;
  p.a = a;
  p.swa_shift = page_shift(a.swa.page_size);
  p.cmp_shift = page_shift(a.cmp.page_size);
  const int64_t K = a.swa.k + a.cmp.k;
  p.rows_per_split = (K + plan.cluster - 1) / plan.cluster;
  p.chunk_rows = plan.chunk_rows;
  p.chunk_pad = plan.chunk_pad;
  p.qk_scale = a.softmax_scale * kLog2e;
  switch (plan.cluster) {
    case 1: return launch<1>(p, plan, device, stream);
    case 2: return launch<2>(p, plan, device, stream);
    case 4: return launch<4>(p, plan, device, stream);
    case 8: return launch<8>(p, plan, device, stream);
    case 16: return launch<16>(p, plan, device, stream);
    default: return cudaErrorInvalidValue;
  }
}
