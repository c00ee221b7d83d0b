"""jupyter_tt.serve() inside a real kernel that holds a lease: serves, answers, and dies with the kernel."""

import json

import httpx
import psutil
import pytest
from jupyter_client.manager import start_new_kernel

from greedy import ANSWER, ANSWER_TOKENS, QUESTION
from jupyter_servers import kernel_environ, wait_until
from test_kernel_api import run

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
