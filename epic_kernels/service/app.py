"""The HTTP layer of ``epic-serve``: an OpenAI-compatible FastAPI app over a ``Scheduler``.

``/v1/completions`` and ``/v1/chat/completions`` (streamed as server-sent events, or whole),
``/v1/models``, ``/health`` and ``/metrics`` (Prometheus text). Requests are checked here, before
they reach the engine: a bad field is a 400 with the OpenAI error body naming it; a full queue a 429
with ``Retry-After``; a server that is shutting down a 503. Errors after the first streamed chunk
arrive as an ``error`` event (the OpenAI client raises it).
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from ..philox import MAX_SEED
from ..validate import check_config
from .protocol import ChatRequest, CompletionRequest, error_body
from .scheduler import Fail, Finish, Job, Overloaded, Settings, ShuttingDown, Token


class BadRequest(Exception):
    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


class _ClientGone(Exception):
    pass


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param), status_code=status, headers=headers)


def create_app(scheduler, tokenizer, model_name: str, *, vocab: int, max_context: int, max_tokens: int,
               request_timeout: float | None = None, engine_check=None) -> FastAPI:
    """The app. ``max_context``: the most prompt + generated tokens of one request; ``max_tokens``:
    the most generated tokens one request may ask for (and the chat default); ``engine_check(body)``:
    ``(field, why)`` for a request the engine cannot run (None: it can)."""
    app = FastAPI(title="epic-serve", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            return _error(400, f"the request body is not valid JSON: {err.get('msg')}", param=None)
        # pydantic names union members in the location (e.g. "prompt.str"): keep the field path
        param = ".".join(p for p in loc if not p.startswith(("str", "list[", "int", "function-")))
        return _error(400, f"{param or 'body'}: {err.get('msg')}", param=param or None)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), "not_found_error" if exc.status_code == 404 else
                      "invalid_request_error")

    @app.get("/health")
    async def health():
        if scheduler.error is not None or not scheduler.thread.is_alive():
            return _error(503, "the engine is not running", "service_unavailable")
        if scheduler.draining_until is not None:
            return _error(503, "the server is shutting down", "service_unavailable")
        return {"status": "ok", "running": scheduler.running(), "waiting": len(scheduler.waiting)}

    @app.get("/metrics")
    async def metrics():
        return Response(scheduler.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "epic_kernels"}]}

    def _check(body, prompt: list[int], prompt_field: str) -> int:
        """The request's max_tokens, after every check that needs the prompt."""
        if body.model != model_name:
            raise BadRequest("model", f"model {body.model!r} is not served here (GET /v1/models lists {model_name!r})")
        bad = body.unsupported() or (engine_check(body) if engine_check is not None else None)
        if bad is not None:
            raise BadRequest(*bad)
        want = getattr(body, "max_completion_tokens", None) or body.max_tokens
        field = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        if want is None:
            want = max_tokens if isinstance(body, ChatRequest) else 16      # the OpenAI API's defaults
            want = min(want, max(max_context - len(prompt), 1))
        elif want > max_tokens:
            raise BadRequest(field, f"{field} is {want}; this server generates at most {max_tokens} tokens a request")
        if not prompt:
            raise BadRequest(prompt_field, "the prompt is empty")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise BadRequest(prompt_field, f"token ids must lie in [0, {vocab})")
        if len(prompt) + want > max_context:
            raise BadRequest(prompt_field, f"the prompt has {len(prompt)} tokens and {want} more were asked for: "
                                           f"{len(prompt) + want} is over this server's context of {max_context} tokens")
        try:
            check_config(Settings(body.epic_alpha, body.epic_horizon, body.epic_rollouts, body.epic_rollout_top_k,
                                  body.top_k, body.top_p).config())
        except ValueError as err:
            name = str(err).split(" ")[0]
            raise BadRequest(f"epic_{name}" if name in ("alpha", "horizon", "rollouts", "rollout_top_k") else None,
                             str(err)) from None
        return want

    async def _next(queue: asyncio.Queue, request: Request, job: Job):
        """The job's next event, or ``_ClientGone`` (the job cancelled) if the client went away."""
        get = asyncio.ensure_future(queue.get())
        while True:
            done, _ = await asyncio.wait({get}, timeout=0.2)
            if done:
                return get.result()
            if await request.is_disconnected():
                get.cancel()
                scheduler.cancel(job)
                raise _ClientGone()

    async def _serve(request: Request, body, prompt: list[int], prompt_field: str, chat: bool):
        try:
            want = _check(body, prompt, prompt_field)
        except BadRequest as err:
            return _error(400, str(err), param=err.param)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(prompt=prompt, settings=Settings(body.epic_alpha, body.epic_horizon, body.epic_rollouts,
                                                   body.epic_rollout_top_k, body.top_k, body.top_p),
                  seed=body.seed if body.seed is not None else secrets.randbelow(MAX_SEED), max_tokens=want,
                  deliver=lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev), stop=body.stop_list(),
                  entropies=body.epic_entropies, ignore_eos=body.ignore_eos, timeout=request_timeout)
        try:
            scheduler.submit(job)
        except Overloaded as err:
            return _error(429, str(err), "rate_limit_error", headers={"Retry-After": str(err.retry_after)})
        except ShuttingDown as err:
            return _error(503, str(err), "service_unavailable")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        try:
            first = await _next(queue, request, job)
        except _ClientGone:
            return Response(status_code=499)
        if isinstance(first, Fail):
            return _error(first.status, first.message, first.kind)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(rid, first, queue, job, chat, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, event = [], first
        while True:
            if isinstance(event, Token):
                text.append(event.text)
            elif isinstance(event, Finish):
                break
            else:
                return _error(event.status, event.message, event.kind)
            try:
                event = await _next(queue, request, job)
            except _ClientGone:
                return Response(status_code=499)
        content = "".join(text)
        choice = ({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": event.reason,
                   "logprobs": None} if chat else
                  {"index": 0, "text": content, "finish_reason": event.reason, "logprobs": None})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model_name, "choices": [choice], "usage": event.usage}

    def _chunk(rid, chat, delta: str | None, reason: str | None, role: bool = False) -> str:
        if chat:
            d = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
            choice = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
        obj = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
               "model": model_name, "choices": [choice]}
        return f"data: {json.dumps(obj)}\n\n"

    async def _stream(rid, first, queue, job, chat: bool, include_usage: bool):
        finished = False
        try:
            if chat:
                yield _chunk(rid, chat, None, None, role=True)
            event = first
            while True:
                if isinstance(event, Token):
                    if event.text:
                        yield _chunk(rid, chat, event.text, None)
                elif isinstance(event, Finish):
                    finished = True
                    yield _chunk(rid, chat, None, event.reason)
                    if include_usage:
                        usage = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                                 "created": int(time.time()), "model": model_name, "choices": [],
                                 "usage": event.usage}
                        yield f"data: {json.dumps(usage)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                else:
                    finished = True
                    yield f"data: {json.dumps(error_body(event.message, event.kind))}\n\n"
                    return
                event = await queue.get()
        finally:
            if not finished:             # the client went away (the response task was cancelled)
                scheduler.cancel(job)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        prompt = body.single_prompt()
        ids = prompt if isinstance(prompt, list) else tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return await _serve(request, body, list(ids), "prompt", chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatRequest):
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        if getattr(tokenizer, "chat_template", None):
            enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        else:                            # no template: the messages' text, one per line
            ids = tokenizer("\n".join(m["content"] for m in messages), add_special_tokens=False)["input_ids"]
        return await _serve(request, body, list(ids), "messages", chat=True)

    return app
