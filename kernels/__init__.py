"""fusegraph.kernels: one folder per fused op.

Each folder holds the op's spec (``reference.py``: the plain torch function, declared with
``fusegraph.ops.fused_op``) and its providers side by side (``triton.py``, ``tilelang.py``,
``cuda.py``, ``deepgemm.py``). Importing this package registers every op and provider.
"""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if _info.ispkg:
        importlib.import_module(f"{__name__}.{_info.name}")
