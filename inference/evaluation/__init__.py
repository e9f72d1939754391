"""`farm evaluate`: held-out metrics, local and per-chip checks, the own-circuit check, figures and
the report on disk."""
