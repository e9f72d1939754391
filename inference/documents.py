"""Versioned JSON documents (artifact manifest, restricted prior, evaluation report), one reader.

Each document is a pydantic model naming its ``kind`` and the ``format_version`` this package
reads; fields it does not name pass through (``extra="allow"``), so documents written by earlier
code of the same format version load unchanged. ``read_document`` turns every way a file can be
wrong (missing, not JSON, another kind, another version, a bad field) into one ``ArtifactError``
line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from farm.prior import RESTRICTED_FORMAT_VERSION
from inference.errors import ArtifactError

#: Bump when the manifest or weight layout changes; older artifacts are then refused with a message.
ARTIFACT_FORMAT_VERSION = "1"
REPORT_FORMAT_VERSION = "1"


class Document(BaseModel):
    """A versioned JSON document: ``kind`` + ``format_version``, other fields kept as written."""

    model_config = ConfigDict(extra="allow", frozen=True)
    KINDS: ClassVar[tuple[str, ...]] = ()
    FORMAT_VERSION: ClassVar[str] = "1"
    #: what to do about a foreign or outdated file, appended to the error
    REMEDY: ClassVar[str] = ""

    kind: str
    format_version: str

    def to_dict(self) -> dict[str, Any]:
        """The document's fields as read, extra fields included (values not re-encoded)."""
        return self.model_dump(exclude_unset=True)


class ArtifactManifest(Document):
    """``manifest.json`` of a `farm train` artifact (``inference.artifacts``)."""

    KINDS = ("npe_posterior", "restriction_classifier")
    FORMAT_VERSION = ARTIFACT_FORMAT_VERSION
    REMEDY = "retrain with `farm train`"

    emulator_version: str
    package_version: str | None = None
    fingerprint: str | None = None
    weights: dict[str, Any] = {}


class RestrictedPriorDocument(Document):
    """``restricted_prior.json`` written by `farm train classifier` (``farm.prior`` reads it)."""

    KINDS = ("restricted_prior",)
    FORMAT_VERSION = RESTRICTED_FORMAT_VERSION  # farm.prior writes and reads it
    REMEDY = "retrain with `farm train classifier`"

    prior: dict[str, Any]
    activation: str
    input_mean: list[float]
    input_std: list[float]
    num_layers: int
    threshold_logit: float


class EvaluationReport(Document):
    """``metrics.json`` of `farm evaluate` (``inference.evaluation.report``)."""

    KINDS = ("evaluation_report",)
    FORMAT_VERSION = REPORT_FORMAT_VERSION
    REMEDY = "re-run `farm evaluate`"

    summary: dict[str, Any]
    parameter_names: list[str]
    posterior: dict[str, Any]
    store: dict[str, Any]
    recovery: dict[str, Any]


D = TypeVar("D", bound=Document)


def read_document(path: str | Path, model: type[D], kind: str | None = None) -> D:
    """Read and check one document.

    Args:
        path: the JSON file.
        model: the document class; its ``KINDS`` and ``FORMAT_VERSION`` are what this package reads.
        kind: narrow ``KINDS`` to this one.

    Raises:
        ArtifactError: missing file, invalid JSON, another kind or format version, or a field of
            the wrong type; one line naming the file and the value.
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(
            f"{p}: no such file; {model.REMEDY or 'pass a file this package wrote'}"
        )
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{p}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(raw, dict):
        raise ArtifactError(
            f"{p}: holds a JSON {type(raw).__name__}, "
            "expected an object with kind and format_version"
        )
    kinds = (kind,) if kind else model.KINDS
    if raw.get("kind") not in kinds:
        raise ArtifactError(f"{p}: kind={raw.get('kind')!r}, expected {' or '.join(kinds)}")
    if raw.get("format_version") != model.FORMAT_VERSION:
        raise ArtifactError(
            f"{p}: format_version={raw.get('format_version')!r}; "
            f"this package reads {model.FORMAT_VERSION}: {model.REMEDY}"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ArtifactError(f"{p}: field {where}: {err['msg']}") from None


__all__ = [
    "ARTIFACT_FORMAT_VERSION",
    "REPORT_FORMAT_VERSION",
    "ArtifactManifest",
    "Document",
    "EvaluationReport",
    "RestrictedPriorDocument",
    "read_document",
]
