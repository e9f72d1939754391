"""Posteriors: the amortized posterior, the ensemble mixture, and the one loader that knows both."""
