"""Talking to the model backend: the Ollama client (one request funnel, one error table),
Google ID-token auth, the status watch and cost, the model list and labels, the embedded
engine."""
