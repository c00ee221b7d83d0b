"""The devices API's JSON schema (jupyter_tt/server/api_schemas/devices.json, shown in the reference docs)
is the contract: a real server's answers validate against it, and every field the JupyterLab
extension's TypeScript interfaces read is in it."""

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from jupyter_tt.devices import SimulatedInventory
from jupyter_tt.scheduler import Scheduler

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "jupyter_tt/server/api_schemas/devices.json").read_text())

pytestmark = pytest.mark.usefixtures("kernelspecs")


def validator(definition: str | None = None) -> Draft202012Validator:
    """The whole document's validator, or one of its definitions' (a lease, a request)."""
    return Draft202012Validator(SCHEMA if definition is None else {"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{definition}"})


def test_the_schema_is_a_valid_json_schema():
    Draft202012Validator.check_schema(SCHEMA)


def test_a_servers_devices_leases_and_queue_answers_validate_against_the_schema(servers, state_dir):
    server = servers(inventory="simulated:n150x1,n300x2", user="alice")
    zoe = Scheduler(SimulatedInventory("n150x1,n300x2"), state_dir, user="zoe", server="elsewhere")
    theirs = zoe.acquire(1, "n150")  # another user's lease: its public view
    server.start_kernel("tt-n300")  # alice's own, in full
    waiting = zoe.submit(2, "n300")  # a request behind it, with a free card kept for it
    devices = server.json("/jupyter-tt/api/devices")
    validator().validate(devices)
    assert {d["state"] for d in devices["devices"]} == {"leased", "free"} and devices["queue"][0]["reserved"] == 1
    for lease in server.json("/jupyter-tt/api/leases")["leases"]:
        validator("lease").validate(lease)
    (request,) = server.json("/jupyter-tt/api/queue")["requests"]
    validator("request").validate(request)
    zoe.cancel(waiting.request_id)
    zoe.release(theirs.id)


def typescript_fields(source: str, interface: str) -> set[str]:
    """The fields an interface of model.ts declares, its parents' included."""
    match = re.search(rf"export interface {interface}(?: extends (\w+))? \{{(.*?)\n\}}", source, re.S)
    assert match, f"model.ts has no interface {interface}"
    own = set(re.findall(r"^\s+(\w+)\??:", match[2], re.M))
    return own | (typescript_fields(source, match[1]) if match[1] else set())


@pytest.mark.parametrize("interface, definition", [
    ("IDevice", "device"), ("ILease", "lease"), ("IRequest", "request"), ("ITelemetry", "telemetry"),
])
def test_every_field_the_extension_reads_is_in_the_schema(interface, definition):
    fields = typescript_fields((ROOT / "labextension/src/model.ts").read_text(), interface)
    assert fields, interface
    assert fields <= set(SCHEMA["$defs"][definition]["properties"]), fields - set(SCHEMA["$defs"][definition]["properties"])


def test_the_inventory_the_extension_reads_is_in_the_schema():
    fields = typescript_fields((ROOT / "labextension/src/model.ts").read_text(), "IInventory")
    assert fields <= set(SCHEMA["properties"]["inventory"]["properties"])
