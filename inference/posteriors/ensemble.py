"""Deep ensembles of posteriors: the equal mixture of K members trained with different seeds.

Why: one flow trained once is often over-confident where the training data are thin; averaging
independently trained members widens exactly those posteriors and usually calibrates better
(Lakshminarayanan et al. 2017; for SBI: Hermans et al. 2022, "A Trust Crisis in Simulation-Based
Inference?"). The mixture is

    q(theta | x) = 1/K sum_k q_k(theta | x)

sampled by picking a member uniformly for each draw (one multinomial split of n per observation,
so a seed fixes every draw) and evaluated as ``logsumexp_k log q_k - log K``. It implements
``BasePosterior`` (``inference.posteriors.base``), so `farm evaluate` and the Serve app take it
unchanged. Members are any ``BasePosterior``: this module never imports the single posterior's,
and ``inference.posteriors.loader`` hands ``load_ensemble`` the reader of a member.

Artifact: ``ensemble.json`` (kind ``npe_ensemble``) beside one ordinary NPE artifact per member in
``member-<k>/``; each member loads with ``torch.load(weights_only=True)``, nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from farm.defaults import Protocol
from inference.artifacts import file_sha256, jsonable
from inference.documents import Document, read_document
from inference.errors import ArtifactError
from inference.posteriors.base import BasePosterior, _count

KIND = "npe_ensemble"
ENSEMBLE_FORMAT_VERSION = "1"
MANIFEST = "ensemble.json"
MAX_MEMBERS = 16
#: keyword of one observation -> keyword of a batch of them
_BATCHED = {"trace": "traces", "features": "features"}


def member_dir(k: int) -> str:
    """Subdirectory of member ``k`` inside an ensemble artifact."""
    return f"member-{k}"


class EnsembleManifest(Document):
    """``ensemble.json``: the members (dir, seed, fingerprint, manifest checksum), their metrics."""

    KINDS = (KIND,)
    FORMAT_VERSION = ENSEMBLE_FORMAT_VERSION
    REMEDY: ClassVar[str] = "retrain with `farm train npe --ensemble K`"

    members: list[dict[str, Any]]
    fingerprint: str


class EnsemblePosterior(BasePosterior):
    """The equal mixture of K posteriors of one setup (same prior, protocol, variant).

    Args:
        members: the loaded member posteriors, K in [2, 16].
        manifest: the ensemble's manifest (``ensemble.json`` contents).
    """

    def __init__(self, members: list[BasePosterior], manifest: dict[str, Any]) -> None:
        if not 2 <= len(members) <= MAX_MEMBERS:
            raise ValueError(f"members={len(members)} outside [2, {MAX_MEMBERS}]")
        first = members[0]
        if any(getattr(m, "circuit_aware", False) for m in members):
            raise ValueError(
                "ensembles of circuit-aware posteriors are not supported; load one member, or "
                "train with --circuits and --ensemble 1"
            )
        for name in (
            "variant",
            "parameter_names",
            "feature_names",
            "trace_length",
            "accepts_features",
            "protocol",
            "chip_model",
        ):
            others = {repr(getattr(m, name)) for m in members}
            if len(others) > 1:
                raise ValueError(
                    f"ensemble members differ in {name}: {sorted(others)}; "
                    "members must come from one setup"
                )
        if len({m.prior.fingerprint for m in members}) > 1:
            raise ValueError(
                "ensemble members differ in prior: "
                f"{sorted({m.prior.fingerprint for m in members})}"
            )
        self.members = list(members)
        self.num_members = len(members)
        self.prior = first.prior
        self.variant = first.variant
        self.parameter_names = first.parameter_names
        self.feature_names = first.feature_names
        self.protocol = first.protocol
        self.chip_model = first.chip_model
        self.trace_length = first.trace_length
        self.accepts_features = first.accepts_features
        self.regime = getattr(first, "regime", None)
        self.estimator = getattr(first, "estimator", "nsf")
        self.detector = getattr(first, "detector", None)  # member 0's, as misspecification() below
        self.trace_detector = getattr(first, "trace_detector", None)  # likewise member 0's
        self.fingerprint: str = manifest["fingerprint"]
        # Callers read the member manifest's setup (stores, protocol, metrics); the ensemble adds
        # its own keys.
        self.manifest: dict[str, Any] = {
            **first.manifest,
            "name": f"npe-{self.variant}-ensemble{self.num_members}",
            "fingerprint": self.fingerprint,
            "ensemble": {"num_members": self.num_members, "members": manifest["members"]},
            "metrics": {**first.manifest.get("metrics", {}), **manifest.get("metrics", {})},
        }

    def __repr__(self) -> str:
        return (
            f"EnsemblePosterior(members={self.num_members}, variant={self.variant!r}, "
            f"fingerprint={self.fingerprint})"
        )

    # ------------------------------------------------------------------ sampling
    def _split(
        self, rng: np.random.Generator, rows: int, num_samples: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(rows, K) draws per member (a uniform multinomial split of n), one seed per member."""
        counts = rng.multinomial(
            num_samples, np.full(self.num_members, 1.0 / self.num_members), size=rows
        )
        seeds = rng.integers(0, 2**31 - 1, size=self.num_members)
        return counts, seeds

    def _mixture_draws(
        self, num_samples: int, obs: dict[str, Any], seed: int | None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """(B, n, 7) draws and (B, n) member index of each draw, shuffled within each row."""
        n = _count(num_samples)
        rng = np.random.default_rng(seed)
        ((keyword, value),) = obs.items()
        rows = len(value)
        counts, seeds = self._split(rng, rows, n)
        out = np.empty((rows, n, len(self.parameter_names)), dtype=np.float32)
        who = np.empty((rows, n), dtype=np.int64)
        filled = np.zeros(rows, dtype=np.int64)
        for k, member in enumerate(self.members):
            need = int(counts[:, k].max())
            if need == 0:
                continue
            # every row draws the most any row needs from member k; each row keeps its own share
            draws = member.sample_batched(need, seed=int(seeds[k]), **{keyword: value})
            for b in range(rows):
                c = int(counts[b, k])
                out[b, filled[b] : filled[b] + c] = draws[b, :c]
                who[b, filled[b] : filled[b] + c] = k
                filled[b] += c
        order = rng.permuted(
            np.tile(np.arange(n), (rows, 1)), axis=1
        )  # a member's draws are not bunched together
        return np.take_along_axis(out, order[:, :, None], axis=1), np.take_along_axis(
            who, order, axis=1
        )

    def sample(
        self, num_samples: int, *, trace: Any = None, features: Any = None, seed: int | None = None
    ) -> NDArray[np.float32]:
        """Mixture draws for ONE observation: (n, 7) float32 LSB; same seed, same draws."""
        ((key, value),) = _one(trace, features).items()
        return self._mixture_draws(num_samples, {_BATCHED[key]: np.asarray(value)[None]}, seed)[0][
            0
        ]

    def sample_batched(
        self, num_samples: int, *, traces: Any = None, features: Any = None, seed: int | None = None
    ) -> NDArray[np.float32]:
        """Draw for B observations: traces (B, T) or features (B, F) -> (B, n, 7) float32."""
        return self._mixture_draws(num_samples, _batch(traces, features), seed)[0]

    def member_split(
        self, num_samples: int, *, traces: Any = None, features: Any = None, seed: int | None = None
    ) -> NDArray[np.int64]:
        """(B, num_samples) member index of each draw ``sample_batched`` gives for these inputs."""
        return self._mixture_draws(num_samples, _batch(traces, features), seed)[1]

    def sample_and_log_prob(
        self,
        num_samples: int,
        *,
        traces: Any = None,
        features: Any = None,
        seed: int | None = None,
        normalized: bool = True,
    ) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
        """Mixture draws for B observations and their mixture log-densities ((B, n, 7), (B, n)).

        ``normalized`` is accepted for interface parity but the members' densities are always
        normalised: a restricted prior's leakage correction differs between members, so skipping
        it would change the ranking of mixture densities, not only shift them.
        """
        obs = _batch(traces, features)
        theta, _ = self._mixture_draws(num_samples, obs, seed)
        ((keyword, value),) = obs.items()
        one = {v: k for k, v in _BATCHED.items()}[keyword]
        lp = np.stack(
            [self._log_prob_checked(theta[b], {one: value[b]}) for b in range(len(value))]
        )
        return theta, lp

    def sample_and_assess(
        self,
        num_samples: int,
        *,
        traces: Any = None,
        features: Any = None,
        seed: int | None = None,
        normalized: bool = True,
    ) -> tuple[NDArray[np.float32], NDArray[np.float64], list[dict[str, Any]]]:
        """``sample_and_log_prob`` plus ``misspecification_batched``: the interface a served /sample
        calls (``AmortizedPosterior.sample_and_assess``); the mixture shares no embedding across
        members, so this is the two calls."""
        theta, lp = self.sample_and_log_prob(
            num_samples, traces=traces, features=features, seed=seed, normalized=normalized
        )
        return theta, lp, self.misspecification_batched(traces=traces, features=features)

    # ------------------------------------------------------------------ densities
    def member_log_probs(
        self, theta: Any, *, trace: Any = None, features: Any = None
    ) -> NDArray[np.float64]:
        """(K, m) log q_k(theta | x) of every member for ONE observation."""
        return np.stack([m.log_prob(theta, trace=trace, features=features) for m in self.members])

    def log_prob(
        self, theta: Any, *, trace: Any = None, features: Any = None
    ) -> NDArray[np.float64]:
        """log of the mean member density, (m,) float64; -inf outside the prior support."""
        return self._log_prob_checked(theta, _one(trace, features))

    def _log_prob_checked(self, theta: Any, obs: dict[str, Any]) -> NDArray[np.float64]:
        return mixture_log_prob(self.member_log_probs(theta, **obs))

    def map(
        self, *, trace: Any = None, features: Any = None, num_samples: int = 1000
    ) -> NDArray[np.float32]:
        """Maximum of the mixture density among the members' MAPs and ``num_samples`` mixture draws.

        Returns:
            (7,) float32 LSB inside the prior support.
        """
        obs = _one(trace, features)
        cand = np.vstack(
            [
                np.stack([m.map(num_samples=num_samples, **obs) for m in self.members]),
                self.sample(num_samples, seed=0, **obs),
            ]
        )
        return cand[int(np.argmax(self._log_prob_checked(cand, obs)))].astype(np.float32)

    # ------------------------------------------------------------------ misspecification
    def misspecification(self, *, trace: Any = None, features: Any = None) -> dict[str, Any]:
        """Member 0's answer (its summary and trace-space checks): every member saw the same
        training data; one set of detectors serves all."""
        return self.members[0].misspecification(trace=trace, features=features)

    def misspecification_batched(
        self, *, traces: Any = None, features: Any = None
    ) -> list[dict[str, Any]]:
        """``misspecification`` for B observations (member 0's detector)."""
        return self.members[0].misspecification_batched(traces=traces, features=features)


def mixture_log_prob(member_lp: NDArray[np.float64]) -> NDArray[np.float64]:
    """log (1/K sum_k exp lp_k) over axis 0 of (K, ...) member log-densities.

    -inf where every member gives -inf.
    """
    lp = np.asarray(member_lp, dtype=np.float64)
    top = lp.max(axis=0)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):  # log(0) = -inf where all members are -inf
        return safe + np.log(np.exp(lp - safe).sum(axis=0)) - math.log(lp.shape[0])


