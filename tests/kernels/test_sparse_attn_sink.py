"""sparse_attn_sink: reference and Triton kernel against an fp64 oracle on random FP8 caches.

Caches hold random bf16 rows quantized with the library's FP8 helpers; the oracle reads them back
with the (separately tested, bit-exact) gather reference and computes the attention in fp64 its own
way (softmax over the scores with the sink logit appended as one more column, then the inverse
rotation of the output's rope channels). Index sets are random with invalid (-1) entries,
duplicates, tokens with no valid index and lengths that are not a multiple of the kv tile. CPU
cases run the kernels through the Triton interpreter with 16-head / 16-row tiles; both the
split-K (+ combine) and the single-pass paths are forced, and so is the one-launch decode path
(``path="one_launch"``: splits finish through a per-group ticket), whose cases also check that
the split counters are zero after the call and that a second call gives the same bits.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from fusegraph.kernels._fp8 import PagedLayout, quantize_tiles, scale_bytes
from fusegraph.kernels.gather_dequant import triton_fp8
from fusegraph.kernels.gather_dequant.reference import dequantize_slots
from fusegraph.kernels.sparse_attn_sink import plan as attn_plan
from fusegraph.kernels.sparse_attn_sink import triton as attn_triton
from fusegraph.kernels.sparse_attn_sink.reference import sparse_attn_sink

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERPRET, reason="CPU Triton cases need TRITON_INTERPRET=1")
SCALE = 512 ** -0.5
TOL = 1e-2


def build_cache(num_rows: int, page_size: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 paged cache with ``num_rows`` random quantized rows (page tails and padding random)."""
    layout = PagedLayout(page_size)
    pages = -(-num_rows // page_size)
    cache = torch.randint(0, 256, (pages, layout.bytes_per_page), generator=gen, dtype=torch.uint8)
    rows = (torch.randn(pages * page_size, 512, generator=gen) * 2).bfloat16()
    q, exps = quantize_tiles(rows[:, :448], 1e-4)
    slot = torch.arange(pages * page_size)
    page, r = slot // page_size, slot % page_size
    cache[page[:, None], (r * 576)[:, None] + torch.arange(448)] = q.view(torch.uint8)
    cache[page[:, None], (r * 576 + 448)[:, None] + torch.arange(128)] = rows[:, 448:].contiguous().view(torch.uint8)
    cache[page[:, None], (page_size * 576 + r * 8)[:, None] + torch.arange(7)] = scale_bytes(exps)
    return cache


def poison_row0(cache: torch.Tensor, page_size: int) -> None:
    """Slot 0 turns into NaN/inf: rope bytes 0xFF (NaN) and scale bytes 0xFF (2^128)."""
    cache[0, 448:576] = 0xFF
    cache[0, page_size * 576:page_size * 576 + 7] = 0xFF


@dataclass
class Case:
    q: torch.Tensor
    swa_cache: torch.Tensor
    swa_idx: torch.Tensor
    cmp_cache: torch.Tensor
    cmp_idx: torch.Tensor
    sink: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    swa_page_size: int
    cmp_page_size: int

    def args(self) -> tuple:
        return (self.q, self.swa_cache, self.swa_idx, self.cmp_cache, self.cmp_idx, self.sink, self.cos, self.sin,
                SCALE, self.swa_page_size, self.cmp_page_size)

    def to(self, device: str) -> "Case":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return Case(**moved)


def make_case(T: int, H: int, Kw: int, Kc: int, seed: int, swa_rows: int = 48, cmp_rows: int = 64,
              swa_page_size: int = 4, cmp_page_size: int = 16, empty_token: bool = True,
              idx_dtype: torch.dtype = torch.int32) -> Case:
    gen = torch.Generator().manual_seed(seed)
    swa_cache = build_cache(swa_rows, swa_page_size, gen)
    cmp_cache = build_cache(max(cmp_rows, 1), cmp_page_size, gen)
    poison_row0(swa_cache, swa_page_size)
    poison_row0(cmp_cache, cmp_page_size)

    def indices(K: int, rows: int) -> torch.Tensor:
        idx = torch.randint(1, rows, (T, K), generator=gen)          # slot 0 is poisoned: never valid
        idx[torch.rand(T, K, generator=gen) < 0.25] = -1
        if K >= 4:
            idx[:, K - 1] = idx[:, 0]                                  # duplicates count twice
            idx[:, 1] = -1
        if empty_token and T >= 2:
            idx[T // 2] = -1                                           # a token with nothing to attend
        return idx.to(idx_dtype)

    # q magnitude ~ a normalized DSV4 query: scores spread over a few units
    q = (torch.randn(T, H, 512, generator=gen) * 1.5).bfloat16()
    angles = torch.rand(T, 32, generator=gen) * 6.3
    return Case(q, swa_cache, indices(Kw, swa_rows), cmp_cache, indices(Kc, cmp_rows),
                torch.randn(H, generator=gen) * 2 + 4, angles.cos(), angles.sin(), swa_page_size, cmp_page_size)


def oracle(c: Case) -> torch.Tensor:
    """fp64 attention with sink + inverse RoPE, rows read by the bit-exact gather reference."""
    T, H, _ = c.q.shape
    kv = torch.cat([dequantize_slots(c.swa_cache, c.swa_idx, c.swa_page_size),
                    dequantize_slots(c.cmp_cache, c.cmp_idx, c.cmp_page_size)], 1).double()
    valid = torch.cat([c.swa_idx, c.cmp_idx], 1) >= 0
    scores = torch.einsum("thd,tkd->thk", c.q.double(), kv) * SCALE
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    logits = torch.cat([scores, c.sink.double()[None, :, None].expand(T, H, 1)], -1)
    probs = torch.softmax(logits, -1)[..., :-1]
    out = torch.einsum("thk,tkd->thd", probs, kv)
    x0, x1 = out[..., 448::2].clone(), out[..., 449::2].clone()
    cos, sin = c.cos.double()[:, None, :], c.sin.double()[:, None, :]
    out[..., 448::2] = x0 * cos + x1 * sin
    out[..., 449::2] = x1 * cos - x0 * sin
    return out


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def empty_tokens(c: Case) -> torch.Tensor:
    return ~((c.swa_idx >= 0).any(1) | (c.cmp_idx >= 0).any(1))


def check(out: torch.Tensor, c: Case) -> None:
    T, H, _ = c.q.shape
    assert out.shape == (T, H, 512) and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all(), "an output element was not written (poison) or is not finite"
    assert rel_l2(out, oracle(c)) < TOL
    if empty_tokens(c).any():
        assert torch.count_nonzero(out[empty_tokens(c)]) == 0


@pytest.fixture
def poisoned(monkeypatch):
    def filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(attn_triton, "_new_output", filled)


def run_triton(c: Case, monkeypatch, splits: int | None = None, native: bool = False,
               **fields) -> torch.Tensor:
    """The Triton provider with plan fields forced (``splits``, ``path``, ``block_h`` ...)."""
    monkeypatch.setattr(triton_fp8, "FORCE_NATIVE_FP8", native)
    overrides = dict(fields) if splits is None else {"splits": splits, **fields}
    monkeypatch.setattr(attn_plan, "OVERRIDES", overrides)
    return attn_triton.sparse_attn_sink_triton(*c.args())


def counters_clean(device: str) -> bool:
    """Every cached split-counter buffer on ``device`` is back to zero."""
    bufs = [buf for dev, buf in attn_triton._COUNTERS.items() if dev.startswith(device)]
    return all(torch.count_nonzero(buf) == 0 for buf in bufs)


# -- reference -------------------------------------------------------------------------------------

@pytest.mark.parametrize("T,H,Kw,Kc", [(3, 5, 19, 37), (1, 4, 8, 0), (4, 2, 0, 21)])
def test_reference_matches_fp64_oracle(T, H, Kw, Kc):
    c = make_case(T, H, Kw, Kc, seed=T * 100 + Kc)
    check(sparse_attn_sink.reference(*c.args()), c)


def test_reference_all_invalid_and_no_tokens():
    c = make_case(2, 3, 6, 5, seed=1)
    c.swa_idx[:] = -1
    c.cmp_idx[:] = -1
    assert torch.count_nonzero(sparse_attn_sink.reference(*c.args())) == 0
    c0 = make_case(0, 3, 6, 5, seed=2)
    assert sparse_attn_sink.reference(*c0.args()).shape == (0, 3, 512)


def test_reference_sink_only_scales_the_softmax():
    """A sink of -inf is plain softmax attention; a huge sink drives the output to 0."""
    c = make_case(2, 2, 9, 9, seed=3, empty_token=False)
    c.sink[:] = float("-inf")
    assert rel_l2(sparse_attn_sink.reference(*c.args()), oracle(c)) < TOL
    c.sink[:] = 80.0
    assert sparse_attn_sink.reference(*c.args()).abs().max() < 1e-6


def test_fake_tensor_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    c = make_case(3, 4, 5, 7, seed=4)
    with FakeTensorMode() as mode:
        fake = Case(**{k: (mode.from_tensor(v) if isinstance(v, torch.Tensor) else v) for k, v in vars(c).items()})
        out = sparse_attn_sink(*fake.args())
    assert out.shape == (3, 4, 512) and out.dtype == torch.bfloat16


# -- Triton (interpreter) --------------------------------------------------------------------------

@needs_interpreter
@pytest.mark.parametrize("T,H,Kw,Kc,splits,native", [
    (3, 12, 19, 37, 1, False),    # single pass, tiles not a multiple of 16, empty token
    (3, 12, 19, 37, 3, True),     # split-K + combine, native fp8 decode
    (1, 16, 16, 33, None, False),  # T = 1: the plan splits by itself
    (2, 20, 7, 0, None, False),   # Kc = 0, two head blocks (20 heads > 16)
    (5, 1, 0, 18, 2, False),      # Kw = 0, one head padded to 16, split
])
def test_triton_matches_oracle(monkeypatch, poisoned, T, H, Kw, Kc, splits, native):
    c = make_case(T, H, Kw, Kc, seed=T * 1000 + H * 10 + Kc, idx_dtype=torch.int64 if native else torch.int32)
    out = run_triton(c, monkeypatch, splits, native)
    check(out, c)
    ref = sparse_attn_sink.reference(*c.args())
    assert rel_l2(out, ref.double()) < 5e-3   # kernel vs reference: only p's bf16 rounding differs


@needs_interpreter
@pytest.mark.parametrize("swa_page_size,cmp_page_size", [(6, 16), (4, 5)])
def test_triton_pages_not_power_of_two(monkeypatch, poisoned, swa_page_size, cmp_page_size):
    """Either pool paged by a non-power of two: the kernel divides instead of shifting."""
    c = make_case(2, 3, 9, 11, seed=swa_page_size * 10 + cmp_page_size, swa_page_size=swa_page_size,
                  cmp_page_size=cmp_page_size)
    check(run_triton(c, monkeypatch, splits=2), c)


@needs_interpreter
@pytest.mark.parametrize("splits", [1, 2])
def test_triton_all_invalid_gives_zeros(monkeypatch, poisoned, splits):
    c = make_case(2, 3, 9, 17, seed=7)
    c.swa_idx[:] = -1
    c.cmp_idx[:] = -1
    out = run_triton(c, monkeypatch, splits)
    assert torch.count_nonzero(out) == 0 and not out.isnan().any()


@needs_interpreter
def test_triton_no_tokens_and_dispatch(monkeypatch):
    c0 = make_case(0, 4, 8, 8, seed=8)
    assert attn_triton.sparse_attn_sink_triton(*c0.args()).shape == (0, 4, 512)
    c = make_case(1, 4, 5, 6, seed=9)
    assert sparse_attn_sink.select("cpu", c.args()).provider == "triton"
    check(sparse_attn_sink(*c.args()), c)     # through torch.ops.fusegraph.sparse_attn_sink


ONE_LAUNCH = {"path": "one_launch"}


@needs_interpreter
@pytest.mark.parametrize("T,H,Kw,Kc,splits,fields,native,idx_dtype", [
    # 12 heads padded to 16, 3 splits of 2 tiles (odd split count: the pair merge's masked half),
    # lists not multiples of the tile, an empty token, duplicates
    (3, 12, 19, 37, 3, {}, False, torch.int32),
    # T = 1 sized by the plan (4 interpreter SMs: 2 head blocks x 2 splits), native fp8, int64
    (1, 20, 7, 33, None, {}, True, torch.int64),
    # 8 heads a program (3 groups: 8, 8, 4) over 16-row dots
    (2, 20, 9, 17, 2, {"group_h": 8}, False, torch.int32),
    # one split: no partials, no ticket
    (3, 12, 19, 37, 1, {}, False, torch.int32),
    # no window entries, bf16 partials, one partial in flight per merge step (2 warps)
    (2, 5, 0, 40, 3, {"partial_dtype": "bf16", "num_warps": 2}, False, torch.int32),
])
def test_one_launch_matches_oracle(monkeypatch, poisoned, T, H, Kw, Kc, splits, fields, native, idx_dtype):
    c = make_case(T, H, Kw, Kc, seed=T * 1000 + H * 10 + Kc + 7, idx_dtype=idx_dtype)
    out = run_triton(c, monkeypatch, splits, native, **ONE_LAUNCH, **fields)
    check(out, c)
    assert rel_l2(out, sparse_attn_sink.reference(*c.args()).double()) < 5e-3
    assert counters_clean("cpu")
    again = run_triton(c, monkeypatch, splits, native, **ONE_LAUNCH, **fields)
    assert torch.equal(out, again)       # counters were clean: the same splits finish the same way


@needs_interpreter
def test_one_launch_all_invalid_gives_zeros(monkeypatch, poisoned):
    c = make_case(2, 3, 9, 17, seed=17)
    c.swa_idx[:] = -1
    c.cmp_idx[:] = -1
    out = run_triton(c, monkeypatch, 2, **ONE_LAUNCH)
    assert torch.count_nonzero(out) == 0 and not out.isnan().any()
    assert counters_clean("cpu")


@needs_interpreter
def test_one_launch_no_compressed_list_and_no_tokens(monkeypatch, poisoned):
    """``None`` compressed list (a ratio-0 layer) and T = 0 (no launch at all)."""
    c = make_case(2, 4, 21, 0, seed=18)
    args = list(c.args())
    args[3] = args[4] = None
    monkeypatch.setattr(triton_fp8, "FORCE_NATIVE_FP8", False)
    monkeypatch.setattr(attn_plan, "OVERRIDES", {**ONE_LAUNCH, "splits": 2})
    out = attn_triton.sparse_attn_sink_triton(*args)
    check(out, c)                        # the oracle reads the empty compressed list
    assert counters_clean("cpu")

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("T = 0 must not launch")
    monkeypatch.setattr(attn_triton, "sparse_attn_decode_kernel", NoLaunch())
    c0 = make_case(0, 4, 8, 8, seed=19)
    assert attn_triton.sparse_attn_sink_triton(*c0.args()).shape == (0, 4, 512)


def test_split_counters_cached_and_grown(monkeypatch):
    monkeypatch.setattr(attn_triton, "_COUNTERS", {})
    first = attn_triton.split_counters(torch.device("cpu"), 3)
    assert first.dtype == torch.int32 and first.numel() >= attn_triton.MIN_COUNTERS and not first.any()
    assert attn_triton.split_counters(torch.device("cpu"), 5) is first          # no per-call allocation
    grown = attn_triton.split_counters(torch.device("cpu"), first.numel() + 1)
    assert grown is not first and grown.numel() > first.numel() and not grown.any()
    assert any(buf is first for buf in attn_triton._RETIRED)                      # graphs may still use it


def test_supports_args_reasons():
    c = make_case(2, 4, 5, 6, seed=10)
    check_args = attn_triton._supports
    assert check_args(*c.args()) is None
    args = list(c.args())
    assert "bf16" in check_args(args[0].half(), *args[1:])
    assert "bf16" in check_args(args[0][..., :256], *args[1:])
    assert "sink" in check_args(*args[:5], args[5][:3], *args[6:])
    assert "cos" in check_args(*args[:6], args[6].double(), *args[7:])
    assert "needs" in check_args(*args[:9], 64, args[10])          # swa pages too small for 64 tokens
    assert "int32 or int64" in check_args(*args[:2], args[2].float(), *args[3:])
    # an unused compressed cache may be any placeholder
    assert check_args(*args[:3], torch.empty(0, dtype=torch.uint8), args[4][:, :0], *args[5:]) is None


def test_plan_splits_only_small_grids():
    big = attn_plan.make_plan(512, 64, 128, 512, num_sms=132, gpu=True)
    assert big.splits == 1 and big.block_h == 64
    one = attn_plan.make_plan(1, 64, 128, 512, num_sms=132, gpu=True)
    tiles = -(-128 // one.block_n) + -(-512 // one.block_n)
    assert 1 < one.splits <= tiles and one.splits * one.tiles_per_split >= tiles
    assert (one.splits - 1) * one.tiles_per_split < tiles       # no empty split
    small = attn_plan.make_plan(1, 8, 128, 0, num_sms=132, gpu=True)
    assert small.block_h == 16 and small.splits == 128 // small.block_n
    assert attn_plan.make_plan(1, 64, 0, 0, num_sms=132, gpu=True).splits == 1


def test_plan_one_launch_for_small_batches():
    # measured crossover (plan.ONE_LAUNCH_MAX_FILL): flash-sized T = 1 takes the one-launch path,
    # pro T = 1 and every larger batch the two-kernel path
    flash = attn_plan.make_plan(1, 64, 128, 512, num_sms=132, gpu=True)
    assert flash.path == "one_launch" and flash.block_h == 16 and flash.heads_per_program == 8 and flash.split
    tiles = -(-128 // flash.block_n) + -(-512 // flash.block_n)
    assert flash.splits * flash.tiles_per_split >= tiles > (flash.splits - 1) * flash.tiles_per_split
    assert flash.splits * -(-64 // flash.heads_per_program) <= 132                    # one wave
    assert flash.tiles_per_split == 1 and flash.num_stages == 1                       # ~one tile a program
    for T, H, Kc in ((1, 128, 1024), (8, 64, 512), (512, 64, 512)):
        assert attn_plan.make_plan(T, H, 128, Kc, num_sms=132, gpu=True).path == "two_kernel"
    forced = attn_plan.make_plan(1, 128, 128, 1024, 132, True, {"path": "one_launch"})
    assert forced.num_stages == (1 if forced.tiles_per_split == 1 else 2)
    # the crossover is a plan field
    assert attn_plan.make_plan(1, 64, 128, 512, 132, True, {"one_launch_max_fill": 0}).path == "two_kernel"
    assert attn_plan.make_plan(16, 64, 128, 512, 132, True, {"one_launch_max_fill": 2}).path == "one_launch"
    # CPU: the interpreter keeps the two-kernel default (tests force the one-launch path)
    assert attn_plan.make_plan(1, 64, 128, 512, num_sms=4, gpu=False).path == "two_kernel"
    sweep = attn_plan.make_plan(1, 64, 128, 512, 132, True, {"path": "one_launch", "block_h": 32, "block_n": 32})
    assert (sweep.block_h, sweep.block_n, sweep.num_warps) == (32, 32, 8)
    assert attn_plan.make_plan(1, 64, 128, 512, 132, True, {"path": "two_kernel"}).block_h == 64
    grouped = attn_plan.make_plan(1, 64, 128, 512, 132, True, {"path": "one_launch", "group_h": 8})
    assert grouped.heads_per_program == 8 and grouped.splits * 8 <= 132
    with pytest.raises(ValueError):
        attn_plan.make_plan(1, 64, 128, 512, 132, True, {"path": "fast"})
    with pytest.raises(ValueError):
        attn_plan.make_plan(1, 64, 128, 512, 132, True, {"path": "one_launch", "group_h": 32})


# -- GPU at DSV4 sizes -----------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("H,Kc", [(64, 512), (128, 1024)], ids=["flash", "pro"])
@pytest.mark.parametrize("T", [1, 5, 64, 200])
@pytest.mark.parametrize("native", [False, True], ids=["int-decode", "native-decode"])
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_gpu_dsv4_sizes(monkeypatch, poisoned, H, Kc, T, native, idx_dtype):
    """The auto plan (one launch at flash T = 1 with int32 indices, two kernels elsewhere) with both
    index dtypes: models produce int64 (topk, arange)."""
    from fusegraph import targets
    if native and targets.detect() not in ("sm90", "sm100"):
        pytest.skip("Triton's native e4m3 conversion needs sm89+ NVIDIA")
    c = make_case(T, H, 128, Kc, seed=T + H, swa_rows=4096, cmp_rows=8192, swa_page_size=64,
                  cmp_page_size=64, idx_dtype=idx_dtype).to("cuda")
    assert sparse_attn_sink.select(targets.detect(), c.args()).provider == "triton"
    monkeypatch.setattr(triton_fp8, "FORCE_NATIVE_FP8", native)
    out = sparse_attn_sink(*c.args())
    check(out, c)
    assert rel_l2(out, sparse_attn_sink.reference(*c.args()).double()) < 5e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("splits", [None, 1, 3])
def test_gpu_lists_not_multiple_of_tile(monkeypatch, poisoned, splits):
    """Two-kernel path: GPU tiles over lists whose lengths are not multiples of the kv tile (masked tails on both
    sides of the window/compressed boundary), invalid entries, duplicates and an empty token."""
    c = make_case(4, 64, 100, 300, seed=40 + (splits or 0), swa_rows=1024, cmp_rows=2048, swa_page_size=64,
                  cmp_page_size=48 if splits == 3 else 64).to("cuda")      # 48: the division path
    check(run_triton(c, monkeypatch, splits, native=True, path="two_kernel"), c)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("splits", [1, 4, 16])
def test_gpu_forced_splits_agree(monkeypatch, poisoned, splits):
    c = make_case(3, 64, 128, 512, seed=splits, swa_rows=1024, cmp_rows=2048, swa_page_size=64,
                  cmp_page_size=64).to("cuda")
    check(run_triton(c, monkeypatch, splits, native=False, path="two_kernel"), c)


ONE_LAUNCH_GPU_VARIANTS = {
    "h16n64": {},
    "h16n32": {"block_h": 16, "block_n": 32},
    "h32n32": {"block_h": 32, "block_n": 32},
    "h64n64": {"block_h": 64, "block_n": 64},
    "g8": {"group_h": 8},
    "bf16part": {"partial_dtype": "bf16"},
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", list(ONE_LAUNCH_GPU_VARIANTS))
@pytest.mark.parametrize("T", [1, 8])
@pytest.mark.parametrize("H,Kc", [(64, 512), (128, 1024)], ids=["flash", "pro"])
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_gpu_one_launch_dsv4_sizes(monkeypatch, poisoned, H, Kc, T, variant, idx_dtype):
    """int64 lists reach the kernel as int32 words (low word first)."""
    c = make_case(T, H, 128, Kc, seed=T + H + 3, swa_rows=4096, cmp_rows=8192, swa_page_size=64,
                  cmp_page_size=64, idx_dtype=idx_dtype).to("cuda")
    out = run_triton(c, monkeypatch, None, True, **ONE_LAUNCH, **ONE_LAUNCH_GPU_VARIANTS[variant])
    check(out, c)
    assert rel_l2(out, sparse_attn_sink.reference(*c.args()).double()) < 5e-3
    torch.cuda.synchronize()
    assert counters_clean("cuda")
    again = run_triton(c, monkeypatch, None, True, **ONE_LAUNCH, **ONE_LAUNCH_GPU_VARIANTS[variant])
    assert torch.equal(out, again)       # merged in split order whichever split finishes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("splits", [None, 3, 1])
def test_gpu_one_launch_lists_not_multiple_of_tile(monkeypatch, poisoned, splits):
    """Masked tails on both sides of the window/compressed boundary, invalid entries, duplicates,
    an empty token and (splits 3) pages of 48 tokens (the division path), one launch."""
    c = make_case(4, 64, 100, 300, seed=50 + (splits or 0), swa_rows=1024, cmp_rows=2048, swa_page_size=64,
                  cmp_page_size=48 if splits == 3 else 64).to("cuda")
    check(run_triton(c, monkeypatch, splits, native=True, **ONE_LAUNCH), c)
    torch.cuda.synchronize()
    assert counters_clean("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_one_launch_all_invalid_and_no_compressed(monkeypatch, poisoned):
    c = make_case(3, 64, 128, 512, seed=60, swa_rows=1024, cmp_rows=2048, swa_page_size=64,
                  cmp_page_size=64).to("cuda")
    c.swa_idx[1] = -1
    c.cmp_idx[:] = -1                      # token 1: nothing; others: window only
    out = run_triton(c, monkeypatch, None, True, **ONE_LAUNCH)
    check(out, c)
    assert torch.count_nonzero(out[1]) == 0
    args = list(c.args())
    args[3] = args[4] = None
    c.cmp_idx = c.cmp_idx[:, :0]
    check(attn_triton.sparse_attn_sink_triton(*args), c)
    torch.cuda.synchronize()
    assert counters_clean("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("counters_before_capture", [True, False], ids=["cached-counters", "graph-zeroed"])
def test_gpu_one_launch_cuda_graph(monkeypatch, counters_before_capture):
    """Capture (on a side stream, after an eager warm-up on another) and replay at T = 1, flash:
    new inputs copied into the captured buffers give the eager result, twice in a row (the
    counters are clean after every replay). ``graph-zeroed``: no counter buffer existed at capture
    time, so the graph allocates and zeroes its own."""
    monkeypatch.setattr(attn_plan, "OVERRIDES", dict(ONE_LAUNCH))
    c = make_case(1, 64, 128, 512, seed=70, swa_rows=1024, cmp_rows=2048, swa_page_size=64,
                  cmp_page_size=64).to("cuda")
    args = c.args()
    attn_triton.sparse_attn_sink_triton(*args)            # compile + counters, on the default stream
    torch.cuda.synchronize()
    if not counters_before_capture:
        monkeypatch.setattr(attn_triton, "_COUNTERS", {})
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attn_triton.sparse_attn_sink_triton(*args)
    assert (len(attn_triton._COUNTERS) > 0) == counters_before_capture   # never cached while capturing
    for seed in (71, 72):
        fresh = make_case(1, 64, 128, 512, seed=seed, swa_rows=1024, cmp_rows=2048, swa_page_size=64,
                          cmp_page_size=64).to("cuda")
        for dst, src in zip(args, fresh.args()):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        check(out, c)
        assert torch.equal(out, attn_triton.sparse_attn_sink_triton(*args))
        torch.cuda.synchronize()
        assert counters_clean("cuda")
