"""`farm evaluate`: held-out metrics, local and per-chip checks, figures and the report on disk."""
