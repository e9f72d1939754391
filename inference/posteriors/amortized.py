"""The amortized posterior: sbi-like ``sample`` / ``log_prob`` / ``map`` over numpy, no pickle.

Anchor: sbi's ``DirectPosterior`` (samples outside the prior support are rejected; ``log_prob`` is
renormalised by the accepted share, sbi's "leakage" correction). For the box prior nothing leaks,
because the flow lives in logit space; for a restricted prior, samples outside the classifier's
region are rejected and redrawn.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from farm.defaults import ChipModel, Protocol, Regime
from farm.features import feature_names, spike_count_column, summarize
from farm.prior import AnyPrior, RestrictedPrior, prior_from_attrs
from inference.artifacts import read_artifact
from inference.diagnostics.misspecification import (
    KNNDetector,
    TraceAnswers,
    assess,
    trace_reasons,
)
from inference.diagnostics.trace_artifact import BLOCK as TRACE_BLOCK
from inference.diagnostics.trace_artifact import load_trace_check
from inference.diagnostics.trace_check import TraceDetector
from inference.errors import ArtifactError
from inference.nets.embeddings import model_input
from inference.nets.flow_matching import ESTIMATOR as FM_ESTIMATOR
from inference.nets.flow_matching import FlowMatchingConfig, FlowMatchingModel
from inference.nets.nsf import FlowConfig, NPEModel
from inference.posteriors.base import MAX_SAMPLES, BasePosterior, _count, _numeric
from inference.posteriors.circuit_side import CircuitSide
from inference.posteriors.rejection import first_round, keep_inside
from inference.threads import torch_threads_kept

KIND = "npe_posterior"
PRIOR_SUBDIR = "prior"
_ACCEPTANCE_CACHE = 4096  # observations whose leakage correction is kept


class AmortizedPosterior(BasePosterior):
    """q(theta | x) for any observation x of the training protocol.

    Args:
        model: the trained embedding + density estimator (NSF or flow matching: same interface).
        manifest: the artifact manifest (architecture, prior, standardisation, protocol, ...).
        prior: the prior the training samples came from; its support bounds every sample.
        detector: the calibrated summary-space misspecification score (None for older artifacts).
        circuit_detector: a circuit-aware posterior's fingerprint check (None: none calibrated).
        trace_detector: the trace-space check (None: older artifacts, multi-sweep protocols).
        trace_note: why the artifact's trace check is skipped, when it is (every answer's note).
    """

    def __init__(
        self,
        model: NPEModel | FlowMatchingModel,
        manifest: dict[str, Any],
        prior: AnyPrior,
        detector: KNNDetector | None = None,
        circuit_detector: KNNDetector | None = None,
        trace_detector: TraceDetector | None = None,
        trace_note: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.manifest = manifest
        self.prior = prior
        self.variant: str = manifest["architecture"]["variant"]
        self.estimator: str = manifest["architecture"].get(
            "estimator", "nsf"
        )  # NSF manifests predate the key
        self.parameter_names: tuple[str, ...] = tuple(manifest["parameter_names"])
        self.feature_names: tuple[str, ...] = tuple(manifest["feature_names"])
        self.protocol = Protocol.from_dict(
            manifest["protocol"]
        )  # read_artifact fills in `step` for older artifacts
        self.chip_model = ChipModel.from_dict(manifest["chip_model"])
        self.trace_length: int = int(manifest["trace_length"])
        self.fingerprint: str = manifest["fingerprint"]
        self.regime = Regime.from_dict(manifest.get("regime"))
        self.detector = detector
        self.trace_detector = trace_detector
        self._trace_note = trace_note
        observation = tuple(f for f in model.config.x_fields if f != "circuit")
        self._observation_fields = observation
        self.accepts_features = observation == ("features",)
        #: the embedding's input starts with the named statistics (handcrafted and hybrid)
        self._reads_statistics = "features" in observation
        self.circuits = CircuitSide.from_manifest(manifest, circuit_detector)
        #: trained with `--circuits`: every call needs the observed circuit's fingerprint
        self.circuit_aware = self.circuits is not None
        self.circuit_references = None if self.circuits is None else self.circuits.references
        self.fingerprint_shape = None if self.circuits is None else self.circuits.shape
        self._restricted = isinstance(prior, RestrictedPrior)
        self._acceptance_cache: OrderedDict[bytes, float] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"AmortizedPosterior(variant={self.variant!r}, estimator={self.estimator!r}, "
            f"prior={type(self.prior).__name__}, fingerprint={self.fingerprint})"
        )

    # ------------------------------------------------------------------ inputs
    def expected_trace_shape(self, batched: bool = False) -> str:
        """The observation shape(s) this posterior takes, as its error messages name them."""
        b = "B, " if batched else ""
        flat = f"({b}{self.trace_length})"
        if self.protocol.num_sweeps == 1:
            return flat
        s, t = self.protocol.observation_shape
        return f"{flat} or ({b}{s}, {t}) (protocol {self.protocol.label}: {s} sweeps of {t})"

    def _inputs(
        self, trace: Any, features: Any, batched: bool, fingerprint: Any = None
    ) -> torch.Tensor:
        """Validated embedding input: (B, F) statistics, (B, T) codes, or (B, F + T) (hybrid).

        A circuit-aware posterior's input ends with the fingerprint's statistics (B, C).
        """
        x = self._observation(trace, features, batched)
        if self.circuits is None:
            if fingerprint is not None:
                raise ValueError(
                    "fingerprint= given but this posterior is circuit-marginal (trained without "
                    "--circuits); leave it out, or use a posterior trained with --circuits"
                )
            return x
        with torch_threads_kept():  # numba's OpenMP launch would leave torch on every core
            c = self.circuits.statistics(fingerprint, batched, x.shape[0], self.chip_model)
        return torch.cat([x.float(), torch.from_numpy(c)], dim=1)

    def _observation(self, trace: Any, features: Any, batched: bool) -> torch.Tensor:
        if (trace is None) == (features is None):
            raise ValueError("give exactly one of trace= or features=")
        lead = 2 if batched else 1
        if features is not None:
            if not self.accepts_features:
                raise ValueError(
                    f"features= given but the {self.variant} posterior reads raw traces; "
                    "pass trace= instead"
                )
            f = _numeric(features, "features")
            want = (len(self.feature_names),)
            if f.ndim != lead or f.shape[-1:] != want:
                raise ValueError(
                    f"features shape {f.shape} must be "
                    f"{('(B, ' if batched else '(') + str(want[0]) + ')'} "
                    f"in order {', '.join(self.feature_names)}"
                )
            return torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)).reshape(-1, want[0])
        t = _numeric(trace, "trace")
        sweeps = self.protocol.observation_shape
        if len(sweeps) > 1 and t.ndim == lead + 1 and t.shape[-2:] == sweeps:
            t = t.reshape(
                *t.shape[:-2], self.trace_length
            )  # (sweeps, T) per observation -> the flat form
        if t.ndim != lead or t.shape[-1] != self.trace_length:
            raise ValueError(
                f"trace shape {t.shape} must be {self.expected_trace_shape(batched)} ADC codes"
            )
        top = self.chip_model.adc_max_code
        if t.min() < 0 or t.max() > top:
            raise ValueError(
                f"trace values span [{t.min():g}, {t.max():g}]; ADC codes must lie in [0, {top}]"
            )
        arrays = {"trace": t.reshape(-1, self.trace_length)}
        if self._reads_statistics:
            with torch_threads_kept():  # numba's OpenMP launch would leave torch on every core
                arrays["features"] = summarize(
                    np.rint(arrays["trace"]).astype(np.int16), self.protocol, self.chip_model
                )
        return torch.from_numpy(
            np.ascontiguousarray(model_input(arrays, self._observation_fields), dtype=np.float32)
        )

    # ------------------------------------------------------------------ sampling
    @torch.inference_mode()
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embedding(x)

    @torch.inference_mode()  # ~15 % faster than no_grad here; only numpy leaves it
    def _sample_z(
        self, ctx: torch.Tensor, num_samples: int, with_log_prob: bool = False
    ) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
        """(B, n, 7) theta for embedded inputs ctx (B, ·), every sample inside the prior support.

        With ``with_log_prob`` also (B, n) log q(theta | x) from the same flow pass (zuko's
        ``rsample_and_log_prob``: one extra forward pass instead of a second sampling run),
        without the restricted prior's leakage correction. A restricted prior rejects draws
        outside its region and redraws for the observations still short
        (inference.posteriors.rejection).
        """
        tf = self.model.theta_transform

        def draw(
            context: torch.Tensor, shape: tuple[int, ...]
        ) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
            flow = self.model.flow(context)
            z, lp_z = (
                flow.rsample_and_log_prob(shape) if with_log_prob else (flow.sample(shape), None)
            )
            theta = tf.inverse(z)
            return theta.numpy(), None if lp_z is None else (
                lp_z.double() + tf.log_abs_det_jacobian(theta)
            ).numpy()

        theta, lp = draw(
            ctx, (first_round(num_samples) if self._restricted else num_samples,)
        )  # (first, B, 7), (first, B)
        theta, lp = theta.transpose(1, 0, 2), None if lp is None else lp.T
        if not self._restricted:
            return theta, lp
        return keep_inside(
            self.prior, theta, lp, num_samples, lambda rows: draw(ctx[torch.from_numpy(rows)], ())
        )

    def sample(
        self,
        num_samples: int,
        *,
        trace: Any = None,
        features: Any = None,
        seed: int | None = None,
        fingerprint: Any = None,
    ) -> NDArray[np.float32]:
        """Draw theta ~ q(theta | x) for ONE observation.

        Args:
            num_samples: how many, in [1, 1e6].
            trace: (T,) ADC codes; features: (F,) handcrafted statistics (handcrafted variant only).
            seed: same seed, same samples.
            fingerprint: (references, time) codes of the observation's circuit (circuit-aware
                posteriors only; ``fingerprint_shape``).

        Returns:
            (num_samples, 7) float32 LSB, inside the prior support.
        """
        x = self._inputs(trace, features, False, fingerprint)
        return self._draw(self._embed(x), num_samples, seed)[0][0]

    def sample_batched(
        self,
        num_samples: int,
        *,
        traces: Any = None,
        features: Any = None,
        seed: int | None = None,
        fingerprints: Any = None,
    ) -> NDArray[np.float32]:
        """Draw for B observations: traces (B, T) or features (B, F) -> (B, n, 7) float32.

        ``fingerprints``: (B, references, time), or one (references, time) for all (circuit-aware
        posteriors).
        """
        x = self._inputs(traces, features, True, fingerprints)
        return self._draw(self._embed(x), num_samples, seed)[0]

    def sample_and_log_prob(
        self,
        num_samples: int,
        *,
        traces: Any = None,
        features: Any = None,
        seed: int | None = None,
        normalized: bool = True,
        fingerprints: Any = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
        """Draws and their log-densities for B observations, from one flow pass (no second one).

        Args:
            traces: (B, T) ADC codes or features: (B, F) statistics.
            normalized: apply the restricted prior's leakage correction (one cached estimate per
                observation). False skips it when only the ranking of the draws matters (a MAP
                pick): the correction is a constant per observation.

        Returns:
            ((B, n, 7) float32 LSB, (B, n) float64 log q(theta | x)); the same draws as
            ``sample_batched`` with the same seed.
        """
        x = self._inputs(traces, features, True, fingerprints)
        return self._draw_with_log_prob(x, self._embed(x), num_samples, seed, normalized)

    def sample_and_assess(
        self,
        num_samples: int,
        *,
        traces: Any = None,
        features: Any = None,
        seed: int | None = None,
        normalized: bool = True,
        fingerprints: Any = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.float64], list[dict[str, Any]]]:
        """``sample_and_log_prob`` plus ``misspecification_batched`` of the same B observations.

        Why: a served /sample answer carries both; called apart, each validated and summarised the
        traces (a numba pass for the handcrafted features) and ran the embedding. Here both are
        computed once; the draws, densities and checks are those of the two calls.
        """
        x = self._inputs(traces, features, True, fingerprints)
        context = self._embed(x)
        theta, lp = self._draw_with_log_prob(x, context, num_samples, seed, normalized)
        return theta, lp, self._assess(x, traces, context)

    def _draw_with_log_prob(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        num_samples: int,
        seed: int | None,
        normalized: bool,
    ) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
        theta, lp = self._draw(context, num_samples, seed, with_log_prob=True)
        assert lp is not None
        if normalized and self._restricted:
            lp -= np.log([self._acceptance(x[i : i + 1]) for i in range(x.shape[0])])[:, None]
        return theta, lp

    def _draw(
        self, ctx: torch.Tensor, num_samples: int, seed: int | None, with_log_prob: bool = False
    ) -> tuple[NDArray[np.float32], NDArray[np.float64] | None]:
        n = _count(num_samples)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            theta, lp = self._sample_z(ctx, n, with_log_prob)
        return theta.astype(np.float32), lp

    # ------------------------------------------------------------------ densities
    def log_prob(
        self, theta: Any, *, trace: Any = None, features: Any = None, fingerprint: Any = None
    ) -> NDArray[np.float64]:
        """log q(theta | x) in LSB space for ONE observation; -inf outside the prior support.

        Args:
            theta: (m, 7) or (7,) parameter sets in LSB.

        Returns:
            (m,) float64.
        """
        t = _numeric(theta, "theta").astype(np.float64)
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2 or t.shape[1] != len(self.parameter_names):
            raise ValueError(
                f"theta shape {np.shape(theta)} must be (m, {len(self.parameter_names)}) "
                f"in order {', '.join(self.parameter_names)}"
            )
        x = self._inputs(trace, features, False, fingerprint)
        inside = self.prior.support(t)
        out = np.full(t.shape[0], -np.inf)
        if inside.any():
            with torch.inference_mode():
                th = torch.from_numpy(t[inside])
                out[inside] = self.model.log_prob(th, self.model.embedding(x)).numpy()
            if self._restricted:
                out[inside] -= math.log(self._acceptance(x))
        return out

    @torch.inference_mode()
    def _acceptance(self, x: torch.Tensor, num: int = 2000) -> float:
        """Share of q(theta | x) inside the restricted support (sbi's leakage correction).

        A fixed-seed Monte Carlo estimate, cached per observation: every log_prob of one
        observation carries the same constant, and a service answering many densities for one
        trace pays for the estimate once.
        """
        key = hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest()
        if (hit := self._acceptance_cache.get(key)) is not None:
            self._acceptance_cache.move_to_end(key)
            return hit
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            z = self.model.flow(self.model.embedding(x)).sample((num,))[:, 0]
        theta = self.model.theta_transform.inverse(z).numpy()
        value = max(float(self.prior.support(theta).mean()), 1.0 / num)
        self._acceptance_cache[key] = value
        if len(self._acceptance_cache) > _ACCEPTANCE_CACHE:
            self._acceptance_cache.popitem(last=False)
        return value

    def map(
        self,
        *,
        trace: Any = None,
        features: Any = None,
        num_samples: int = 1000,
        fingerprint: Any = None,
    ) -> NDArray[np.float32]:
        """Maximum of q(theta | x): the best of ``num_samples`` draws, refined by gradient ascent.

        Returns:
            (7,) float32 LSB inside the prior support.
        """
        n = _count(num_samples)
        x = self._inputs(trace, features, False, fingerprint)
        ctx = (
            self.model.embedding(x).detach()
        )  # a normal tensor (not inference-mode): the ascent below differentiates through the flow
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            theta0 = self._sample_z(ctx, n)[0][0]
        with torch.no_grad():
            lp0 = self.model.log_prob(torch.from_numpy(theta0), ctx).numpy()
        best = theta0[int(np.argmax(lp0))]
        best_lp = float(lp0.max())
        tf = self.model.theta_transform
        z = tf(torch.from_numpy(best[None])).detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.02)
        for _ in range(100):
            opt.zero_grad()
            theta = tf.inverse(z)
            loss = -(
                self.model.flow(ctx).log_prob(z).double() + tf.log_abs_det_jacobian(theta)
            ).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            cand = tf.inverse(z).numpy()
            lp = float(self.model.log_prob(torch.from_numpy(cand), ctx).numpy()[0])
        if lp > best_lp and bool(self.prior.support(cand)[0]):
            best = cand[0]
        return best.astype(np.float32)

    # ------------------------------------------------------------------ misspecification
    def to_sbi(self) -> Any:
        """This posterior as an sbi ``DirectPosterior`` (x: the raw trace; prior: its support)."""
        from inference.posteriors.sbi_interop import to_sbi

        return to_sbi(self)

    def misspecification(
        self, *, trace: Any = None, features: Any = None, fingerprint: Any = None
    ) -> dict[str, Any]:
        """How unlike the training data ONE observation is (inference.diagnostics.misspecification).

        Returns:
            ``{score, threshold, trace_score, trace_threshold, flagged, reasons, note}``: flagged
            when the trace's own spike count is outside the artifact's regime, the trace is flat or
            saturated, the summary-space score or the trace-space score (a trace given, and an
            artifact that calibrated it) exceeds its held-out threshold; score/threshold are None
            for older artifacts, trace_score/trace_threshold also for statistics or multi-sweep
            protocols. Each reason line names the check that gave it.
        """
        return self._assess(self._inputs(trace, features, False, fingerprint), trace)[0]

    def misspecification_batched(
        self, *, traces: Any = None, features: Any = None, fingerprints: Any = None
    ) -> list[dict[str, Any]]:
        """``misspecification`` for B observations: traces (B, T) or features (B, F)."""
        return self._assess(self._inputs(traces, features, True, fingerprints), traces)

    @torch.inference_mode()
    def _assess(
        self, x: torch.Tensor, trace: Any, ctx: torch.Tensor | None = None
    ) -> list[dict[str, Any]]:
        codes = (
            None
            if trace is None
            else np.rint(np.asarray(trace, dtype=np.float64))
            .reshape(-1, self.trace_length)
            .astype(np.int16)
        )
        col = spike_count_column(self.protocol)
        if self._reads_statistics:  # the input starts with the statistics
            counts = x[:, col].numpy()
        else:
            with torch_threads_kept():
                counts = summarize(codes, self.protocol, self.chip_model)[:, col]
        reasons = trace_reasons(codes, counts, self.regime, self.chip_model.adc_max_code)
        if self.circuits is not None:
            for r, extra in zip(reasons, self.circuits.reasons(x), strict=True):
                r.extend(extra)
        scores = (
            None
            if self.detector is None
            else self.detector.score(self.model.embedding(x) if ctx is None else ctx)
        )
        return assess(scores, self.detector, reasons, self._trace_answers(codes, len(reasons)))

    def _trace_answers(self, codes: NDArray[np.int16] | None, num: int) -> TraceAnswers:
        """The trace-space check of B traces; absent for statistics (features=) or an artifact
        without one."""
        if self.trace_detector is None or codes is None:
            return TraceAnswers.absent(num, self._trace_note)
        return TraceAnswers.of(self.trace_detector, codes)


def load_amortized(directory: str | Path, protocol: Protocol | None = None) -> AmortizedPosterior:
    """Rebuild one posterior from a `farm train npe` artifact, with no pickle.

    ``inference.posteriors.loader.load_posterior`` calls this for a single artifact (and for each
    member of an ensemble); it is the public way in, since it also reads ensembles.

    Args:
        directory: the artifact (``manifest.json``, ``weights.pt``, optional ``prior/``).
        protocol: if given, refuse an artifact trained under another stimulus protocol.

    Raises:
        ValueError: missing or corrupt files, another format/emulator version or protocol.
    """
    d = Path(directory)
    m, state = read_artifact(d, KIND, protocol)
    described = prior_from_attrs(m.get("prior"))
    prior: AnyPrior = (
        RestrictedPrior.load(d / PRIOR_SUBDIR) if described.is_restricted else described.box_prior()
    )
    if described.is_restricted and not described.matches(prior):
        raise ArtifactError(
            f"{d / PRIOR_SUBDIR}: restricted prior fingerprint {prior.fingerprint} differs from "
            f"the manifest's {described.fingerprint}"
        )
    estimator = m["architecture"].get("estimator", "nsf")
    model: NPEModel | FlowMatchingModel
    if estimator == FM_ESTIMATOR:
        model = FlowMatchingModel(
            FlowMatchingConfig.from_dict(m["architecture"]), m["standardization"]
        )
    elif estimator == "nsf":
        model = NPEModel(FlowConfig.from_dict(m["architecture"]), m["standardization"])
    else:
        raise ValueError(
            f"{d}: estimator={estimator!r} in the manifest; "
            f"this package reads nsf or {FM_ESTIMATOR}"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{d}: weights do not fit the manifest's architecture ({str(e).splitlines()[0]})"
        ) from None
    names = feature_names(Protocol.from_dict(m["protocol"]))
    if "features" in model.config.x_fields and tuple(m["feature_names"][: len(names)]) != names:
        raise ValueError(
            f"{d}: trained on features {m['feature_names']}, "
            f"this farm computes {list(names)}: retrain"
        )
    detector = (
        KNNDetector.load(d, m["misspecification"]) if m.get("misspecification") else None
    )  # older artifacts: regime checks only
    circuit_block = (m.get("circuits") or {}).get("misspecification")
    circuit_detector = KNNDetector.load(d, circuit_block) if circuit_block else None
    trace_detector, trace_note = (
        load_trace_check(d, m[TRACE_BLOCK]) if m.get(TRACE_BLOCK) else (None, None)
    )  # artifacts before issue 28, and multi-sweep protocols: no trace-space check
    return AmortizedPosterior(
        model, m, prior, detector, circuit_detector, trace_detector, trace_note
    )


__all__ = ["KIND", "MAX_SAMPLES", "PRIOR_SUBDIR", "AmortizedPosterior", "load_amortized"]
