"""The Jupyter server extension: REST API, lease events, Prometheus gauges."""
