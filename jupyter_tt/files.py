"""Files jupyter-tt writes for a user: in a folder only they may enter, never through a planted link.

A shared host has other users who can create files in shared folders (``/tmp``) and link them to
yours. So every file goes in a private folder (0700, owned by this user, checked), and is opened with
``O_NOFOLLOW`` and created 0600: a symlink planted in its place is refused instead of followed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError


def private_dir(path: str | os.PathLike, what: str, *, setting: str = "JUPYTER_TT_STATE_DIR") -> Path:
    """``path`` as a folder only this OS user may enter (created 0700 if missing). ConfigError when it
    exists but others may write it, or it belongs to someone else: what is in it could be forged.
    ``setting``: the variable that points elsewhere, named in the error."""
    directory = Path(path)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as e:
        raise ConfigError(f"cannot create {what} {directory} ({e.strerror}): set {setting} to a folder of yours") from e
    if info.st_uid != os.getuid():
        raise ConfigError(f"{what} {directory} belongs to uid {info.st_uid}, not to this user: set {setting} to a folder of yours")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{what} {directory} is writable by other users, who could then replace or link its files: "
            f"chmod 700 {directory}, or set {setting} to a private folder"
        )
    return directory


def open_private(path: str | os.PathLike, *, append: bool = False) -> int:
    """A file descriptor for writing ``path`` (created 0600; truncated unless ``append``). ConfigError when
    ``path`` is a symlink or not a regular file of this user's: someone planted it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise ConfigError(f"cannot write {path} ({e.strerror}): is it a link someone planted? Remove it, or set "
                          f"JUPYTER_RUNTIME_DIR to a private folder") from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file of this user's: remove it, or set JUPYTER_RUNTIME_DIR to a private folder")
    if not append:
        os.ftruncate(fd, 0)
    return fd
