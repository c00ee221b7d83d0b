"""``llm.chat()``: a chat widget that streams the answer and shows its TTFT and TPOT live."""

from __future__ import annotations

import html
import json
import threading
import time

import httpx
import ipywidgets as widgets


class ChatWidget(widgets.VBox):
    """A transcript, a prompt box and a Send button, talking to an OpenAI-compatible ``base_url``.

    ``send(text)`` does what the button does and returns the thread streaming the answer, so code
    (and tests) can wait for it. ``messages`` is the conversation so far.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, system: str | None = None,
                 temperature: float = 0.7, max_tokens: int = 512):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.temperature, self.max_tokens = temperature, max_tokens
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.transcript = widgets.HTML(layout=widgets.Layout(max_height="400px", overflow="auto"))
        self.prompt = widgets.Textarea(placeholder="Ask something, then Send", layout=widgets.Layout(width="100%"))
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stats = widgets.HTML(value=f"<small>{html.escape(model)}</small>")
        self.send_button.on_click(lambda _: self.send(self.prompt.value))
        super().__init__([self.transcript, self.prompt, widgets.HBox([self.send_button, self.stats])])
        self._render()

    def send(self, text: str) -> threading.Thread | None:
        text = text.strip()
        if not text:
            return None
        self.prompt.value = ""
        self.messages.append({"role": "user", "content": text})
        self.messages.append({"role": "assistant", "content": ""})
        self.send_button.disabled = True
        thread = threading.Thread(target=self._stream, daemon=True)
        thread.start()
        return thread

    def _stream(self) -> None:
        answer = self.messages[-1]
        body = {
            "model": self.model, "messages": self.messages[:-1], "stream": True, "stream_options": {"include_usage": True},
            "temperature": self.temperature, "max_tokens": self.max_tokens,
        }
        start, first, tokens = time.perf_counter(), None, 0
        try:
            with httpx.stream("POST", f"{self.base_url}/chat/completions", json=body, headers=self.headers, timeout=600) as response:
                if response.status_code != 200:
                    error = json.loads(response.read() or b"{}").get("error", {}).get("message", response.reason_phrase)
                    raise RuntimeError(error)
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    for choice in chunk.get("choices", []):
                        content = choice.get("delta", {}).get("content")
                        if content:
                            first = first or time.perf_counter()
                            answer["content"] += content
                            self._render()
                            self._show_stats(start, first, time.perf_counter(), None)
            self._show_stats(start, first, time.perf_counter(), tokens)
        except Exception as e:  # shown in the widget: a background thread has nowhere else to report
            answer["content"] += f"\n[error: {e}]"
            self._render()
        finally:
            self.send_button.disabled = False

    def _show_stats(self, start: float, first: float | None, now: float, tokens: int | None) -> None:
        parts = [html.escape(self.model)]
        if first is not None:
            parts.append(f"TTFT {(first - start) * 1000:.0f} ms")
        if tokens and tokens > 1 and first is not None:
            parts.append(f"TPOT {(now - first) * 1000 / (tokens - 1):.1f} ms")
            parts.append(f"{tokens} tokens")
        self.stats.value = "<small>" + " · ".join(parts) + "</small>"

    def _render(self) -> None:
        rows = []
        for m in self.messages:
            if m["role"] == "system":
                continue
            who = "You" if m["role"] == "user" else "Model"
            text = html.escape(m["content"]).replace("\n", "<br>")
            rows.append(f"<div style='margin:4px 0'><b>{who}:</b> {text}</div>")
        self.transcript.value = "".join(rows) or "<i>No messages yet.</i>"
