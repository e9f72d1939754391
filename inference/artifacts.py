"""Artifact directories: JSON manifest + ``torch.save``'d state dict, versioned, no pickle on load.

A directory holds ``manifest.json`` (architecture, prior, feature names and standardisation,
protocol, chip model, store fingerprint, versions, metrics) and ``weights.pt`` (a state dict of
tensors only, so ``torch.load(weights_only=True)`` reads it). Loading checks format and emulator
version and, when the caller says which protocol it records under, that protocol.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from farm.defaults import EMULATOR_VERSION, Protocol
from farm.versions import package_version
from inference.documents import ARTIFACT_FORMAT_VERSION, ArtifactManifest, read_document
from inference.errors import ArtifactError

MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
#: Bump (in inference.documents) when the manifest or weight layout changes; older artifacts are
#: then refused.
FORMAT_VERSION = ARTIFACT_FORMAT_VERSION


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become None; tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return jsonable(value.item())
    return value


def write_artifact(
    directory: str | Path, kind: str, state_dict: dict[str, torch.Tensor], manifest: dict[str, Any]
) -> Path:
    """Save weights and a manifest stamped with kind, versions and a content fingerprint.

    Returns:
        The manifest path.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, d / WEIGHTS)
    weights_sha = file_sha256(d / WEIGHTS)
    body = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "package_version": package_version(),
        "emulator_version": EMULATOR_VERSION,
        **manifest,
    }
    ident = {
        k: body.get(k)
        for k in (
            "kind",
            "architecture",
            "prior",
            "standardization",
            "protocol",
            "chip_model",
            "feature_names",
        )
    }
    body["weights"] = {"file": WEIGHTS, "sha256": weights_sha}
    body["fingerprint"] = hashlib.sha256(
        (json.dumps(jsonable(ident), sort_keys=True) + weights_sha).encode()
    ).hexdigest()[:16]
    path = d / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(body), indent=2))
    tmp.replace(path)
    return path


def read_artifact(
    directory: str | Path, kind: str, protocol: Protocol | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Manifest and weights of an artifact, after compatibility checks.

    Args:
        directory: written by :func:`write_artifact`.
        kind: the expected kind (``npe_posterior``, ``restriction_classifier``).
        protocol: if given, the artifact must have been trained on this stimulus protocol.

    Raises:
        ArtifactError: (a ValueError) missing files, another kind, format or emulator version,
            another protocol, or weights that do not match the manifest's checksum.
    """
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"artifact={str(d)!r} has no {MANIFEST}; pass a directory written by `farm train`"
        )
    m = read_document(path, ArtifactManifest, kind=kind).to_dict()
    if m.get("protocol") is None:
        m["protocol"] = (
            Protocol().to_dict()
        )  # artifacts written before protocols were recorded: the step
    try:
        have = Protocol.from_dict(m["protocol"])
    except ValueError as e:
        raise ArtifactError(f"{path}: protocol {e}") from None
    if m.get("emulator_version") != EMULATOR_VERSION:
        raise ArtifactError(
            f"{path}: trained on emulator_version={m.get('emulator_version')!r}, "
            f"this farm simulates {EMULATOR_VERSION}: retrain on a new store"
        )
    if protocol is not None and have != protocol:
        raise ArtifactError(
            f"{path}: trained on protocol {have.label} {m['protocol']}, "
            f"incompatible with the requested {protocol.label} {protocol.to_dict()}"
        )
    wpath = d / m.get("weights", {}).get("file", WEIGHTS)
    if not wpath.is_file():
        raise ArtifactError(f"artifact={str(d)!r} has no {wpath.name}")
    sha = m.get("weights", {}).get("sha256")
    if sha and file_sha256(wpath) != sha:
        raise ArtifactError(
            f"{wpath}: checksum differs from the manifest; the artifact is corrupt or was edited"
        )
    state = torch.load(wpath, weights_only=True, map_location="cpu")
    return m, state
