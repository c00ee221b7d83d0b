"""``jupyter_tt.serve(engine="llama.cpp")``: llama.cpp's own llama-server as the kernel's model server.

The binary is the real one, built from llama.cpp's source (``benchmarks/llama_server.py build``, cached
outside the clone; ``make test`` builds it once per version and CPU kind and passes it in
``JUPYTER_TT_LLAMA_SERVER``). Its answers come from llama.cpp's own kernels, whose rounding differs
from ours and between CPUs, so the tests check the facts (an answer, the key, the proxy, the process
tree), never the text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from jupyter_client.manager import start_new_kernel
from test_kernel_api import run

from jupyter_servers import free_port, wait_until
from jupyter_tt.errors import TTError
from jupyter_tt.serving.checkpoint import resolve
from jupyter_tt.serving.engines import llama_cpp_launch
from jupyter_tt.serving.notebook import serve

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import llama_server  # noqa: E402

LLAMA_SERVER = os.environ.get("JUPYTER_TT_LLAMA_SERVER") or (str(llama_server.binary()) if llama_server.binary().exists()
                                                              else None)
needs_llama_server = pytest.mark.skipif(
    LLAMA_SERVER is None and "JUPYTER_TT_REQUIRE_LLAMA_SERVER" not in os.environ,
    reason="llama-server is not built: python benchmarks/llama_server.py build (make test does)")
QUESTION = "What is the capital of France?"


@pytest.fixture
def llama(monkeypatch):
    if LLAMA_SERVER is None:
        raise RuntimeError("make test builds llama-server, and it is missing: python benchmarks/llama_server.py build")
    monkeypatch.setenv("JUPYTER_TT_LLAMA_SERVER", LLAMA_SERVER)
    return LLAMA_SERVER


@pytest.fixture
def kernel(monkeypatch, kernelspecs, llama):
    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "simulated:n300x4")
    km, client = start_new_kernel(kernel_name="tt-n300")
    yield km, client
    client.stop_channels()
    if km.is_alive():
        km.shutdown_kernel(now=True)


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_an_unknown_engine_and_a_missing_llama_server_say_what_to_do(monkeypatch):
    with pytest.raises(TTError, match="engine must be one of builtin, llama.cpp, not 'vllm-gpu'"):
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
    body = {"model": served_name, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 16}
    assert httpx.post(base_url + "/chat/completions", json=body, timeout=60).status_code == 401
    keyed = httpx.post(base_url + "/chat/completions", json=body, timeout=120, headers={"Authorization": f"Bearer {key}"})
    assert keyed.status_code == 200 and keyed.json()["choices"][0]["message"]["content"].strip()
    import openai

    # Through Jupyter, with the Jupyter token: the proxy adds the server's key.
    sdk = openai.OpenAI(base_url=f"{server.url}/{proxy_path}", api_key=server.token, max_retries=0)
    chunks = list(sdk.chat.completions.create(model=served_name, messages=body["messages"], temperature=0,
                                              max_tokens=16, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert httpx.get(f"{server.url}/{proxy_path}/models").status_code in (302, 401, 403)  # not without Jupyter's auth

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
                                 str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
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
        assert "cli-key" not in " ".join(psutil.Process(proc.pid).cmdline())
    finally:
        proc.kill()
        proc.wait()
