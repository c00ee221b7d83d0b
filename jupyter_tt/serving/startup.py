"""An engine's start as a checklist: phases read from the engine's own log lines, and a failure named
with its fix.

A cold start on a card compiles kernels for minutes. Tenstorrent's ``tt serve`` shows a checklist
instead of log lines, and ``serve()`` and ``jupyter tt serve`` do the same. The phases and their
patterns are tt-cli's (PyPI ``tenstorrent`` 1.2.1, ``backends/serving/progress/phases.py``), for the
lines vLLM 0.25.1, vllm-tt-plugin (``worker.py``: "multidevice with %d devices and grid %s is
created"), tt-metal and tt-umd print; jupyter-tt's own engine prints lines of its own
(``jupyter tt serve: ...``) that the same table reads. A phase starts when one of its patterns is
seen and is done when a later phase starts or its done pattern is seen.

The failures are tt-cli's causes, in its order (a device in use, a refused argument, a card that
needs a reset, a taken port), and tt-metal's and vLLM's own errors, each with what to do here.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from enum import Enum

from ..text import strip_control


class Phase(str, Enum):
    ENGINE = "engine"
    DEVICES = "devices"
    WEIGHTS = "weights"
    KV_CACHE = "KV cache"
    WARMUP = "warm-up (kernels compiled, traces captured)"
    API = "API"


_PHASES = list(Phase)


@dataclass(frozen=True)
class Pattern:
    phase: Phase
    starts: re.Pattern
    done: re.Pattern | None = None
    #: a group of the done (or start) match that says more, e.g. "8 devices, grid (1, 8)"
    detail: str | None = None


def _re(*alternatives: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


PATTERNS = (
    Pattern(Phase.ENGINE, _re(r"Available plugins for group vllm\.platform_plugins", r"Platform plugin \w+ is activated",
                              r"vLLM (?:API )?server version", r"Initializing a V\d LLM engine",
                              r"jupyter tt serve: loading ")),
    Pattern(Phase.DEVICES, _re(r"Opening user mode device driver", r"Attempting to open mesh device",
                               r"Starting devices in cluster", r"jupyter tt serve: opening "),
            _re(r"multidevice with (?P<n>\d+) devices? and grid (?P<grid>.*?) is created",
                r"jupyter tt serve: opened (?P<n2>\d+) devices? as a (?P<grid2>\S+) mesh")),
    Pattern(Phase.WEIGHTS, _re(r"Checkpoint directory:", r"Loading checkpoint shards", r"Loading safetensors",
                               r"Loading weights:", r"Loading layers:", r"jupyter tt serve: (?:converting|loading) weights"),
            _re(r"jupyter tt serve: weights (?P<w>(?:converted|loaded from the cache).*)")),
    Pattern(Phase.KV_CACHE, _re(r"KV cache size", r"Allocating TT kv caches", r"num_gpu_blocks",
                                r"jupyter tt serve: KV cache"),
            _re(r"KV cache size:\s*(?P<tokens>[\d,]+) tokens", r"jupyter tt serve: KV cache of (?P<kv>.*)")),
    Pattern(Phase.WARMUP, _re(r"Warming up prefill", r"Warming up decode", r"Starting decode warmup",
                              r"Starting .*prefill warmup", r"warmup_model_(?:prefill|decode)", r"Done Compiling Model",
                              r"Capturing .*[Tt]race", r"jupyter tt serve: warming up"),
            _re(r"init engine .* took (?P<secs>[\d.]+) s")),
    Pattern(Phase.API, _re(r"Starting vLLM (?:API )?server", r"Warming up chat template", r"Serving \S+ \(", r"main: server is listening")),
)


@dataclass(frozen=True)
class Failure:
    """Why a start failed, in the user's words, with the fix and the line that showed it."""

    name: str
    message: str
    fix: str
    evidence: str = ""

    def __str__(self) -> str:
        return f"{self.message} ({self.name}). {self.fix}" + (f" The engine said: {self.evidence}" if self.evidence else "")


@dataclass(frozen=True)
class Cause:
    name: str
    pattern: re.Pattern
    message: str
    fix: str


