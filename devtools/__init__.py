"""Development and test infrastructure, not the product (the UI image does not carry it).

- `devtools.cloudrun`: a local Cloud Run emulator in front of the engine (`python -m backend`).
- `devtools.fake_metadata`: a protocol-level fake of Google's metadata server and token endpoint.
- `devtools.testkit`: helpers the tests and the benchmarks share (processes, browser, fakes).
"""
