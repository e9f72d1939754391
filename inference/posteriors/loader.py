"""The one way in to a trained posterior: a single artifact or an ensemble, both without pickle.

Why a module of its own: the single posterior (``amortized``) and the mixture (``ensemble``) both
build on ``base`` and never import each other; only the loader needs to know both.
"""

from __future__ import annotations

from pathlib import Path

from farm.defaults import Protocol
from inference.posteriors.amortized import AmortizedPosterior, load_amortized
from inference.posteriors.ensemble import EnsemblePosterior, is_ensemble, load_ensemble


def load_posterior(
    directory: str | Path, protocol: Protocol | None = None
) -> AmortizedPosterior | EnsemblePosterior:
    """Rebuild a posterior from a `farm train npe` artifact, with no pickle.

    Args:
        directory: the artifact (``manifest.json``, ``weights.pt``, optional ``prior/``), or an
            ensemble (``ensemble.json`` + ``member-<k>/``, `farm train npe --ensemble K`), which
            loads as ``EnsemblePosterior`` with the same interface (``BasePosterior``).
        protocol: if given, refuse an artifact trained under another stimulus protocol.

    Raises:
        ValueError: missing or corrupt files, another format/emulator version or protocol.
    """
    d = Path(directory)
    if is_ensemble(d):
        return load_ensemble(d, protocol, load_member=load_amortized)
    return load_amortized(d, protocol)


__all__ = ["load_posterior"]
