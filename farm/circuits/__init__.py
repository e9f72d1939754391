"""Circuit fingerprints: each (chip, neuron) recorded at a few fixed reference settings.

A posterior that knows which circuit a trace came from can undo its fixed-pattern mismatch
(issue 25). ``references`` holds the reference settings as data, ``record`` the pure recording,
``store`` the circuits store (Zarr, xarray-readable), ``ids`` `--neurons` parsing, ``actor``
and ``runner`` the Ray side, ``verify`` `farm verify` for circuits stores. docs/emulator.md,
"Circuit fingerprints", says why these references and shows that every mismatch term moves a
recording.
"""

from __future__ import annotations

from farm.lazy import lazy_exports

_PUBLIC: dict[str, str] = {
    "DEFAULT_REFERENCES": "farm.circuits.references",
    "Reference": "farm.circuits.references",
    "ReferenceSet": "farm.circuits.references",
    "record_fingerprints": "farm.circuits.record",
    "fingerprint_statistics": "farm.circuits.statistics",
    "statistic_names": "farm.circuits.statistics",
    "FingerprintStore": "farm.circuits.store",
    "open_fingerprints": "farm.circuits.store",
    "FingerprintConfig": "farm.circuits.runner",
    "run_fingerprint": "farm.circuits.runner",
}
__all__ = sorted(_PUBLIC)

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