#: In tt-cli's order first (``backends/serving/progress``: the device held, a refused argument, a reset,
#: the port), then the errors tt-metal, tt_transformers and vLLM raise on a card.
CAUSES = (
    Cause("CHIP_IN_USE", _re(r"Sysmem mapped at unexpected NOC address", r"CHIP_IN_USE", r"stale process holding"),
          "a Tenstorrent device of this lease is in use by another process",
          "`jupyter tt devices` shows who holds each card; stop that process (another model server of this kernel: "
          "llm.close()), then serve again"),
    Cause("bad argument", _re(r"unrecognized arguments", r"error: argument", r"no such option"),
          "the engine refused one of its arguments", "drop it from engine_args, or check the engine's own --help"),
    Cause("needs reset", _re(r"Try resetting the board", r"Timed out while waiting for active ethernet core"),
          "a Tenstorrent device of this lease needs a reset",
          "restart the kernel (the scheduler resets a crashed kernel's cards before it restarts), or ask the host's "
          "administrator to run `jupyter tt reset`"),
    Cause("port taken", _re(r"Address already in use"), "its port is already taken",
          "leave port= out to get a free one"),
    Cause("max_model_len", _re(r"do not support max_model_len greater than (?P<limit>\d+)"),
          "the model's context is longer than tt_transformers allows on this mesh",
          "pass a shorter one: engine_args=['--max-model-len', '{limit}']"),
    Cause("sfpi not found", _re(r"sfpi not found"), "tt-metal cannot build kernels: the SFPI compiler is missing",
          "install the SFPI release that ttnn's tt_metal/sfpi-version names (`jupyter tt doctor` says which)"),
    Cause("out of memory", _re(r"Out of memory", r"OutOfMemory", r"\bOOM\b", r"Out of Memory"),
          "the engine ran out of memory", "lower --max-model-len or --max-num-seqs in engine_args, or use a bigger lease"),
    Cause("TT_THROW", _re(r"TT_THROW"), "tt-metal raised an error", "the line below says what; `jupyter tt doctor` "
          "checks the host"),
    Cause("EngineCore failed", _re(r"Engine core initialization failed", r"EngineCore failed to start"),
          "vLLM's engine core failed to start", "its first error above says why: see the log"),
)


@dataclass
class PhaseState:
    started: float | None = None
    done: float | None = None
    detail: str = ""


@dataclass
class Checklist:
    """The phases of one engine start, fed its log lines (``feed``) as they come."""

    engine: str
    began: float = field(default_factory=time.monotonic)
    phases: dict[Phase, PhaseState] = field(default_factory=lambda: {p: PhaseState() for p in Phase})
    _seen: list[tuple[int, str]] = field(default_factory=list)  # (cause index, line), first of each cause

    def feed(self, line: str) -> list[Phase]:
        """Read one log line; returns the phases it started or finished (for a caller that shows changes)."""
        line = strip_control(line)[:500]  # engines colour their logs
        changed: list[Phase] = []
        now = time.monotonic()
        for pattern in PATTERNS:
            state = self.phases[pattern.phase]
            match = pattern.done.search(line) if pattern.done else None
            if match or pattern.starts.search(line):
                if state.started is None:
                    state.started = now
                    self._close_before(pattern.phase, now, changed)
                    changed.append(pattern.phase)
                if match and state.done is None:
                    state.done = now
                    state.detail = _detail(match)
                    if pattern.phase not in changed:
                        changed.append(pattern.phase)
        for i, cause in enumerate(CAUSES):
            if cause.pattern.search(line) and all(j != i for j, _ in self._seen) and len(self._seen) < len(CAUSES):
                self._seen.append((i, line))
        return changed

    def _close_before(self, phase: Phase, now: float, changed: list[Phase]) -> None:
        for earlier in _PHASES[: _PHASES.index(phase)]:
            state = self.phases[earlier]
            if state.started is not None and state.done is None:
                state.done = now
                changed.append(earlier)

    def answering(self) -> None:
        """The endpoint answered: every phase is done."""
        now = time.monotonic()
        for phase in Phase:
            state = self.phases[phase]
            state.started = state.started or now
            state.done = state.done or now

    def failure(self, default: str = "") -> Failure | None:
        """The cause of a failed start (tt-cli's order: the first cause in ``CAUSES`` that was seen)."""
        if not self._seen:
            return Failure("exited", f"{self.engine} stopped before it answered", "its log says why",
                           default) if default else None
        index, line = min(self._seen)
        cause = CAUSES[index]
        match = cause.pattern.search(line)
        fix = cause.fix.format(**(match.groupdict() if match else {}))
        if cause.name == "TT_THROW":
            line = next((seen for _, seen in self._seen if "TT_THROW" in seen), line)
        return Failure(cause.name, cause.message, fix, line[:300])

    # ------------------------------------------------------------------ showing it

    def rows(self) -> list[tuple[str, Phase, str]]:
        """(mark, phase, what is known) per phase: mark "done", "now" or "todo"."""
        now = time.monotonic()
        out = []
        for phase in Phase:
            state = self.phases[phase]
            if state.done is not None:
                took = state.done - (state.started or state.done)
                out.append(("done", phase, ", ".join(x for x in (state.detail, f"{took:.0f} s") if x)))
            elif state.started is not None:
                out.append(("now", phase, f"{now - state.started:.0f} s so far"))
            else:
                out.append(("todo", phase, ""))
        return out

    def text(self) -> str:
        marks = {"done": "[x]", "now": "[>]", "todo": "[ ]"}
        head = f"{self.engine}: starting ({time.monotonic() - self.began:.0f} s)"
        return "\n".join([head] + [f"  {marks[m]} {p.value}{': ' + d if d else ''}" for m, p, d in self.rows()])

    def line(self, phase: Phase) -> str:
        """One line for a phase that changed (a terminal's log)."""
        mark, _, detail = next(r for r in self.rows() if r[1] is phase)
        state = "done" if mark == "done" else "started"
        return f"{self.engine}: [{_PHASES.index(phase) + 1}/{len(_PHASES)}] {phase.value}: {state}" + (
            f" ({detail})" if detail and mark == "done" else "")

    def html(self) -> str:
        marks = {"done": "✅", "now": "⏳", "todo": "⬜"}
        rows = "".join(f"<li>{marks[m]} {html.escape(p.value)}{' · ' + html.escape(d) if d else ''}</li>"
                       for m, p, d in self.rows())
        return (f"<div class='jupyter-tt-start'><b>{html.escape(self.engine)}</b> starting "
                f"({time.monotonic() - self.began:.0f} s)<ul style='list-style:none;padding-left:0.5em'>{rows}</ul></div>")


