"""Every wait in the serving path ends: an engine that fails, dies or sticks answers its requests with an error.

The engine runs on the fake runner of ``test_engine_scheduling`` (milliseconds a step); the HTTP
layer is the real one (``ServingApp``), served from a thread.
"""

import threading
import time

import httpx
import pytest

from jupyter_tt.serving.engine import FinishReason, SamplingParams
from jupyter_tt.serving.openai import ServingApp
from tests.support.engines import add, make_engine, run, tokens_of
from tests.support.jupyter_servers import app_in_thread, wait_until


def finished(outputs, request_id):
    return next(o for o in outputs if o.request_id == request_id and o.finished)


def test_a_scheduling_error_fails_the_requests_it_held_and_the_next_request_is_served():
    engine, outputs = make_engine(), []
    schedule = engine.batcher.schedule
    calls = []

    def schedule_that_fails_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("scheduler bug")
        return schedule()

    engine.batcher.schedule = schedule_that_fails_once
    first = add(engine, [1, 2, 3], 4, outputs)
    engine.step()
    failed = finished(outputs, first)
    assert failed.finish_reason is FinishReason.ERROR and "scheduler bug" in failed.error
    assert engine.free_blocks == 64 and not engine.has_work and engine.health() is None
    second = add(engine, [1, 2, 3], 4, outputs)
    run(engine)
    assert finished(outputs, second).finish_reason is FinishReason.LENGTH and len(tokens_of(outputs, second)) == 4


def test_a_callback_that_raises_drops_its_request_and_the_engine_thread_serves_on():
    engine = make_engine().start()
    try:
        def broken(out):
            raise RuntimeError("the client's loop is gone")

        engine.add_request([1, 2, 3], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True), broken)
        outputs, done = [], threading.Event()

        def collect(out):
            outputs.append(out)
            if out.finished:
                done.set()

        engine.add_request([4, 5, 6], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True), collect)
        assert done.wait(10), "the engine thread stopped serving after a callback raised"
        assert outputs[-1].finish_reason is FinishReason.LENGTH and engine.health() is None
        assert engine.free_blocks == 64
    finally:
        engine.stop()


class Gate:
    """A runner step that blocks until the gate opens: an engine stuck in a step (a hung device call)."""

    def __init__(self, runner):
        self.runner, self.open, self.entered = runner, threading.Event(), threading.Event()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def step(self, steps):
        self.calls += 1
        if self.calls > 2:  # the prompt and the first decode go through; then the engine sticks
            self.entered.set()
            assert self.open.wait(30)
        return self.runner.step(steps)


@pytest.fixture
def stuck():
    """A served engine whose third step hangs until ``gate.open`` is set; its step timeout is 0.5 s."""
    engine = make_engine(step_timeout=0.5)
    engine.runner = gate = Gate(engine.runner)
    engine.start()
    try:
        with app_in_thread(ServingApp(engine, "fake").web_app()) as base:
            yield base, gate
    finally:
        gate.open.set()
        engine.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_on_a_stuck_engine_gets_503_within_a_bounded_time(stuck, stream):
    base, gate = stuck
    start = time.monotonic()
    answer = httpx.post(f"{base}/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 8, "stream": stream}, timeout=20)
    took = time.monotonic() - start
    assert gate.entered.is_set() and took < 5, f"answered after {took:.1f} s"
    if stream:  # the stream had begun (first token): the error comes as an event, then the stream ends
        assert answer.status_code == 200
        assert '"code": "engine_unavailable"' in answer.text and "in one step for" in answer.text, answer.text
        assert "[DONE]" not in answer.text
    else:
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "engine_unavailable" and "its limit is 0.5 s" in error["message"], error
    health = httpx.get(f"{base}/health", timeout=5)
    assert health.status_code == 503 and "in one step for" in health.json()["message"]
    gate.open.set()  # the step comes back: the engine is healthy again
    wait_until(lambda: httpx.get(f"{base}/health", timeout=5).status_code == 200, timeout=10, message="the engine to be healthy")
