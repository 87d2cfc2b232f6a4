"""The Cloud Run emulator: IAM answers, held cold starts, scale to zero, 429 beyond capacity,
request timeout, streaming and client disconnects, against the real engine and real
google-auth verification of tokens from the fake metadata server."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from devtools.cloudrun import RunningEmulator
from devtools.cloudrun.cli import CommandLine
from devtools.commandline import parse
from devtools.fake_metadata import FakeMetadataServer, SigningKey
from devtools.testkit.google_fakes import bearer, emulator, shared_metadata, wait_until
from devtools.testkit.procs import ARTIFACTS, Proc, free_port, wait_http

pytestmark = pytest.mark.timeout(120)

UI_ACCOUNT = "llm-chat-ui@fake-project.iam.gserviceaccount.com"
START_DELAY = 2.0
IDLE_TIMEOUT = 2.0
# Greedy decoding of the base model keeps going (no early end of text) for hundreds of
# tokens: a stream that is still running whenever the test acts on it.
LONG_STREAM = {
    "model": "gemma3:270m",
    "prompt": "Once upon a time",
    "raw": True,
    "options": {"num_predict": 2000, "temperature": 0},
}


@pytest.fixture(scope="module")
def md() -> FakeMetadataServer:
    return shared_metadata()


@pytest.fixture(scope="module")
def guarded(engine: str) -> Iterator[RunningEmulator]:
    """IAM in front of the shared (always-on) engine; only the UI account may invoke."""
    with emulator(upstream_url=engine, invokers=frozenset({UI_ACCOUNT})) as running:
        yield running


@pytest.fixture(scope="module")
def warm_gemma(engine: str) -> None:
    """Load the base model before timing-sensitive streams (directly, without the proxy)."""
    body = {**LONG_STREAM, "stream": False, "options": {"num_predict": 1}}
    response = httpx.post(engine + "/api/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def cold_service() -> Iterator[RunningEmulator]:
    """A scale-to-zero service managing its own engine: one instance, one request at a time."""
    with emulator(
        start_delay=START_DELAY,
        idle_timeout=IDLE_TIMEOUT,
        max_instances=1,
        concurrency=1,
        queue_timeout=0.5,
        request_timeout=60,
        engine_log=ARTIFACTS / "cloudrun-engine.log",
        engine_args=("--num-parallel", "1"),
    ) as running:
        yield running


def wait_cold(service: RunningEmulator) -> dict:
    wait_until(lambda: service.state()["state"] == "cold", IDLE_TIMEOUT + 15, "scale to zero")
    return service.state()


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- IAM -------------------------------------------------------------------------------------


def test_valid_token_passes(guarded: RunningEmulator, md: FakeMetadataServer) -> None:
    response = httpx.get(
        guarded.url + "/api/version", headers=bearer(md.mint_token(guarded.url)), timeout=30
    )
    assert response.status_code == 200
    assert "version" in response.json()
    # Both spellings of the local service URL are accepted audiences, like Cloud Run's URLs.
    localhost = guarded.url.replace("127.0.0.1", "localhost")
    response = httpx.get(
        guarded.url + "/api/version", headers=bearer(md.mint_token(localhost)), timeout=30
    )
    assert response.status_code == 200


def test_missing_token_is_forbidden_like_cloud_run(guarded: RunningEmulator) -> None:
    response = httpx.get(guarded.url + "/api/tags", timeout=30)
    assert response.status_code == 403
    assert "Your client does not have permission to get URL <code>/api/tags</code>" in (
        response.text
    )
    response = httpx.get(guarded.url + "/api/tags", headers={"Authorization": "Basic x"})
    assert response.status_code == 401


def test_a_rotated_signing_key_is_fetched_while_certificates_are_cached(
    guarded: RunningEmulator, md: FakeMetadataServer
) -> None:
    """The fake's certificates may be cached for 60 s; a token with a key id they lack makes
    the emulator fetch them again (at most once a second), as Google's verifiers do."""
    url = guarded.url + "/api/version"
    assert httpx.get(url, headers=bearer(md.mint_token(guarded.url)), timeout=30).is_success
    md.rotate_key(keep_old=True)
    time.sleep(1.1)  # past the refetch interval since the certificates were cached
    response = httpx.get(url, headers=bearer(md.mint_token(guarded.url)), timeout=30)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("case", ["wrong audience", "expired", "bad signature", "not google"])
