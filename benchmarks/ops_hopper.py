"""Benchmark cases of the Hopper KV writers: which copy wins at KV-row sizes (``python -m benchmarks.ops``).

set_mla_kv_buffer (bf16 rows of 512 + 64, int32 slots) and store_fp8_paged (448 + 64 bf16 in, 576
FP8/bf16 bytes + 8 scale bytes out, pages of 64, int64 slots) at 128, 4096 and 16384 rows, each
written four ways: the CUDA writer with the bulk async copy (``+cuda_bulk``), the CUDA writer with
the plain 16-byte warp copy (``+cuda_vector``), the Triton provider (``+triton``); the eager
reference is timed in every row. Rows are fixed (the issue's sizes), whatever ``--T`` says; inputs
are the attention family's (``benchmarks/ops_attn.py``: distinct random slots in a fresh cache per
input set, so every replay is cold). The harness compares the written cache with eager's
(``mutated``): 0 error expected, the writers being bit-exact.

What to do with the numbers: ``BULK_MIN_ROWS`` in ``kernels/set_mla_kv_buffer/cuda.py`` and
``kernels/store_fp8_paged/cuda.py`` is the row count from which ``+cuda_bulk`` beat ``+cuda_vector``
(None if it never did), and ``MEASURED_FASTER`` there is True when the better CUDA variant beat
``+triton``. Run only these cases with::

    python -m benchmarks.ops --no-compile --sizes flash --ops \\
        set_mla_kv_buffer+cuda_bulk,set_mla_kv_buffer+cuda_vector,set_mla_kv_buffer+triton,\\
        store_fp8_paged+cuda_bulk,store_fp8_paged+cuda_vector,store_fp8_paged+triton
"""
from __future__ import annotations

from typing import Callable, Sequence

from benchmarks.harness import BenchCase, register_family
from benchmarks.ops_attn import FP8_TOKEN_BYTES, set_mla_args, store_args
from fusegraph import ops
from fusegraph.kernels.set_mla_kv_buffer import cuda as set_mla_cuda
from fusegraph.kernels.store_fp8_paged import cuda as store_cuda

ROWS = (128, 4096, 16384)


def _cuda(launch: Callable[..., None], variant: str) -> Callable[..., None]:
    def run(*args) -> None:
        launch(*args, variant=variant)

    run.__name__ = f"cuda_{variant}"
    return run


def _triton(op_name: str) -> Callable[..., None]:
    impl = ops.get(op_name).providers["triton"].impl

    def run(*args) -> None:
        impl(*args)

    run.__name__ = "triton"
    return run


@register_family("hopper")
def hopper_cases(tokens: Sequence[int], sizes: Sequence[str]) -> list[BenchCase]:
    size = sizes[0]  # the writers do not depend on the preset
    specs = [
        ("set_mla_kv_buffer", set_mla_args, set_mla_cuda.launch, lambda T: T * (2 * 576 * 2 + 4)),
        ("store_fp8_paged", store_args, store_cuda.launch, lambda T: T * (512 * 2 + FP8_TOKEN_BYTES + 8)),
    ]
    cases = []
    for op_name, make_inputs, launch, floor in specs:
        eager = ops.get(op_name).reference
        writers = [("cuda_bulk", _cuda(launch, "bulk")), ("cuda_vector", _cuda(launch, "vector")),
                   ("triton", _triton(op_name))]
        for T in ROWS:
            for label, fused in writers:
                cases.append(BenchCase(name=f"{op_name}+{label}", op=op_name, T=T, size=size,
                                       make_inputs=make_inputs, eager=eager, fused=fused, bytes_floor=floor(T),
                                       compile=False, mutated=0))
    return cases
