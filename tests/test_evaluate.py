"""`inference.evaluation.evaluate`, `farm evaluate` and `farm compare` on a small real store.

The posteriors here have known answers: the prior itself (truths are drawn from the same box, so
p(theta | x) := prior is exactly calibrated and learns nothing) and a prior squeezed to 30 % of its
width around the box centre (over-confident). They implement the ``AmortizedPosterior`` contract,
so the evaluation code under test is the code that runs on trained flows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploy.cli import main
from farm.defaults import PARAMETER_NAMES, ChipModel, Protocol
from farm.prior import BoxPrior
from farm.run.runner import run_farm
from inference.evaluation.evaluate import (
    EvalConfig,
    compare_reports,
    evaluate,
    load_held_out,
    load_report,
    summary_table,
)


class BoxPosterior:
    """Uniform over the prior box scaled by ``scale`` about its centre, whatever the observation."""

    variant = "handcrafted"
    parameter_names = PARAMETER_NAMES
    trace_length = 1000
    accepts_features = True
    manifest: dict = {}

    def __init__(self, scale: float) -> None:
        self.prior = BoxPrior()
        self.protocol = Protocol()
        self.chip_model = ChipModel()
        self.fingerprint = f"box-{scale}"
        mid, half = (
            (self.prior.low + self.prior.high) / 2,
            (self.prior.high - self.prior.low) / 2 * scale,
        )
        self.lo, self.hi = mid - half, mid + half

    def sample_batched(
        self, num_samples: int, *, traces=None, features=None, seed=None
    ) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.uniform(self.lo, self.hi, size=(len(traces), num_samples, 7)).astype(np.float32)

    def log_prob(self, theta: np.ndarray, *, trace=None, features=None) -> np.ndarray:
        inside = np.all((theta >= self.lo) & (theta <= self.hi), axis=1)
        return np.where(inside, -float(np.sum(np.log(self.hi - self.lo))), -np.inf)


CFG = EvalConfig(
    num_obs=200, num_samples=200, num_ppc=6, num_ppc_samples=8, num_ppc_plot=2, c2st=False, seed=3
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("evaluate") / "test.zarr"
    run_farm(str(path), 600, seed=11, chunk_size=200, in_process=True)
    return str(path)


@pytest.fixture(scope="module")
def reports(store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reports")
    evaluate(
        BoxPosterior(1.0),
        store,
        root / "exact",
        EvalConfig(**{**CFG.__dict__, "c2st": True, "hpd": True}),
    )
    evaluate(BoxPosterior(0.3), store, root / "narrow", CFG)
    return {"exact": root / "exact", "narrow": root / "narrow"}


def test_prior_as_posterior_is_calibrated_and_uninformative(reports: dict[str, Path]) -> None:
    m = load_report(reports["exact"])
    s = m["summary"]
    assert s["verdict"] == "calibrated" and s["sbc_failed"] == 0
    assert (
        abs(s["tarp_atc"]) < 0.05
        and s["coverage_dev_mean_abs"] < 0.06
        and s["hpd_coverage_dev_mean_abs"] < 0.08
    )
    assert abs(s["contraction_mean"]) < 0.1 and s["nrmse_mean"] == pytest.approx(1.0, abs=0.12)
    assert all(
        abs(v - 0.5) < 0.1 for v in m["sbc"]["c2st_dap"].values()
    )  # data-averaged posterior == prior
    assert m["store"]["prior_matches"] and m["posterior"]["fingerprint"] == "box-1.0"
    assert set(m["versions"]) >= {"bss2_farm", "torch", "sbi", "numpy"}


def test_overconfident_posterior_is_flagged(reports: dict[str, Path]) -> None:
    s = load_report(reports["narrow"])["summary"]
    assert s["verdict"] == "over-confident"
    assert s["sbc_failed"] == 7 and s["tarp_atc"] < -0.05 and s["coverage_dev_signed"] < -0.2
    assert s["z_robust_std_mean"] > 2.0 and s["z_outside_2"] > 0.3


def test_report_files_and_predictive_checks(reports: dict[str, Path]) -> None:
    m = json.loads((reports["exact"] / "metrics.json").read_text())
    for name in (
        "sbc_ranks",
        "coverage",
        "recovery",
        "contraction_z",
        "pair",
        "ppc_traces",
        "ppc_features",
    ):
        png = reports["exact"] / m["figures"][name]
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 400_000
    ppc = m["ppc"]
    assert ppc["num_obs"] == 6 and ppc["num_samples"] == 8
    # the prior predictive against itself: same error level as the baseline drawn from the prior
    assert 0.6 < ppc["trace_rmse_ratio"] < 1.6 and ppc["trace_rmse_mv"] > 5.0
    assert set(ppc["feature_abs_z_median"]) >= {"spike_count", "v_rest_mv"}
    labels = [label for label, _ in summary_table(m)]
    assert "TARP ATC (0 ideal, <0 overconf.)" in labels


def test_held_out_selection_is_seeded_and_sorted(store: str) -> None:
    a, b = load_held_out(store, 50, seed=1), load_held_out(store, 50, seed=1)
    np.testing.assert_array_equal(a.index, b.index)
    assert np.all(np.diff(a.index) > 0) and a.theta.shape == (50, 7) and a.trace.shape == (50, 1000)
    assert not np.array_equal(a.index, load_held_out(store, 50, seed=2).index)


def test_compare_prefers_the_calibrated_variant(reports: dict[str, Path]) -> None:
    cmp = compare_reports(load_report(reports["exact"]), load_report(reports["narrow"]))
    rows = {label: (va, vb, win) for label, va, vb, win in cmp["rows"]}
    assert rows["TARP ATC (0 ideal, <0 overconf.)"][2] == "A"
    assert rows["contraction"][2] == "B"  # narrower, but the note says it is over-confident
    assert any("not calibrated (over-confident)" in n for n in cmp["notes"])
    assert [p[0] for p in cmp["parameters"]] == list(PARAMETER_NAMES)


def test_cli_compare(reports: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(reports["exact"]), str(reports["narrow"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["columns"] == ["handcrafted", "handcrafted"] and len(out["rows"]) > 10
    assert main(["compare", str(reports["exact"]), str(reports["narrow"])]) == 0
    text = capsys.readouterr().out
    assert "calibrated" in text and "over-confident" in text and "adaptation_i_bias_tau" in text


def test_cli_compare_rejects_non_report(
    tmp_path: Path, reports: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", str(reports["exact"]), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no metrics.json" in err and len(err.splitlines()) == 1
    (tmp_path / "metrics.json").write_text('{"kind": "something_else"}')
    assert main(["compare", str(tmp_path), str(reports["exact"])]) == 2
    assert "expected evaluation_report" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-obs", "1.5"], "--n-obs"),
        (["--n-obs", "5"], "num_obs=5"),
        (["--n-samples", "0"], "--n-samples"),
    ],
)
def test_cli_evaluate_rejects_bad_sizes(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(
        [
            "evaluate",
            "--posterior",
            str(tmp_path),
            "--store",
            store,
            "--out",
            str(tmp_path / "r"),
            *args,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message.replace("num_obs", "--n-obs") in err and len(err.splitlines()) == 1


def test_eval_config_validation() -> None:
    with pytest.raises(ValueError, match=r"num_samples=5 outside \[10, 10000\]"):
        EvalConfig(num_samples=5)
    with pytest.raises(ValueError, match="num_ppc_samples=50 exceeds num_samples=20"):
        EvalConfig(num_samples=20, num_ppc_samples=50)
