"""`farm evaluate` end to end: a small posterior from the real trainer, evaluated by the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.cli import main
from inference.evaluation.evaluate import load_report


@pytest.fixture(scope="module")
def trained(handcrafted_npe, npe_stores) -> tuple[Path, str]:
    """The session's handcrafted posterior (real Ray Train) and its held-out store."""
    return handcrafted_npe[0], npe_stores[1]


def test_farm_evaluate_writes_report_and_prints_summary(
    trained: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    post, test = trained
    out = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--posterior",
            str(post),
            "--store",
            test,
            "--out",
            str(out),
            "--n-obs",
            "80",
            "--n-samples",
            "100",
            "--n-ppc",
            "4",
            "--no-c2st",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "calibration verdict" in text and "TARP ATC" in text and "metrics.json" in text
    m = load_report(out)
    s = m["summary"]
    assert s["variant"] == "handcrafted" and s["num_obs"] == 80 and m["store"]["prior_matches"]
    # a trained posterior learns something from the traces (the prior-as-posterior gives NRMSE 1,
    # contraction 0)
    assert s["nrmse_mean"] < 0.95 and s["contraction_mean"] > 0.1, s
    assert abs(s["tarp_atc"]) < 0.25 and s["coverage_dev_mean_abs"] < 0.25, s
    assert m["ppc"]["num_obs"] == 4 and m["ppc"]["trace_rmse_ratio"] < 1.2, m["ppc"]
    print(json.dumps(s))
    for name in m["figures"].values():
        assert (out / name).is_file()
    assert (
        m["posterior"]["fingerprint"]
        == json.loads((post / "manifest.json").read_text())["fingerprint"]
    )


def test_farm_evaluate_json(
    trained: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    post, test = trained
    code = main(
        [
            "evaluate",
            "--posterior",
            str(post),
            "--store",
            test,
            "--out",
            str(tmp_path / "r"),
            "--n-obs",
            "20",
            "--n-samples",
            "50",
            "--n-ppc",
            "0",
            "--no-c2st",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_obs"] == 20 and summary["ppc_trace_rmse_mv"] is None


def test_farm_evaluate_bad_paths_exit_2(
    trained: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    post, test = trained
    assert (
        main(
            [
                "evaluate",
                "--posterior",
                str(tmp_path),
                "--store",
                test,
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--posterior" in err and len(err.splitlines()) == 1
    assert (
        main(
            [
                "evaluate",
                "--posterior",
                str(post),
                "--store",
                str(tmp_path / "missing.zarr"),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--store" in err and "missing.zarr" in err and len(err.splitlines()) == 1
