"""Benchmarks of the fused ops (run on a GPU machine).

``python -m benchmarks.ops [--quick] [--ops mhc_pre,hc_head] [--T 1,32] [--sizes flash] [--out FILE]``

* ``harness.py``: the method (CUDA-graph replay, rotating cold inputs, byte floors, copy bandwidth),
  the case registry (``BenchCase``, ``Goal``, ``register_family``) and the output (table + JSON).
* ``ops.py``: the command line; imports every ``benchmarks/ops_*.py`` family module.
* ``ops_<family>.py``: one module per op family registering its cases (``ops_mhc.py``: mhc_pre,
  mhc_post, mhc_post_pre, hc_head).
"""
