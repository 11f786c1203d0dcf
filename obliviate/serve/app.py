"""The FastAPI app of `obliviate serve`: OpenAI-compatible generation, forget requests, the status page.

`create_app(config)` returns the app; its start-up (before uvicorn accepts a connection) loads the
model, opens the ledger, swaps in the adapter the ledger says is active and rebuilds the guard from
every enforced request, so the first request served is already guarded. A background thread then
polls the ledger once every `poll_seconds`: a newly published adapter is swapped in, and a request
whose adapter is now served (and which `keep_after_durable` does not keep) leaves the guard.

Errors are one line, in OpenAI's shape `{"error": {"message", "type", "code"}}`: malformed JSON is a
400, a body of the wrong shape a 422, a body over `max_request_bytes` a 413, a missing or unknown key a
401, a client key on an admin endpoint a 403. Request bodies are never logged, and a validation
message names the field, never the value sent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from obliviate.errors import NotFound, ObliviateError
from obliviate.serve.auth import KeyStore
from obliviate.serve.config import ServeConfig
from obliviate.serve.enforcement import Enforcement
from obliviate.serve.engine import Engine

log = logging.getLogger("obliviate.serve")


@dataclass
class Service:
    """Everything a request handler needs: the config, the ledger, the model, the guard and the keys."""

    config: ServeConfig
    ledger: Any
    engine: Engine
    enforcement: Enforcement
    keys: KeyStore
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(64, "generate"))
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.time)
    _refused: int = 0  # the adapter version last refused for a sha256 mismatch (logged once)

    def refresh(self) -> None:
        """Serve the ledger's active adapter, then bring the guard in line with the ledger.

        A request leaves the guard only once it is durable *and* the adapter served was trained on it
        (or `keep_after_durable` keeps it), so there is no moment when it is neither guarded nor unlearnt.
        """
        active = self.ledger.active_model()
        if active is None:
            self.engine.swap(0, None)
        elif active.version != self.engine.version:
            from obliviate.serve.evidence import sha256_dir

            if sha256_dir(active.adapter_dir) != active.adapter_sha256:
                # the files are not what the gates passed: keep serving (and guarding) as before
                if self._refused != active.version:
                    log.error("adapter version %d: its files do not match the published sha256; not served",
                              active.version)
                    self._refused = active.version
            elif self.engine.swap(active.version, active.adapter_dir, active.request_ids):
                log.info("serving adapter version %d", active.version)
        wanted = dict(self.ledger.enforced(self.config.guard.keep_after_durable))
        served = set(self.engine.request_ids)
        # only a request the served adapter was trained on may leave the guard: one filed since the ledger
        # was read above is not in it, so a concurrent POST /v1/forget is never undone here
        self.enforcement.drop([rid for rid in self.enforcement.request_ids() if rid not in wanted and rid in served])
        for rid, items in wanted.items():
            if rid not in self.enforcement.requests:
                self.enforcement.add(rid, self.ledger.get(rid).subject, items)

    def poll(self) -> None:
        while not self.stop.wait(self.config.poll_seconds):
            try:
                self.refresh()
            except Exception as exc:  # a database hiccup must not stop the poller; say it in one line
                log.warning("ledger poll failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def build_service(config: ServeConfig, engine: Engine | None = None, ledger: Any = None) -> Service:
    """The service for `config`: the model loaded (unless given), the ledger opened, the guard rebuilt."""
    from obliviate.serve.enforcement import retain_items
    from obliviate.serve.ledger import open_ledger

    ledger = ledger or open_ledger(config)
    engine = engine or Engine.load(config.model, config.prompt)
    enforcement = Enforcement(engine.base, engine.tokenizer, config.guard.method, config.guard.settings,
                              retain_items(config))
    enforcement.warm()
    service = Service(config, ledger, engine, enforcement, KeyStore(config.api_keys))
    service.refresh()
    for record in ledger.requests():  # filed before a crash, enforced now: record it
        if record.state == "received":
            ledger.transition(record.id, "enforced", seconds=0.0, rebuilt=True)
    return service


def create_app(config: ServeConfig, engine: Engine | None = None, ledger: Any = None) -> FastAPI:
    """The app for `config` (`engine`, `ledger`: already loaded ones, e.g. in tests)."""
    from obliviate.serve import openai_api, status

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = await asyncio.to_thread(build_service, config, engine, ledger)
        app.state.service = service
        poller = threading.Thread(target=service.poll, name="ledger-poll", daemon=True)
        poller.start()
        try:
            yield
        finally:
            service.stop.set()
            service.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="obliviate serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(openai_api.router)
    app.include_router(status.router)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    return app


# ---------------------------------------------------------------------------------------------
# Errors: one line, never the value sent
# ---------------------------------------------------------------------------------------------


def error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return 400, f"malformed JSON: {first.get('ctx', {}).get('error', 'cannot parse the body')}"
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return 422, f"field '{loc}': {first.get('msg', 'invalid')}"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return error(status, message, code="invalid_json" if status == 400 else "invalid_field")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
        return error(exc.status_code, str(exc.detail), kinds.get(exc.status_code, "invalid_request_error"))

    @app.exception_handler(ObliviateError)
    async def _ours(request: Request, exc: ObliviateError) -> JSONResponse:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return error(404, line, "not_found_error") if isinstance(exc, NotFound) else error(400, line)

    @app.exception_handler(Exception)
    async def _other(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return error(500, "internal error", "server_error")


class BodyLimit:
    """Refuses a body over `limit` bytes with 413: by its Content-Length, or while it is being read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:  # read the (bounded) body first, then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._too_large(scope, receive, send)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error(413, f"request body over {self.limit} bytes", code="request_too_large")
        await response(scope, receive, send)
