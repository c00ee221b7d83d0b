"""The OpenAI API's requests as typed values, each parsed and checked in one place (as vLLM's
``entrypoints/openai/protocol.py``), and the error every check raises (``APIError``: the status and
OpenAI's error body). ``openai.py`` reads bodies, tokenizes and streams; it never indexes a raw dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .engine import SamplingError, SamplingParams

#: Who may speak in a chat.
ROLES = ("system", "user", "assistant")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


@dataclass(frozen=True, kw_only=True)
class GenerateRequest:
    """What both endpoints take beside the prompt: streaming, and the sampling parameters as sent."""

    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None  # None: the endpoint's default
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0

    @staticmethod
    def _common(body: object, model_name: str) -> dict:
        """The checks every generating request passes, and its fields beside the prompt."""
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise APIError(400, 'stream_options must be an object such as {"include_usage": true}', param="stream_options")
        model = body.get("model")
        if model is not None and model != model_name:
            raise APIError(404, f"the model {model!r} does not exist: this server serves {model_name!r}", param="model",
                           code="model_not_found")
        if body.get("n", 1) not in (1, None):
            raise APIError(400, "only n=1 is supported", param="n")
        return {"stream": bool(body.get("stream")), "include_usage": bool(options.get("include_usage"))}

    @staticmethod
    def _sampling(body: dict) -> dict:
        def given(name, default):
            value = body.get(name)
            return default if value is None else value

        stop = body.get("stop") or []
        try:
            return {
                "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or None,
                "temperature": float(given("temperature", 1.0)),
                "top_p": float(given("top_p", 1.0)),
                "top_k": int(given("top_k", -1)),
                "seed": body.get("seed"),
                "stop": [stop] if isinstance(stop, str) else list(stop),
                "stop_token_ids": list(body.get("stop_token_ids") or []),
                "ignore_eos": bool(body.get("ignore_eos", False)),
                "min_tokens": int(body.get("min_tokens", 0) or 0),
            }
        except (TypeError, ValueError) as e:
            raise APIError(400, f"bad sampling parameter: {e}") from None

    def sampling_params(self, default_max_tokens: int) -> SamplingParams:
        """The engine's parameters, checked; 400 naming the parameter otherwise."""
        params = SamplingParams(
            max_tokens=self.max_tokens or default_max_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos, min_tokens=self.min_tokens,
        )
        try:
            return params.check()
        except SamplingError as e:
            raise APIError(400, str(e), param=e.param) from None
        except (TypeError, ValueError) as e:
            raise APIError(400, f"bad sampling parameter: {e}") from None


@dataclass(frozen=True, kw_only=True)
class CompletionRequest(GenerateRequest):
    """``POST /v1/completions``: one prompt, as text or as token ids."""

    prompt: str | list[int]

    @classmethod
    def parse(cls, body: object, *, model_name: str) -> CompletionRequest:
        common = cls._common(body, model_name)
        assert isinstance(body, dict)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if not (isinstance(prompt, str) and prompt) and not (
                isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt)):
            raise APIError(400, "prompt must be a non-empty string or a list of token ids (one prompt per request)",
                           param="prompt")
        return cls(prompt=prompt, **common, **cls._sampling(body))


@dataclass(frozen=True, kw_only=True)
class ChatMessage:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True, kw_only=True)
class ChatRequest(GenerateRequest):
    """``POST /v1/chat/completions``: a conversation of text messages."""

    messages: list[ChatMessage]

    @classmethod
    def parse(cls, body: object, *, model_name: str) -> ChatRequest:
        common = cls._common(body, model_name)
        assert isinstance(body, dict)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
        ):
            raise APIError(400, "messages must be a non-empty list of {role: system|user|assistant, content: string}",
                           param="messages")
        return cls(messages=[ChatMessage(role=m["role"], content=m["content"]) for m in messages], **common,
                   **cls._sampling(body))

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as a chat template reads them."""
        return [{"role": m.role, "content": m.content} for m in self.messages]
