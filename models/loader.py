"""Safetensors checkpoint loading: `load_checkpoint(model, path_or_dir)`.

Checks every tensor name and shape against `model.state_dict()` before loading anything and
raises `CheckpointMismatchError` naming each missing, unexpected and mis-shaped tensor (shape
expected vs found). Tensors are converted to the parameter's dtype (e.g. bf16 checkpoint ->
fp32 param or the reverse). A meta-device model gets the loaded tensors assigned (CPU).
Real DSV4 checkpoints store FP8/FP4 weights with scale tensors; dequantizing them is not done
here (they would be reported as mismatches).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    def __init__(self, missing: list[str], unexpected: list[str], mis_shaped: list[tuple[str, tuple, tuple]]) -> None:
        self.missing, self.unexpected, self.mis_shaped = missing, unexpected, mis_shaped
        lines = ["checkpoint does not match the model:"]
        lines += [f"  missing tensor: {n}" for n in missing]
        lines += [f"  unexpected tensor: {n}" for n in unexpected]
        lines += [f"  wrong shape: {n}: expected {list(e)}, found {list(f)}" for n, e, f in mis_shaped]
        super().__init__("\n".join(lines))


def checkpoint_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no .safetensors files in {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(path)
    return [path]


def load_checkpoint(model: nn.Module, path_or_dir: str | Path) -> None:
    from safetensors import safe_open

    expected = model.state_dict()
    files = checkpoint_files(path_or_dir)
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                found[name] = (f, tuple(handle.get_slice(name).get_shape()))
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mis_shaped = [
        (n, tuple(expected[n].shape), found[n][1])
        for n in sorted(set(expected) & set(found))
        if tuple(expected[n].shape) != found[n][1]
    ]
    if missing or unexpected or mis_shaped:
        raise CheckpointMismatchError(missing, unexpected, mis_shaped)

    any_meta = any(t.is_meta for t in expected.values())
    converted: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                target = expected[name]
                device = "cpu" if target.is_meta else target.device
                converted[name] = handle.get_tensor(name).to(device=device, dtype=target.dtype)
    model.load_state_dict(converted, strict=True, assign=any_meta)
