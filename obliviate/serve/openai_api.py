"""The HTTP endpoints: OpenAI-compatible generation and the forget requests.

- `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (any key): OpenAI's request
  and response shapes; `stream: true` sends server-sent events, one `chat.completion.chunk` (or
  `text_completion`) per text piece, a last chunk with the finish reason, then `data: [DONE]`.
  Decoding is greedy unless `temperature` > 0; `n` must be 1; fields OpenAI defines that change
  nothing here (`user`, penalties, `stream_options`, ...) are accepted and ignored, known fields of
  the wrong type are a 422. `system_fingerprint` names the adapter version served. Whether the
  guard flagged a prompt is never said: it would tell a client what is being forgotten.
- `POST /v1/forget` (admin): files the request, adds its items to the guard and returns once the
  guard holds them: `{"id", "state": "enforced", "enforce_seconds"}`.
- `GET /v1/forget/{id}` (admin): the state, its timestamped transitions and the evidence;
  `GET /v1/forget/{id}/evidence` (admin): the evidence page (HTML).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from obliviate.serve.auth import require
from obliviate.serve.engine import Outcome, Sampling

router = APIRouter()
MAX_TOKENS = 4096


# ---------------------------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------------------------


class _Sampled(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)

    def sampling(self, default_tokens: int, default_stops: list[str]) -> Sampling:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return Sampling(self.max_tokens or default_tokens, self.temperature, self.top_p,
                        [s for s in stops + default_stops if s], self.seed)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)


class CompletionRequest(_Sampled):
    prompt: str | list[str]
    echo: bool = False

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("give one prompt (a string or a list of one)")
        return self


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str | None = Field(None, min_length=1)
    answer: str | None = Field(None, min_length=1)
    text: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _kind(self) -> ItemIn:
        qa = self.question is not None or self.answer is not None
        if (qa and (self.question is None or self.answer is None or self.text is not None)) or \
                (not qa and self.text is None):
            raise ValueError("an item is {question, answer} or {text}")
        return self


class ForgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=500)
    items: list[ItemIn] = Field(min_length=1, max_length=10_000)
    requester: str = Field(min_length=1, max_length=500)
    legal_basis: str = Field(min_length=1, max_length=500)
    deadline: datetime | None = None


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def _service(request: Request):
    return request.app.state.service


def _check_model(service, name: str) -> None:
    if name != service.engine.name:
        raise HTTPException(404, f"model '{name}' is not served here (GET /v1/models)")


async def _pieces(service, ids: list[int], sampling: Sampling, outcome: Outcome) -> AsyncIterator[str]:
    """Text pieces of one generation, run on the service's threads; leaving early cancels it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    end = object()

    def work() -> None:
        try:
            for piece in service.engine.stream(ids, sampling, service.enforcement.current, outcome, cancel):
                loop.call_soon_threadsafe(queue.put_nowait, piece)
        except BaseException as exc:  # handed to the request's task, which reports it
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, end)

    loop.run_in_executor(service.executor, work)
    try:
        while (item := await queue.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _usage(outcome: Outcome) -> dict[str, int]:
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


async def _respond(service, body: _Sampled, ids: list[int], sampling: Sampling, chat: bool, prefix: str = ""):
    """The JSON response, or the SSE stream, of one generation."""
    service.engine.check_length(ids, sampling.max_tokens)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created, outcome = int(time.time()), Outcome()
    head = {"id": rid, "created": created, "model": service.engine.name,
            "system_fingerprint": f"adapter-v{service.engine.version}"}
    kind = "chat.completion" if chat else "text_completion"

    def choice(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text is not None else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    if not body.stream:
        pieces = [p async for p in _pieces(service, ids, sampling, outcome)]
        text = "".join(pieces)
        text = text.lstrip() if chat else prefix + text
        out = {"index": 0, "logprobs": None, "finish_reason": outcome.finish_reason}
        out |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        return {**head, "object": kind, "choices": [out], "usage": _usage(outcome)}

    async def events() -> AsyncIterator[str]:
        chunk = f"{kind}.chunk" if chat else kind
        started = not chat
        if chat:
            yield _sse({**head, "object": chunk, "choices": [choice("", None, first=True)]})
        elif prefix:
            yield _sse({**head, "object": chunk, "choices": [choice(prefix, None)]})
        try:
            async for piece in _pieces(service, ids, sampling, outcome):
                if not started:  # a plain-format answer starts after the space the format puts before it
                    piece = piece.lstrip()
                    started = bool(piece)
                if piece:
                    yield _sse({**head, "object": chunk, "choices": [choice(piece, None)]})
            yield _sse({**head, "object": chunk, "choices": [choice(None if chat else "", outcome.finish_reason)],
                        "usage": _usage(outcome)})
        except Exception as exc:  # headers are gone: report in the stream, in one line
            yield _sse({"error": {"message": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                  "type": "server_error", "code": None}})
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/models")
def models(request: Request, role: str = Depends(require("client"))) -> dict[str, Any]:
    service = _service(request)
    return {"object": "list", "data": [{"id": service.engine.name, "object": "model",
                                        "created": int(service.started), "owned_by": "obliviate"}]}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, role: str = Depends(require("client"))):
    service = _service(request)
    _check_model(service, body.model)
    ids = service.engine.chat_ids([m.model_dump() for m in body.messages])
    sampling = body.sampling(service.engine.fmt.max_new_tokens, service.engine.chat_stops())
    if body.max_completion_tokens and not body.max_tokens:
        sampling.max_tokens = body.max_completion_tokens
    return await _respond(service, body, ids, sampling, chat=True)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, role: str = Depends(require("client"))):
    service = _service(request)
    _check_model(service, body.model)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    ids = service.engine.text_ids(prompt)
    return await _respond(service, body, ids, body.sampling(16, []), chat=False, prefix=prompt if body.echo else "")


