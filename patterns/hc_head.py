"""hc_head alone (spec 2.4, pattern F9), for models whose final norm cannot be folded."""
from dataclasses import replace

from .hc_head_norm import PATTERN as _WITH_NORM

PATTERN = replace(_WITH_NORM, name="hc_head", priority=20,
                  inputs={k: v for k, v in _WITH_NORM.inputs.items() if k != "norm_weight"},
                  description="hc_head -> hc_head(norm_weight=None)")
