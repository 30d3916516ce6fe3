// set_mla_kv_buffer: kv_buffer[loc[i]] = cat(k_nope[i], k_rope[i]) for loc[i] >= 0 (bytes moved as is).
//
// Work split (shared with store_fp8_paged.cu, see kv_writer.cuh): warps walk tasks of kRows consecutive
// rows. A task is a flat list of kRows * n_row vectors of kVec bytes; lane l takes vectors l, l + 32,
// ... (kChunk of them per pass, all loaded before the pass's first store). kChunk is sized so that a
// DSV4 task (rows of 1024 + 128 bytes = 72 16-byte vectors) is one pass: 3, 5, 9, 18 vectors a lane
// for 1, 2, 4, 8 rows (2.25 vectors a row a lane). One-row tasks walk wider rows in several passes;
// a several-row task must fit one pass (kRows * n_row <= 32 * kChunk: the launcher checks). Which row of the
// task a vector falls on is i / n_row, computed with a multiply-high by the host's
// row_magic = floor(2^32 / n_row) + 1 (exact for i * n_row < 2^32: i < 576 and n_row <= 576 here).
//
// The slots: lane r < kRows loads loc[row0 + r] together with the data (the input rows do not
// depend on the slot, so both loads are in flight at once) and the lanes get each row's
// destination by shuffles. A row with loc < 0 is padding: its destination is never formed, nothing
// of the cache is touched.
//
// Two ways to write (template flag kBulk, chosen by the host from measurements):
//   vector  every lane stores its vectors straight to the destination rows (cache hint kHint);
//   bulk    (sm90+) the lanes store them into the warp's shared-memory slot, fence them into the
//           async proxy, and lane r writes row r with one cp.async.bulk.global.shared::cta; before
//           the next task rewrites the slot lane r waits for its copy to have read it
//           (wait_group.read), and for all its copies to complete before exit (wait_group 0).
//
// A third way, no registers at all (set_mla_tma_kernel, sm90+): lane r < kRows of a warp loads row r
// of its task straight into the warp's shared-memory slot with one cp.async.bulk global -> shared
// per input part, completed on the warp's mbarrier (lane 0 arrives expecting the task's bytes), and
// once the barrier's phase completes writes the row with one cp.async.bulk shared -> global. Its
// occupancy is bounded by shared memory only (4 warps of 8 DSV4 rows: 37 KB a CTA, 6 CTAs an SM,
// 16384 rows in one wave), its memory-level parallelism by the rows staged.
//
// Alignment (checked by the Python provider, re-checked by the launcher): both parts' byte widths,
// the input row strides and addresses are multiples of kVec; for the bulk copy the row width, the
// buffer's row stride and its address are multiples of 16; the tma copy needs 16-byte vectors.
#include "kv_writer.cuh"

