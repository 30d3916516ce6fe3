"""fusegraph: a torch.fx graph compiler for DeepSeek-V4 inference.

Pipeline (one module each): capture -> canonicalize -> match -> rewrite -> dispatch.
Patterns live in ``fusegraph.patterns``, fused ops and their providers in ``fusegraph.kernels``,
the eager DSV4 reference model in ``fusegraph.models``.
"""
import os as _os

# In a source checkout patterns/, kernels/ and models/ sit beside this folder; an installed copy
# nests them under fusegraph/. Let both layouts import as fusegraph.<name>.
_top = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if all(_os.path.isdir(_os.path.join(_top, d)) for d in ("patterns", "kernels", "models")):
    if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "kernels")):
        __path__.append(_top)  # noqa: F821 - __path__ is defined for packages

__version__ = "0.1.0"

from fusegraph.backend import backend  # noqa: E402
from fusegraph.compiler import CompiledModule, compile  # noqa: E402,A001

__all__ = ["compile", "backend", "CompiledModule"]
