"""Serving Llama-family models, by layer.

- ``engine/``: continuous batching over a paged KV cache (loop, scheduler, output stage, sampling)
  and the ``ModelRunner`` contract;
- ``backends/``: the registry of backends and weight formats, and one folder per backend (``torch``,
  the reference; ``openvino``, the fast CPU runner; ``ttnn``, Wormhole);
- ``openai.py``: the OpenAI-compatible HTTP layer; ``server.py``: a serving process;
- ``checkpoint.py``: GGUF files and Hugging Face folders; ``notebook.py``/``chat.py``: ``serve()`` and its widget.
"""
