"""A local Cloud Run emulator: an authenticating, scale-to-zero reverse proxy (test/dev tool).

It sits in front of the local engine (`python -m backend`) and behaves like Cloud Run where
the UI can tell the difference:

- IAM (`tokens.py`): every request needs `Authorization: Bearer <Google ID token>`, verified
  with google-auth (signature against `certs_url`, audience, expiry, issuer). Like Cloud Run
  it answers 403 when no token is sent, 401 with `WWW-Authenticate: Bearer
  error="invalid_token"` when the token does not verify, and 403 when a valid token's account
  is not an invoker. The token is not forwarded to the engine.
- Scale to zero (`instances.py`): after `idle_timeout` seconds without requests the engine
  process is stopped. The next request starts it again after `start_delay` seconds of
  emulated instance start and is held (not failed) until the engine answers; models then
  load lazily as in Ollama.
- Capacity (`capacity.py`): at most `max_instances * concurrency` requests in flight (one
  engine process stands for all instances); beyond that a request waits up to
  `queue_timeout` seconds, then gets 429 "Rate exceeded." with Retry-After.
- Request timeout (`proxy.py`): 504 "upstream request timeout" if the answer has not started
  within `request_timeout` seconds of arrival; a stream still running then is cut.
- Streams pass through chunk by chunk; a client disconnect closes the upstream request.
- `GET /_emulator/state` (no auth, does not wake the engine): state, in-flight, starts, ...

Settings: `config.py` (one pydantic-settings model, also the command line of `cli.py`).

    python -m devtools.cloudrun --port 8080 --start-delay 5 --idle-timeout 60 --metadata
"""

from devtools.cloudrun.config import EmulatorConfig, default_audiences
from devtools.cloudrun.proxy import STATE_PATH, CloudRunEmulator
from devtools.cloudrun.serve import RunningEmulator, build_emulator, start_emulator

__all__ = [
    "STATE_PATH",
    "CloudRunEmulator",
    "EmulatorConfig",
    "RunningEmulator",
    "build_emulator",
    "default_audiences",
    "start_emulator",
]
