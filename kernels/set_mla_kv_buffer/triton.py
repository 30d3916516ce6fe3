"""Triton provider of set_mla_kv_buffer: scatter ``cat(k_nope, k_rope)`` rows to ``kv_buffer[loc]``.

Dtype-agnostic: all three tensors are reinterpreted as integer words of the widest size (8, 4, 2
or 1 bytes) that divides both parts' byte widths, every row stride and every base address, so
the kernel only moves bits (bf16, fp8 bytes, fp32 ... alike) with the fewest, widest accesses.

A program copies ``ROWS`` rows as ``[ROWS, BLOCK_N]`` and ``[ROWS, BLOCK_R]`` blocks, ``BLOCK_*`` the
next power of two of each part's word count (nope and rope are separate blocks, so a 512 + 64
row wastes no lanes). One row per program for small calls (sglang's "one CTA per row"), several
for large ones, with all loads issued before the stores. Slot indices are widened to int64 before
the address math (a 256K-slot cache of 1152-byte rows is past 2^31 bytes); negative slots and
rows past T are masked off, so no address is formed from them.

Program shape by row count: ``PROGRAMS`` (one line, measured): rows per program, warps per program
(None: one warp per 256 words of the block), streaming cache hints (loads ``evict_first``, stores
``.cs``) and an early PDL trigger (right after the wait instead of after the last store; safe: a
dependent's wait still waits for this whole grid). :class:`Config` names a shape as a spec
(``"triton/r8/w4/stream/early"``), what the benchmark sweeps (``benchmarks/ops_hopper.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fusegraph.kernels import _triton_common as tc
from fusegraph.kernels.set_mla_kv_buffer.reference import check_args, set_mla_kv_buffer

triton, tl = tc.triton, tc.tl

WORD_DTYPES = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}
MAX_BLOCK = 16384  # words of one part of a row held by one program


@triton.jit
def set_mla_kernel(buf_ptr, loc_ptr, nope_ptr, rope_ptr, T, stride_buf, stride_nope, stride_rope,
                   N_WORDS: tl.constexpr, R_WORDS: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_R: tl.constexpr, ROWS: tl.constexpr, USE_PDL: tl.constexpr, STREAM: tl.constexpr,
                   EARLY_TRIGGER: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < T
    cn = tl.arange(0, BLOCK_N)
    cr = tl.arange(0, BLOCK_R)
    tc.pdl_wait(USE_PDL)
    if EARLY_TRIGGER:
        tc.pdl_launch_dependents(USE_PDL)
    loc = tl.load(loc_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    valid = (row_ok & (loc >= 0))[:, None]
    mask_n = valid & (cn < N_WORDS)[None, :]
    mask_r = valid & (cr < R_WORDS)[None, :]
    dst = buf_ptr + tl.where(valid, loc[:, None], 0) * stride_buf
    if STREAM:  # read once, written once: evict-first loads, streaming (.cs) stores
        nope = tl.load(nope_ptr + rows[:, None] * stride_nope + cn[None, :], mask=mask_n, eviction_policy="evict_first")
        rope = tl.load(rope_ptr + rows[:, None] * stride_rope + cr[None, :], mask=mask_r, eviction_policy="evict_first")
        tl.store(dst + cn[None, :], nope, mask=mask_n, cache_modifier=".cs")
        tl.store(dst + N_WORDS + cr[None, :], rope, mask=mask_r, cache_modifier=".cs")
    else:
        nope = tl.load(nope_ptr + rows[:, None] * stride_nope + cn[None, :], mask=mask_n)
        rope = tl.load(rope_ptr + rows[:, None] * stride_rope + cr[None, :], mask=mask_r)
        tl.store(dst + cn[None, :], nope, mask=mask_n)
        tl.store(dst + N_WORDS + cr[None, :], rope, mask=mask_r)
    if not EARLY_TRIGGER:
        tc.pdl_launch_dependents(USE_PDL)


def word_bytes(kv_buffer, k_nope, k_rope) -> int:
    """Widest word that evenly divides every byte width, row stride and base address involved."""
    item = kv_buffer.element_size()
    sizes = [k_nope.shape[1] * item, k_rope.shape[1] * item]
    for t in (kv_buffer, k_nope, k_rope):
        sizes += [t.stride(0) * item, t.data_ptr()]
    for word in (8, 4, 2):
        if word > item and all(s % word == 0 for s in sizes):
            return word
    return item


def as_words(t, word: int):
    """``t [rows, n]`` (contiguous rows) reinterpreted as ``[rows, n * itemsize / word]`` words."""
    return t.view(torch.uint8).view(WORD_DTYPES[word])


@dataclass(frozen=True)
class Config:
    """A program shape: rows per program, warps (None: by block size), stream hints, early trigger."""

    rows: int = 1
    warps: int | None = None
    stream: bool = False
    early: bool = False

    def __post_init__(self) -> None:
        if self.rows not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"rows per program must be a power of two up to 32, got {self.rows}")
        if self.warps is not None and self.warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"warps per program must be 1, 2, 4, 8 or 16, got {self.warps}")

    @classmethod
    def parse(cls, spec: str) -> "Config":
        """``"triton/r8/w4/stream/early"`` (each part after ``triton`` optional, any order)."""
        head, *parts = spec.strip().split("/")
        if head != "triton":
            raise ValueError(f"a Triton config spec starts with 'triton': {spec!r}")
        fields: dict[str, object] = {}
        for part in parts:
            if part[:1] in ("r", "w") and part[1:].isdigit():
                fields["rows" if part[0] == "r" else "warps"] = int(part[1:])
            elif part in ("stream", "early"):
                fields[part] = True
            else:
                raise ValueError(f"Triton config {spec!r}: unknown part {part!r}")
        return cls(**fields)  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        parts = ["triton", f"r{self.rows}"] + ([f"w{self.warps}"] if self.warps else [])
        return "/".join(parts + ["stream"] * self.stream + ["early"] * self.early)


# Program shape by row count, ((min_T, Config), ...) ascending: one row per program below 1024 rows,
# four from there (H200, 2026-11-21: 12.38 us at 16384 rows, 72% of copy bandwidth). The WRITERS
# benchmark run prints the line its measurements suggest.
# Rows per program by row count (H100, 2026-11-21, benchmarks/results/writers_h100_1327725.log):
# 16384 rows: 8 rows x 2 warps 14.82 us vs the previous 4 rows 15.75; 4096: 8 x 4 warps 4.88 vs 5.03.
PROGRAMS = ((0, Config(1)), (1024, Config(4)), (4096, Config(rows=8, warps=4)), (16384, Config(rows=8, warps=2)))


def program_config(T: int) -> Config:
    return next(config for min_T, config in reversed(PROGRAMS) if T >= min_T)


def rows_per_program(T: int) -> int:
    return program_config(T).rows


def _supports(kv_buffer, loc, k_nope, k_rope) -> str | None:
    try:
        check_args(kv_buffer, loc, k_nope, k_rope)
    except (ValueError, TypeError) as exc:
        return str(exc)
    if kv_buffer.dtype.is_complex or kv_buffer.dtype == torch.bool:
        return f"dtype {kv_buffer.dtype} is not copied by this kernel"
    for name, t in (("kv_buffer", kv_buffer), ("k_nope", k_nope), ("k_rope", k_rope)):
        if t.shape[1] and t.stride(1) != 1:
            return f"{name} rows must be contiguous"
    if loc.numel() and loc.stride(0) != 1:
        return "loc must be contiguous"
    word = word_bytes(kv_buffer, k_nope, k_rope)
    item = kv_buffer.element_size()
    if max(k_nope.shape[1], k_rope.shape[1]) * item // word > MAX_BLOCK:
        return f"rows wider than {MAX_BLOCK} words"
    devices = {t.device for t in (kv_buffer, loc, k_nope, k_rope)}
    return None if len(devices) == 1 else "tensors on several devices"


@set_mla_kv_buffer.provider("triton", targets=tc.provider_targets(), priority=20,
                            available=tc.triton_missing, supports_args=_supports)
def set_mla_kv_buffer_triton(kv_buffer, loc, k_nope, k_rope):
    launch(kv_buffer, loc, k_nope, k_rope)


def launch(kv_buffer, loc, k_nope, k_rope, config: "Config | str | None" = None) -> None:
    """Run the kernel with ``config`` (a :class:`Config` or its spec; default :func:`program_config`;
    ``rows_per_program`` overrides the default's rows, for tests)."""
    T = loc.shape[0]
    if T == 0:
        return
    if config is None:
        config = program_config(T)
        config = Config(rows_per_program(T), config.warps, config.stream, config.early)
    elif isinstance(config, str):
        config = Config.parse(config)
    word = word_bytes(kv_buffer, k_nope, k_rope)
    per_word = word // kv_buffer.element_size()
    buf, nope, rope = (as_words(t, word) for t in (kv_buffer, k_nope, k_rope))
    n_words, r_words = k_nope.shape[1] // per_word, k_rope.shape[1] // per_word
    rows = config.rows
    block_n, block_r = tc.next_pow2(max(n_words, 1)), tc.next_pow2(max(r_words, 1))
    warps = config.warps or max(1, min(8, rows * (block_n + block_r) // 256))
    set_mla_kernel[(tc.cdiv(T, rows),)](
        buf, loc, nope, rope, T, kv_buffer.stride(0) // per_word, k_nope.stride(0) // per_word,
        k_rope.stride(0) // per_word,
        N_WORDS=n_words, R_WORDS=r_words, BLOCK_N=block_n, BLOCK_R=block_r, ROWS=rows,
        USE_PDL=tc.pdl_enabled(kv_buffer.device), STREAM=config.stream, EARLY_TRIGGER=config.early,
        num_warps=warps, **tc.launch_kwargs(kv_buffer.device),
    )
