"""Versioned JSON documents and training tasks: one-line typed errors.

Foreign or outdated files and bad names each get one.
"""

from __future__ import annotations

import json

import pytest

from farm.errors import FarmInputError
from inference.defaults import TRAIN_DEFAULTS, TrainConfig
from inference.documents import ArtifactManifest, EvaluationReport, read_document
from inference.errors import ArtifactError
from inference.training.tasks import ClassifierTask, NPETask, get_task


def _write(tmp_path, body) -> str:
    path = tmp_path / "doc.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


MANIFEST = {
    "kind": "npe_posterior",
    "format_version": "1",
    "emulator_version": "x",
    "package_version": "0",
    "architecture": {"variant": "handcrafted"},
}


def test_a_current_manifest_reads_back_with_every_field_as_written(tmp_path) -> None:
    doc = read_document(_write(tmp_path, MANIFEST), ArtifactManifest, kind="npe_posterior")
    assert doc.to_dict() == MANIFEST  # unknown fields pass through, nothing is added


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON list"),
        (
            {**MANIFEST, "kind": "restriction_classifier"},
            "kind='restriction_classifier', expected npe_posterior",
        ),
        ({**MANIFEST, "format_version": "0"}, "format_version='0'; this package reads 1: retrain"),
        ({**MANIFEST, "emulator_version": 3}, "field emulator_version"),
    ],
)
def test_foreign_or_outdated_files_give_one_line_artifact_errors(tmp_path, body, match) -> None:
    with pytest.raises(ArtifactError, match=match) as e:
        read_document(_write(tmp_path, body), ArtifactManifest, kind="npe_posterior")
    assert isinstance(e.value, FarmInputError) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


def test_a_missing_report_names_the_file(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="no such file"):
        read_document(tmp_path / "metrics.json", EvaluationReport)


def test_tasks_by_name_or_object_and_bad_names() -> None:
    assert isinstance(get_task("classifier"), ClassifierTask)
    task = NPETask(features="summary-net")
    assert get_task(task) is task and task.fields() == ("theta", "trace")
    assert get_task("npe").fields() == ("theta", "features")
    assert NPETask(features="hybrid").fields() == ("theta", "features", "trace")
    with pytest.raises(ValueError, match="task='vae' must be one of classifier, npe"):
        get_task("vae")
    with pytest.raises(ValueError, match="features='cnn' must be one of handcrafted, summary-net"):
        NPETask(features="cnn")
    with pytest.raises(ValueError, match=r"target_recall=0.2 outside \[0.5, 1\]"):
        ClassifierTask(target_recall=0.2)


def test_training_defaults_are_the_config_defaults() -> None:
    cfg = TrainConfig(task="npe", stores=("s",), out="o")
    assert all(getattr(cfg, k) == v for k, v in TRAIN_DEFAULTS.items())
    # the command line shows and uses the same defaults (one place for the fact)
    from typer.testing import CliRunner

    from deploy.cli import app

    help_text = CliRunner().invoke(app, ["train", "npe", "--help"], terminal_width=200).output
    assert (
        f"[default: {TRAIN_DEFAULTS['epochs']}]" in help_text
        and f"[default: {TRAIN_DEFAULTS['batch_size']}]" in help_text
    )
    assert TrainConfig(**{**cfg.identity(), "out": "o"}).stores == (
        "s",
    )  # a JSON round-trip gives a list
