"""mHC pre alone (spec 2.1, pattern F1): for sites whose RMSNorm cannot be folded (another eps, the
collapsed row used elsewhere, no norm at all)."""
from dataclasses import replace

from .mhc_pre_norm import PATTERN as _WITH_NORM

PATTERN = replace(
    _WITH_NORM,
    name="mhc_pre",
    inputs={k: v for k, v in _WITH_NORM.inputs.items() if k != "norm_weight"},
    priority=20,
    description="hc_pre -> mhc_pre(norm_weight=None)",
)
