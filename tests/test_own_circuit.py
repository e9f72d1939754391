"""The own-circuit predictive check of `farm evaluate` (issue 25), and circuit-aware evaluation.

Posteriors with known answers, on a small real store: one that returns each observation's true
parameters (its reruns are the oracle's, with other noise: ratio 1) and the prior (far worse on
the observation's own circuit). A fake circuit-aware posterior checks that every call gets the
observation's fingerprint, looked up in a circuits store recorded here without Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import inference
from deploy.cli import main
from farm.circuits.actor import FingerprintJob, record_chip
from farm.circuits.record import build_substrates
from farm.circuits.references import DEFAULT_REFERENCES, ReferenceSet
from farm.circuits.store import FingerprintSpec, FingerprintStore
from farm.defaults import PARAMETER_NAMES, ChipModel, Protocol
from farm.prior import BoxPrior
from farm.run.runner import run_farm
from inference.evaluation.circuits import circuit_fingerprints
from inference.evaluation.evaluate import (
    EvalConfig,
    compare_reports,
    evaluate,
    load_held_out,
    load_report,
    own_circuit_table,
)
from inference.evaluation.own_circuit import (
    agreement_metrics,
    error_ratio,
    noise_seed,
    spike_count_agreement,
)

CFG = EvalConfig(
    num_obs=60,
    num_samples=20,
    num_ppc=0,
    num_own_circuit=60,
    num_own_circuit_samples=20,
    c2st=False,
    seed=5,
)


# ------------------------------------------------------------------ the metric on plain arrays
def test_truth_scores_at_the_noise_floor_and_the_prior_far_above() -> None:
    rng = np.random.default_rng(0)
    observed = rng.integers(0, 40, 400)

    def rerun(centre: np.ndarray) -> np.ndarray:  # +-1 spike of temporal noise
        return centre[:, None] + rng.integers(-1, 2, (centre.size, 20))

    truth = agreement_metrics(observed, rerun(observed), rerun(observed))
    assert truth["error_ratio"] == pytest.approx(1.0, abs=0.1)
    assert truth["posterior_within"] == truth["oracle_within"] == 1.0
    prior = agreement_metrics(observed, rng.integers(0, 40, (400, 20)), rerun(observed))
    assert prior["error_ratio"] > 10 and prior["posterior_within"] < 0.2
    a = spike_count_agreement(np.array([3, 0]), np.array([[3, 6, 5, 1], [0, 0, 0, 2]]))
    assert a.error == pytest.approx(9 / 8) and a.within == pytest.approx(7 / 8)
    np.testing.assert_allclose(a.per_obs_error, [1.75, 0.5])
    with pytest.raises(ValueError, match="do not match 3 observations"):
        spike_count_agreement(np.zeros(3), np.zeros((2, 4)))
    assert (error_ratio(0.0, 0.0), error_ratio(1.0, 0.0), error_ratio(3.0, 1.5)) == (1, np.inf, 2)


def test_noise_seed_is_derived_and_never_the_stores() -> None:
    a = noise_seed(5, 25)
    assert a == noise_seed(5, 25) and a != noise_seed(5, 26) and a != noise_seed(6, 25)
    assert 0 <= a < 2**62 and noise_seed(5, 25, avoid=a) != a


# ------------------------------------------------------------------ posteriors with known answers
class BoxPosterior:
    """The prior, whatever the observation (the ``AmortizedPosterior`` contract, numpy only)."""

    variant = "handcrafted"
    parameter_names = PARAMETER_NAMES
    trace_length = 1000
    manifest: dict = {}

    def __init__(self) -> None:
        self.prior, self.protocol, self.chip_model = BoxPrior(), Protocol(), ChipModel()
        self.fingerprint = "box"

    def sample_batched(self, num_samples: int, *, traces=None, seed=None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        size = (len(traces), num_samples, 7)
        return rng.uniform(self.prior.low, self.prior.high, size).astype(np.float32)

    def log_prob(self, theta: np.ndarray, *, trace=None) -> np.ndarray:
        return np.full(len(theta), -float(np.sum(np.log(self.prior.high - self.prior.low))))


class TruthPosterior(BoxPosterior):
    """Every draw is the observation's true parameters: its reruns are the oracle's."""

    def __init__(self, store: str) -> None:
        super().__init__()
        self.fingerprint = "truth"
        held = load_held_out(store, 300, 0)
        self.truth = {t.tobytes(): th for t, th in zip(held.trace, held.theta)}

    def sample_batched(self, num_samples: int, *, traces=None, seed=None) -> np.ndarray:
        theta = np.stack([self.truth[t.tobytes()] for t in traces])
        return np.repeat(theta[:, None, :], num_samples, axis=1)


class CircuitAwareBox(BoxPosterior):
    """The prior, but refusing any call without the (B, R, T) or (R, T) fingerprint."""

    circuit_aware = True
    circuit_references = DEFAULT_REFERENCES
    fingerprint_shape = (6, DEFAULT_REFERENCES.samples_per_reference)

    def __init__(self) -> None:
        super().__init__()
        self.batched: list[np.ndarray] = []
        self.single: list[np.ndarray] = []

    def sample_batched(self, num_samples: int, *, traces=None, seed=None, fingerprints=None):
        assert fingerprints.shape == (len(traces), *self.fingerprint_shape)
        self.batched.append(fingerprints)
        return super().sample_batched(num_samples, traces=traces, seed=seed)

    def log_prob(self, theta: np.ndarray, *, trace=None, fingerprint=None) -> np.ndarray:
        assert fingerprint.shape == self.fingerprint_shape
        self.single.append(fingerprint)
        return super().log_prob(theta, trace=trace)


# ------------------------------------------------------------------ a small store and its circuits
@pytest.fixture(scope="module", autouse=True)
def no_figures() -> Iterator[None]:
    """Figures cost ~12 s per report on 2 busy cores and are tested in test_evaluate: skip them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("inference.evaluation.evaluate.draw_figures", lambda *_a, **_k: {})
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("own-circuit") / "test.zarr"
    run_farm(str(path), 300, seed=31, chunk_size=300, in_process=True)
    return str(path)


