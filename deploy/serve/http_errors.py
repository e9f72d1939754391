"""How the posterior service answers: JSON bodies, every failure a 4xx or 503/504 with one line.

Why a module of its own: the service must never answer 500 or hang, so each way a request can fail
maps to one exception type here and one handler on the FastAPI app: a body that does not fit the
posterior (422), a body over the size cap (413), a full replica (503 with ``Retry-After``) and a
request past its deadline (504).
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from deploy.serve.limits import RETRY_AFTER_S, too_large_body


class RequestRejected(Exception):
    """A request that parsed but does not fit the served posterior (HTTP 422).

    Args:
        field: the body field named in ``loc`` and the message.
        message: one line saying what is wrong and what is allowed.
        kind: the ``type`` of the 422 detail, for clients that branch on it.
        misspecification: for an observation the posterior cannot answer, its flagged check.
    """

    def __init__(
        self,
        field: str,
        message: str,
        kind: str = "value_error",
        misspecification: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.kind = kind
        self.misspecification = misspecification


def rejection(error: Exception) -> RequestRejected:
    """The 422 for a ValueError the posterior raised on a request's observation.

    A refused observation (``deploy.serve.model_calls.Refused``: restricted prior, the
    posterior's mass lies outside the region, so the rejection loop spent its proposal budget)
    keeps its message, which names the budget, gets the detail type
    ``rejection_budget_exceeded`` and carries its misspecification check.
    """
    from deploy.serve.model_calls import Refused  # numpy only; the proxy never reaches this
    from inference.errors import RejectionBudgetExceeded  # torch-free

    message = str(error).splitlines()[0] if str(error) else "rejected by the posterior"
    if isinstance(error, Refused | RejectionBudgetExceeded):
        check = getattr(error, "misspecification", None)
        return RequestRejected("body", message, "rejection_budget_exceeded", check)
    return RequestRejected("body", message)


class ServiceOverloaded(Exception):
    """The replica holds as many model requests as it may queue (HTTP 503, ``Retry-After``)."""


class DeadlineExceeded(Exception):
    """The request waited for the model past the service's ``request_timeout_s`` (HTTP 504)."""


def unprocessable(
    errors: list[dict[str, Any]], misspecification: dict[str, Any] | None = None
) -> JSONResponse:
    """422 body: pydantic-style ``detail`` plus a one-line ``message`` naming the first bad field.

    A refused observation adds its ``misspecification`` object, as an answer would carry it.
    """
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    content: dict[str, Any] = {"detail": errors, "message": f"{where}: {first['msg']}"}
    if misspecification is not None:
        content["misspecification"] = misspecification
    return JSONResponse(status_code=422, content=content)


def _plain(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"detail": message, "message": message}, headers=headers
    )


def install_error_handlers(api: FastAPI) -> None:
    """Register the handlers above on ``api``."""

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Drop the echoed `input` (a whole trace) and `ctx` (may hold exception objects).
        errors = [
            {
                "loc": list(e.get("loc", ())),
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        return unprocessable(
            errors or [{"loc": ["body"], "msg": "invalid request", "type": "value_error"}]
        )

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 for a body it cannot even decode (bytes that are no JSON text); that
        # is a malformed request like any other, so it gets the same 422 shape.
        if exc.status_code == 400:
            return unprocessable(
                [
                    {
                        "loc": ["body"],
                        "msg": f"could not be decoded as JSON ({exc.detail})",
                        "type": "json_invalid",
                    }
                ]
            )
        if exc.status_code == 413:  # deploy.serve.limits: a streamed body that grew past the cap
            length = request.headers.get("content-length", "more than the limit of")
            return JSONResponse(
                status_code=413,
                content=json.loads(too_large_body(length)),
                headers={"connection": "close"},
            )
        return _plain(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @api.exception_handler(RequestRejected)
    async def _rejected(request: Request, exc: RequestRejected) -> JSONResponse:
        return unprocessable(
            [{"loc": ["body", exc.field], "msg": exc.message, "type": exc.kind}],
            exc.misspecification,
        )

    @api.exception_handler(ServiceOverloaded)
    async def _overloaded(request: Request, exc: ServiceOverloaded) -> JSONResponse:
        return _plain(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)})

    @api.exception_handler(DeadlineExceeded)
    async def _deadline(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return _plain(504, str(exc))


def json_response(
    body: BaseModel, started: float | None = None, drawn: float | None = None
) -> Response:
    """The model serialised once by pydantic's Rust encoder, with a ``Server-Timing`` header.

    FastAPI's default path re-validates the returned model and runs ``json.dumps`` over it;
    for 1000 draws (7000 floats) that was ~3 ms of a ~20 ms request. The ``response_model`` on
    each route still documents the schema in /docs. ``Server-Timing`` (milliseconds in the
    replica: ``draws`` waiting for and running the model, ``replica`` the whole handler) lets a
    client tell network and proxy time from model time.
    """
    content = body.model_dump_json()
    headers = {}
    if started is not None:
        now = time.perf_counter()
        parts = ([f"draws;dur={1000 * (drawn - started):.2f}"] if drawn is not None else []) + [
            f"replica;dur={1000 * (now - started):.2f}"
        ]
        headers["Server-Timing"] = ", ".join(parts)
    return Response(content=content, media_type="application/json", headers=headers)
