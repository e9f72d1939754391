"""The 7-parameter prior: the box in CapMem LSB, and the classifier-restricted prior.

Both draw sample i as a pure function of (seed, i) through farm.kernel.rng, so a store simulated
from either is bit-identical however the work was split. The restricted prior is the one `inference`
trains (Reference: Deistler et al. 2022, "Truncated proposals for scalable and hassle-free
simulation-based inference"; sbi's ``RestrictionEstimator``). It is stored as JSON + ``.npz``
weights and evaluated here in numpy, so the farm samples from it without torch or pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from farm.defaults import PriorBox
from farm.errors import FarmInputError, FarmRuntimeError
from farm.kernel import rng

RESTRICTED_FORMAT_VERSION = "1"
RESTRICTED_MANIFEST = "restricted_prior.json"
RESTRICTED_WEIGHTS = "weights.npz"


class BoxPrior:
    """Box-uniform prior over ``PriorBox`` bounds (LSB)."""

    def __init__(self, box: PriorBox | None = None) -> None:
        self.box = box or PriorBox()
        self.low = np.asarray(self.box.low, dtype=np.float64)
        self.high = np.asarray(self.box.high, dtype=np.float64)

    @property
    def names(self) -> tuple[str, ...]:
        return self.box.names

    @property
    def dim(self) -> int:
        return self.box.dim

    def sample_indexed(
        self, seed: int, indices: NDArray[np.integer] | range, attempt: int = 0
    ) -> NDArray[np.float32]:
        """(n, 7) float32 draws; row k depends only on (seed, indices[k], attempt)."""
        keys = rng.stream_keys(int(seed), rng.as_indices(indices), rng.STREAM_THETA)
        u = rng.uniforms(keys, int(attempt), self.dim)
        return (self.low + u * (self.high - self.low)).astype(np.float32)

    def sample(self, num_samples: int, seed: int = 0) -> NDArray[np.float32]:
        return self.sample_indexed(seed, np.arange(num_samples))

    def support(self, theta: NDArray[np.floating]) -> NDArray[np.bool_]:
        """True for rows inside the closed box."""
        t = np.asarray(theta, dtype=np.float64).reshape(-1, self.dim)
        return np.all((t >= self.low) & (t <= self.high), axis=1)

    def log_prob(self, theta: NDArray[np.floating]) -> NDArray[np.float64]:
        inside = self.support(theta)
        return np.where(inside, -float(np.sum(np.log(self.high - self.low))), -np.inf)

    def check(self, theta: NDArray[np.floating]) -> None:
        """Raise a one-line ValueError naming the first parameter value outside the prior."""
        t = np.asarray(theta, dtype=np.float64)
        if t.ndim != 2 or t.shape[1] != self.dim:
            raise FarmInputError(
                f"theta shape {t.shape} must be (n, {self.dim}) in order {', '.join(self.names)}"
            )
        if not np.all(np.isfinite(t)):
            raise FarmInputError(
                "theta contains NaN or inf; every value must be a finite CapMem LSB"
            )
        bad = ~((t >= self.low) & (t <= self.high))
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise FarmInputError(
                f"theta row {row}: {self.names[col]}={t[row, col]:g} "
                f"outside [{self.low[col]:g}, {self.high[col]:g}] LSB"
            )

    def to_dict(self) -> dict[str, Any]:
        return self.box.to_dict()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


class RestrictedPrior(BoxPrior):
    """The box prior restricted to where a classifier predicts the regime of interest.

    Sampling is rejection from the box: candidate r of sample i comes from the stream
    (seed, i, r), and the first accepted candidate is the sample. ``log_prob`` is the box density
    renormalised by the acceptance rate measured when the classifier was fitted.
    """

    def __init__(
        self,
        box: PriorBox,
        weights: list[NDArray[np.float64]],
        biases: list[NDArray[np.float64]],
        input_mean: NDArray[np.float64],
        input_std: NDArray[np.float64],
        threshold_logit: float,
        acceptance_rate: float,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(box)
        if len(weights) != len(biases) or not weights:
            raise FarmInputError(
                f"restricted prior needs matching weights/biases, got {len(weights)}/{len(biases)}"
            )
        if not 0.0 < acceptance_rate <= 1.0:
            raise FarmInputError(f"acceptance_rate={acceptance_rate} must be in (0, 1]")
        self.weights = [np.asarray(w, dtype=np.float64) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float64) for b in biases]
        self.input_mean = np.asarray(input_mean, dtype=np.float64)
        self.input_std = np.asarray(input_std, dtype=np.float64)
        self.threshold_logit = float(threshold_logit)
        self.acceptance_rate = float(acceptance_rate)
        self.meta = dict(meta or {})

    def logit(self, theta: NDArray[np.floating]) -> NDArray[np.float64]:
        """Classifier logit of P(in regime | theta), float64 for stable accept decisions."""
        h = (
            np.asarray(theta, dtype=np.float64).reshape(-1, self.dim) - self.input_mean
        ) / self.input_std
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if k < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h[:, 0]

    def support(self, theta: NDArray[np.floating]) -> NDArray[np.bool_]:
        return super().support(theta) & (self.logit(theta) >= self.threshold_logit)

    def log_prob(self, theta: NDArray[np.floating]) -> NDArray[np.float64]:
        return np.where(
            self.support(theta),
            -float(np.sum(np.log(self.high - self.low))) - math.log(self.acceptance_rate),
            -np.inf,
        )

    def sample_indexed(
        self,
        seed: int,
        indices: NDArray[np.integer] | range,
        attempt: int = 0,
        max_attempts: int = 10_000,
    ) -> NDArray[np.float32]:
        idx = rng.as_indices(indices)
        out = np.empty((idx.size, self.dim), dtype=np.float32)
        pending = np.arange(idx.size)
        for r in range(max_attempts):
            if pending.size == 0:
                return out
            cand = super().sample_indexed(seed, idx[pending], attempt=r)
            ok = self.logit(cand) >= self.threshold_logit
            out[pending[ok]] = cand[ok]
            pending = pending[~ok]
        raise FarmRuntimeError(
            f"restricted prior accepted nothing for {pending.size} samples in {max_attempts} "
            "attempts; the classifier threshold is too strict"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "restricted",
            "box": self.box.to_dict(),
            "fingerprint": self.fingerprint,
            "threshold_logit": self.threshold_logit,
            "acceptance_rate": self.acceptance_rate,
        }

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.box.to_dict(), sort_keys=True).encode())
        for arr in (
            *self.weights,
            *self.biases,
            self.input_mean,
            self.input_std,
            np.array([self.threshold_logit]),
        ):
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        """Write ``restricted_prior.json`` + ``weights.npz``; loadable with no pickle."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {f"W{k}": w for k, w in enumerate(self.weights)} | {
            f"b{k}": b for k, b in enumerate(self.biases)
        }
        np.savez(d / RESTRICTED_WEIGHTS, **arrays)
        manifest = {
            "kind": "restricted_prior",
            "format_version": RESTRICTED_FORMAT_VERSION,
            "prior": self.box.to_dict(),
            "activation": "relu",
            "num_layers": len(self.weights),
            "input_mean": self.input_mean.tolist(),
            "input_std": self.input_std.tolist(),
            "threshold_logit": self.threshold_logit,
            "acceptance_rate": self.acceptance_rate,
            "fingerprint": self.fingerprint,
            **{
                k: v
                for k, v in self.meta.items()
                if k not in {"kind", "format_version", "prior", "fingerprint"}
            },
        }
        (d / RESTRICTED_MANIFEST).write_text(json.dumps(manifest, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> RestrictedPrior:
        d = Path(directory)
        mpath = d / RESTRICTED_MANIFEST
        if not mpath.is_file():
            raise FarmInputError(
                f"prior={str(d)!r} has no {RESTRICTED_MANIFEST}; "
                "pass a directory written by `farm train classifier`"
            )
        m = json.loads(mpath.read_text())
        if (
            m.get("kind") != "restricted_prior"
            or m.get("format_version") != RESTRICTED_FORMAT_VERSION
        ):
            raise FarmInputError(
                f"{mpath}: kind={m.get('kind')!r} format_version={m.get('format_version')!r}; "
                f"expected restricted_prior v{RESTRICTED_FORMAT_VERSION}"
            )
        try:
            with np.load(d / RESTRICTED_WEIGHTS, allow_pickle=False) as z:
                num = int(m["num_layers"])
                weights = [z[f"W{k}"] for k in range(num)]
                biases = [z[f"b{k}"] for k in range(num)]
        except (
            OSError,
            EOFError,
            KeyError,
            ValueError,
            zipfile.BadZipFile,
        ) as e:  # a truncated weights.npz is a BadZipFile
            raise FarmInputError(
                f"{d / RESTRICTED_WEIGHTS}: unreadable restricted prior ({type(e).__name__}); "
                "re-run `farm train classifier`"
            ) from None
        meta = {
            k: v
            for k, v in m.items()
            if k
            not in {
                "prior",
                "input_mean",
                "input_std",
                "threshold_logit",
                "acceptance_rate",
                "num_layers",
                "activation",
            }
        }
        prior = cls(
            PriorBox.from_dict(m["prior"]),
            weights,
            biases,
            np.array(m["input_mean"]),
            np.array(m["input_std"]),
            m["threshold_logit"],
            m["acceptance_rate"],
            meta,
        )
        if "fingerprint" in m and m["fingerprint"] != prior.fingerprint:
            raise FarmInputError(
                f"{mpath}: fingerprint {m['fingerprint']} does not match its weights "
                f"({prior.fingerprint}); the artifact is corrupt"
            )
        return prior


AnyPrior = BoxPrior | RestrictedPrior


def load_prior(path: str | Path | None = None) -> AnyPrior:
    """The box prior for None, else the restricted prior saved in directory ``path``."""
    if path is None or str(path) in ("", "box"):
        return BoxPrior()
    return RestrictedPrior.load(path)


@dataclass(frozen=True, slots=True)
class PriorDescription:
    """A prior as a store or artifact records it (its ``prior`` attribute), without the weights.

    A box prior is fully described; a restricted prior is its box plus the fingerprint of the
    classifier, whose weights live in the directory ``farm train classifier`` wrote.
    """

    kind: Literal["box_uniform", "restricted"]
    box: PriorBox
    fingerprint: str

    @property
    def is_restricted(self) -> bool:
        return self.kind == "restricted"

    def box_prior(self) -> BoxPrior:
        """The box the prior lives in (the whole prior when it is not restricted)."""
        return BoxPrior(self.box)

    def matches(self, prior: AnyPrior) -> bool:
        """True if ``prior`` is the prior described (same kind and fingerprint)."""
        return (
            isinstance(prior, RestrictedPrior) == self.is_restricted
            and prior.fingerprint == self.fingerprint
        )


def prior_from_attrs(prior_attr: Mapping[str, Any] | None) -> PriorDescription:
    """Parse a ``prior`` attribute (``store.attrs["prior"]``, an artifact's ``manifest["prior"]``).

    None or empty means the default box (stores that predate the attribute).

    Raises:
        FarmInputError: the attribute is neither a box nor a restricted prior description.
    """
    d = dict(prior_attr or PriorBox().to_dict())
    try:
        if d.get("type") == "restricted":
            fingerprint = d["fingerprint"]
            if not isinstance(fingerprint, str) or not fingerprint:
                raise KeyError("fingerprint")
            return PriorDescription("restricted", PriorBox.from_dict(d["box"]), fingerprint)
        box = PriorBox.from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise FarmInputError(
            f"prior attribute {json.dumps(d, sort_keys=True, default=str)[:80]} "
            f"is not a box_uniform or restricted prior ({type(e).__name__}: {e})"
        ) from None
    return PriorDescription("box_uniform", box, BoxPrior(box).fingerprint)
