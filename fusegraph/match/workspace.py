"""The process settings candidate evaluation runs under: one intra-op thread, a heap that keeps memory.

Evaluation is hundreds of small ops on tensors of a few to a few hundred MB, repeated for every
regime of every distinct candidate. Two process defaults make that cost grow faster than the tensors:

* **Fresh pages.** glibc serves allocations above its mmap threshold (dynamic, at most 32 MiB) with
  a fresh ``mmap`` and returns them with ``munmap`` on free, so every large intermediate faults its
  pages in again (zero-filled by the kernel). In a VM a fault costs several microseconds: measured
  here, ``x.square()`` on 34 MB takes 67 ms with fresh pages and 9 ms on reused ones, and 67 MB
  139 ms against 17 ms: per element, large tensors cost several times what small ones do.
  ``retained_heap`` raises the mmap and trim thresholds while matching, so freed blocks stay in the
  heap and the next candidate reuses them, and trims the heap when the pattern is done.
* **Threads.** On a 2-core machine that other work shares, an intra-op parallel region waits for a
  descheduled worker: measured, every op (tiny Sinkhorn steps included) of an ``mhc_pre_norm``
  evaluation ran ~8x slower with 2 threads than with 1. Candidates are evaluated on one thread.
  (The matcher used to switch to all threads above 2^24 elements, which a 3-layer ``flash`` reaches
  at T = 256: with the fresh pages, why its planning went from 23 s at T = 128 to 227 s at T = 512.)

Both are process-wide; ``evaluation_workspace`` restores the thread count and the allocator's
converged defaults on exit. On a libc without ``mallopt`` (macOS, musl) the heap part is a no-op.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from typing import Iterator

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_RETAIN_MMAP = 1 << 30          # blocks up to 1 GiB come from the heap while matching
_RETAIN_TRIM = (1 << 31) - 1    # never trim while matching
# What glibc's dynamic thresholds converge to (the mmap threshold grows up to 32 MiB on 64-bit, the
# trim threshold follows at twice that): setting them explicitly fixes them there.
_DEFAULT_MMAP = 32 << 20
_DEFAULT_TRIM = 64 << 20


def _libc():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()
_depth = 0   # nested workspaces (a matcher inside a matcher's test) set and restore once


@contextlib.contextmanager
def retained_heap() -> Iterator[bool]:
    """Keep freed memory in the heap while inside; yields whether the allocator could be tuned."""
    global _depth
    if _LIBC is None:
        yield False
        return
    if _depth == 0:
        # A libc that caps the threshold (at 32 MiB) refuses 1 GiB: then keep what it allows.
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _RETAIN_MMAP) or _LIBC.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, _RETAIN_TRIM)
    _depth += 1
    try:
        yield True
    finally:
        _depth -= 1
        if _depth == 0:
            _LIBC.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
            _LIBC.malloc_trim(0)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def evaluation_workspace() -> Iterator[None]:
    with retained_heap(), single_thread():
        yield
