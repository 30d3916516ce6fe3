"""set_mla_kv_buffer: the Triton scatter against the reference on poisoned buffers of several dtypes.

Bytes are compared exactly: the kernel only moves bits. Rows the op does not address (negative
slots, other slots) must keep their random poison. Every program shape the writers benchmark sweeps
(``benchmarks/ops_hopper.TRITON_SWEEP``: rows, warps, streaming hints, early PDL trigger) is checked
too (a few under the interpreter, all on a GPU).
"""
import pytest
import torch

from benchmarks import ops_hopper
from fusegraph import ops, targets
from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.set_mla_kv_buffer import triton as st

ON_GPU = torch.cuda.is_available() and not tc.interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
needs_kernel = pytest.mark.skipif(not (tc.interpreting() or ON_GPU), reason="needs TRITON_INTERPRET=1 or a GPU")
OP = ops.get("set_mla_kv_buffer")


def random_of(dtype, shape, g):
    """Random contents of any dtype, built from random bytes (fp8/bf16 NaN patterns included)."""
    nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).view(shape)


def make_case(S, T, nope, rope, dtype, loc_dtype, invalid=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    buf = random_of(dtype, (S, nope + rope), g)
    k_nope, k_rope = random_of(dtype, (T, nope), g), random_of(dtype, (T, rope), g)
    loc = torch.randperm(S, generator=g)[:T].to(loc_dtype)
    for i in invalid:
        loc[i] = -1
    return [t.to(DEVICE) for t in (buf, loc, k_nope, k_rope)]


def expected_provider(op, device, args):
    """Triton, unless the CUDA writer takes these arguments here (its measured table says so for
    this row count and it is usable on this device) and ranks above Triton."""
    cuda, triton = op.providers["cuda"], op.providers["triton"]
    takes = cuda.why_not(targets.of_device(device), args, {}) is None
    return "cuda" if takes and cuda.priority > triton.priority else "triton"


def assert_same_bytes(a, b):
    assert torch.equal(a.cpu().contiguous().view(torch.uint8), b.cpu().contiguous().view(torch.uint8))


def check(buf, loc, k_nope, k_rope):
    expected = buf.cpu().clone()
    OP.reference(expected, loc.cpu(), k_nope.cpu(), k_rope.cpu())
    OP.providers["triton"].impl(buf, loc, k_nope, k_rope)
    assert_same_bytes(buf, expected)
    written = loc.cpu()[loc.cpu() >= 0].long()
    assert_same_bytes(buf.cpu()[written], torch.cat([k_nope.cpu(), k_rope.cpu()], -1)[loc.cpu() >= 0])


@needs_kernel
@pytest.mark.parametrize("dtype,nope,rope", [
    (torch.bfloat16, 512, 64),         # DSV4 / MLA bf16 rows: 8-byte words
    (torch.uint8, 528, 128),           # the FP8 NSA row (512 fp8 + 4 fp32 scales, 64 bf16 as bytes)
    (torch.float32, 5, 3),             # odd widths: 4-byte words
    (torch.bfloat16, 7, 3),            # odd widths: 2-byte words
    (torch.float8_e4m3fn, 13, 0),      # no rope part, 1-byte words
])
@pytest.mark.parametrize("loc_dtype", [torch.int32, torch.int64])
def test_matches_reference(dtype, nope, rope, loc_dtype):
    check(*make_case(S=40, T=6, nope=nope, rope=rope, dtype=dtype, loc_dtype=loc_dtype, invalid=(2,), seed=nope))


@needs_kernel
@pytest.mark.parametrize("T,rows,invalid", [(1, 1, ()), (1, 1, (0,)), (7, 4, (0, 6)), (9, 4, ())])
def test_row_blocking(T, rows, invalid, monkeypatch):
    monkeypatch.setattr(st, "rows_per_program", lambda _: rows)
    check(*make_case(S=32, T=T, nope=512, rope=64, dtype=torch.bfloat16, loc_dtype=torch.int64,
                     invalid=invalid, seed=T))


@needs_kernel
@pytest.mark.parametrize("spec", ["triton/r2/w1", "triton/r4/w2/stream", "triton/r8/w4/early",
                                  "triton/r2/w2/stream/early"])
def test_program_configs(spec):
    """The swept program shapes (rows, warps, streaming hints, early PDL trigger) write the same bytes."""
    check_config(spec, S=48, T=11, loc_dtype=torch.int64, seed=7)


def check_config(spec, S, T, loc_dtype, seed):
    """``spec``'s launch against the reference on DSV4 rows, the first and last slots padding."""
    buf, loc, k_nope, k_rope = make_case(S=S, T=T, nope=512, rope=64, dtype=torch.bfloat16, loc_dtype=loc_dtype,
                                         invalid=(0, T - 1), seed=seed)
    expected = buf.cpu().clone()
    OP.reference(expected, loc.cpu(), k_nope.cpu(), k_rope.cpu())
    st.launch(buf, loc, k_nope, k_rope, config=spec)
    assert_same_bytes(buf, expected)


def test_program_table():
    assert st.PROGRAMS[0][0] == 0 and [t for t, _ in st.PROGRAMS] == sorted({t for t, _ in st.PROGRAMS})
    assert st.rows_per_program(1) == 1 and st.rows_per_program(16384) == st.program_config(16384).rows
    assert st.Config.parse("triton/r8/w4/stream").spec == "triton/r8/w4/stream"


@needs_kernel
def test_strided_rows():
    """Buffer rows inside a wider page (row stride > width) and inputs sliced out of wider tensors."""
    buf, loc, k_nope, k_rope = make_case(S=20, T=5, nope=512, rope=64, dtype=torch.bfloat16,
                                         loc_dtype=torch.int32, invalid=(4,), seed=3)
    wide = torch.cat([buf, buf[:, :64]], 1)
    inputs = torch.cat([k_nope, k_rope, k_rope], 1)
    view = wide[:, :576]
    check(view, loc, inputs[:, :512], inputs[:, 512:576])
    assert_same_bytes(wide[:, 576:], buf[:, :64])  # the stride gap is untouched


@needs_kernel
def test_word_size_follows_alignment():
    buf, loc, k_nope, k_rope = make_case(S=8, T=2, nope=512, rope=64, dtype=torch.bfloat16,
                                         loc_dtype=torch.int32, seed=4)
    assert st.word_bytes(buf, k_nope, k_rope) == 8
    flat = torch.cat([k_nope, k_rope, k_rope[:, :1]], 1).view(-1)
    odd = flat[1:1 + 2 * 576].view(2, 576)  # base 2 bytes past an 8-byte boundary
    assert st.word_bytes(buf, odd[:, :512], odd[:, 512:]) == 2
    check(buf, loc, odd[:, :512], odd[:, 512:])


@needs_kernel
def test_empty_and_dispatch():
    buf, loc, k_nope, k_rope = make_case(S=8, T=0, nope=512, rope=64, dtype=torch.bfloat16, loc_dtype=torch.int64)
    before = buf.clone()
    torch.ops.fusegraph.set_mla_kv_buffer(buf, loc, k_nope, k_rope)
    assert_same_bytes(buf, before)
    buf, loc, k_nope, k_rope = make_case(S=8, T=3, nope=512, rope=64, dtype=torch.bfloat16, loc_dtype=torch.int32,
                                         seed=5)
    args = (buf, loc, k_nope, k_rope)
    assert OP.select(targets.of_device(buf.device), args).provider == expected_provider(OP, buf.device, args)
    expected = buf.cpu().clone()
    OP.reference(expected, loc.cpu(), k_nope.cpu(), k_rope.cpu())
    torch.ops.fusegraph.set_mla_kv_buffer(*args)
    assert_same_bytes(buf, expected)


def test_supports_args_rejections():
    g = torch.Generator().manual_seed(0)
    buf, k_nope, k_rope = random_of(torch.bfloat16, (8, 576), g), random_of(torch.bfloat16, (2, 512), g), \
        random_of(torch.bfloat16, (2, 64), g)
    loc = torch.tensor([0, 1])
    gate = OP.providers["triton"].supports_args
    assert gate(buf, loc, k_nope, k_rope) is None
    assert "buffer's dtype" in gate(buf, loc, k_nope.float(), k_rope)
    assert "row width" in gate(buf, loc, k_nope[:, :500], k_rope)
    assert "loc must be int32 or int64" in gate(buf, loc.float(), k_nope, k_rope)
    assert "loc has 1 rows" in gate(buf, loc[:1], k_nope, k_rope)
    assert "contiguous" in gate(buf, loc, k_nope.t().contiguous().t(), k_rope)
    assert "not copied" in gate(buf.bool(), loc, k_nope.bool(), k_rope.bool())


def test_reference_skips_negative_slots_and_runs_on_fake_tensors():
    buf = torch.zeros(4, 3)
    OP.reference(buf, torch.tensor([-1, 2]), torch.ones(2, 2), torch.full((2, 1), 5.0))
    assert torch.equal(buf, torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 1, 5], [0, 0, 0]]))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        torch.ops.fusegraph.set_mla_kv_buffer(torch.empty(4, 3), torch.empty(2, dtype=torch.int64),
                                             torch.empty(2, 2), torch.empty(2, 1))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("T", [1, 32, 512, 4096, 16384])