def _one(trace: Any, features: Any) -> dict[str, Any]:
    if (trace is None) == (features is None):
        raise ValueError("give exactly one of trace= or features=")
    return {"trace": trace} if trace is not None else {"features": features}


def _batch(traces: Any, features: Any) -> dict[str, Any]:
    if (traces is None) == (features is None):
        raise ValueError("give exactly one of traces= or features=")
    key, value = ("traces", traces) if traces is not None else ("features", features)
    a = np.asarray(value)
    if a.ndim != 2:
        raise ValueError(f"{key} shape {a.shape} must be (B, ·), one row per observation")
    return {key: a}


# ---------------------------------------------------------------------------- the artifact
def ensemble_fingerprint(member_fingerprints: list[str]) -> str:
    """Identity of the mixture: its members' fingerprints, in order."""
    return hashlib.sha256(json.dumps(member_fingerprints).encode()).hexdigest()[:16]


def write_ensemble(
    directory: str | Path, seeds: list[int], metrics: dict[str, Any] | None = None
) -> Path:
    """Write ``ensemble.json`` over member artifacts already in ``directory/member-<k>/``.

    Returns:
        The manifest path.
    """
    d = Path(directory)
    members = []
    for k, seed in enumerate(seeds):
        sub = d / member_dir(k)
        man = json.loads((sub / "manifest.json").read_text())
        members.append(
            {
                "dir": member_dir(k),
                "seed": int(seed),
                "fingerprint": man["fingerprint"],
                "manifest_sha256": file_sha256(sub / "manifest.json"),
            }
        )
    body = {
        "kind": KIND,
        "format_version": ENSEMBLE_FORMAT_VERSION,
        "members": members,
        "fingerprint": ensemble_fingerprint([m["fingerprint"] for m in members]),
        "metrics": metrics or {},
    }
    path = d / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(body), indent=2))
    tmp.replace(path)
    return path


