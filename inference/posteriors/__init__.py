"""Posteriors: ``base`` (the shared interface), ``amortized`` (one flow), ``ensemble`` (a mixture
of them) and ``loader`` (``load_posterior``, the one module that knows both)."""
