"""Serving the trained posterior: a Ray Serve application over HTTP, its CLI and cluster deployment files.

Modules: ``deploy.schemas`` (pydantic request/response bodies), ``deploy.service`` (the Serve
deployment and FastAPI ingress), ``deploy.summaries`` (mean/std/interval/MAP from draws),
``deploy.launch`` (``farm serve``), ``deploy.client`` (``farm query``). Files: ``serve_config.yaml``,
``cluster.yaml``, ``kuberay/``, ``Dockerfile`` (docs/cluster.md, docs/http-api.md).

Names are imported lazily so ``import deploy`` does not start Ray Serve's imports.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["APP_NAME", "PosteriorClient", "PosteriorService", "build_app", "posterior_app"]

_WHERE = {"APP_NAME": "deploy.service", "PosteriorService": "deploy.service", "build_app": "deploy.service", "posterior_app": "deploy.service", "PosteriorClient": "deploy.client"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")