def test_invalid_tokens_are_unauthorized(
    case: str, guarded: RunningEmulator, md: FakeMetadataServer
) -> None:
    if case == "wrong audience":
        token = md.mint_token("https://another-service.a.run.app")
    elif case == "expired":
        token = md.mint_token(guarded.url, lifetime=600, issued_at=time.time() - 3600)
    elif case == "bad signature":
        # The real key id and claims, signed by another key.
        header, payload, _ = md.mint_token(guarded.url).split(".")
        forged = SigningKey.generate().signer().sign(f"{header}.{payload}".encode())
        token = f"{header}.{payload}." + base64.urlsafe_b64encode(forged).decode().rstrip("=")
    else:
        token = md.mint_token(guarded.url, issuer="https://issuer.example")
    response = httpx.get(guarded.url + "/api/version", headers=bearer(token), timeout=30)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert "Error: Unauthorized" in response.text


def test_token_of_a_non_invoker_is_forbidden(
    guarded: RunningEmulator, md: FakeMetadataServer
) -> None:
    token = md.mint_token(guarded.url, email="intruder@other-project.iam.gserviceaccount.com")
    response = httpx.get(guarded.url + "/api/version", headers=bearer(token), timeout=30)
    assert response.status_code == 403
    assert "Error: Forbidden" in response.text


