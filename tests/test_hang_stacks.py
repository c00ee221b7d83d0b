"""Before a timeout, the stacks of every process the test started are printed (tests/support/hang_stacks.py)."""

import subprocess
import sys
import textwrap

import pytest

from tests.support.hang_stacks import deadline, dump_stacks
from tests.support.jupyter_servers import wait_until

SLEEPER = textwrap.dedent("""
    import sys, threading, time
    def waits_for_the_engine():
        time.sleep(120)
    threading.Thread(target=waits_for_the_engine, name="engine-waiter", daemon=True).start()
    print("ready", flush=True)
    time.sleep(120)
""")


def test_the_dump_names_every_thread_of_a_child_and_where_it_waits():
    child = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        def dumped():
            text = dump_stacks("a test")
            return text if "waits_for_the_engine" in text else None

        text = wait_until(dumped, timeout=30, message="py-spy to read the child's stacks")
        assert f"pid {child.pid}" in text and '"engine-waiter"' in text and '"MainThread"' in text
    finally:
        child.kill()
        child.wait()


@pytest.mark.timeout(42)
def test_an_items_deadline_is_its_timeout_mark(request):
    assert deadline(request.node) == 42
