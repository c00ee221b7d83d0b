"""Text that crosses a trust boundary: stored labels in, terminal and CSV output out.

Labels (kernel ids, notebook paths, reasons) come from users and end up on other users' screens and
in admins' spreadsheets. They are cleaned on the way in (bounded, no control characters) and escaped
again on the way out, so that neither an old row nor a new path of entry can rewrite a terminal or
run a formula.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")


def _unsafe(char: str) -> bool:
    """Control and format characters (C0, C1, DEL, bidi overrides): what can move a cursor or hide text."""
    return unicodedata.category(char) in ("Cc", "Cf")


def strip_control(text: str) -> str:
    """``text`` without terminal escape sequences and control characters (tools colour their messages)."""
    return "".join(c for c in _ANSI.sub("", text) if c in "\t\n" or not _unsafe(c)).strip()


def clean_label(value: str, limit: int) -> str:
    """A user's label as it is stored: control characters removed, at most ``limit`` characters
    (longer ones keep their end, where a path has its file name, after an ellipsis)."""
    cleaned = " ".join(strip_control(value).split()) if any(_unsafe(c) or c in "\t\n" for c in value) else value
    return cleaned if len(cleaned) <= limit else "…" + cleaned[-(limit - 1):]


def printable(value: Any) -> Any:
    """``value`` (a string, or lists and dicts of them) safe to print on a terminal: each control or
    format character shown as its escape (``\\x1b``), nothing interpreted."""
    if isinstance(value, str):
        return "".join((f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") if _unsafe(c) else c for c in value)
    if isinstance(value, list):
        return [printable(v) for v in value]
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    return value


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: one that begins with ``=``, ``+``, ``-``, ``@``, a tab or a
    carriage return gets a leading ``'`` (OWASP's rule against formula injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