@pytest.mark.parametrize("loc_dtype", [torch.int32, torch.int64])
def test_gpu_real_sizes(T, loc_dtype):
    check(*make_case(S=262144, T=T, nope=512, rope=64, dtype=torch.bfloat16, loc_dtype=loc_dtype,
                     invalid=(0,), seed=T))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("spec", sorted(set(ops_hopper.TRITON_SWEEP) | set(ops_hopper.TRITON_SUBSET)))
def test_gpu_swept_program_configs(spec):
    """Every program shape the benchmark sweeps, at a row count no shape divides, bytes against the reference."""
    check_config(spec, S=16384, T=4099, loc_dtype=torch.int32, seed=11)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
def test_gpu_offsets_beyond_2gb():
    S = 2**31 // 1152 + 4096  # bf16 rows of 576: the last rows start past 2^31 bytes
    buf = torch.zeros(S, 576, dtype=torch.bfloat16, device="cuda")
    g = torch.Generator().manual_seed(0)
    k_nope, k_rope = random_of(torch.bfloat16, (3, 512), g).cuda(), random_of(torch.bfloat16, (3, 64), g).cuda()
    loc = torch.tensor([S - 1, S - 4000, 7], dtype=torch.int32, device="cuda")
    OP.providers["triton"].impl(buf, loc, k_nope, k_rope)
    assert_same_bytes(buf[loc.long()], torch.cat([k_nope, k_rope], 1))
    assert int(buf.view(torch.int16)[S // 2].abs().sum()) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_gpu_cuda_graph_capture(impl):
    """Reference (no host sync for the padding rows) and kernel (PDL launch) replay from a CUDA graph."""
    buf, loc, k_nope, k_rope = make_case(S=256, T=40, nope=512, rope=64, dtype=torch.bfloat16,
                                         loc_dtype=torch.int32, invalid=(0, 9), seed=6)
    expected = buf.cpu().clone()
    OP.reference(expected, loc.cpu(), k_nope.cpu(), k_rope.cpu())
    fn = OP.providers[impl].impl
    before = buf.clone()
    fn(buf, loc, k_nope, k_rope)  # warm-up (compilation) outside the capture
    buf.copy_(before)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(buf, loc, k_nope, k_rope)
    graph.replay()
    torch.cuda.synchronize()
    assert_same_bytes(buf, expected)
