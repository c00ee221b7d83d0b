"""The reset commands we build, read by the vendor's real tools (tt-smi 6.8.0 and tt-umd 0.9.14 from PyPI).

``make test`` installs each tool in a venv of its own (``make vendor-tools``, ``.venv-tools/``), as a card
host would: tt-smi pins tt-umd 0.9.12, which must not meet ttnn's. Without a card the tools still parse
their arguments and enumerate no device, so their real answers are checked here; the flow around a
reset (the scheduler, the service) is tested with the fake tt-smi in ``test_reset.py``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from jupyter_tt.scheduler.reset import reset, reset_command

TOOLS = Path(os.environ.get("JUPYTER_TT_VENDOR_TOOLS", Path(__file__).parents[1] / ".venv-tools"))
TT_SMI = TOOLS / "tt-smi/bin"
TT_UMD_PYTHON = TOOLS / "tt-umd/bin/python"

if not (TT_SMI / "tt-smi").exists() or not TT_UMD_PYTHON.exists():
    if "JUPYTER_TT_VENDOR_TOOLS" in os.environ:  # make test installed them: their absence is a failure
        raise RuntimeError(f"the vendor tools are missing under {TOOLS}: make vendor-tools")
    pytest.skip("the vendor tools are not installed: make vendor-tools", allow_module_level=True)

#: On a host with a driver these tests would reset a real card.
on_a_card_host = pytest.mark.skipif(Path("/dev/tenstorrent").exists() or Path("/sys/module/tenstorrent").exists(),
                                    reason="a driver is loaded here: a real reset would reset a card")


def in_venv(python: Path, code: str, *args: str) -> dict:
    """Run ``code`` with a tool's own Python; it prints one JSON object."""
    done = subprocess.run([str(python), "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def tt_smi_command(device_id: int, monkeypatch) -> list[str]:
    monkeypatch.setenv("PATH", f"{TT_SMI}:{os.environ['PATH']}")
    command = reset_command(device_id, "tt-smi")
    assert command[0] == str(TT_SMI / "tt-smi")
    return command


PARSE = """
    import json, sys
    from tt_smi import tt_smi
    from tt_smi.device_input import parse_smi_device_input
    sys.argv = sys.argv[1:]
    parsed = parse_smi_device_input(tt_smi.parse_args().reset)
    print(json.dumps({"kind": parsed.type.name, "value": parsed.value}))
"""


def test_tt_smi_reads_our_reset_command_as_one_device_node_not_a_umd_logical_id(monkeypatch):
    command = tt_smi_command(3, monkeypatch)
    assert in_venv(TT_SMI / "python", PARSE, *command) == {"kind": "DEV_TENSTORRENT_ID", "value": [3]}
    # The bare number, as the reset used to pass it, is a UMD logical id: an index into the
    # BDF-sorted device list, which is another card where the two numberings differ.
    assert in_venv(TT_SMI / "python", PARSE, "tt-smi", "-r", "3") == {"kind": "UMD_LOGICAL_ID", "value": [3]}


def test_tt_smi_resets_our_device_node_by_its_pci_index_through_warm_reset(monkeypatch):
    """tt-smi's own dispatch (its reset module), with WarmReset recorded instead of run: the flow only."""
    command = tt_smi_command(3, monkeypatch)
    called = in_venv(TT_SMI / "python", PARSE.replace("print(", "_ = (") + """
    from tt_smi import reset as smi_reset
    calls = []
    class Recorder:
        @staticmethod
        def warm_reset(ids, **kw): calls.append(["warm_reset", list(ids)]); return True
        @staticmethod
        def warm_reset_chip_id(ids, **kw): calls.append(["warm_reset_chip_id", list(ids)]); return True
        @staticmethod
        def warm_reset_pci_bdfs(ids, **kw): calls.append(["warm_reset_pci_bdfs", list(ids)]); return True
    smi_reset.WarmReset = Recorder
    smi_reset.umd_pci_warm_reset(parsed)
    print(json.dumps({"calls": calls}))
    """, *command)
    assert called == {"calls": [["warm_reset", [3]]]}  # pci_device_ids: N of /dev/tenstorrent/N


def test_tt_smi_reads_no_reinit_and_then_runs_no_discovery_of_every_card_after_the_reset(monkeypatch):
    """Without --no_reinit, tt-smi runs TopologyDiscovery after the reset, which opens every card it can see."""
    command = tt_smi_command(3, monkeypatch)
    assert command[-1] == "--no_reinit"
    called = in_venv(TT_SMI / "python", """
    import json, sys
    from tt_smi import tt_smi
    from tt_smi import reset as smi_reset
    from tt_smi.device_input import parse_smi_device_input
    sys.argv = sys.argv[1:]
    args = tt_smi.parse_args()
    calls = []
    class Recorder:
        @staticmethod
        def warm_reset(ids, **kw): calls.append(["warm_reset", list(ids)]); return True
    class Discovery:
        @staticmethod
        def discover(**kw): calls.append(["discover"])
    smi_reset.WarmReset, smi_reset.TopologyDiscovery = Recorder, Discovery
    smi_reset.pci_board_reset(parse_smi_device_input(args.reset), reinit=not args.no_reinit, print_status=False,
                              use_umd=True)
    print(json.dumps({"no_reinit": args.no_reinit, "calls": calls}))
    """, *command)
    assert called == {"no_reinit": True, "calls": [["warm_reset", [3]]]}


def test_tt_umds_warm_reset_takes_the_keyword_we_pass_and_returns_a_bool():
    """The signature our child calls, from the wheel's own stub (nanobind functions have no inspect.signature)."""
    found = in_venv(TT_UMD_PYTHON, """
        import json, tt_umd
        from pathlib import Path
        print(json.dumps({"pyi": str(Path(tt_umd.__file__).with_name("__init__.pyi")),
                          "doc": tt_umd.WarmReset.warm_reset.__doc__.splitlines()[0]}))
    """)
    tree = ast.parse(Path(found["pyi"]).read_text())
    warm_reset = next(f for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "WarmReset"
                      for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "warm_reset")
    assert warm_reset.args.args[0].arg == "pci_device_ids" and ast.unparse(warm_reset.returns) == "bool"
    assert found["doc"].startswith("warm_reset(pci_device_ids:") and found["doc"].endswith("-> bool")
    assert "pci_device_ids=[n]" in reset_command(3, "tt-umd", python=str(TT_UMD_PYTHON))[2]


@on_a_card_host
def test_a_tt_umd_reset_that_returns_false_is_a_failed_reset():
    """Without a card, the real WarmReset finds nothing to reset and returns False; it used to count as done."""
    error = reset(3, "tt-umd", python=str(TT_UMD_PYTHON))
    assert error is not None and "warm_reset(pci_device_ids=[3]) returned False: the reset failed" in error


@on_a_card_host
def test_a_real_tt_smi_that_cannot_reset_is_a_failed_reset_with_its_message_in_plain_text(monkeypatch):
    monkeypatch.setenv("PATH", f"{TT_SMI}:{os.environ['PATH']}")
    error = reset(3, "tt-smi")
    assert error is not None and error.startswith("tt-smi exited with 1: No Tenstorrent driver detected!")
    assert "\x1b" not in error  # tt-smi colours it; the device's problem is plain text
