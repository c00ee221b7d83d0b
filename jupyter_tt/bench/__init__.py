"""Benchmarking OpenAI-compatible servers."""
