"""Serving the trained posterior: a Ray Serve application over HTTP, its CLI and cluster deployment files.

Modules: ``deploy.serve.schemas`` (pydantic request/response bodies), ``deploy.serve.app`` (the Serve
deployment and FastAPI ingress), ``deploy.summaries`` (mean/std/interval/MAP from draws),
``deploy.serve.launch`` (``farm serve``), ``deploy.client`` (``farm query``). Files: ``serve_config.yaml``,
``cluster.yaml``, ``kuberay/``, ``Dockerfile`` (docs/cluster.md, docs/http-api.md).

Names are imported lazily so ``import deploy`` does not start Ray Serve's imports.
"""

from __future__ import annotations

from farm.lazy import lazy_exports

__all__ = ["APP_NAME", "PosteriorClient", "PosteriorService", "build_app", "posterior_app"]

_WHERE = {
    "APP_NAME": "deploy.serve.app",
    "PosteriorService": "deploy.serve.app",
    "build_app": "deploy.serve.app",
    "posterior_app": "deploy.serve.app",
    "PosteriorClient": "deploy.client",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
