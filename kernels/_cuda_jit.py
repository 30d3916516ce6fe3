"""JIT build of the CUDA providers' extensions: compiled at first use, cached on disk.

A CUDA provider keeps its kernels in ``.cu`` files of plain CUDA C++ (no torch headers: nvcc alone
compiles them, which is what the compile-only CI check does; shared headers come from
``include_dirs``) that expose host launchers returning a ``cudaError_t``, and a small C++ binding
(a string) that takes tensors, checks them with ``TORCH_CHECK``, picks the current stream and
calls a launcher. Several providers may share one extension (the KV writers do:
``kernels/_kv_writers.py``), so they cost one build. :func:`load` builds both with
``torch.utils.cpp_extension.load_inline`` into::

    ~/.cache/fusegraph/cuda/<hash>-<arch>/       (FUSEGRAPH_CUDA_CACHE overrides the root)

``<hash>`` covers everything that goes into the build (the .cu texts and headers, the binding, the nvcc flags,
torch's and CUDA's versions), ``<arch>`` is the device's (``sm90a`` on Hopper), so a changed source
or another GPU builds anew and an unchanged one loads the cached library in milliseconds. The
build runs once per process and extension; a failed build is remembered and reported by
:func:`build_failure` (providers return it from ``available``, so dispatch passes them over).

Architecture flags: sm90 compiles for ``sm_90a`` (``-gencode=arch=compute_90a,code=sm_90a``, which
enables the bulk async copies); any other GPU for its own ``sm_XY``; the ``.cu`` files compile their
Hopper-only parts (bulk copies, grid-dependency control) only for ``__CUDA_ARCH__ >= 900``.

API: ``cuda_missing()``, ``nvcc_path()``, ``arch_of(device)``, ``gencode_flags(major, minor)``,
``arch_tag(major, minor)``, ``ExtensionSpec``, ``build_key``, ``build_dir``, ``load``,
``build_failure``, ``pdl_enabled(device)``, ``aligned(tensor, bytes)``. ``FUSEGRAPH_CUDA_VERBOSE=1``
shows the build's commands and compiler output.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from fusegraph import targets as _targets

CACHE_ENV = "FUSEGRAPH_CUDA_CACHE"
# No fast math (the FP8 scale rule needs IEEE division); no -std: torch's extension builder adds the
# standard its headers need (C++17 or C++20 by torch version), and the .cu files compile under both.
NVCC_FLAGS = ("-O3", "-lineinfo")
CXX_FLAGS = ("-O3",)


def nvcc_path() -> str | None:
    """The nvcc that torch's extension builder will use (``CUDA_HOME/bin/nvcc``), else the one on PATH."""
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # pragma: no cover - torch without the extension builder
        CUDA_HOME = None
    if CUDA_HOME:
        candidate = Path(CUDA_HOME) / "bin" / "nvcc"
        if candidate.exists():
            return str(candidate)
    return shutil.which("nvcc")


def cuda_missing() -> str | None:
    """``available`` helper: None when CUDA extensions can be built and run here, else why not."""
    if torch.version.hip is not None:
        return "ROCm build of torch: the CUDA providers need NVIDIA CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if torch.version.cuda is None:  # pragma: no cover - a CUDA device without a CUDA torch
        return "torch was built without CUDA"
    if nvcc_path() is None:
        return "nvcc not found"
    return None


def arch_of(device: torch.device) -> tuple[int, int]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)


def gencode_flags(major: int, minor: int) -> list[str]:
    """nvcc target flags: the arch-specific ``sm_90a`` on Hopper (bulk copies), ``sm_XY`` elsewhere."""
    if (major, minor) == (9, 0):
        return ["-gencode=arch=compute_90a,code=sm_90a"]
    return [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]


def arch_tag(major: int, minor: int) -> str:
    return "sm90a" if (major, minor) == (9, 0) else f"sm{major}{minor}"


