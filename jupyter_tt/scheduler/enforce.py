"""Device nodes that only the lease's user can open: what makes exclusivity enforced, not agreed.

The scheduler service, when it may change files' owners (root, or a dedicated user with
``CAP_CHOWN`` and ``CAP_FOWNER``), keeps every device node of the sysfs inventory:

- leased: owned by the lessee, mode 0600;
- free: owned by root, mode 0600.

So a process of another user, or any process while its user holds no lease, gets ``EACCES`` when it
opens the node, whatever ``TT_VISIBLE_DEVICES`` says. This is the device-cgroup idea of Slurm and of
Kubernetes device plugins, with file ownership, which needs no cgroup delegation and also holds for
processes started outside Jupyter (``jupyter tt run`` leases for those).

It fails closed. When the service stops, every node becomes root's (0600): a user cannot open a card
during a restart, and the leases' kernels keep the descriptors they have; the restart fences the
nodes as the leases say again. A service killed with SIGKILL leaves the nodes as they are. The nodes'
owners and modes from before the service first changed them are written to ``nodes.json`` in the
state folder; ``jupyter tt scheduler --unfence`` (for uninstalling, with the service stopped) puts
them back. The shipped udev rule (``60-jupyter-tt.rules``) makes nodes root-only as the driver
creates them, so none is open between boot and the service's start. The owners are checked on every
pass, so a node that udev or a driver reload re-created is fenced again within ``watch_interval``.

Not covered: a file descriptor opened while its user held the lease stays open after the lease ends
(the service ends a lease only when its holders exit, and reports devices open by processes without a
lease); root, and users in the group that may load drivers, can do anything.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import stat
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("jupyter_tt.service")

CAP_CHOWN, CAP_FOWNER = 0, 3


@dataclass(frozen=True)
class NodeOwner:
    uid: int
    gid: int
    mode: int  # permission bits only

    @classmethod
    def of(cls, path: Path) -> "NodeOwner":
        st = os.stat(path)
        return cls(uid=st.st_uid, gid=st.st_gid, mode=stat.S_IMODE(st.st_mode))

    def apply(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)
        os.chmod(path, self.mode)


FREE = NodeOwner(uid=0, gid=0, mode=0o600)


def can_change_owners() -> str | None:
    """None when this process may give files away (chown and chmod others' files), else why not."""
    try:
        status = Path("/proc/self/status").read_text()
        effective = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError) as e:
        return f"cannot read this process's capabilities ({e})"
    missing = [name for bit, name in ((CAP_CHOWN, "CAP_CHOWN"), (CAP_FOWNER, "CAP_FOWNER")) if not effective >> bit & 1]
    if missing:
        return (f"the service runs as uid {os.geteuid()} without {' and '.join(missing)}, so it cannot change device nodes' "
                f"owners: run it as root (as the shipped unit does) or grant those capabilities")
    return None


def lessee(user: str) -> NodeOwner | None:
    """Who may open a node leased to ``user`` (a name the service took from the kernel's uid)."""
    try:
        entry = pwd.getpwnam(user)
        return NodeOwner(uid=entry.pw_uid, gid=entry.pw_gid, mode=0o600)
    except KeyError:
        if user.startswith("uid-") and user[4:].isdigit():  # a uid without a passwd entry
            return NodeOwner(uid=int(user[4:]), gid=0, mode=0o600)
        return None


class NodeGuard:
    """Keeps device nodes owned as their leases say (see the module's docstring)."""

    def __init__(self, state_dir: str | Path, reason_not: str | None):
        """``reason_not``: why this service cannot enforce (None: it can)."""
        self.record = Path(state_dir) / "nodes.json"
        self.reason_not = reason_not
        self.original: dict[str, NodeOwner] = {}
        #: Set by ``close()`` and ``restore()``: from then on ``apply()`` changes nothing. A pass that was
        #: already under way when the service began to stop must not open the nodes to anyone again.
        self.restored = False
        self._lock = threading.Lock()
        if self.enforcing:
            try:
                self.original = {p: NodeOwner(**o) for p, o in json.loads(self.record.read_text()).items()}
            except FileNotFoundError:
                pass

    @property
    def enforcing(self) -> bool:
        return self.reason_not is None

    def describe(self) -> dict:
        """What the API tells callers: whether nodes are fenced, and if not, why."""
        if self.enforcing:
            return {"enforcing": True, "enforcement": "device nodes are owned by their lease's user (0600), free ones by root"}
        return {"enforcing": False, "enforcement": f"coordination only: {self.reason_not}"}

    def apply(self, nodes: dict[int, Path], owners: dict[int, str]) -> list[str]:
        """Make the owner of every node (device id -> path) match ``owners`` (device id -> lessee; missing:
        free). Returns what changed. After ``restore()`` it changes nothing."""
        with self._lock:
            if not self.enforcing or self.restored:
                return []
            return self._apply(nodes, owners)

    def _apply(self, nodes: dict[int, Path], owners: dict[int, str]) -> list[str]:
        changed = []
        for device, node in nodes.items():
            try:
                now = NodeOwner.of(node)
            except FileNotFoundError:
                continue  # the inventory reports the missing node; nothing to fence
            key = str(node)
            if key not in self.original:
                self.original[key] = now
                self._save()
            wanted = lessee(owners[device]) if device in owners else FREE
            if wanted is None:  # a lease of a user unknown to this host: nobody may open it
                wanted = FREE
            if now != wanted:
                try:
                    wanted.apply(node)
                except OSError as e:
                    log.error("jupyter-tt scheduler: cannot fence %s (%s)", node, e)
                    continue
                changed.append(f"{node} -> uid {wanted.uid} mode {wanted.mode:o}")
        return changed

    def close(self, nodes: dict[int, Path]) -> list[str]:
        """The service stops: every node becomes root's (0600), and the guard changes nothing after this."""
        with self._lock:
            if not self.enforcing or self.restored:
                return []
            changed = self._apply(nodes, {})
            self.restored = True
            return changed

    def restore(self) -> list[str]:
        """Give every node back the owner and mode it had before the service first changed it
        (``--unfence``); the guard fences nothing after this. Returns the nodes given back."""
        with self._lock:
            self.restored = True
            return self._restore()

    def _restore(self) -> list[str]:
        restored = []
        for key, owner in self.original.items():
            try:
                owner.apply(Path(key))
                restored.append(f"{key} -> uid {owner.uid} mode {owner.mode:o}")
            except OSError as e:
                log.error("jupyter-tt scheduler: cannot restore %s (%s)", key, e)
        self.record.unlink(missing_ok=True)
        self.original = {}
        return restored

    def _save(self) -> None:
        tmp = self.record.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({k: asdict(v) for k, v in self.original.items()}, f)
        os.replace(tmp, self.record)