namespace fg_set_mla {

using namespace fg_kv;

constexpr int kMaxRowBytes = 4096;      // bulk: the widest staged row
constexpr int64_t kMaxInputStride = int64_t{1} << 26;  // 8 rows * stride + column < 2^31 (32-bit offsets)

// vectors a lane loads per pass: a DSV4 task of kRows 16-byte rows in one pass
__host__ __device__ constexpr int chunk_of(int rows) { return rows == 1 ? 3 : rows == 2 ? 5 : rows == 4 ? 9 : 18; }

struct Params {
  RowsIn in;
  unsigned char* buf;          // kv_buffer, bytes
  int64_t buf_stride;          // bytes between buffer rows
  int nope_bytes;
  int rope_bytes;
  uint32_t row_magic;          // i / n_row = umulhi(i, row_magic); 0 when n_row == 1
};

template <int kRows>
__device__ __forceinline__ int row_of(int i, uint32_t magic) {
  if (kRows == 1) return 0;
  return magic ? static_cast<int>(__umulhi(static_cast<unsigned>(i), magic)) : i;
}

// v, through an instruction the compiler cannot see through: the store loop recomputes each vector's
// row and column from an opaque copy of the lane index instead of keeping the load loop's values live
// next to the loaded vectors (which pushes a 4-row task past 64 registers).
__device__ __forceinline__ int opaque(int v) {
  asm volatile("mov.b32 %0, %0;" : "+r"(v));
  return v;
}

template <int kVec, int kRows, int kHint, bool kBulk>
__global__ void __launch_bounds__(32 * kMaxWarpsPerCta, kMinCtas(kRows, kBulk))
set_mla_kernel(const __grid_constant__ Params p) {
  using Vec = typename VecOf<kVec>::type;
  constexpr int kChunk = chunk_of(kRows);
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const int row_bytes = p.nope_bytes + p.rope_bytes;
  const int n_nope = p.nope_bytes / kVec;
  const int n_row = row_bytes / kVec;
  const int n_task = kRows * n_row;
  const int rows = static_cast<int>(p.in.rows);  // < 2^30 (the launcher checks)
  unsigned char* stage = warp_stage(smem, kRows * row_bytes);  // this warp's staging rows (kBulk)

  for_each_task<kRows>(rows, [&](const int row0) {
    // byte addresses of the task's first row; a rope vector's column counts from the row start, so
    // its part starts n_nope vectors early. A vector's address is its part's base plus a 32-bit
    // offset (row * stride + column, < 2^31: the launcher bounds the strides), both picked per vector
    // without a branch.
    const uint64_t nope0 = reinterpret_cast<uint64_t>(p.in.nope) + row0 * p.in.nope_stride;
    const uint64_t rope0 = reinterpret_cast<uint64_t>(p.in.rope) + row0 * p.in.rope_stride - n_nope * kVec;
    const uint32_t nope_stride = static_cast<uint32_t>(p.in.nope_stride);
    const uint32_t rope_stride = static_cast<uint32_t>(p.in.rope_stride);
    uint64_t my_dst = 0;  // lane r < kRows: row r's destination (0: padding or past the end)
    // passes of 32 * kChunk vectors: one-row tasks walk rows of any width; a several-row task is one
    // pass (the launcher checks), so that its loop disappears and nothing of it stays live
#pragma unroll 1
    for (int base = 0; base < (kRows == 1 ? n_task : 1); base += 32 * kChunk) {
      // The slot is (re)loaded in every pass, with the data and before any use of it: all of a pass's
      // loads are in flight before the first instruction that waits for one (a slot loaded before the
      // pass loop would be waited for before the data loads are issued).
      const int64_t my_slot = load_slot_if(lane < kRows && row0 + lane < rows, p.in, row0 + lane);
      Vec v[kChunk];
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        const int i = base + u * 32 + lane;
        const int r = row_of<kRows>(i, p.row_magic);
        const int col = i - r * n_row;
        const bool in_nope = col < n_nope;
        const uint32_t offset = static_cast<uint32_t>(r) * (in_nope ? nope_stride : rope_stride) +
                                static_cast<uint32_t>(col * kVec);
        const uint64_t src = (in_nope ? nope0 : rope0) + offset;
        v[u] = load_vec_if<kVec, kHint>(i < n_task && row0 + r < rows, reinterpret_cast<const unsigned char*>(src));
      }
      // handed to the lanes holding the row's vectors by shuffles
      my_dst = my_slot >= 0 ? reinterpret_cast<uint64_t>(p.buf) + my_slot * p.buf_stride : 0;
      if (kBulk && base == 0) {  // my previous copies have read the slot before anyone rewrites it
        if (lane < kRows) bulk_wait_read();
        __syncwarp();
      }
      const int lane_again = opaque(lane);
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        const int i = base + u * 32 + lane_again;
        const int r = row_of<kRows>(i, p.row_magic);
        const int col = i - r * n_row;
        // the destination of this vector's row, from the lane that loaded its slot (every lane shuffles)
        const uint64_t dst = __shfl_sync(kFullMask, my_dst, r & (kRows - 1));
        const bool live = i < n_task && dst != 0;  // not past the task's end, not a padding row
        if (kBulk) {
          if (live) *reinterpret_cast<Vec*>(stage + r * row_bytes + col * kVec) = v[u];
        } else {
          store_vec_if<kVec, kHint>(live, reinterpret_cast<unsigned char*>(dst + col * kVec), v[u]);
        }
      }
    }
    if (kBulk) {
      fence_proxy_async();  // every writer: its shared-memory stores become visible to the async proxy
      __syncwarp();
      if (lane < kRows && my_dst != 0) {
        bulk_store(reinterpret_cast<void*>(my_dst), stage + lane * row_bytes, static_cast<uint32_t>(row_bytes));
      }
    }
  });
  if (kBulk && lane < kRows) bulk_wait_all();
}

// the tma copy's shared memory: one 8-byte mbarrier a warp, then the warps' staging slots
constexpr int kBarrierBytes = 8 * kMaxWarpsPerCta;

