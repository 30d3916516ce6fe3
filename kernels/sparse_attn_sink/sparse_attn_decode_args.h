// What the torch binding (kernels/sparse_attn_sink/cuda.py, host C++ compiler) hands the host launcher
// of the cluster decode kernel (sparse_attn_decode.cu, nvcc): the tensors of one sparse_attn_sink call
// and the launch plan. Plain C++ (no device code, no torch), so both compilers read the same definitions.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace fg_sad {

// One paged FP8 cache (spec 4.3) and the index list that reads it: entry j of token t is slot
// idx[t * idx_stride + j] (int32 or int64; < 0: padding, never read), i.e. row slot % page_size of page
// slot / page_size at cache + page * page_stride. k == 0: neither pointer is ever dereferenced.
struct CacheIn {
  const unsigned char* cache;
  int64_t page_stride;   // bytes between pages (a multiple of 16)
  int64_t page_size;     // tokens per page (> 0)
  const void* idx;
  int64_t idx_stride;    // elements between the index rows of two tokens
  int64_t k;             // entries per token
  bool idx_is_64;
};

struct DecodeArgs {
  const void* q;         // bf16 [T, H, 512], channels contiguous, rows 16-byte aligned
  int64_t q_stride_t, q_stride_h;        // elements
  CacheIn swa, cmp;                      // the window list first, then the compressed list
  const float* sink;                     // fp32 [H]
  const float* cos;                      // fp32 [T, 32]
  int64_t cos_stride;
  const float* sin;
  int64_t sin_stride;
  void* out;                             // bf16 [T, H, 512], channels contiguous
  int64_t out_stride_t, out_stride_h;    // elements
  int64_t tokens, heads;
  float softmax_scale;
};

// kernels/sparse_attn_sink/cuda.py's DecodePlan: the entries of a token are split over `cluster` CTAs
// (1, 2, 4, 8 or 16) of one thread-block cluster; each walks its share in chunks of `chunk_rows`
// entries staged as `chunk_pad` rows (a multiple of 16, <= 96) of shared memory.
struct DecodePlan {
  int cluster;
  int chunk_rows;
  int chunk_pad;
  bool pdl;
};

}  // namespace fg_sad
