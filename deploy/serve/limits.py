"""Bounds of the posterior service that live outside the model: body size, load shedding, deadlines.

Why a module of its own: the same body cap is enforced twice, once in Serve's HTTP proxy (so an
oversized body is refused from its ``Content-Length`` header before the proxy buffers it, through
Serve's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` hook) and once in the replica, which also
counts chunked bodies that carry no ``Content-Length``. (FastAPI's own ``max_body_size`` answers a
plain-text 413 that bypasses the app's JSON error handlers, hence this small middleware.) The proxy
imports this module, so it must stay free of torch and of ``deploy.serve.app``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deploy.serve.schemas import MAX_BODY_BYTES

#: Serve reads this variable in the proxy actor; ``farm serve`` sets it before starting a local Ray.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "deploy.serve.limits:proxy_middlewares"
#: Seconds a client is told to wait (``Retry-After``) when a replica or the proxy queue is full.
RETRY_AFTER_S = 1


def too_large_body(length: int | str) -> bytes:
    """The JSON body of a 413: one line naming the size and the cap."""
    message = (
        f"body: {length} bytes exceeds the limit of {MAX_BODY_BYTES} bytes "
        "(docs/http-api.md, Limits)"
    )
    return json.dumps(
        {"detail": [{"loc": ["body"], "msg": message, "type": "too_large"}], "message": message}
    ).encode()


class ContentLengthLimit:
    """Pure ASGI middleware: answer 413 from the request headers alone, never touching the body.

    Args:
        app: the wrapped ASGI app (Serve's proxy).
        max_body_bytes: the largest ``Content-Length`` let through.
        count_stream: also count the bytes of a body without ``Content-Length`` (in the replica; the
            proxy reads bodies in a task of its own, where a raise would not become an answer).
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES, count_stream: bool = False
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.count_stream = count_stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if (
                length is not None
                and length.strip().isdigit()
                and int(length) > self.max_body_bytes
            ):
                body = too_large_body(int(length))
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": 413, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        if not self.count_stream or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if (
                received > self.max_body_bytes
            ):  # FastAPI re-raises HTTPException from body reading: a 413 handler answers
                raise HTTPException(413, detail="streamed body")
            return message

        await self.app(scope, counted, send)


def proxy_middlewares() -> list[Any]:
    """Middlewares for Serve's HTTP proxy (the callback named by ``PROXY_CALLBACK``)."""
    return [Middleware(ContentLengthLimit, max_body_bytes=MAX_BODY_BYTES)]
