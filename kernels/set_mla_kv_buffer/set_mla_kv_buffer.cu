// set_mla_kv_buffer: kv_buffer[loc[i]] = cat(k_nope[i], k_rope[i]) for loc[i] >= 0 (bytes moved as is).
//
// Work split (shared with store_fp8_paged.cu, see kv_writer.cuh): a persistent grid of warps walks
// tasks of kRows consecutive rows. A task is a flat list of kRows * n_row vectors of kVec bytes;
// lane l takes vectors l, l + 32, ... (kChunk of them per pass), so a DSV4 task (kRows = 4 rows of
// 1024 + 128 bytes = 288 16-byte vectors) is exactly 9 vectors a lane, all loaded before the first
// store. kRows > 1 tasks fit one pass (the host checks), and which row/column each of a lane's
// vectors falls on is the same for every task: computed once before the task loop. kRows = 1 walks
// a row of any width in passes of 32 * kChunk vectors.
//
// The slots: lane r < kRows loads loc[row0 + r] together with the data (the input rows do not
// depend on the slot, so both loads are in flight at once) and the lanes get each row's
// destination by shuffles. A row with loc < 0 is padding: its destination is never formed, nothing
// of the cache is touched.
//
// Two ways to write (template flag kBulk, chosen by the host from measurements):
//   vector  every lane stores its vectors straight to the destination rows;
//   bulk    (sm90+) the lanes store them into the warp's shared-memory slot, fence them into the
//           async proxy, and lane r writes row r with one cp.async.bulk.global.shared::cta; before
//           the next task rewrites the slot lane r waits for its copy to have read it
//           (wait_group.read), and for all its copies to complete before exit (wait_group 0).
//
// Alignment (checked by the Python provider, re-checked by the launcher): both parts' byte widths,
// the input row strides and addresses are multiples of kVec; for the bulk copy the row width, the
// buffer's row stride and its address are multiples of 16.
#include "kv_writer.cuh"

namespace fg_set_mla {

using namespace fg_kv;

constexpr int kChunk = 9;                    // vectors a lane per pass: 288 a warp = 4 DSV4 rows of 72
constexpr int kMaxRowBytes = 4096;           // bulk: the staged row of a kRows = 1 task
constexpr int kMaxSlotBytes = 4608;          // bulk: staged bytes a warp (8 warps: 36 KB)

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

template <int kVec, int kRows, bool kBulk, typename Loc>
__global__ void __launch_bounds__(32 * kMaxWarpsPerCta, 2) set_mla_kernel(const __grid_constant__ Params p) {
  using Vec = typename VecOf<kVec>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const int row_bytes = p.nope_bytes + p.rope_bytes;
  const int n_nope = p.nope_bytes / kVec;
  const int n_row = row_bytes / kVec;
  const int n_task = kRows * n_row;
  unsigned char* slot = smem + warp * kRows * row_bytes;  // this warp's staging rows (kBulk)

  int vec_row[kChunk], vec_col[kChunk];  // row of the task / vector of the row of each of my vectors
#pragma unroll
  for (int u = 0; u < kChunk; ++u) {
    const int i = u * 32 + lane;
    vec_row[u] = kRows == 1 ? 0 : i / n_row;
    vec_col[u] = i - vec_row[u] * n_row;
  }

  pdl_wait();
  pdl_launch_dependents();
  const int64_t tasks = (p.rows + kRows - 1) / kRows;
  for (int64_t task = static_cast<int64_t>(blockIdx.x) * warps + warp; task < tasks;
       task += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t row0 = task * kRows;
    const int64_t my_slot = lane < kRows && row0 + lane < p.rows ? load_slot<Loc>(p.loc, row0 + lane) : -1;
    const unsigned char* nope0 = p.nope + row0 * p.nope_stride;
    const unsigned char* rope0 = p.rope + row0 * p.rope_stride;
    for (int base = 0; base < n_task; base += 32 * kChunk) {  // kRows > 1: one pass
      Vec v[kChunk];
      bool live[kChunk];
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        const int col = base + vec_col[u];
        live[u] = base + u * 32 + lane < n_task && row0 + vec_row[u] < p.rows;
        if (live[u]) {
          const unsigned char* src = col < n_nope ? nope0 + vec_row[u] * p.nope_stride + col * kVec
                                                  : rope0 + vec_row[u] * p.rope_stride + (col - n_nope) * kVec;
          v[u] = load_stream<kVec>(src);
        }
      }
      if (kBulk && base == 0) {  // my previous copies have read the slot before anyone rewrites it
        if (lane < kRows) bulk_wait_read();
        __syncwarp();
      }
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        // the slot of this vector's row, from the lane that loaded it (every lane shuffles)
        const int64_t s = __shfl_sync(kFullMask, my_slot, kRows == 1 ? 0 : vec_row[u] & (kRows - 1));
        if (!live[u] || s < 0) continue;  // padding row: its destination is never formed
        const int col = base + vec_col[u];
        if (kBulk) {
          *reinterpret_cast<Vec*>(slot + vec_row[u] * row_bytes + col * kVec) = v[u];
        } else {
          *reinterpret_cast<Vec*>(p.buf + s * p.buf_stride + col * kVec) = v[u];
        }
      }
    }
    if (kBulk) {
      fence_proxy_async();  // every writer: its shared-memory stores become visible to the async proxy
      __syncwarp();
      if (lane < kRows && my_slot >= 0) {
        bulk_store(p.buf + my_slot * p.buf_stride, slot + lane * row_bytes, static_cast<uint32_t>(row_bytes));
      }
    }
  }
  if (kBulk && lane < kRows) bulk_wait_all();
}

