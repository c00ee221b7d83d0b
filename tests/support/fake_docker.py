"""A stand-in for ``docker`` on PATH: ``ps -q --no-trunc`` and ``inspect`` answer with records in the shape Docker
Engine 28 prints (the fields the vendor's ``tt`` CLI 1.2.1 reads: ``Name``, ``Config.Labels``,
``HostConfig.IpcMode``, ``Privileged``, ``Devices[].PathOnHost``, ``Mounts[].Source``)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

FAKE_DOCKER = """#!/bin/sh
[ -n "$FAKE_DOCKER_SLEEP" ] && sleep "$FAKE_DOCKER_SLEEP"
case "$1" in
  ps) cat "$FAKE_DOCKER_DIR/ids" ;;
  inspect) cat "$FAKE_DOCKER_DIR/inspect.json" ;;
  *) echo "unknown command $1" >&2; exit 2 ;;
esac
"""


def record(name: str, *, devices=(), ipc="host", privileged=False, mounts=(), labels=None) -> dict:
    """One container as `docker inspect` prints it (the fields read, among the others it has)."""
    return {
        "Id": hashlib.sha256(name.encode()).hexdigest(), "Name": f"/{name}", "State": {"Status": "running", "Running": True},
        "Config": {"Image": "ghcr.io/tenstorrent/tt-inference-server/vllm-tt-metal-src-release:0.1", "Labels": labels or {}},
        "HostConfig": {"IpcMode": ipc, "Privileged": privileged, "Devices": [
            {"PathOnHost": p, "PathInContainer": p, "CgroupPermissions": "rwm"} for p in devices]},
        "Mounts": [{"Type": "bind", "Source": s, "Destination": s, "Mode": "", "RW": True, "Propagation": "rprivate"}
                   for s in mounts],
    }


@pytest.fixture
def docker(tmp_path, monkeypatch):
    """``docker.run(records)``: what the fake docker on PATH answers from now on."""
    bin_dir, state = tmp_path / "docker-bin", tmp_path / "docker-state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_DIR", str(state))

    class Docker:
        def run(self, records):
            (state / "ids").write_text("".join(r["Id"] + "\n" for r in records))
            (state / "inspect.json").write_text(json.dumps(records))

    docker = Docker()
    docker.run([])
    return docker
