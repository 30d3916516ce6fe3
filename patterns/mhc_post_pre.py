"""mHC post followed by the next sublayer's pre (spec 2.5, pattern F3).

A composition, not a search: once ``mhc_post`` and ``mhc_pre`` are fused, a post whose result is the
residual of the next pre (and is read by nothing in between) becomes one ``mhc_post_pre`` call that
writes the new residual and produces the next layer input, post and comb.
"""
from fusegraph.pattern import Composition

COMPOSITION = Composition(
    name="mhc_post_pre",
    first="mhc_post",
    second="mhc_pre",
    link={"residual": None},
    op="mhc_post_pre",
    description="mhc_post -> mhc_pre on its result  =>  mhc_post_pre",
)