def test_rejected_tokens_stay_out_of_logs(
    guarded: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "not-a-jwt-but-still-a-secret"
    response = httpx.get(guarded.url + "/api/version", headers=bearer(secret), timeout=30)
    assert response.status_code == 401
    assert "401 for /api/version" in caplog.text
    assert secret not in caplog.text


def test_unauthenticated_service_needs_no_token(engine: str) -> None:
    with emulator(upstream_url=engine, allow_unauthenticated=True, certs_url=None) as service:
        assert httpx.get(service.url + "/api/version", timeout=30).status_code == 200


# --- streaming through the front end ---------------------------------------------------------


def test_stream_passes_through_and_disconnect_closes_upstream(
    guarded: RunningEmulator, md: FakeMetadataServer, warm_gemma: None
) -> None:
    headers = bearer(md.mint_token(guarded.url))
    before = guarded.state()["counters"].get("client_disconnects", 0)
    with httpx.stream(
        "POST", guarded.url + "/api/generate", json=LONG_STREAM, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = response.iter_lines()  # one iterator: dropping it would close the response
        first = json.loads(next(lines))
        # The first line is here while the generation is still running upstream.
        assert first["done"] is False
        assert guarded.state()["in_flight"] == 1
        assert json.loads(next(lines))["done"] is False
    wait_until(
        lambda: guarded.state()["counters"].get("client_disconnects", 0) == before + 1,
        10,
        "the proxy to see the disconnect",
    )
    assert guarded.state()["in_flight"] == 0


def test_request_timeout_cuts_a_running_stream(
    engine: str, md: FakeMetadataServer, warm_gemma: None
) -> None:
    with emulator(upstream_url=engine, request_timeout=3) as service:
        headers = bearer(md.mint_token(service.url))
        lines: list[dict] = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream(
                "POST", service.url + "/api/generate", json=LONG_STREAM, headers=headers, timeout=60
            ) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(json.loads(line))
        assert lines and not any(line["done"] for line in lines)
        assert service.state()["counters"]["504"] == 1


def test_request_timeout_before_an_answer_is_504(md: FakeMetadataServer) -> None:
    # The emulated instance start alone outlasts the request timeout.
    with emulator(start_delay=30, request_timeout=1) as service:
        headers = bearer(md.mint_token(service.url))
        response = httpx.get(service.url + "/api/version", headers=headers, timeout=30)
        assert response.status_code == 504
        assert response.text == "upstream request timeout"
        assert service.state()["state"] == "starting"  # the start goes on, as on Cloud Run


# --- scale to zero and capacity --------------------------------------------------------------


def test_cold_request_is_held_then_idle_instance_scales_to_zero(
    cold_service: RunningEmulator, md: FakeMetadataServer
) -> None:
    before = wait_cold(cold_service)
    assert before["engine_pid"] is None
    response = httpx.post(
        cold_service.url + "/api/chat",
        json={
            "model": "smollm2:135m",
            "messages": [{"role": "user", "content": "Say hi."}],
            "stream": False,
            "options": {"num_predict": 4, "temperature": 0},
        },
        headers=bearer(md.mint_token(cold_service.url)),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["done"] is True
    state = cold_service.state()
    assert state["state"] == "ready"
    assert state["starts"] == before["starts"] + 1
    assert state["last_start_seconds"] >= START_DELAY  # the request waited for the start
    pid = state["engine_pid"]
    assert pid is not None and pid_running(pid)

    after = wait_cold(cold_service)
    assert after["stops"] == before["stops"] + 1
    assert after["engine_pid"] is None
    assert not pid_running(pid)


def test_beyond_capacity_is_429_until_capacity_frees(
    cold_service: RunningEmulator, md: FakeMetadataServer
) -> None:
    wait_cold(cold_service)
    headers = bearer(md.mint_token(cold_service.url))
    url = cold_service.url + "/api/version"
    with ThreadPoolExecutor(1) as pool:
        # Held by the cold start, this request occupies the only slot for ~START_DELAY s.
        first = pool.submit(httpx.get, url, headers=headers, timeout=60)
        wait_until(lambda: cold_service.state()["in_flight"] == 1, 10, "the first request")
        rejected = httpx.get(url, headers=headers, timeout=30)
        assert rejected.status_code == 429
        assert rejected.text == "Rate exceeded."
        assert int(rejected.headers["retry-after"]) >= 1
        assert first.result(timeout=60).status_code == 200
    assert httpx.get(url, headers=headers, timeout=30).status_code == 200
    assert cold_service.state()["counters"]["429"] == 1


def test_client_leaving_a_held_request_frees_its_slot(
    cold_service: RunningEmulator, md: FakeMetadataServer
) -> None:
    wait_cold(cold_service)
    headers = bearer(md.mint_token(cold_service.url))
    url = cold_service.url + "/api/version"
    before = cold_service.state()["counters"].get("client_disconnects", 0)
    with pytest.raises(httpx.ReadTimeout):  # gives up during the cold start
        httpx.get(url, headers=headers, timeout=httpx.Timeout(5.0, read=0.3))
    wait_until(lambda: cold_service.state()["in_flight"] == 0, 5, "the slot to be freed")
    state = cold_service.state()
    assert state["counters"]["client_disconnects"] == before + 1
    assert state["state"] == "starting"  # the instance start goes on regardless
    # The only slot is free again: the next request is held for the start, not refused.
    assert httpx.get(url, headers=headers, timeout=60).status_code == 200


# --- the command line ------------------------------------------------------------------------


def test_cli_flags_are_the_settings_model(capsys: pytest.CaptureFixture[str]) -> None:
    # `make run-cold`'s flags, and the benchmark's (--engine-args is one shell string).
    cold = parse(CommandLine, [
        "--port", "8080", "--start-delay", "5", "--idle-timeout", "60", "--max-instances", "1",
        "--concurrency", "4", "--queue-timeout", "10", "--request-timeout", "300",
        "--metadata", "--metadata-port", "8090",
    ])  # fmt: skip
    assert (cold.port, cold.start_delay, cold.capacity, cold.metadata) == (8080, 5, 4, True)
    assert cold.require_auth and cold.certs_url is None  # the metadata server provides them
    bench = parse(CommandLine, [
        "--allow-unauthenticated", "--engine-args", "--num-parallel 1", "--upstream", "http://x/",
        "--invoker", "a@x.iam", "--invoker", "b@x.iam",
    ])  # fmt: skip
    assert bench.engine_args == ("--num-parallel", "1") and not bench.require_auth
    assert bench.upstream_url == "http://x" and bench.invokers == {"a@x.iam", "b@x.iam"}
    with pytest.raises(SystemExit) as exited:
        parse(CommandLine, ["--start-delay", "-1", "--concurrency", "0"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--start-delay: Input should be greater than or equal to 0" in error
    assert "--concurrency: Input should be greater than or equal to 1" in error
    with pytest.raises(SystemExit):
        parse(CommandLine, [])  # authentication on, and nothing to verify tokens with
    assert "certs_url is required" in capsys.readouterr().err


def test_cli_runs_with_its_own_metadata_server() -> None:
    port = free_port()
    env_file = ARTIFACTS / "cloudrun-cli.env"
    proc = Proc(
        "cloudrun-cli",
        [
            sys.executable,
            "-m",
            "devtools.cloudrun",
            "--port",
            str(port),
            "--start-delay",
            "0",
            "--metadata",
            "--env-file",
            str(env_file),
        ],
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/_emulator/state", timeout=30, proc=proc.popen)
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert env["LLM_BACKEND_URL"] == f"http://127.0.0.1:{port}"
        assert env["LLM_AUTH"] == "google"
        assert env["GCE_METADATA_HOST"] == env["GCE_METADATA_IP"]
        # The printed metadata server issues tokens the emulator accepts.
        identity = httpx.get(
            f"http://{env['GCE_METADATA_HOST']}/computeMetadata/v1/instance/service-accounts/"
            "default/identity",
            params={"audience": env["LLM_BACKEND_URL"], "format": "full"},
            headers={"Metadata-Flavor": "Google"},
            timeout=10,
        )
        assert identity.status_code == 200
        state = httpx.get(f"http://127.0.0.1:{port}/_emulator/state", timeout=10).json()
        assert state["state"] == "cold" and state["starts"] == 0
        denied = httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=10)
        assert denied.status_code == 403
        assert "GCE_METADATA_HOST=" in proc.log()  # also printed for a person
    finally:
        proc.stop()