# ---------------------------------------------------------------------------------------------
# Forget requests
# ---------------------------------------------------------------------------------------------


@router.post("/v1/forget")
def forget(body: ForgetRequest, request: Request, role: str = Depends(require("admin"))) -> dict[str, Any]:
    from obliviate.serve.ledger import ForgetItem

    start = time.perf_counter()
    service = _service(request)
    items = [ForgetItem(question=it.question, answer=it.answer, text=it.text) for it in body.items]
    rid = service.ledger.file_request(subject=body.subject, items=items, requester=body.requester,
                                      legal_basis=body.legal_basis, deadline=body.deadline)
    service.enforcement.add(rid, body.subject, items)
    seconds = round(time.perf_counter() - start, 4)
    service.ledger.transition(rid, "enforced", seconds=seconds, guard=service.config.guard.method)
    return {"id": rid, "state": "enforced", "enforce_seconds": seconds}


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def request_json(record) -> dict[str, Any]:
    """A ledger RequestRecord as the JSON `GET /v1/forget/{id}` returns."""
    return {"id": record.id, "subject": record.subject, "requester": record.requester,
            "legal_basis": record.legal_basis, "deadline": _when(record.deadline), "state": record.state,
            "transitions": [{"state": t.state, "at": _when(t.at), "detail": t.detail} for t in record.transitions],
            "evidence": record.evidence}


@router.get("/v1/forget/{request_id}")
def forget_status(request_id: str, request: Request, role: str = Depends(require("admin"))) -> dict[str, Any]:
    from obliviate.serve.ledger import NotFound

    try:
        return request_json(_service(request).ledger.get(request_id))
    except NotFound:
        raise HTTPException(404, f"no forget request with id '{request_id[:64]}'") from None


def evidence_path(service, request_id: str) -> Path | None:
    """The evidence page of a request, when the worker has written one (ids are hex: no path tricks)."""
    if not request_id.isalnum():
        return None
    path = Path(service.config.workdir) / "evidence" / f"{request_id}.html"
    return path if path.is_file() else None


@router.get("/v1/forget/{request_id}/evidence")
def forget_evidence(request_id: str, request: Request, role: str = Depends(require("admin"))):
    path = evidence_path(_service(request), request_id)
    if path is None:
        raise HTTPException(404, f"no evidence page for request '{request_id[:64]}' (yet)")
    return FileResponse(path, media_type="text/html")
