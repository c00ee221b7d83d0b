"""The OpenAI-compatible HTTP layer: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics.

Streaming answers are server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``;
``stream_options: {"include_usage": true}`` adds the usage chunk. A client that disconnects
cancels its request. Errors use OpenAI's body: ``{"error": {"message", "type", "param", "code"}}``.

With an API key (``--api-key`` / ``JUPYTER_TT_API_KEY``; ``serve()`` always sets one) every ``/v1``
route wants ``Authorization: Bearer <key>``, as vLLM's ``--api-key`` does; ``/health`` and
``/metrics`` stay open, as in vLLM, for probes and scrapers (they tell no prompt or answer).

Every field of a request is checked before it reaches the engine (bad input: 400 naming ``param``),
bodies are capped at ``MAX_BODY_BYTES``, and prompts are measured before they are tokenized, off the
event loop. A failure inside an engine step fails only that step's requests (500) and is logged.
A request never waits on an engine that cannot answer: while it waits, the engine's health is
checked every ``HEALTH_INTERVAL`` seconds, and an engine whose loop died or whose step is stuck
ends the request with 503 (``/health`` says 503 too, with the reason).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from tornado import web
from tornado.iostream import StreamClosedError

from ..errors import TTError
from .engine import Engine, EngineBusy, FinishReason, Output, PromptTooLong, SamplingError, SamplingParams
from .protocol import APIError, ChatRequest, CompletionRequest

#: The largest request body read (a prompt that fits any context is far smaller); larger: 413.
MAX_BODY_BYTES = 4 * 2**20
#: Characters a prompt may have per token of context before it is refused without tokenizing it.
#: Real text runs 3 to 5 characters a token; 16 leaves room for long runs (whitespace, digits).
MAX_CHARS_PER_TOKEN = 16
#: Tokenizing runs here, never on the HTTP event loop.
_TOKENIZE = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jupyter-tt-tokenize")

#: How often a request that waits for its next token looks at the engine's health.
HEALTH_INTERVAL = 1.0

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, engine: Engine):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("jupyter_tt_requests", "Requests by endpoint and outcome", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("jupyter_tt_prompt_tokens", "Prompt tokens read", registry=r)
        self.generation_tokens = Counter("jupyter_tt_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("jupyter_tt_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("jupyter_tt_time_per_output_token_seconds", "Time per output token after the first", buckets=LATENCY_BUCKETS, registry=r)
        Gauge("jupyter_tt_requests_running", "Requests in the running batch", registry=r).set_function(lambda: engine.num_running)
        Gauge("jupyter_tt_requests_waiting", "Requests waiting to start", registry=r).set_function(lambda: engine.num_waiting)
        Gauge("jupyter_tt_kv_cache_usage", "Fraction of KV cache blocks in use", registry=r).set_function(lambda: engine.cache_usage)


class ServingApp:
    """What the handlers share: the engine, the model's name and tokenizer, metrics."""

    def __init__(self, engine: Engine, model_name: str, backend: str = "torch", api_key: str | None = None):
        self.engine = engine
        self.api_key = api_key or None
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.backend = backend
        self.created = int(time.time())
        self.metrics = Metrics(engine)

    def web_app(self, base_path: str = "") -> web.Application:
        kw = {"app": self}
        return web.Application(
            [
                (base_path + r"/v1/models", ModelsHandler, kw),
                (base_path + r"/v1/completions", CompletionsHandler, kw),
                (base_path + r"/v1/chat/completions", ChatHandler, kw),
                (base_path + r"/health", HealthHandler, kw),
                (base_path + r"/metrics", MetricsHandler, kw),
            ],
            default_handler_class=NotFoundHandler,
            default_handler_args=kw,
        )


@web.stream_request_body  # prepare() runs once the headers are in: a request without the key is refused unread
class BaseHandler(web.RequestHandler):
    #: Whether the route wants the API key (the /v1 routes; /health and /metrics do not, as in vLLM).
    keyed = True

    def initialize(self, app: ServingApp):
        self.app = app

    def data_received(self, chunk: bytes) -> None:
        pass  # routes without a body: whatever is sent is dropped as it comes

    def prepare(self):
        if self.keyed and self.app.api_key:
            given = self.request.headers.get("Authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.app.api_key}".encode()):
                raise APIError(401, "this server wants its API key: send Authorization: Bearer <key> (the handle's "
                                    "llm.api_key, or the server's --api-key / JUPYTER_TT_API_KEY)", code="invalid_api_key")

    def _handle_request_exception(self, e):
        if isinstance(e, APIError):
            if not self._headers_written:
                self.send_error_for(e)
            return
        super()._handle_request_exception(e)

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            body = {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            body = {"message": exc.log_message, "type": "invalid_request_error", "param": None, "code": None}
        else:
            body = {"message": self._reason, "type": "server_error", "param": None, "code": None}
        self.finish(json.dumps({"error": body}))

    def send_error_for(self, error: APIError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.write_error(error.status, exc_info=(type(error), error, None))


class NotFoundHandler(BaseHandler):
    keyed = False

    def prepare(self):
        raise APIError(404, f"no such endpoint {self.request.path}: use /v1/models, /v1/completions or /v1/chat/completions", code="not_found")


class HealthHandler(BaseHandler):
    keyed = False

    def get(self):
        problem = self.app.engine.health()
        if problem:
            self.set_status(503)
            self.finish(json.dumps({"status": "unavailable", "model": self.app.model_name, "message": problem}))
            return
        self.finish(json.dumps({"status": "ok", "model": self.app.model_name}))


class MetricsHandler(BaseHandler):
    keyed = False

    def get(self):
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.app.metrics.registry))


