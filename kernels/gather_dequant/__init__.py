"""gather_dequant: bf16 rows from the DSV4 paged FP8 KV cache (spec 4.4). Reference, then providers."""
from . import reference  # noqa: F401
from . import triton  # noqa: F401
