"""Diagnostics on plain arrays, for any sampler: calibration (SBC, TARP), recovery, predictive
checks, and the per-observation misspecification check.

Anchor: ``sbi.diagnostics`` (``sbc``, ``tarp``, ``misspecification``).
"""
