"""Serving the trained posterior: a Ray Serve application over HTTP, its CLI and cluster deployment files.

Modules: ``deploy.schemas`` (pydantic request/response bodies), ``deploy.service`` (the Serve
deployment and FastAPI ingress), ``deploy.summaries`` (mean/std/interval/MAP from draws),
``deploy.launch`` (``farm serve``), ``deploy.client`` (``farm query``). Files: ``serve_config.yaml``,
``cluster.yaml``, ``kuberay/``, ``Dockerfile`` (docs/cluster.md, docs/http-api.md).

Names are imported lazily so ``import deploy`` does not start Ray Serve's imports.
"""

from __future__ import annotations

from farm.lazy import lazy_exports

__all__ = ["APP_NAME", "PosteriorClient", "PosteriorService", "build_app", "posterior_app"]

_WHERE = {
    "APP_NAME": "deploy.service",
    "PosteriorService": "deploy.service",
    "build_app": "deploy.service",
    "posterior_app": "deploy.service",
    "PosteriorClient": "deploy.client",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
