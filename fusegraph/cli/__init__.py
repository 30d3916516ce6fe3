"""The ``fusegraph`` console script (``main.main``): ``report``, ``compare`` and ``demo``.

One module per command (``report``, ``compare``, ``demo``), plus what they share: resolving MODEL
(``model_source``), calling the compiler (``compiling``), output paths (``outputs``), progress on
stderr (``progress``), recording values while a graph runs (``recording``), error metrics
(``numerics``) and GPU timing (``timing``). Formatting lives in ``fusegraph.render``.
"""
