"""jupyter_tt.serve() inside a real kernel that holds a lease: serves, answers, and dies with the kernel."""

import asyncio
import json
import os
import time

import httpx
import psutil
import pytest
import tornado.web
from jupyter_client.manager import start_new_kernel

from jupyter_tt.scheduler.processes import ProcessRef
from jupyter_tt.serving.notebook import registry_path
from tests.support.greedy import ANSWER, ANSWER_TOKENS, QUESTION
from tests.support.jupyter_servers import app_in_thread, kernel_environ, wait_until
from tests.support.kernels import run

pytestmark = pytest.mark.usefixtures("kernelspecs")


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setenv("JUPYTER_TT_INVENTORY", "simulated:n300x4")
    km, client = start_new_kernel(kernel_name="tt-n300")
    yield km, client
    client.stop_channels()
    if km.is_alive():
        km.shutdown_kernel(now=True)


def test_serve_in_a_kernel_answers_on_the_kernels_devices_and_stops_with_it(kernel):
    km, client = kernel
    out, _, error = run(client, "import jupyter_tt, json; llm = jupyter_tt.serve(); "
                                "print(json.dumps([llm.base_url, llm.process.pid, llm.api_key]))", timeout=300)
    assert error is None, error
    base_url, pid, key = json.loads(out)
    body = {"messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    reply = httpx.post(base_url + "/chat/completions", timeout=60, json=body, headers={"Authorization": f"Bearer {key}"}).json()
    assert reply["choices"][0]["message"]["content"] == ANSWER
    # Without its key, nobody: the server wants it on every /v1 route (vLLM's --api-key rule).
    refused = httpx.post(base_url + "/chat/completions", timeout=60, json=body)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(base_url + "/models", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert httpx.get(base_url.removesuffix("/v1") + "/health").status_code == 200  # probes stay open, as in vLLM
    # The key reached the server in its environment, never on its command line (other users read those in ps).
    assert key not in " ".join(psutil.Process(pid).cmdline())
    # The server listens on the socket the kernel bound before it started: no other process could take the port.
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    assert any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in psutil.Process(pid).net_connections())
    assert kernel_environ(pid)["TT_VISIBLE_DEVICES"] == ",".join(km.provisioner.lease.bdfs)

    km.shutdown_kernel(now=True)
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
               timeout=30, message="the model server to stop with its kernel")


def test_close_stops_the_server_and_a_bad_backend_says_why(kernel):
    _, client = kernel
    out, _, error = run(client, "import jupyter_tt; llm = jupyter_tt.serve(); llm.close(); print(llm.running, llm.process.returncode is not None)", timeout=300)
    assert error is None, error
    assert out.split() == ["False", "True"]
    _, _, error = run(client, "jupyter_tt.serve(backend='ttnn')", timeout=120)
    assert error["ename"] == "LeaseError" and "simulated inventory" in error["evalue"], error