template <int kRows>
__global__ void __launch_bounds__(32 * kMaxWarpsPerCta, 1) set_mla_tma_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31;
  const int row_bytes = p.nope_bytes + p.rope_bytes;
  const int rows = static_cast<int>(p.in.rows);  // < 2^30 (the launcher checks)
  const uint32_t bar = shared_address(smem + 8 * (threadIdx.x >> 5));
  unsigned char* stage = warp_stage(smem + kBarrierBytes, kRows * row_bytes);
  if (lane == 0) mbarrier_init(bar);
  __syncwarp();
  uint32_t phase = 0;

  for_each_task<kRows>(rows, [&](const int row0) {
    const int here = min(kRows, rows - row0);  // rows of this task
    if (lane < kRows) bulk_wait_read();         // my previous row's copy has read the slot
    __syncwarp();
    if (lane == 0) mbarrier_arrive_expect(bar, static_cast<uint32_t>(here * row_bytes));
    __syncwarp();                               // the expectation is set before any byte lands
    if (lane < here) {                          // padding rows are loaded too (their bytes are not written)
      unsigned char* slot = stage + lane * row_bytes;
      if (p.nope_bytes) {
        bulk_load(slot, p.in.nope + (row0 + lane) * p.in.nope_stride, static_cast<uint32_t>(p.nope_bytes), bar);
      }
      if (p.rope_bytes) {
        bulk_load(slot + p.nope_bytes, p.in.rope + (row0 + lane) * p.in.rope_stride,
                  static_cast<uint32_t>(p.rope_bytes), bar);
      }
    }
    const int64_t my_slot = load_slot_if(lane < here, p.in, row0 + lane);
    mbarrier_wait(bar, phase);
    phase ^= 1;
    fence_proxy_async();  // the slot, as this thread now sees it, is what the async proxy reads
    __syncwarp();         // every lane saw this phase complete before lane 0 arms the next one
    if (lane < here && my_slot >= 0) {
      bulk_store(p.buf + my_slot * p.buf_stride, stage + lane * row_bytes, static_cast<uint32_t>(row_bytes));
    }
  });
  if (lane < kRows) bulk_wait_all();
}

}  // namespace fg_set_mla

// Host launcher (called by the torch binding). Instantiated: 16-byte vectors with every task shape of
// fg_kv::with_task_shape (1, 2, 4, 8 rows x vector copy with each cache hint, bulk copy, tma copy);
// 4-byte vectors (any row of 4-byte parts) one row a task, nc hint, vector or bulk copy. Returns
// cudaErrorInvalidValue for arguments the kernel does not take; the Python provider checks the same
// rules first.
cudaError_t fg_set_mla_kv_buffer(const fg_kv::RowsIn& in, void* buf, int64_t buf_stride, int nope_bytes, int rope_bytes,
                                 int vec_bytes, const fg_kv::Plan& plan, cudaStream_t stream) {
  using namespace fg_set_mla;
  if (in.rows <= 0) return cudaSuccess;
  const int row_bytes = nope_bytes + rope_bytes;
  if (vec_bytes != 4 && vec_bytes != 16) return cudaErrorInvalidValue;
  if (row_bytes <= 0 || !rows_valid(in, nope_bytes, rope_bytes, vec_bytes) || buf_stride % vec_bytes ||
      !aligned(buf, vec_bytes) || !plan_valid(plan))
    return cudaErrorInvalidValue;
  const int n_row = row_bytes / vec_bytes;
  if (vec_bytes == 4 && (plan.rows_per_task != 1 || plan.hint != kHintNc || plan.copy == kCopyTma))
    return cudaErrorInvalidValue;
  if (plan.rows_per_task > 1 && plan.rows_per_task * n_row > 32 * chunk_of(plan.rows_per_task))
    return cudaErrorInvalidValue;  // a several-row task is one pass
  if (in.nope_stride < 0 || in.nope_stride > kMaxInputStride || in.rope_stride < 0 || in.rope_stride > kMaxInputStride)
    return cudaErrorInvalidValue;
  const bool staged = plan.copy != kCopyVector;
  if (staged && (row_bytes % 16 || buf_stride % 16 || !aligned(buf, 16) || row_bytes > kMaxRowBytes))
    return cudaErrorInvalidValue;
  const uint32_t magic = n_row == 1 ? 0u : static_cast<uint32_t>((uint64_t{1} << 32) / n_row + 1);
  const Params p{in, static_cast<unsigned char*>(buf), buf_stride, nope_bytes, rope_bytes, magic};
  const size_t stages = staged ? static_cast<size_t>(plan.warps) * plan.rows_per_task * row_bytes : 0;
  if (vec_bytes == 4) {
    return plan.copy == kCopyBulk
               ? launch_tasks(set_mla_kernel<4, 1, kHintNc, true>, p, in.rows, plan, stages, stream)
               : launch_tasks(set_mla_kernel<4, 1, kHintNc, false>, p, in.rows, plan, stages, stream);
  }
  return with_task_shape<true>(plan, [&](auto rows, auto hint, auto copy) {
    constexpr int kRows = decltype(rows)::value;
    constexpr int kCopy = decltype(copy)::value;
    const int64_t tasks = (in.rows + kRows - 1) / kRows;
    if constexpr (kCopy == kCopyTma) {
      return launch_tasks(set_mla_tma_kernel<kRows>, p, tasks, plan, kBarrierBytes + stages, stream);
    } else {
      return launch_tasks(set_mla_kernel<16, kRows, decltype(hint)::value, kCopy == kCopyBulk>, p, tasks, plan,
                          stages, stream);
    }
  });
}
