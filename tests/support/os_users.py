"""Real OS users and the scheduler service for tests.

CI runs as root: users are created with ``useradd`` (``tt-alice``, ``tt-bob``: no home, no login)
and commands run as them through ``setpriv``. They need this checkout and a Python: where the
checkout sits in a folder only root may enter (a ``mktemp -d`` clone, ``/root``), each of their
processes gets a private mount namespace in which its package and venv are bind-mounted on an open path
(``unshare``; it vanishes with the process). Where none of this can be done (not root, no
``useradd`` / ``setpriv`` / ``unshare``), the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from .jupyter_servers import stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _others_may_enter(path: str | Path) -> bool:
    """Whether a user other than root may reach ``path`` (it and every folder on its way let them through)."""
    real = Path(os.path.realpath(path))
    return all(p.stat().st_mode & 0o001 for p in [real, *real.parents])


#: Where other users see this checkout: itself, or an open folder on which, in their processes, the parts
#: they need are bind-mounted (the package, and the venv where it is inside the checkout).
BIND = not _others_may_enter(ROOT)
VIEW = Path(tempfile.mkdtemp(prefix="jupyter-tt-checkout-")) if BIND else ROOT
BOUND = [d for d in (ROOT / "jupyter_tt", Path(sys.prefix)) if d.is_relative_to(ROOT)] if BIND else []
if BIND:
    VIEW.chmod(0o755)
    for d in BOUND:  # mount points
        (VIEW / d.relative_to(ROOT)).mkdir(mode=0o755, parents=True, exist_ok=True)


def seen(path: str | Path) -> str:
    """``path`` as other users' processes see it (under VIEW where it is in the checkout)."""
    path = Path(path)
    return str(VIEW / path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _interpreter() -> tuple[str, str]:
    """(a Python other users may run, PYTHONPATH): this venv's where its interpreter is open to them; else
    the system's Python of the same version, given this venv's packages (pyenv's Python under /root, as on
    this machine kind, is root's alone). A shared host installs Python where every user reaches it."""
    site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    if _others_may_enter(sys.executable):
        return seen(sys.executable), seen(ROOT)
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if os.path.exists(system) and _others_may_enter(system):
        return system, f"{seen(ROOT)}:{seen(site)}"
    return "", ""


PYTHON, PYTHONPATH = _interpreter()


@dataclass(frozen=True)
class OSUser:
    name: str
    uid: int
    gid: int
    home: str  # a private folder of theirs, as HOME (Jupyter's data dir goes under it)

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment for their processes: nothing of root's, this checkout importable."""
        return {"PATH": "/usr/bin:/bin", "HOME": self.home, "USER": self.name, "LOGNAME": self.name,
                "PYTHONPATH": PYTHONPATH, "JUPYTER_CONFIG_PATH": seen(f"{sys.prefix}/etc/jupyter"),  # enables jupyter_tt
                **extra}

    def command(self, args: list[str], *, hidepid: bool = False) -> list[str]:
        """``args`` as root runs them to become this user: in a private mount namespace where the checkout
        is visible at VIEW (and, with ``hidepid``, /proc hides other users' processes). PIDs do not change."""
        become = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", *args]
        if not (BIND or hidepid):
            return become
        mounts = "".join(f"mount --bind {shlex.quote(str(d))} {shlex.quote(seen(d))}; " for d in BOUND)
        if hidepid:
            mounts += "mount -t proc -o hidepid=invisible proc /proc; "
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", f'set -e; {mounts}exec "$@"', "sh", *become]

    def run(self, args: list[str], *, env: dict | None = None, timeout: float = 60, check: bool = False,
            hidepid: bool = False, **kw):
        """Run ``args`` as this user; returns the CompletedProcess (text)."""
        return subprocess.run(self.command(args, hidepid=hidepid), env=env or self.env(), cwd=self.home,
                              capture_output=True, text=True, timeout=timeout, check=check, **kw)

    def python(self, code: str, **kw):
        return self.run([PYTHON, "-c", textwrap.dedent(code)], **kw)

    def tt(self, *args: str, **kw):
        """``jupyter tt ARGS`` as this user."""
        return self.run([PYTHON, "-m", "jupyter_tt.cli", *args], **kw)

    def popen(self, args: list[str], *, env: dict | None = None, hidepid: bool = False, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.command(args, hidepid=hidepid), env=env or self.env(), cwd=self.home,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def os_user(name: str) -> OSUser:
    """The OS user ``name``, created if missing; skips the test where users cannot be made or used."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create OS users with useradd and run processes as them (CI runs as root)")
    for tool in ("useradd", "setpriv", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (Debian: passwd, util-linux) to create OS users and run processes as them")
    if not PYTHON:
        pytest.skip(f"no Python that other users may run: {sys.executable} is root's alone, and there is no system Python "
                    f"{sys.version_info.major}.{sys.version_info.minor}")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--home-dir", "/nonexistent", name],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    home = Path(tempfile.mkdtemp(prefix=f"{name}-home-"))
    os.chown(home, entry.pw_uid, entry.pw_gid)
    user = OSUser(name, entry.pw_uid, entry.pw_gid, str(home))
    probe = user.python("import jupyter_tt")
    if probe.returncode != 0:
        pytest.skip(f"{name} cannot import this checkout with {PYTHON}: {probe.stderr.strip()[-300:]}")
    return user


def open_folder(prefix: str) -> Path:
    """A folder every user may enter (pytest's tmp_path is 0700): where the service's socket goes."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


class Service:
    """``jupyter tt scheduler`` as root, on a socket in an open folder; state in a private one."""

    def __init__(self, inventory: str = "simulated:n300x2", config: str | None = None, env: dict | None = None,
                 as_user: OSUser | None = None, hidepid: bool = False):
        """``as_user``: run as that (dedicated) user instead of root. ``hidepid``: in a mount namespace whose
        /proc hides other users' processes (``hidepid=invisible``), as on hardened hosts."""
        self.as_user, self.hidepid = as_user, hidepid
        self.folder = open_folder("jupyter-tt-service-")
        if as_user:
            os.chown(self.folder, as_user.uid, as_user.gid)
        self.socket = self.folder / "scheduler.sock"
        self.state_dir = self.folder / "state"
        self.config = config
        self.settings = {"JUPYTER_TT_INVENTORY": inventory, **(env or {})}
        self.env = {**os.environ, **self.settings}
        self.log_path = self.folder / "service.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def start(self) -> "Service":
        python = PYTHON if self.as_user else sys.executable
        args = [python, "-m", "jupyter_tt.cli", "scheduler", "--socket", str(self.socket), "--state-dir", str(self.state_dir)]
        if self.config:
            path = self.folder / "scheduler_config.py"
            path.write_text(self.config)
            args += ["--config", str(path)]
        env = self.env
        if self.as_user:
            env = {**self.as_user.env(), **self.settings}
            args = self.as_user.command(args, hidepid=self.hidepid)
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)

        def listening():
            assert self.proc.poll() is None, self.log_text()
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(self.socket))
                    return True
                except OSError:
                    return False

        wait_until(listening, timeout=30, message="the scheduler service to listen")
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


HOLD = """
import os, sys, time
from jupyter_tt.scheduler import open_scheduler
lease = open_scheduler().acquire({count}, timeout=30)
print(lease.id, flush=True)
time.sleep(600)
"""


def holder(user, service, count=1, **env):
    """A process of ``user`` that holds a lease of ``count`` devices until killed: (process, lease id)."""
    proc = user.popen([PYTHON, "-c", HOLD.format(count=count)], env=user.env(JUPYTER_TT_SCHEDULER=service.address, **env))
    line = proc.stdout.readline().strip()
    assert line.startswith("lease-"), line + proc.stdout.read() if proc.poll() is not None else line
    return proc, line


def ask(user, service, op, timeout=10, **args) -> dict:
    """One raw request on the service's socket as ``user``: the answer line, parsed."""
    code = f"""
import json, socket
s = socket.socket(socket.AF_UNIX); s.settimeout({timeout}); s.connect({str(service.socket)!r})
s.sendall(json.dumps({{"id": 1, "op": {op!r}, "args": {args!r}}}).encode() + b"\\n")
print(s.makefile().readline(), end="")
"""
    out = user.python(code, env=user.env())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def tt(user, service, *args, timeout=30):
    """``jupyter tt ARGS`` as ``user``, with the service as their scheduler."""
    return user.tt(*args, env=user.env(JUPYTER_TT_SCHEDULER=service.address), timeout=timeout)


FLOOD = """
import json, socket, sys, threading, time
counts = {"answers": 0, "busy": 0, "retry": 0}
lock = threading.Lock()
stop = time.monotonic() + SECONDS

def flood(n):
    s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(SOCKET)
    f = s.makefile("rb")
    ops = [("report", {}), ("usage_records", {}), ("history", {"limit": 1000})]
    i = 0
    while time.monotonic() < stop:
        op, args = ops[i % 3]; i += 1
        s.sendall(json.dumps({"id": i, "op": op, "args": args}).encode() + b"\\n")
        answer = json.loads(f.readline())
        with lock:
            counts["answers"] += 1
            if answer.get("error", {}).get("status") == 429:
                counts["busy"] += 1
                counts["retry"] += "retry in" in answer["error"]["message"]

threads = [threading.Thread(target=flood, args=(n,)) for n in range(CONNECTIONS)]
for t in threads: t.start()
print("flooding", flush=True)
for t in threads: t.join()
print(json.dumps(counts), flush=True)
"""


def flooder(user, svc, seconds: float, connections: int = 16):
    """``user`` sends the most expensive reads on ``connections`` connections for ``seconds``; prints counts at the end."""
    code = FLOOD.replace("SECONDS", str(seconds)).replace("SOCKET", repr(str(svc.socket))).replace("CONNECTIONS", str(connections))
    proc = user.popen([PYTHON, "-c", code])
    assert proc.stdout.readline().strip() == "flooding"
    return proc
