"""The scheduler service's wire format: one JSON object per line, over a Unix stream socket.

A request is ``{"id": N, "op": "submit", "args": {...}}``; its answer ``{"id": N, "result": ...}``
or ``{"id": N, "error": {"type": "RequestError", "message": "...", "status": 409}}``. The contract's
dataclasses (``leases.py``: leases, waiting requests, usage records and totals, pending resets,
reports) travel tagged with their name (``{"$lease": {...}}``, see ``TAGS``; pages as ``{"$page": {...}}``)
and are built again from their fields' types, so that the client hands its callers the same
dataclasses the scheduler returns. Nothing here says who the caller is:
the service takes that from the socket (``SO_PEERCRED``).
"""

from __future__ import annotations

import enum
import functools
import json
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from .. import errors
from .leases import DeviceState, Lease, Page, PendingReset, Report, UsageRecord, UsageTotal, Waiting

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


#: The dataclasses that cross the socket, each tagged with its name: ``{"$lease": {...}}``.
TAGS: dict[str, type] = {"$lease": Lease, "$waiting": Waiting, "$usage": UsageRecord, "$reset": PendingReset,
                         "$report": Report, "$device_state": DeviceState, "$usage_total": UsageTotal}
_TAG_OF = {cls: tag for tag, cls in TAGS.items()}


def encode(value: Any) -> Any:
    """A result as JSON-able data."""
    tag = _TAG_OF.get(type(value))
    if tag is not None:
        return {tag: _plain(value)}
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
        if len(value) == 1:
            [(tag, data)] = value.items()
            if tag in TAGS:
                return _built(TAGS[tag], data)
            if tag == "$page":
                return Page(items=decode(data["items"]), next=data["next"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _built(kind: Any, data: Any) -> Any:
    """``data`` (``_plain``'s) as a ``kind`` again: a dataclass from its fields' types, nested ones too."""
    if data is None:
        return None
    if typing.get_origin(kind) in (types.UnionType, typing.Union):  # X | None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return tuple(_built(item, d) for d in data)
    if isinstance(kind, type) and is_dataclass(kind):
        hints = _hints(kind)
        return kind(**{k: _built(hints[k], v) for k, v in data.items()})
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(data)
    return data


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def line(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _dumps(value: Any) -> str:
    """``json.dumps(value)``, a long list a hundred elements at a time: the C encoder holds the GIL for
    a whole call, and a page of a thousand entries in one call would hold the service's other threads
    for that long (each hundred takes a fraction of a millisecond)."""
    if isinstance(value, list) and len(value) > DUMPS_CHUNK:
        return "[" + ",".join(_dumps(value[i:i + DUMPS_CHUNK])[1:-1] for i in range(0, len(value), DUMPS_CHUNK)) + "]"
    if _holds_long_list(value):  # a page arrives as {"$page": {"items": [...]}}
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value, separators=(",", ":"))


def _holds_long_list(value: Any) -> bool:
    """Is ``value`` a dict with a list longer than ``DUMPS_CHUNK`` in it, at any depth of dicts?"""
    return isinstance(value, dict) and any(
        (isinstance(v, list) and len(v) > DUMPS_CHUNK) or _holds_long_list(v) for v in value.values())


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
