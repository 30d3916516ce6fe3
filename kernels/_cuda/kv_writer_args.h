// What the torch binding (kernels/_kv_writers.py, compiled by the host C++ compiler) hands the CUDA KV
// writers' host launchers (set_mla_kv_buffer.cu, store_fp8_paged.cu): the rows to write and the launch
// plan. Plain C++ (no device code), so that both compilers read the same definitions.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace fg_kv {

// Cache hints of the input loads and the cache stores (the plan's "hint"; _kv_writers.HINTS names them).
enum Hint : int {
  kHintPlain = 0,   // ld.global / st.global: default caching
  kHintNc = 1,      // ld.global.nc.L1::no_allocate (read-only path, no L1 line) / st.global
  kHintStream = 2,  // ld.global.cs / st.global.cs (what __ldcs / __stcs emit: evict-first, "used once")
};
constexpr int kHints = 3;

// How rows reach the cache (the plan's "copy"; _kv_writers.VARIANTS names them).
enum Copy : int {
  kCopyVector = 0,  // the lanes store the vectors they loaded
  kCopyBulk = 1,    // the lanes stage a row in shared memory, one cp.async.bulk shared -> global writes it
  kCopyTma = 2,     // cp.async.bulk global -> shared per input part, then shared -> global per row: no
                    // registers hold the data (set_mla_kv_buffer only: the FP8 store quantizes in registers)
};
constexpr int kCopies = 3;

// The rows both writers read: slot i = loc[i] (< 0: padding, nothing written), its two input parts at
// nope + i * nope_stride and rope + i * rope_stride (bytes).
struct RowsIn {
  const void* loc;             // int32 or int64 [rows]
  const unsigned char* nope;
  const unsigned char* rope;
  int64_t rows;
  int64_t nope_stride;         // bytes between k_nope rows
  int64_t rope_stride;         // bytes between k_rope rows
  bool loc_is_64;
};

// How a writer is launched (kernels/_kv_writers.plan): tasks of rows_per_task consecutive rows, one warp
// a task, `warps` warps a CTA; a persistent grid (as many CTAs as fit at once, warps looping over the
// tasks) or one warp per task (hardware scheduling), either capped at max_ctas CTAs (the warps then
// loop); the copy; cache hint; PDL.
struct Plan {
  int rows_per_task;           // 1, 2, 4 or 8
  int warps;                   // 1 .. kMaxWarpsPerCta
  int copy;                    // Copy (bulk and tma: sm90+)
  bool persistent;
  int hint;                    // Hint
  int max_ctas;                // 0: no cap
  bool pdl;
};

}  // namespace fg_kv