class ModelsHandler(BaseHandler):
    def get(self):
        model = {
            "id": self.app.model_name, "object": "model", "created": self.app.created, "owned_by": "jupyter-tt",
            "max_model_len": self.app.engine.max_model_len, "backend": self.app.backend,
        }
        self.finish(json.dumps({"object": "list", "data": [model]}))


@web.stream_request_body
class GenerateHandler(BaseHandler):
    """Shared by completions and chat: parse, run through the engine, answer or stream.

    The body is read as it arrives: past ``MAX_BODY_BYTES`` it is dropped as it comes and the
    request gets 413, so an oversized body costs no memory and the client still reads the answer."""

    endpoint = ""
    id_prefix = ""  # of response ids: "cmpl", "chatcmpl"
    request_id: str | None = None  # set while the engine works on it: a disconnect cancels it
    response_id = ""

    @property
    def chunk_object(self) -> str:
        """The ``object`` of an answer or a stream's chunk (each endpoint names its own)."""
        raise NotImplementedError

    def chunk(self, text: str, finish_reason: str | None) -> dict:
        """One streamed chunk of this endpoint's shape."""
        raise NotImplementedError

    def choice(self, text: str, finish_reason: str | None) -> dict:
        """The whole answer's choice, of this endpoint's shape."""
        raise NotImplementedError

    def prepare(self) -> None:
        super().prepare()
        self._chunks: list[bytes] = []
        self._size = 0

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= MAX_BODY_BYTES:
            self._chunks.append(chunk)
        else:
            self._chunks = []

    def _handle_request_exception(self, e):
        if isinstance(e, APIError):
            self.app.metrics.requests.labels(self.endpoint, str(e.status)).inc()
        super()._handle_request_exception(e)

    def on_connection_close(self):
        if self.request_id:
            self.app.engine.cancel(self.request_id)

    def body(self) -> object:
        """The request's JSON (its checks are ``protocol.py``'s); 413 past MAX_BODY_BYTES."""
        if self._size > MAX_BODY_BYTES:
            raise APIError(413, f"the request body has {self._size} bytes, more than this server reads "
                                f"({MAX_BODY_BYTES}): send a shorter prompt")
        try:
            body = json.loads(b"".join(self._chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})") from None
        except RecursionError:
            raise APIError(400, "the request body nests JSON too deeply") from None
        return body

    def check_length(self, chars: int, param: str) -> None:
        """Refuse a prompt too long for the context by its length alone, before tokenizing it."""
        limit = self.app.engine.max_model_len * MAX_CHARS_PER_TOKEN
        if chars > limit:
            raise APIError(400, f"the prompt has {chars} characters, more than fit this model's context of "
                                f"{self.app.engine.max_model_len} tokens: shorten it", param=param, code="context_length_exceeded")

    async def tokenize(self, fn, *args, **kwargs) -> list[int]:
        return await asyncio.get_running_loop().run_in_executor(_TOKENIZE, lambda: fn(*args, **kwargs))

    async def generate(self, prompt_ids: list[int], params: SamplingParams, stream: bool, include_usage: bool, prompt_param: str):
        app = self.app
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Output] = asyncio.Queue()
        arrival = time.monotonic()
        self.request_id = self.response_id = f"{self.id_prefix}-{secrets.token_hex(12)}"

        def deliver(out: Output) -> None:  # from the engine's thread
            loop.call_soon_threadsafe(queue.put_nowait, out)

        try:
            app.engine.add_request(prompt_ids, params, deliver, self.request_id)
        except PromptTooLong as e:
            raise APIError(400, str(e), param=prompt_param, code="context_length_exceeded") from None
        except SamplingError as e:
            raise APIError(400, str(e), param=e.param) from None
        except EngineBusy as e:
            raise APIError(429, str(e), type_="rate_limit_error") from None
        except TTError as e:
            raise APIError(400, str(e)) from None
        app.metrics.prompt_tokens.inc(len(prompt_ids))
        if stream:
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-cache")
        text: list[str] = []
        first_token_at: float | None = None
        out: Output | None = None
        failure: APIError | None = None
        while True:
            try:
                out = await self.next_output(queue)
            except APIError as e:
                failure = e
                break
            if first_token_at is None and (out.token_ids or out.text):
                first_token_at = time.monotonic()
                app.metrics.ttft.observe(first_token_at - arrival)
            if out.finish_reason is FinishReason.ERROR:
                failure = APIError(500, f"the engine failed on this request ({out.error}); it goes on serving others: retry",
                                   type_="server_error")
                break
            text.append(out.text)
            if stream and (out.text or out.finished):
                try:
                    await self.send_chunk(self.chunk(out.text, out.finish_reason if out.finished else None))
                except StreamClosedError:
                    app.engine.cancel(self.response_id)
                    return
            if out.finished:
                break
        self.request_id = None
        if failure:
            app.metrics.requests.labels(self.endpoint, str(failure.status)).inc()
            if stream and self._headers_written:  # a stream already under way: an error event, as vLLM sends
                body = {"message": failure.message, "type": failure.type, "param": None, "code": failure.code}
                self.write(f"data: {json.dumps({'error': body})}\n\n")
                self.finish()
                return
            raise failure
        assert out is not None  # the loop ends on a finished output or a failure
        done = time.monotonic()
        if out.completion_tokens > 1 and first_token_at is not None:
            app.metrics.tpot.observe((done - first_token_at) / (out.completion_tokens - 1))
        app.metrics.generation_tokens.inc(out.completion_tokens)
        app.metrics.requests.labels(self.endpoint, "200").inc()
        usage = {
            "prompt_tokens": len(prompt_ids), "completion_tokens": out.completion_tokens,
            "total_tokens": len(prompt_ids) + out.completion_tokens,
        }
        if stream:
            if include_usage:
                await self.send_chunk({**self.envelope(), "choices": [], "usage": usage})
            self.write("data: [DONE]\n\n")
            self.finish()
        else:
            self.finish(json.dumps({**self.envelope(), "choices": [self.choice("".join(text), out.finish_reason)], "usage": usage}))

    async def next_output(self, queue: asyncio.Queue) -> Output:
        """The engine's next output for this request; APIError 503 (the request cancelled) if the engine
        cannot give one: its loop died, or a step is stuck."""
        while True:
            try:
                return await asyncio.wait_for(queue.get(), timeout=HEALTH_INTERVAL)
            except asyncio.TimeoutError:
                problem = self.app.engine.health()
                if problem:
                    if self.request_id:
                        self.app.engine.cancel(self.request_id)
                    raise APIError(503, f"{problem}: this request was ended; retry later", type_="server_error",
                                   code="engine_unavailable") from None

    async def send_chunk(self, data: dict) -> None:
        self.write(f"data: {json.dumps(data)}\n\n")
        await self.flush()

    def envelope(self) -> dict:
        return {"id": self.response_id, "object": self.chunk_object, "created": int(time.time()), "model": self.app.model_name}


