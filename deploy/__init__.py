"""Serving the trained posterior: the `farm` command line, a Ray Serve app, cluster files.

Modules: ``deploy.cli`` (the typer app), ``deploy.serve`` (the Serve deployment, its FastAPI
ingress, request/response bodies, limits and ``farm serve``), ``deploy.summaries``
(mean/std/interval/MAP from draws), ``deploy.client`` (``farm query``). Files:
``serve_config.yaml``, ``cluster.yaml``, ``kuberay/``, ``Dockerfile`` (docs/cluster.md,
docs/http-api.md).

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