def record_circuits(out: Path, chips: np.ndarray, neurons: np.ndarray) -> str:
    """A circuits store of every (chip, neuron) pair given, recorded in-process (no Ray)."""
    spec = FingerprintSpec(
        seed=7,
        chip_ids=tuple(sorted({int(c) for c in chips})),
        neurons=tuple(sorted({int(n) for n in neurons})),
        references=DEFAULT_REFERENCES,
        chip_model=ChipModel(),
    )
    fs = FingerprintStore.create_or_resume(out, spec)
    job = FingerprintJob(str(out), spec)
    substrates = build_substrates("emulator", spec.references, spec.chip_model)
    for position in range(len(spec.chip_ids)):
        record_chip(fs, job, substrates, position)
        fs.mark_done(position)
    return str(out)


@pytest.fixture(scope="module")
def circuits(store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Circuits stores covering the evaluated observations' circuits, and all but one chip."""
    held = load_held_out(store, CFG.num_obs, CFG.seed)
    root = tmp_path_factory.mktemp("circuits")
    missing = int(held.chip[0])
    keep = held.chip != missing
    return {
        "full": record_circuits(root / "full.zarr", held.chip, held.neuron),
        "partial": record_circuits(root / "partial.zarr", held.chip[keep], held.neuron[keep]),
        "missing": f"{missing}:{int(held.neuron[0])}",
    }


@pytest.fixture(scope="module")
def reports(store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports")
    evaluate(TruthPosterior(store), store, root / "truth", CFG)
    evaluate(BoxPosterior(), store, root / "prior", CFG)
    return {"truth": root / "truth", "prior": root / "prior"}


# ------------------------------------------------------------------ the check in `farm evaluate`
def test_truth_is_the_oracle_and_the_prior_misses_on_its_own_circuit(
    reports: dict[str, Path],
) -> None:
    truth, prior = load_report(reports["truth"]), load_report(reports["prior"])
    own = truth["own_circuit"]
    assert own["num_obs"] == 60 and own["num_draws"] == 20 and own["tolerance_spikes"] == 2
    assert len(own["store_index"]) == 60 and len(own["per_obs"]["own_posterior_error"]) == 60
    assert own["noise_seed"] != own["random_noise_seed"] != truth["store"]["seed"]
    assert 0.5 < own["own"]["error_ratio"] < 2.0, own["own"]
    assert own["own"]["oracle_within"] > 0.9 and own["own"]["posterior_within"] > 0.9
    p = prior["own_circuit"]
    assert p["own"]["error_ratio"] > 5 and p["own"]["posterior_within"] < 0.8, p["own"]
    # the oracle is the same rerun of the same truths, whatever the posterior
    assert p["own"]["oracle_error"] == own["own"]["oracle_error"]
    s = truth["summary"]
    assert s["own_circuit_error_ratio"] == own["own"]["error_ratio"]
    assert s["random_circuit_within"] == own["random"]["posterior_within"]
    assert truth["posterior"]["circuit_aware"] is False and truth["store"]["circuits"] is None
    rows = own_circuit_table(truth)
    assert rows[0][0] == "|spike count error| / oracle's" and len(rows) == 5
    assert "own_circuit" in truth["timing_s"]


def test_compare_shows_own_and_random_circuit_rows(
    reports: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cmp = compare_reports(load_report(reports["truth"]), load_report(reports["prior"]))
    rows = {label: rest for label, *rest in cmp["rows"]}
    assert len(rows) == len(cmp["rows"])  # every label names one row
    assert rows["own circuit: posterior reruns within +-2 spikes"][-1] == "A"
    assert rows["own circuit: |spike count error| / oracle's"][-1] == "A"
    assert rows["random circuits: |spike count error| / oracle's"][-1] == ""
    assert main(["compare", str(reports["truth"]), str(reports["prior"])]) == 0
    text = capsys.readouterr().out
    assert "own circuit:" in text and "random circuits:" in text


def test_disabled_check_and_old_reports_show_dashes(store: str, tmp_path: Path) -> None:
    cfg = EvalConfig(**{**CFG.__dict__, "num_own_circuit": 0, "num_obs": 10})
    m = evaluate(BoxPosterior(), store, tmp_path / "off", cfg)
    assert m["own_circuit"]["num_obs"] == 0 and m["summary"]["own_circuit_error_ratio"] is None
    assert own_circuit_table(m) == []
    with pytest.raises(ValueError, match="num_own_circuit_samples=30 exceeds num_samples=20"):
        EvalConfig(num_samples=20, num_ppc_samples=10, num_own_circuit_samples=30)


# ------------------------------------------------------------------ circuit-aware posteriors
def test_circuit_aware_calls_get_each_observations_fingerprint(
    store: str,
    circuits: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    post = CircuitAwareBox()
    monkeypatch.setattr(inference, "load_posterior", lambda _path: post, raising=False)
    out = tmp_path / "aware"
    args = ["evaluate", "--posterior", "aware", "--store", store, "--out", str(out)]
    sizes = ["--n-obs", "60", "--n-samples", "20", "--n-ppc", "0", "--no-c2st", "--seed", "5"]
    assert main([*args, *sizes, "--hpd", "--circuits", circuits["full"]]) == 0
    text = capsys.readouterr().out
    assert "own circuit" in text and "random circuits" in text
    held = load_held_out(store, 60, 5)
    want = FingerprintStore.open(circuits["full"]).lookup(held.chip, held.neuron)
    np.testing.assert_array_equal(np.concatenate(post.batched), want)
    assert len(post.single) == 60  # HPD coverage: one log_prob per observation
    np.testing.assert_array_equal(post.single[7], want[7])
    m = json.loads((out / "metrics.json").read_text())
    assert m["posterior"]["circuit_aware"] and m["store"]["circuits"] == circuits["full"]
    assert m["own_circuit"]["num_obs"] == 40  # the CLI's default


def test_circuit_aware_without_circuits_or_with_an_uncovered_circuit_exits_2(
    store: str,
    circuits: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(inference, "load_posterior", lambda _p: CircuitAwareBox(), raising=False)
    args = ["evaluate", "--posterior", "aware", "--store", store, "--out", str(tmp_path / "r")]
    sizes = ["--n-obs", "60", "--n-samples", "20", "--no-c2st", "--seed", "5"]
    assert main([*args, *sizes]) == 2
    err = capsys.readouterr().err.strip()
    assert "--circuits" in err and "circuit-aware" in err and len(err.splitlines()) == 1
    assert main([*args, *sizes, "--circuits", circuits["partial"]]) == 2
    err = capsys.readouterr().err.strip()
    assert f"circuit {circuits['missing']} " in err and len(err.splitlines()) == 1
    assert "which covers chips" in err and "neurons" in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_circuits_store_of_other_references_is_refused(
    store: str, circuits: dict[str, str]
) -> None:
    post = CircuitAwareBox()
    post.circuit_references = ReferenceSet(DEFAULT_REFERENCES.references[:3])
    held = load_held_out(store, 10, 5)
    with pytest.raises(ValueError, match=r"recorded with references \[.*\], the posterior"):
        circuit_fingerprints(circuits["full"], post, held.chip, held.neuron)
    with pytest.raises(ValueError, match="not a circuits store"):
        circuit_fingerprints(store, CircuitAwareBox(), held.chip, held.neuron)
