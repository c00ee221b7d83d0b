"""The scheduler service's wire format: one JSON object per line, over a Unix stream socket.

A request is ``{"id": N, "op": "submit", "args": {...}}``; its answer ``{"id": N, "result": ...}``
or ``{"id": N, "error": {"type": "RequestError", "message": "...", "status": 409}}``. Leases and
waiting requests, usage records and pending resets travel tagged (``{"$lease": {...}}``,
``{"$waiting": {...}}``, ``{"$usage": {...}}``, ``{"$reset": {...}}``) so that the client
hands its callers the same dataclasses the scheduler returns. Nothing here says who the caller is:
the service takes that from the socket (``SO_PEERCRED``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from .. import errors
from .scheduler import Lease, LeasedDevice, PendingReset, UsageRecord, Waiting

#: The longest line either side accepts (a report of many devices is far below it).
MAX_LINE = 1 << 20

#: Errors that cross the socket as themselves; anything else arrives as a TTError.
ERRORS = {cls.__name__: cls for cls in (errors.TTError, errors.ConfigError, errors.RequestError, errors.WaitTimeout,
                                        errors.LeaseError, errors.SchedulerUnavailable)}


def encode(value: Any) -> Any:
    """A result as JSON-able data."""
    if isinstance(value, Lease):
        return {"$lease": asdict(value)}
    if isinstance(value, Waiting):
        return {"$waiting": asdict(value)}
    if isinstance(value, UsageRecord):
        return {"$usage": asdict(value)}
    if isinstance(value, PendingReset):
        return {"$reset": asdict(value)}
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value


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
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def line(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def error_body(error: BaseException) -> dict:
    if isinstance(error, errors.TTError):
        return {"type": type(error).__name__ if type(error).__name__ in ERRORS else "TTError", "message": error.message,
                "status": error.status_code}
    return {"type": "TTError", "message": f"the scheduler service failed on this request ({type(error).__name__}): see its log",
            "status": 500}


def raise_error(body: dict) -> None:
    cls = ERRORS.get(body.get("type"), errors.TTError)
    raise cls(str(body.get("message", "the scheduler service refused the request")), status=body.get("status"))
