"""Serving Llama-family models: checkpoints, the torch model, the engine, the OpenAI-compatible server."""