def is_ensemble(directory: str | Path) -> bool:
    """True for a directory written by `farm train npe --ensemble K`."""
    return (Path(directory) / MANIFEST).is_file()


def load_ensemble(
    directory: str | Path,
    protocol: Protocol | None = None,
    *,
    load_member: Callable[[Path, Protocol | None], BasePosterior],
) -> EnsemblePosterior:
    """Rebuild an ensemble from its artifact (no pickle: each member through ``load_member``).

    Args:
        directory: the ensemble (``ensemble.json`` + ``member-<k>/``).
        protocol: if given, refuse members trained under another stimulus protocol.
        load_member: reads one member's directory (``inference.posteriors.loader`` passes
            ``load_amortized``), so this module needs no single-posterior code.

    Raises:
        ArtifactError: missing or edited members, or members of different setups.
    """
    d = Path(directory)
    m = read_document(d / MANIFEST, EnsembleManifest).to_dict()
    if not 2 <= len(m["members"]) <= MAX_MEMBERS:
        raise ArtifactError(
            f"{d / MANIFEST}: {len(m['members'])} members, expected 2 to {MAX_MEMBERS}"
        )
    members = []
    for entry in m["members"]:
        sub = d / str(entry.get("dir", ""))
        if sub.resolve().parent != d.resolve():
            raise ArtifactError(
                f"{d / MANIFEST}: member dir={entry.get('dir')!r} "
                "is not a subdirectory of the ensemble"
            )
        if not (sub / "manifest.json").is_file():
            raise ArtifactError(
                f"{sub}: member artifact missing; "
                "re-run the same `farm train npe --ensemble` command to resume"
            )
        if file_sha256(sub / "manifest.json") != entry.get("manifest_sha256"):
            raise ArtifactError(
                f"{sub / 'manifest.json'}: checksum differs from {MANIFEST}; "
                "the ensemble is corrupt or was edited"
            )
        members.append(load_member(sub, protocol))
    if ensemble_fingerprint([p.fingerprint for p in members]) != m["fingerprint"]:
        raise ArtifactError(
            f"{d / MANIFEST}: member fingerprints do not give the recorded {m['fingerprint']}"
        )
    try:
        return EnsemblePosterior(members, m)
    except ValueError as e:
        raise ArtifactError(f"{d}: {e}") from None


__all__ = [
    "KIND",
    "MAX_MEMBERS",
    "EnsembleManifest",
    "EnsemblePosterior",
    "is_ensemble",
    "load_ensemble",
    "member_dir",
    "mixture_log_prob",
    "write_ensemble",
]
