"""A stand-in for ``tt-smi`` on PATH, for the tests of resets after a crash, and the host it resets.

It records its arguments (and, in ``$FAKE_TT_SMI_LOG.env``, whether ``TT_VISIBLE_DEVICES`` was set
for it), takes the card from its ``-r /dev/tenstorrent/N`` argument, and then, as ``FAKE_TT_SMI_MODE`` says, brings the card's firmware heartbeat
back to life (``revive``), leaves it frozen (``dead``) or fails (``fail``). ``FAKE_TT_SMI_DELAY``
makes the reset take that many seconds; once a revive is done, it writes the time since boot
(``/proc/uptime``) to ``$FAKE_TT_SMI_LOG.done``.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from .sysfs_tree import N300, make_host

FAKE_TT_SMI = textwrap.dedent("""\
    #!/bin/sh
    # A stand-in for tt-smi: records its arguments, then acts on card /dev/tenstorrent/N ($2) as FAKE_TT_SMI_MODE says.
    echo "$@" >> "$FAKE_TT_SMI_LOG"
    echo "TT_VISIBLE_DEVICES=${TT_VISIBLE_DEVICES-unset}" >> "$FAKE_TT_SMI_LOG.env"
    case "$2" in /dev/tenstorrent/[0-9]*) card="${2#/dev/tenstorrent/}" ;; *) echo "not a device node: $2" >&2; exit 2 ;; esac
    [ -n "$FAKE_TT_SMI_DELAY" ] && sleep "$FAKE_TT_SMI_DELAY"
    beat="$FAKE_TT_SMI_ROOT/sys/class/tenstorrent/tenstorrent!$card/tt_heartbeat"
    case "$FAKE_TT_SMI_MODE" in
      fail) echo "reset failed: PCIe link down" >&2; exit 1 ;;
      dead) exit 0 ;;
      revive) (i=1; while [ $i -lt 100 ]; do echo $i > "$beat.tmp"; mv "$beat.tmp" "$beat"; i=$((i+1)); sleep 0.1; done) \\
                </dev/null >/dev/null 2>&1 &
              cut -d' ' -f1 /proc/uptime > "$FAKE_TT_SMI_LOG.done"
              exit 0 ;;
    esac
""")


@pytest.fixture
def card_host(tmp_path, monkeypatch):
    """Two n300 cards, a fake tt-smi first on PATH, and what it did."""
    tree = make_host(tmp_path / "root", [N300(), N300()])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tt-smi").write_text(FAKE_TT_SMI)
    (bin_dir / "tt-smi").chmod(0o755)
    log = tmp_path / "tt-smi.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TT_SMI_LOG", str(log))
    monkeypatch.setenv("FAKE_TT_SMI_ROOT", str(tree.root))
    monkeypatch.setenv("FAKE_TT_SMI_MODE", "revive")
    tree.log = log
    return tree


def ran(tree) -> list[str]:
    """The fake tt-smi's command lines so far."""
    return tree.log.read_text().splitlines() if tree.log.exists() else []


def reset_of(card: int) -> str:
    """The command line that resets ``card`` alone: its device node (a bare N is a UMD logical id), and no
    re-detection of every card afterwards."""
    return f"-r /dev/tenstorrent/{card} --no_reinit"


def environments(tree) -> list[str]:
    """What ``TT_VISIBLE_DEVICES`` each fake tt-smi run saw."""
    path = tree.log.with_name(tree.log.name + ".env")
    return path.read_text().splitlines() if path.exists() else []