class CompletionsHandler(GenerateHandler):
    endpoint, id_prefix = "completions", "cmpl"

    @property
    def chunk_object(self):
        return "text_completion"

    async def post(self):
        request = CompletionRequest.parse(self.body(), model_name=self.app.model_name)
        if isinstance(request.prompt, str):
            self.check_length(len(request.prompt), "prompt")
            ids = await self.tokenize(self.app.tokenizer.encode, request.prompt, add_special_tokens=False)
        else:
            ids = request.prompt
        await self.generate(ids, request.sampling_params(default_max_tokens=16), request.stream, request.include_usage, "prompt")

    def chunk(self, text: str, finish_reason: str | None) -> dict:
        return {**self.envelope(), "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}

    def choice(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


class ChatHandler(GenerateHandler):
    endpoint, id_prefix = "chat", "chatcmpl"
    role_sent = False

    @property
    def chunk_object(self):
        return "chat.completion.chunk" if self.streaming else "chat.completion"

    async def post(self):
        request = ChatRequest.parse(self.body(), model_name=self.app.model_name)
        if not getattr(self.app.tokenizer, "chat_template", None):
            raise APIError(400, f"{self.app.model_name} has no chat template: use /v1/completions", param="messages")
        self.check_length(sum(len(m.content) for m in request.messages), "messages")
        ids = await self.tokenize(self.app.tokenizer.apply_chat_template, request.as_dicts(), add_generation_prompt=True,
                                  tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        params = request.sampling_params(default_max_tokens=max(self.app.engine.max_model_len - len(ids), 1))
        self.streaming = request.stream
        await self.generate(ids, params, self.streaming, request.include_usage, "messages")

    def chunk(self, text: str, finish_reason: str | None) -> dict:
        delta = {"content": text} if text else {}
        if not self.role_sent:
            delta = {"role": "assistant", **delta}
            self.role_sent = True
        return {**self.envelope(), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    def choice(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish_reason}