template <int kVec, int kRows, bool kBulk>
cudaError_t launch_rows(const Params& p, bool loc_is_64, int warps, bool pdl, cudaStream_t stream) {
  const int64_t tasks = (p.rows + kRows - 1) / kRows;
  const size_t smem = kBulk ? static_cast<size_t>(warps) * kRows * (p.nope_bytes + p.rope_bytes) : 0;
  return loc_is_64 ? launch_persistent(set_mla_kernel<kVec, kRows, kBulk, int64_t>, p, tasks, warps, smem, pdl, stream)
                   : launch_persistent(set_mla_kernel<kVec, kRows, kBulk, int32_t>, p, tasks, warps, smem, pdl, stream);
}

// Instantiated: 16-byte vectors with 1, 2 or 4 rows a task (the DSV4 and FP8 NSA rows), 4-byte
// vectors (any row of 4-byte parts) one row a task; each with int32/int64 slots, vector/bulk copy.
template <bool kBulk>
cudaError_t launch_copy(const Params& p, bool loc_is_64, int vec_bytes, int rows_per_task, int warps, bool pdl,
                        cudaStream_t stream) {
  if (vec_bytes == 4) return launch_rows<4, 1, kBulk>(p, loc_is_64, warps, pdl, stream);
  switch (rows_per_task) {
    case 4: return launch_rows<16, 4, kBulk>(p, loc_is_64, warps, pdl, stream);
    case 2: return launch_rows<16, 2, kBulk>(p, loc_is_64, warps, pdl, stream);
    default: return launch_rows<16, 1, kBulk>(p, loc_is_64, warps, pdl, stream);
  }
}

}  // namespace fg_set_mla

// Host launcher (called by the torch binding). Returns cudaErrorInvalidValue for arguments the
// kernel does not take; the Python provider checks the same rules first and falls back to Triton.
cudaError_t fg_set_mla_kv_buffer(void* buf, const void* loc, bool loc_is_64, const void* nope, const void* rope,
                                 int64_t rows, int64_t buf_stride, int64_t nope_stride, int64_t rope_stride,
                                 int nope_bytes, int rope_bytes, int vec_bytes, int rows_per_task, bool bulk,
                                 int warps, bool pdl, cudaStream_t stream) {
  using namespace fg_set_mla;
  if (rows <= 0) return cudaSuccess;
  const int row_bytes = nope_bytes + rope_bytes;
  if (vec_bytes != 4 && vec_bytes != 16) return cudaErrorInvalidValue;
  if (nope_bytes < 0 || rope_bytes < 0 || row_bytes == 0) return cudaErrorInvalidValue;
  if ((rows_per_task != 1 && rows_per_task != 2 && rows_per_task != 4) || (vec_bytes == 4 && rows_per_task != 1))
    return cudaErrorInvalidValue;
  if (rows_per_task > 1 && rows_per_task * (row_bytes / vec_bytes) > 32 * kChunk) return cudaErrorInvalidValue;
  // a part of zero bytes is never read: its pointer and stride do not matter
  const bool nope_ok = nope_bytes == 0 || (nope_stride % vec_bytes == 0 && aligned(nope, vec_bytes));
  const bool rope_ok = rope_bytes == 0 || (rope_stride % vec_bytes == 0 && aligned(rope, vec_bytes));
  if (nope_bytes % vec_bytes || rope_bytes % vec_bytes || !nope_ok || !rope_ok || buf_stride % vec_bytes ||
      !aligned(buf, vec_bytes))
    return cudaErrorInvalidValue;
  if (bulk && (row_bytes % 16 || buf_stride % 16 || !aligned(buf, 16) || row_bytes > kMaxRowBytes ||
               rows_per_task * row_bytes > kMaxSlotBytes))
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
  return bulk ? launch_copy<true>(p, loc_is_64, vec_bytes, rows_per_task, warps, pdl, stream)
              : launch_copy<false>(p, loc_is_64, vec_bytes, rows_per_task, warps, pdl, stream);
}