@dataclass(frozen=True)
class ExtensionSpec:
    """One extension: the ``.cu`` kernels + launchers and the C++ binding that exposes ``functions``.

    The ``.cu`` files are compiled as one translation unit (concatenated in order; each keeps its
    own namespace); ``include_dirs`` are added to the include path (``-I``), and every header in
    them (``*.cuh``, ``*.h``) is part of the build key, so a header change rebuilds too.
    """

    name: str                          # short, an identifier (the module name adds the hash)
    cuda_files: tuple[Path, ...]       # plain CUDA C++, compiled by nvcc
    binding: str                       # C++ (torch) source defining ``functions``
    functions: tuple[str, ...]         # names exported to Python
    include_dirs: tuple[Path, ...] = ()

    def cuda_source(self) -> str:
        return "\n".join(f.read_text() for f in self.cuda_files)

    def headers(self) -> list[Path]:
        return sorted(h for d in self.include_dirs for pattern in ("*.cuh", "*.h") for h in d.glob(pattern))


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "fusegraph" / "cuda"


def build_key(spec: ExtensionSpec, major: int, minor: int) -> str:
    """Hash of everything that goes into the build (sources, flags, torch and CUDA versions)."""
    h = hashlib.sha256()
    headers = [f"{h.name}\0{h.read_text()}" for h in spec.headers()]
    for part in (spec.name, spec.cuda_source(), *headers, spec.binding, ",".join(spec.functions),
                 " ".join(NVCC_FLAGS + CXX_FLAGS), " ".join(gencode_flags(major, minor)),
                 torch.__version__, str(torch.version.cuda)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_dir(spec: ExtensionSpec, major: int, minor: int) -> Path:
    return cache_root() / f"{build_key(spec, major, minor)}-{arch_tag(major, minor)}"


_lock = threading.Lock()
_failures: dict[tuple[str, tuple[int, int]], str] = {}


@functools.lru_cache(maxsize=None)
def _load(spec: ExtensionSpec, arch: tuple[int, int]):
    from torch.utils.cpp_extension import load_inline

    major, minor = arch
    directory = build_dir(spec, major, minor)
    directory.mkdir(parents=True, exist_ok=True)
    extra = {}
    if "no_implicit_headers" in inspect.signature(load_inline).parameters:
        extra["no_implicit_headers"] = True  # the .cu stays plain CUDA; the binding includes torch itself
    return load_inline(
        name=f"fusegraph_{spec.name}_{build_key(spec, major, minor)}_{arch_tag(major, minor)}",
        cpp_sources=[spec.binding], cuda_sources=[spec.cuda_source()], functions=list(spec.functions),
        extra_cflags=list(CXX_FLAGS), extra_cuda_cflags=list(NVCC_FLAGS) + gencode_flags(major, minor),
        extra_include_paths=[str(d) for d in spec.include_dirs], build_directory=str(directory), with_cuda=True, verbose=os.environ.get("FUSEGRAPH_CUDA_VERBOSE") == "1",
        **extra)


_by_device: dict[tuple[str, int], object] = {}  # fast path: (extension, device index) -> module


def load(spec: ExtensionSpec, device: torch.device):
    """The built extension module for ``device``'s architecture (built on first use, then cached)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    module = _by_device.get((spec.name, index))
    if module is not None:
        return module
    arch = arch_of(device)
    key = (spec.name, arch)
    with _lock:  # one build at a time; later callers get the cached module
        if key in _failures:
            raise RuntimeError(_failures[key])
        try:
            module = _load(spec, arch)
            _by_device[(spec.name, index)] = module
            return module
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            detail = lines[-1][:300] if lines else ""
            _failures[key] = f"CUDA build of {spec.name} for {arch_tag(*arch)} failed: {type(exc).__name__}: {detail}"
            raise RuntimeError(_failures[key]) from exc


def build_failure(spec: ExtensionSpec, device: torch.device | None = None) -> str | None:
    """Why an earlier build of ``spec`` failed on this device's architecture (None: it did not)."""
    if device is None:
        return next((why for (name, _), why in _failures.items() if name == spec.name), None)
    if device.type != "cuda":
        return None
    return _failures.get((spec.name, arch_of(device)))


def pdl_enabled(device: torch.device) -> bool:
    """Launch with programmatic dependent launch: sm90+ only, off with ``FUSEGRAPH_PDL=0``."""
    if device.type != "cuda" or os.environ.get("FUSEGRAPH_PDL", "1") == "0":
        return False
    return _targets.supports_pdl(_targets.of_device(device))


def aligned(t: torch.Tensor, alignment: int) -> bool:
    """Whether ``t``'s first byte is ``alignment``-aligned (meta/fake tensors count as aligned)."""
    try:
        return t.data_ptr() % alignment == 0
    except Exception:  # fake tensors have no storage address
        return True
