"""ASGI middleware and per-client limits in front of Gradio: request limits, security
headers, event streams, rate limits."""
