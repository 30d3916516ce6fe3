"""Named model builds: `build_model(name, device="cpu", seed=0)` and `example_inputs(model, T)`.

`PRESETS` maps "tiny" / "flash" / "pro" to their `DSV4Config`. On the meta device nothing is
allocated or initialized (flash / pro build in well under 2 s with checkpoint shapes).
"""
from __future__ import annotations

from typing import Optional

import torch

from fusegraph.models.config import CONFIGS, DSV4Config
from fusegraph.models.model import DSV4Model

PRESETS: dict[str, DSV4Config] = dict(CONFIGS)


def build_model(name: str, device: torch.device | str = "cpu", seed: Optional[int] = 0, **overrides) -> DSV4Model:
    """Build a preset (config fields may be overridden, e.g. kv_cache_layout="bf16")."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    cfg = PRESETS[name]
    if overrides:
        cfg = cfg.with_(**overrides)
    return DSV4Model(cfg, seed=seed, device=device)


build = build_model


def example_inputs(model: DSV4Model, T: int, seed: int = 0) -> tuple[torch.Tensor]:
    """(input_ids int64 [T],) on the model's device (meta tensors for a meta model)."""
    device = model.embed.weight.device
    if device.type == "meta":
        return (torch.empty(T, dtype=torch.long, device="meta"),)
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (T,), generator=g)
    return (ids.to(device),)
