"""Helpers the tests and the benchmarks share: real processes, Chromium and page helpers,
the app in-process, protocol-level fakes of a breaking Ollama and of Google's servers."""
