"""What a circuit-aware posterior knows of circuits: its references, and the fingerprint check.

A posterior trained with `farm train npe --circuits` reads, beside each observation, the
fingerprint of the circuit it was recorded on (``farm.circuits``). This module validates that
fingerprint, turns it into the statistics the network reads, and says when a fingerprint is unlike
every one seen in training (another chip model, a broken recording, references taken otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from farm.circuits.references import ReferenceSet
from farm.circuits.statistics import (
    FINGERPRINT_STATISTICS_VERSION,
    fingerprint_statistics,
    statistic_names,
)
from farm.defaults import ChipModel
from inference.diagnostics.misspecification import KNNDetector
from inference.errors import ArtifactError
from inference.posteriors.base import _numeric

#: The manifest block's file name for the fingerprint check's reference rows.
DETECTOR_FILE = "circuit_check.npz"


@dataclass(frozen=True)
class CircuitSide:
    """The circuit half of a circuit-aware posterior's input.

    Args:
        references: the reference set fingerprints must be recorded with.
        names: the statistics the network reads, in column order.
        detector: kNN check of the statistics against training rows (None: not calibrated).
        block: the manifest's ``circuits`` block (store, identity), for reports.
    """

    references: ReferenceSet
    names: tuple[str, ...]
    detector: KNNDetector | None
    block: dict[str, Any]

    @classmethod
    def from_manifest(
        cls, manifest: dict[str, Any], detector: KNNDetector | None
    ) -> CircuitSide | None:
        block = manifest.get("circuits")
        if not block:
            return None
        references = ReferenceSet.from_dict(block["references"])
        names = tuple(block["names"])
        if names != statistic_names(references):
            raise ArtifactError(
                f"trained on {len(names)} fingerprint statistics, this farm computes "
                f"{len(statistic_names(references))} ({FINGERPRINT_STATISTICS_VERSION}): retrain"
            )
        return cls(references, names, detector, block)

    @property
    def shape(self) -> tuple[int, int]:
        """(references, samples per reference) of one fingerprint."""
        return (len(self.references.references), self.references.samples_per_reference)

    def describe(self) -> str:
        r, t = self.shape
        return f"({r}, {t}) ADC codes: references {', '.join(self.references.names)}"

    def statistics(
        self, fingerprint: Any, batched: bool, rows: int, chip_model: ChipModel
    ) -> NDArray[np.float32]:
        """(rows, C) statistics of the given fingerprint(s), validated.

        Raises:
            ValueError: no fingerprint, a wrong shape or codes outside the ADC range; one line
                naming ``fingerprint`` and the expected shape.
        """
        word = "fingerprints" if batched else "fingerprint"
        if fingerprint is None:
            raise ValueError(
                f"this posterior is circuit-aware: give {word}= the observed circuit's "
                f"fingerprint, {self.describe()} (`farm fingerprint`)"
            )
        f = _numeric(fingerprint, word)
        if f.ndim == 2 and f.shape == self.shape:
            f = np.broadcast_to(f, (rows, *self.shape))
        if f.shape != (rows, *self.shape) or (not batched and rows != 1):
            want = f"({rows}, {self.shape[0]}, {self.shape[1]}) or " if batched else ""
            raise ValueError(
                f"{word} shape {np.shape(fingerprint)} must be {want}{self.shape}: "
                f"{self.describe()}"
            )
        top = chip_model.adc_max_code
        if f.size and (f.min() < 0 or f.max() > top):
            raise ValueError(
                f"{word} values span [{f.min():g}, {f.max():g}]; ADC codes must lie in [0, {top}]"
            )
        codes = np.rint(f).astype(np.int16)
        return fingerprint_statistics(codes, self.references, chip_model).reshape(rows, -1)

    def reasons(self, x: torch.Tensor) -> list[list[str]]:
        """Per row of the full input ``x``, why its fingerprint is unlike the training ones."""
        if self.detector is None:
            return [[] for _ in range(x.shape[0])]
        stats = x[:, -len(self.names) :].detach().double().numpy()
        scores = self.detector.score(stats)
        t = self.detector.threshold
        return [
            [
                f"fingerprint unlike the training circuits': kNN score {s:.3g} > threshold "
                f"{t:.3g} ({1 - self.detector.quantile:.0%} false-alarm level); was it recorded "
                "with this posterior's references and chip model?"
            ]
            if s > t
            else []
            for s in scores
        ]


__all__ = ["DETECTOR_FILE", "CircuitSide"]
