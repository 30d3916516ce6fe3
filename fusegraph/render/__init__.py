"""Renderers for the console script: terminal tables, stable JSON, self-contained HTML, SVG graphs.

Renderers only format: they take result records (``fusegraph.records``, ``fusegraph.cost``,
``fusegraph.cli.compare``) and return strings. Nothing here compiles or runs a model.
"""