def _detail(match: re.Match) -> str:
    g = {k: v for k, v in match.groupdict().items() if v}
    if "n" in g or "n2" in g:
        n = g.get("n") or g.get("n2")
        return f"{n} device{'s' if n != '1' else ''}, grid {g.get('grid') or g.get('grid2')}"
    if "tokens" in g:
        return f"{g['tokens']} tokens"
    if "secs" in g:
        return f"engine ready after {g['secs']} s"
    return next(iter(g.values()), "")


def supervise(command: list[str], env: dict[str, str], *, url: str, headers: dict[str, str], timeout: float,
              log_path: str, label: str, out=None) -> int:
    """Run an engine's server in the foreground of a terminal (``jupyter tt serve --engine vllm``): its output
    into ``log_path``, its start as checklist lines on ``out``, then "Serving ..." once ``url`` answers.
    Returns the engine's exit status; SIGTERM and SIGINT go to it. A failed start ends with its named cause;
    a start past ``timeout`` stops the engine."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    import httpx

    from ..files import open_private

    out = out or sys.stdout
    checklist = Checklist(label)
    print(f"{label}: starting; the engine's own output goes to {log_path}", file=out, flush=True)
    log = os.fdopen(open_private(log_path), "w")

    def die_with_parent() -> None:  # in the child, before exec
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             text=True, errors="replace", start_new_session=True, preexec_fn=die_with_parent)
    lock = threading.Lock()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            log.write(line)
            log.flush()
            with lock:
                for phase in checklist.feed(line):
                    print(checklist.line(phase), file=out, flush=True)

    reader = threading.Thread(target=pump, name="jupyter-tt-engine-log", daemon=True)
    reader.start()

    def forward(signum, _frame) -> None:
        try:
            os.killpg(child.pid, signum)
        except OSError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline, ready = time.monotonic() + timeout, False
    try:
        while child.poll() is None and not ready:
            try:
                ready = httpx.get(url, headers=headers, timeout=2).status_code < 500
            except httpx.HTTPError:
                pass
            if not ready and time.monotonic() > deadline:
                print(f"{label}: did not answer within {timeout:g} s; stopping it. A cold start on cards compiles "
                      f"kernels for minutes: raise the bound with JUPYTER_TT_SERVE_TIMEOUT=<seconds>", file=out, flush=True)
                forward(signal.SIGTERM, None)
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    forward(signal.SIGKILL, None)
                break
            if not ready:
                time.sleep(1.0)
        if ready:
            with lock:
                checklist.answering()
                print(checklist.line(Phase.API), file=out, flush=True)
            print(f"Serving on {url.rsplit('/models', 1)[0]}; its log is {log_path}", file=out, flush=True)
        code = child.wait()
        reader.join(5)
        if not ready and code != 0:
            failure = checklist.failure(default=f"exit status {code}")
            print(f"{label}: {failure}", file=out, flush=True)
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.close()
