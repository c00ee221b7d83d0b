"""The scheduler service's wire format: one JSON object per line, over a Unix stream socket.

A request is ``{"id": N, "op": "submit", "args": {...}}``; its answer ``{"id": N, "result": ...}``
or ``{"id": N, "error": {"type": "RequestError", "message": "...", "status": 409}}``. Leases and
waiting requests, usage records and pending resets travel tagged (``{"$lease": {...}}``,
``{"$waiting": {...}}``, ``{"$usage": {...}}``, ``{"$reset": {...}}``, ``{"$page": {...}}``) so that the client
hands its callers the same dataclasses the scheduler returns. Nothing here says who the caller is:
the service takes that from the socket (``SO_PEERCRED``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import fields, is_dataclass
from typing import Any

from .. import errors
from .leases import Lease, LeasedDevice, Page, PendingReset, UsageRecord, Waiting

#: The longest request line the service reads.
MAX_LINE = 1 << 20
#: The longest answer line the service sends and the client reads. Lists come in pages of at most
#: 1,000 entries of bounded strings, far below it; a larger answer is replaced by an error.
MAX_ANSWER = 16 << 20

#: Elements of a list encoded in one call of the C encoder (see ``_dumps``).
DUMPS_CHUNK = 100

#: Errors that cross the socket as themselves; anything else arrives as a TTError.
ERRORS = {cls.__name__: cls for cls in (errors.TTError, errors.ConfigError, errors.RequestError, errors.WaitTimeout,
                                        errors.LeaseError, errors.SchedulerUnavailable)}


def encode(value: Any) -> Any:
    """A result as JSON-able data."""
    if isinstance(value, Lease):
        return {"$lease": _plain(value)}
    if isinstance(value, Waiting):
        return {"$waiting": _plain(value)}
    if isinstance(value, UsageRecord):
        return {"$usage": _plain(value)}
    if isinstance(value, PendingReset):
        return {"$reset": _plain(value)}
    if isinstance(value, Page):
        return {"$page": {"items": encode(value.items), "next": value.next}}
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    """``dataclasses.asdict``, without its deep copy of every value (a page holds a thousand records)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _fields(type(value))}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def decode(value: Any) -> Any:
    """The inverse of ``encode``."""
    if isinstance(value, dict):
        if "$lease" in value:
            data = dict(value["$lease"])
            data["devices"] = tuple(LeasedDevice(**d) for d in data["devices"])
            return Lease(**data)
        if "$waiting" in value:
            return Waiting(**value["$waiting"])
        if "$usage" in value:
            return UsageRecord(**{**value["$usage"], "devices": tuple(value["$usage"]["devices"])})
        if "$reset" in value:
            return PendingReset(**value["$reset"])
        if "$page" in value:
            return Page(items=decode(value["$page"]["items"]), next=value["$page"]["next"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def line(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _dumps(value: Any) -> str:
    """``json.dumps(value)``, a long list a hundred elements at a time: the C encoder holds the GIL for
    a whole call, and a page of a thousand entries in one call would hold the service's other threads
    for that long (each hundred takes a fraction of a millisecond)."""
    if isinstance(value, list) and len(value) > DUMPS_CHUNK:
        return "[" + ",".join(_dumps(value[i:i + DUMPS_CHUNK])[1:-1] for i in range(0, len(value), DUMPS_CHUNK)) + "]"
    if isinstance(value, dict) and any(isinstance(v, list) and len(v) > DUMPS_CHUNK for v in value.values()):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, separators=(",", ":"))


def answer_line(request_id: Any, result: Any) -> bytes:
    """The answer to request ``request_id``: its result, or an error if it would be over MAX_ANSWER."""
    data = f'{{"id":{json.dumps(request_id)},"result":{_dumps(encode(result))}}}\n'.encode()
    if len(data) > MAX_ANSWER:
        return line({"id": request_id, "error": error_body(errors.RequestError(
            f"the answer would be {len(data) >> 20} MiB, over the {MAX_ANSWER >> 20} MiB limit: ask for a smaller page"))})
    return data


def error_body(error: BaseException) -> dict:
    if isinstance(error, errors.TTError):
        body = {"type": type(error).__name__ if type(error).__name__ in ERRORS else "TTError", "message": error.message,
                "status": error.status_code}
        if error.retry_after:  # over a budget (429): when to ask again
            body["retry_after"] = error.retry_after
        return body
    return {"type": "TTError", "message": f"the scheduler service failed on this request ({type(error).__name__}): see its log",
            "status": 500}


def raise_error(body: dict) -> None:
    cls = ERRORS.get(str(body.get("type")), errors.TTError)
    error = cls(str(body.get("message", "the scheduler service refused the request")), status=body.get("status"))
    if isinstance(body.get("retry_after"), (int, float)):
        error.retry_after = float(body["retry_after"])
    raise error
