"""UI -> backend auth: real google-auth fetching real RS256 ID tokens from the fake metadata
server, checked by the Cloud Run emulator (real google-auth verification) in front of the
real engine."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from devtools.cloudrun import RunningEmulator
from devtools.fake_metadata import FakeMetadataServer
from devtools.testkit.google_fakes import emulator, metadata_for_test
from devtools.testkit.procs import free_port
from ui.backend_access.auth import GoogleIdTokenAuth, auth_for, denied_message, root_url
from ui.backend_access.client import BackendClient
from ui.errors import BackendAuthError
from ui.settings import Settings

pytestmark = pytest.mark.timeout(120)

UI_ACCOUNT = "llm-chat-ui@fake-project.iam.gserviceaccount.com"


@pytest.fixture
def metadata(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMetadataServer]:
    with metadata_for_test(monkeypatch) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(engine: str) -> Iterator[RunningEmulator]:
    """Cloud Run emulator (IAM on, any Google account) in front of the shared engine.

    It does not cache the signing certificates, so a rotated-away key fails at once.
    """
    with emulator(upstream_url=engine, certs_cache_seconds=0) as running:
        yield running


def version(client: httpx.Client, service: RunningEmulator) -> httpx.Response:
    return client.get(service.url + "/api/version")


# --- choosing the auth -----------------------------------------------------------------------


def test_root_url_is_scheme_host_port() -> None:
    assert root_url("https://llm-gemma-abc-uc.a.run.app/api/chat") == (
        "https://llm-gemma-abc-uc.a.run.app"
    )
    assert root_url("HTTPS://Llm.Example.run.app:443/") == "https://llm.example.run.app"
    assert root_url("http://127.0.0.1:8080/x?y=1") == "http://127.0.0.1:8080"
    assert root_url("http://[::1]:8080/") == "http://[::1]:8080"
    with pytest.raises(ValueError, match="http"):
        root_url("ftp://files.example")


def test_auth_for_follows_the_auth_setting() -> None:
    run_url = "https://llm-llama-xyz-ew.a.run.app/api"
    assert auth_for(Settings(auth="none"), run_url) is None
    assert auth_for(Settings(auth="auto"), "http://127.0.0.1:11434") is None

    auto = auth_for(Settings(auth="auto"), run_url)
    assert isinstance(auto, GoogleIdTokenAuth)
    assert auto.audience == "https://llm-llama-xyz-ew.a.run.app"
    # One token cache per audience, however often the client asks.
    assert auth_for(Settings(auth="google"), run_url + "/chat") is auto

    local = auth_for(Settings(auth="google"), "http://127.0.0.1:8080")
    assert isinstance(local, GoogleIdTokenAuth)
    assert local.audience == "http://127.0.0.1:8080"

    custom = auth_for(Settings(auth="google", auth_audience="https://custom.example"), run_url)
    assert isinstance(custom, GoogleIdTokenAuth)
    assert custom.audience == "https://custom.example"


def test_bad_audience_and_margins_are_named() -> None:
    with pytest.raises(ValueError, match="audience"):
        GoogleIdTokenAuth("llm.example.run.app")
    with pytest.raises(ValueError, match="refresh_margin"):
        GoogleIdTokenAuth("https://x.run.app", refresh_margin=-1)


def test_denied_message_names_the_likely_cause() -> None:
    audience = "https://llm-abc.a.run.app"
    forbidden = denied_message(403, audience)
    assert "roles/run.invoker" in forbidden and audience in forbidden
    unauthorized = denied_message(401, audience)
    assert "audience" in unauthorized and "LLM_AUTH_AUDIENCE" in unauthorized


# --- tokens from the metadata server ---------------------------------------------------------


def test_token_passes_the_proxy_and_is_cached(
    metadata: FakeMetadataServer, guarded: RunningEmulator
) -> None:
    auth = GoogleIdTokenAuth(guarded.url)
    with httpx.Client(auth=auth, timeout=30) as client:
        statuses = [version(client, guarded).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert metadata.issued_for(guarded.url) == 1
    assert auth.fetch_count == 1


def test_expiring_token_is_refreshed(
    metadata: FakeMetadataServer, guarded: RunningEmulator
) -> None:
    metadata.token_lifetime = 4
    auth = GoogleIdTokenAuth(guarded.url, refresh_margin=3)
    with httpx.Client(auth=auth, timeout=30) as client:
        assert version(client, guarded).status_code == 200
        first = auth.get_token()
        assert version(client, guarded).status_code == 200
        assert metadata.issued_for(guarded.url) == 1
        # The margin is capped at half the token's life: stale after at most 2.5 s.
        threading.Event().wait(2.6)
        assert version(client, guarded).status_code == 200
    assert metadata.issued_for(guarded.url) == 2
    assert auth.get_token() != first


def test_concurrent_threads_share_one_fetch(
    metadata: FakeMetadataServer, guarded: RunningEmulator
) -> None:
    metadata.identity_delay = 0.5  # all threads arrive while the one fetch is under way
    auth = GoogleIdTokenAuth(guarded.url)
    start = threading.Barrier(8)

    def call(_: int) -> int:
        start.wait(timeout=10)
        with httpx.Client(auth=auth, timeout=30) as client:
            return version(client, guarded).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(8)))
    assert statuses == [200] * 8
    assert metadata.issued_for(guarded.url) == 1


def test_concurrent_tasks_share_one_fetch(
    metadata: FakeMetadataServer, guarded: RunningEmulator
) -> None:
    metadata.identity_delay = 0.5
    auth = GoogleIdTokenAuth(guarded.url)

    async def calls() -> list[int]:
        async with httpx.AsyncClient(auth=auth, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.get(guarded.url + "/api/version") for _ in range(8))
            )
        return [r.status_code for r in responses]

    assert asyncio.run(calls()) == [200] * 8
    assert metadata.issued_for(guarded.url) == 1


def test_rejected_token_is_refreshed_once_and_retried(
    metadata: FakeMetadataServer, guarded: RunningEmulator
) -> None:
    auth = GoogleIdTokenAuth(guarded.url)
    with httpx.Client(auth=auth, timeout=30) as client:
        assert version(client, guarded).status_code == 200
        metadata.rotate_key()  # the cached token's signing key is revoked
        response = version(client, guarded)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert metadata.issued_for(guarded.url) == 2


def test_rejected_token_is_refreshed_once_and_retried_async(
    metadata: FakeMetadataServer, guarded: RunningEmulator
) -> None:
    auth = GoogleIdTokenAuth(guarded.url)

    async def calls() -> httpx.Response:
        async with httpx.AsyncClient(auth=auth, timeout=30) as client:
            assert (await client.get(guarded.url + "/api/version")).status_code == 200
            metadata.rotate_key()
            return await client.get(guarded.url + "/api/version")

    response = asyncio.run(calls())
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert metadata.issued_for(guarded.url) == 2


def test_second_denial_goes_back_to_the_caller(metadata: FakeMetadataServer, engine: str) -> None:
    with emulator(upstream_url=engine, invokers=frozenset({"someone-else@x.iam"})) as service:
        auth = GoogleIdTokenAuth(service.url)
        with httpx.Client(auth=auth, timeout=30) as client:
            response = version(client, service)
    assert response.status_code == 403
    assert [r.status_code for r in response.history] == [403]
    assert metadata.issued_for(service.url) == 2  # one refresh, no more


def test_wrong_audience_is_refused_with_401(
    metadata: FakeMetadataServer, guarded: RunningEmulator
) -> None:
    auth = GoogleIdTokenAuth("https://some-other-service.a.run.app")
    with httpx.Client(auth=auth, timeout=30) as client:
        response = version(client, guarded)
    assert response.status_code == 401
    assert "invalid_token" in response.headers["www-authenticate"]
    assert metadata.issued_for("https://some-other-service.a.run.app") == 2


# --- other credential sources, and no credentials --------------------------------------------


def test_service_account_key_file_is_used(
    metadata: FakeMetadataServer,
    engine: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    account = "ui-runner@fake-project.iam.gserviceaccount.com"
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(metadata.service_account_info(account)))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    with (
        emulator(upstream_url=engine, invokers=frozenset({account})) as service,
        httpx.Client(auth=GoogleIdTokenAuth(service.url), timeout=30) as client,
    ):
        response = version(client, service)
    assert response.status_code == 200  # only that account may invoke
    assert metadata.issued_for(service.url) == 1


def test_no_credentials_at_all_raises_backend_auth_error(
    metadata: FakeMetadataServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens where google-auth pings for a metadata server: not on Google Cloud.
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{free_port()}")
    auth = GoogleIdTokenAuth("https://llm.example.a.run.app", fetch_timeout=2)
    with httpx.Client(auth=auth, timeout=5) as client, pytest.raises(BackendAuthError) as err:
        client.get("https://llm.example.a.run.app/api/version")
    message = err.value.user_message
    assert err.value.status_code is None
    # Users get a plain message; what to set is for operators, in the log.
    assert "setup problem on the server" in message and "run.app" not in message
    for hint in ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "LLM_AUTH=none"):
        assert hint not in message and hint in caplog.text
    assert metadata.issued_tokens == 0


def test_missing_key_file_is_named(
    metadata: FakeMetadataServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    auth = GoogleIdTokenAuth("https://llm.example.a.run.app")
    with pytest.raises(BackendAuthError, match="setup problem on the server"):
        auth.get_token()
    assert "GOOGLE_APPLICATION_CREDENTIALS path" in caplog.text  # for the operator


# --- the backend client: chats and probes carry the token ----------------------------------


def test_backend_client_probe_and_lists_pass_with_one_token(
    metadata: FakeMetadataServer, guarded: RunningEmulator
) -> None:
    async def calls() -> tuple[str, list[str], list[str]]:
        client = BackendClient(Settings(backend_url=guarded.url, auth="google"))
        try:
            version = await client.probe()  # its own httpx client, the same auth
            listed = [m.name for m in await client.list_models()]
            running = [m.name for m in await client.running_models()]
            return version, listed, running
        finally:
            await client.aclose()

    version, listed, running = asyncio.run(calls())
    assert version and version != "unknown"
    assert "smollm2:135m" in listed
    assert isinstance(running, list)
    # One token cache for both clients (none fetched if this process's shared auth for the
    # audience already holds one).
    assert metadata.issued_for(guarded.url) <= 1


def test_backend_client_denied_probe_is_a_setup_problem(
    metadata: FakeMetadataServer, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    with emulator(upstream_url=engine, invokers=frozenset({"someone-else@x.iam"})) as service:

        async def probe() -> str:
            client = BackendClient(Settings(backend_url=service.url, auth="google"))
            try:
                return await client.probe()
            finally:
                await client.aclose()

        with pytest.raises(BackendAuthError) as info:
            asyncio.run(probe())
    assert info.value.status_code == 403
    assert "setup problem on the server" in info.value.user_message
    assert service.url not in info.value.user_message
    assert denied_message(403, service.url) in caplog.text  # for the operator


# --- the token stays secret ------------------------------------------------------------------


def test_token_never_reaches_logs_or_reprs(
    metadata: FakeMetadataServer, guarded: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = GoogleIdTokenAuth(guarded.url)
    with httpx.Client(auth=auth, timeout=30) as client:
        assert version(client, guarded).status_code == 200
        old = auth.get_token()
        metadata.rotate_key()  # the 401-and-retry path logs too
        assert version(client, guarded).status_code == 200
    new = auth.get_token()
    logged = caplog.text
    assert "ID token" in logged  # the fetches were logged...
    for token in (old, new):
        assert token not in logged  # ...without the tokens
        assert token.split(".")[2] not in logged
        assert token not in repr(auth)
