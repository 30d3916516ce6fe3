"""fusegraph.match: matching by evaluation (see ``matcher`` for the design)."""
