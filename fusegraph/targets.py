"""Targets: the hardware a plan is made for.

A target is a short string: ``cpu``, ``sm80`` (Ampere), ``sm90`` (Hopper), ``sm100`` (Blackwell)
or ``rocm``. Planning takes any target on any machine (nothing here needs a GPU); running picks the
target of the tensors' device. All platform questions are answered here, nowhere else.
"""
from __future__ import annotations

import functools

import torch

TARGETS = ("cpu", "sm80", "sm90", "sm100", "rocm")
GPU_TARGETS = frozenset({"sm80", "sm90", "sm100", "rocm"})
CUDA_TARGETS = frozenset({"sm80", "sm90", "sm100"})


def parse(target: str) -> str:
    """Validate a user-given target; ``auto`` means the machine's own device."""
    if target == "auto":
        return detect()
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected 'auto' or one of {', '.join(TARGETS)}")
    return target


def detect() -> str:
    """The target of the current CUDA/ROCm device, or ``cpu`` without one."""
    if torch.cuda.is_available():
        return of_device(torch.device("cuda", torch.cuda.current_device()))
    return "cpu"


@functools.lru_cache(maxsize=None)
def _cuda_target(index: int) -> str:
    if torch.version.hip is not None:
        return "rocm"
    major, minor = torch.cuda.get_device_capability(index)
    if major >= 10:
        return "sm100"
    if major == 9:
        return "sm90"
    if major == 8:
        return "sm80"
    return f"sm{major}{minor}"


def of_device(device: torch.device) -> str:
    """Target that runs work placed on ``device`` (meta tensors plan for the detected target)."""
    if device.type == "cuda":
        return _cuda_target(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "meta":
        return detect()
    return "cpu"


def supports_pdl(target: str) -> bool:
    """Programmatic dependent launch exists on Hopper and later NVIDIA GPUs only."""
    return target in ("sm90", "sm100")