def test_the_jupyter_server_proxies_a_kernels_model_with_its_authentication(kernel, servers):
    server = servers()
    _, client = kernel
    out, _, error = run(client, "import jupyter_tt; llm = jupyter_tt.serve(); print(llm.port, llm.proxy_path)", timeout=300)
    assert error is None, error
    port, proxy_path = out.split()
    import openai

    # The OpenAI SDK through Jupyter: the Jupyter token is the API key (sent as a bearer token).
    sdk = openai.OpenAI(base_url=f"{server.url}/{proxy_path}", api_key=server.token, max_retries=0)
    chunks = list(sdk.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": QUESTION}],
        temperature=0, stream=True,
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert httpx.get(f"{server.url}/{proxy_path}/models").status_code == 403  # no token
    other = server.get(f"/jupyter-tt/serve/{int(port) + 1}/v1/models")
    assert other.status_code == 404 and "jupyter_tt.serve()" in other.json()["message"]


def test_chat_widget_streams_the_answer_and_shows_ttft_and_tpot(kernel):
    _, client = kernel
    code = (
        "import jupyter_tt, json\n"
        "llm = jupyter_tt.serve()\n"
        "chat = llm.chat(temperature=0)\n"
        "display(chat)\n"
        f"chat.send({QUESTION!r}).join(120)\n"
        "print(json.dumps([chat.messages, chat.stats.value, chat.transcript.value, chat.send_button.disabled]))\n"
    )
    out, displays, error = run(client, code, timeout=300)
    assert error is None, error
    messages, stats, transcript, disabled = json.loads(out)
    assert messages[-1] == {"role": "assistant", "content": ANSWER}
    assert "TTFT" in stats and "TPOT" in stats and f"{ANSWER_TOKENS} tokens" in stats
    assert ANSWER in transcript and disabled is False
    assert any("application/vnd.jupyter.widget-view+json" in d for d in displays)


def test_the_benchmark_widget_measures_the_model_this_notebook_serves(kernel):
    _, client = kernel
    code = (
        "import jupyter_tt, json\n"
        "llm = jupyter_tt.serve()\n"
        "w = jupyter_tt.BenchmarkWidget(scenario='custom sweep', concurrency='1,2', input_len=32, output_len=8, num_prompts=4)\n"
        "display(w)\n"
        "w.run().join(300)\n"
        "print(json.dumps([llm.base_url, w.endpoint.value, w.model.value, w.status.value, w.bench.runs[-1]['completed'],"
        " [r['concurrency'] for r in w.bench.runs], w.bench.runs[0]['total_output_tokens'], w.results.value]))\n"
    )
    out, displays, error = run(client, code, timeout=400)
    assert error is None, error
    base_url, endpoint, model, status, completed, concurrencies, output_tokens, table = json.loads(out)
    assert endpoint == base_url and model == "smollm2-135m-instruct"  # the served model, by default
    assert status == "<small>done</small>" and completed == 4 and concurrencies == [1, 2]
    assert output_tokens == 4 * 8  # ignore_eos holds every output to 8 tokens
    assert "median_ttft_ms" in table
    assert any("application/vnd.jupyter.widget-view+json" in d for d in displays)


class Recorder(tornado.web.RequestHandler):
    """STAND-IN upstream for the proxy's own behaviour: records what reaches it; /v1/redirect redirects."""

    seen: list[dict] = []

    def get(self, path):
        Recorder.seen.append({"path": path, "query": self.request.query, "headers": dict(self.request.headers)})
        if path == "redirect":
            self.redirect("/v1/elsewhere")
        else:
            self.finish({"ok": True})


def register(port: int, **changes) -> None:
    """A registration as serve() writes it, naming this test process as the server."""
    ref = ProcessRef.current()
    entry = {"port": port, "pid": ref.pid, "started": ref.started, "boot_id": ref.boot_id, "api_key": "upstream-key",
             "model": "m", "backend": "torch", "kernel_pid": ref.pid, **changes}
    with open(registry_path(port), "w") as f:
        json.dump(entry, f)


def test_the_proxy_passes_no_jupyter_credentials_follows_no_redirect_and_checks_the_process(servers):
    server = servers()
    Recorder.seen = []
    with app_in_thread(tornado.web.Application([(r"/v1/(.*)", Recorder)])) as upstream:
        port = int(upstream.rsplit(":", 1)[1])
        register(port)
        base = f"{server.url}/jupyter-tt/serve/{port}/v1"
        # Authenticated by Jupyter's token in the query and a cookie, as a browser may be.
        response = httpx.get(f"{base}/models?token={server.token}&x=1", headers={"Cookie": "username-x=secret"})
        assert response.status_code == 200, response.text
        [seen] = Recorder.seen
        assert seen["query"] == "x=1"  # the token parameter stayed behind
        assert "Cookie" not in seen["headers"] and server.token not in json.dumps(seen)
        assert seen["headers"]["Authorization"] == "Bearer upstream-key"  # the model server's own key instead
        redirected = server.get(f"/jupyter-tt/serve/{port}/v1/redirect")
        assert redirected.status_code == 302 and [s["path"] for s in Recorder.seen] == ["models", "redirect"]
        # A registration whose process is not the one that runs under that PID now (a reused PID): refused.
        register(port, started=ProcessRef.current().started + 1)
        stale = server.get(f"/jupyter-tt/serve/{port}/v1/models")
        assert stale.status_code == 404 and len(Recorder.seen) == 2


def test_through_the_proxy_many_streams_run_at_once_and_a_closed_tab_stops_its_request(kernel, servers):
    server = servers()
    _, client = kernel
    out, _, error = run(client, "import jupyter_tt; llm = jupyter_tt.serve(); print(llm.port)", timeout=300)
    assert error is None, error
    port = int(out)
    url = f"{server.url}/jupyter-tt/serve/{port}/v1/completions"
    body = {"prompt": "Count:", "max_tokens": 64, "ignore_eos": True, "stream": True}

    async def streams(n):
        async with httpx.AsyncClient(headers=server.http.headers, timeout=120) as http:
            async def one():
                first = None
                async with http.stream("POST", url, json=body) as response:
                    lines = []
                    async for line in response.aiter_lines():
                        first = first or time.monotonic()
                        lines += [line] if line else []
                return response.status_code, lines, first, time.monotonic()
            return await asyncio.gather(*(one() for _ in range(n)))

    # 12 at once: more than tornado's default client allowed (10), fewer than the model server's batch (16).
    results = asyncio.run(streams(12))
    assert all(status == 200 and lines[-1] == "data: [DONE]" for status, lines, _, _ in results), results
    assert max(first for _, _, first, _ in results) < min(end for _, _, _, end in results)  # all streamed together
    # A browser tab that closes mid-answer: the model server stops generating for it.
    with server.http.stream("POST", url, json={**body, "max_tokens": 4000}) as response:
        for i, _ in enumerate(response.iter_lines()):
            if i > 4:
                break

    def idle():
        return "jupyter_tt_requests_running 0.0" in httpx.get(f"http://127.0.0.1:{port}/metrics").text

    wait_until(idle, timeout=20, message="the abandoned request to be cancelled")


def test_another_os_user_is_refused_by_a_served_model(kernel, alice):
    _, client = kernel
    out, _, error = run(client, "import jupyter_tt; llm = jupyter_tt.serve(); print(llm.base_url, llm.port)", timeout=300)
    assert error is None, error
    base_url, port = out.split()
    answer = alice.python(f"""
        import httpx
        print(httpx.get("{base_url}/models").status_code,
              httpx.post("{base_url}/chat/completions", json={{"messages": [{{"role": "user", "content": "hi"}}]}}).status_code,
              httpx.get("{base_url}/models", headers={{"Authorization": "Bearer guess"}}).status_code,
              httpx.get("{base_url.removesuffix('/v1')}/health").status_code)
        try:
            open({registry_path(int(port))!r})
        except PermissionError:
            print("registration: denied")
    """)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split("\n")[:2] == ["401 401 401 200", "registration: denied"]
    assert oct(os.stat(registry_path(int(port))).st_mode & 0o777) == "0o600"


def test_serve_on_a_port_another_process_holds_says_so_at_once():
    import socket

    from jupyter_tt import serve
    from jupyter_tt.errors import TTError

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(TTError, match=f"port {port} is taken on 127.0.0.1"):
            serve(port=port)
