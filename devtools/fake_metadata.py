"""A protocol-level fake of Google's metadata server and token endpoints (test/dev tool).

google-auth's real code talks to it exactly as it talks to the metadata server on Cloud Run:

- `GET /` with `Metadata-Flavor: Google`: the ping google-auth uses to detect GCE (it sends
  this to `GCE_METADATA_IP`); the answer carries `Metadata-Flavor: Google`.
- `GET /computeMetadata/v1/instance/service-accounts/default/?recursive=true` (account info),
  `.../default/email`, `.../default/token`, `/computeMetadata/v1/project/project-id`.
- `GET|POST /computeMetadata/v1/instance/service-accounts/default/identity?audience=A&format=full`:
  an RS256 ID token (`iss` https://accounts.google.com, `aud`, `azp`, `sub`, `iat`, `exp`, and
  with `format=full` also `email`, `email_verified`).
- `GET /oauth2/v1/certs`: `{key id: PEM x509 certificate}`, the format of Google's
  https://www.googleapis.com/oauth2/v1/certs that `google.oauth2.id_token.verify_token` reads.
- `POST /token`: Google's OAuth token endpoint for service-account key files
  (JWT-bearer grant); with a `target_audience` claim it answers `{"id_token": ...}`.
- `GET /_fake/stats`: how many ID tokens were issued, so tests can assert a single refresh.

Like the real server, `/computeMetadata/` answers 403 without `Metadata-Flavor: Google` or
with an `X-Forwarded-For` header. The signing key is generated at start and never leaves
the process; only certificates are served.

google-auth reads `GCE_METADATA_HOST` once, when `google.auth.compute_engine` is first
imported, and `GCE_METADATA_IP` at every ping: set both before the client process starts.

    python -m devtools.fake_metadata --port 8090
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from devtools.commandline import CommandLineSettings, parse

log = logging.getLogger(__name__)

GOOGLE_ISSUER = "https://accounts.google.com"
DEFAULT_EMAIL = "llm-chat-ui@fake-project.iam.gserviceaccount.com"
DEFAULT_PROJECT = "fake-project"
METADATA_PREFIX = "/computeMetadata/v1/"
CERTS_PATH = "/oauth2/v1/certs"
TOKEN_PATH = "/token"
STATS_PATH = "/_fake/stats"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs service-account assertions for Google's endpoint, whatever token_uri is.
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
# How long verifiers may cache the certificates (Google sends a few hours; short here so a
# rotated key is picked up quickly by a long-running emulator).
CERTS_MAX_AGE = 60


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private_pem: str
    certificate_pem: str

    @classmethod
    def generate(cls, common_name: str = "fake-metadata") -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(private, hashes.SHA256())
        )
        private_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return cls(
            key_id=secrets.token_hex(20),
            private_pem=private_pem,
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        )

    def signer(self) -> crypt.RSASigner:
        return crypt.RSASigner.from_string(self.private_pem, key_id=self.key_id)


def subject_id(email: str) -> str:
    """A stable numeric `sub` per account, shaped like Google's 21-digit ids."""
    return str(int(hashlib.sha256(email.encode()).hexdigest(), 16))[:21]


class FakeMetadataServer:
    """The fake server. Settings below may be changed while it runs (tests do)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        email: str = DEFAULT_EMAIL,
        token_lifetime: float = 3600.0,
        project_id: str = DEFAULT_PROJECT,
    ) -> None:
        self._lock = threading.Lock()
        self.email = email
        self.token_lifetime = token_lifetime
        self.project_id = project_id
        self.identity_delay = 0.0  # seconds to wait before answering an identity request
        self.identity_failure: int | None = None  # HTTP status to answer identity requests with
        self._keys: list[SigningKey] = [SigningKey.generate()]
        # Keys of the service-account key files handed out by `service_account_info`.
        self._account_keys: dict[str, str] = {}
        self._issued = 0
        self._issued_by_audience: dict[str, int] = {}
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- addresses ---------------------------------------------------------------------
    @property
    def host(self) -> str:
        """host:port, the value for GCE_METADATA_HOST and GCE_METADATA_IP."""
        addr, port = self._httpd.server_address[:2]
        host = addr.decode() if isinstance(addr, bytes) else str(addr)
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def certs_url(self) -> str:
        return self.url + CERTS_PATH

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    def env(self) -> dict[str, str]:
        """Environment that points google-auth in a client process at this server."""
        return {"GCE_METADATA_HOST": self.host, "GCE_METADATA_IP": self.host}

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeMetadataServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="fake-metadata",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() would wait forever for a loop never run
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> FakeMetadataServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- counters ----------------------------------------------------------------------
    @property
    def issued_tokens(self) -> int:
        """ID tokens handed out through the endpoints (not `mint_token`)."""
        with self._lock:
            return self._issued

    def issued_for(self, audience: str) -> int:
        with self._lock:
            return self._issued_by_audience.get(audience, 0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"issued_tokens": self._issued, "by_audience": dict(self._issued_by_audience)}

    def reset(self, *, email: str = DEFAULT_EMAIL, token_lifetime: float = 3600.0) -> None:
        """Zero the counters and restore the default behaviour (keys are kept)."""
        with self._lock:
            self._issued = 0
            self._issued_by_audience.clear()
            self.email = email
            self.token_lifetime = token_lifetime
            self.identity_delay = 0.0
            self.identity_failure = None

    # --- keys and tokens ---------------------------------------------------------------
    def certificates(self) -> dict[str, str]:
        with self._lock:
            return {key.key_id: key.certificate_pem for key in self._keys}

    def rotate_key(self, *, keep_old: bool = False) -> None:
        """Sign with a new key; without keep_old, tokens signed before no longer verify."""
        new_key = SigningKey.generate()
        with self._lock:
            self._keys = [new_key, *self._keys] if keep_old else [new_key]

    def mint_token(
        self,
        audience: str,
        *,
        email: str | None = None,
        lifetime: float | None = None,
        issued_at: float | None = None,
        issuer: str = GOOGLE_ISSUER,
        include_email: bool = True,
    ) -> str:
        """Sign an ID token directly (tests use it for expired or foreign tokens)."""
        with self._lock:
            key = self._keys[0]
            email = email or self.email
            lifetime = self.token_lifetime if lifetime is None else lifetime
        iat = int(time.time() if issued_at is None else issued_at)
        claims: dict[str, Any] = {
            "aud": audience,
            "azp": subject_id(email),
            "exp": int(iat + lifetime),
            "iat": iat,
            "iss": issuer,
            "sub": subject_id(email),
        }
        if include_email:
            claims.update(email=email, email_verified=True)
        return jwt.encode(key.signer(), claims).decode()

    def _issue(self, audience: str, *, email: str | None = None, include_email: bool) -> str:
        token = self.mint_token(audience, email=email, include_email=include_email)
        with self._lock:
            self._issued += 1
            self._issued_by_audience[audience] = self._issued_by_audience.get(audience, 0) + 1
        log.info("issued ID token #%d for audience %s", self._issued, audience)
        return token

    def service_account_info(self, email: str = DEFAULT_EMAIL) -> dict[str, str]:
        """Contents of a service-account key file whose token_uri is this server."""
        key = SigningKey.generate(common_name=email)
        with self._lock:
            self._account_keys[key.key_id] = key.certificate_pem
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": key.key_id,
            "private_key": key.private_pem,
            "client_email": email,
            "client_id": subject_id(email),
            "token_uri": self.token_url,
        }

    def _token_grant(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """OAuth token endpoint: verify the account's signed assertion, then issue."""
        if form.get("grant_type", [""])[0] != JWT_BEARER_GRANT:
            return 400, {"error": "unsupported_grant_type"}
        assertion = form.get("assertion", [""])[0]
        with self._lock:
            account_certs = dict(self._account_keys)
        try:
            claims = jwt.decode(
                assertion, certs=account_certs, audience=[GOOGLE_TOKEN_ENDPOINT, self.token_url]
            )
        except (ValueError, KeyError) as exc:
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        audience = claims.get("target_audience")
        if not audience:
            return 200, _access_token_payload()
        return 200, {"id_token": self._issue(audience, email=claims["iss"], include_email=True)}


def _access_token_payload() -> dict[str, Any]:
    # Only for completeness of the protocol: nothing here accepts these access tokens.
    access = "ya29.fake-" + secrets.token_urlsafe(24)
    return {"access_token": access, "expires_in": 3599, "token_type": "Bearer"}


def _make_handler(server: FakeMetadataServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "Metadata Server for VM"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            # Paths and statuses only: query strings hold no secrets, bodies are not logged.
            log.debug("%s %s", self.address_string(), format % args)

        def _send(
            self,
            status: int,
            body: str | bytes,
            content_type: str = "application/text",
            extra: dict[str, str] | None = None,
        ) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _send_json(
            self, status: int, payload: Any, extra: dict[str, str] | None = None
        ) -> None:
            self._send(status, json.dumps(payload), "application/json", extra)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self) -> None:
            self._route("GET", b"")

        def do_POST(self) -> None:
            self._route("POST", self._body())

        def _route(self, method: str, body: bytes) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            path = parsed.path
            query = urllib.parse.parse_qs(parsed.query)
            if path == "/":
                self._send(200, "computeMetadata/\n")
            elif path == CERTS_PATH:
                extra = {"Cache-Control": f"public, max-age={CERTS_MAX_AGE}"}
                self._send_json(200, server.certificates(), extra)
            elif path == TOKEN_PATH and method == "POST":
                status, payload = server._token_grant(urllib.parse.parse_qs(body.decode()))
                self._send_json(status, payload)
            elif path == STATS_PATH:
                self._send_json(200, server.stats())
            elif path.startswith(METADATA_PREFIX):
                self._metadata(method, path[len(METADATA_PREFIX) :], query)
            else:
                self._send(404, "Not Found\n", "text/html")

        def _metadata(self, method: str, path: str, query: dict[str, list[str]]) -> None:
            if self.headers.get("X-Forwarded-For"):
                self._send(403, "Request denied: X-Forwarded-For header present.\n", "text/html")
                return
            if self.headers.get("Metadata-Flavor") != "Google":
                self._send(
                    403,
                    "Your client does not have permission to get URL from this server. "
                    "Missing Metadata-Flavor:Google header.\n",
                    "text/html",
                )
                return
            accounts = "instance/service-accounts/"
            if path == "project/project-id":
                self._send(200, server.project_id)
                return
            if path == accounts:
                self._send(200, f"default/\n{server.email}/\n")
                return
            if not path.startswith(accounts):
                self._send(404, "Not Found\n", "text/html")
                return
            account, _, leaf = path[len(accounts) :].partition("/")
            if account not in ("default", server.email):
                self._send(404, "Not Found\n", "text/html")
                return
            handlers: dict[str, Callable[[], None]] = {
                "": lambda: self._account_info(query),
                "email": lambda: self._send(200, server.email),
                "aliases": lambda: self._send(200, "default\n"),
                "scopes": lambda: self._send(
                    200, "https://www.googleapis.com/auth/cloud-platform\n"
                ),
                "token": self._access_token,
                "identity": lambda: self._identity(query),
            }
            handler = handlers.get(leaf)
            if handler is None or (method == "POST" and leaf != "identity"):
                self._send(404, "Not Found\n", "text/html")
                return
            handler()

        def _account_info(self, query: dict[str, list[str]]) -> None:
            if query.get("recursive", [""])[0].lower() == "true":
                self._send_json(
                    200,
                    {
                        "aliases": ["default"],
                        "email": server.email,
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                    },
                )
            else:
                self._send(200, "aliases\nemail\nidentity\nscopes\ntoken\n")

        def _access_token(self) -> None:
            self._send_json(200, _access_token_payload())

        def _identity(self, query: dict[str, list[str]]) -> None:
            audience = query.get("audience", [""])[0]
            if not audience:
                self._send(400, "non-empty audience parameter required\n", "text/html")
                return
            if server.identity_delay > 0:
                time.sleep(server.identity_delay)
            failure = server.identity_failure
            if failure is not None:
                self._send(failure, "identity temporarily unavailable\n", "text/html")
                return
            full = query.get("format", ["standard"])[0] == "full"
            self._send(200, server._issue(audience, include_email=full), "text/html")

    return Handler


def start_fake_metadata(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    email: str = DEFAULT_EMAIL,
    token_lifetime: float = 3600.0,
) -> FakeMetadataServer:
    """Start the fake on a background thread; `.url`, `.certs_url`, `.env()`, `.stop()`."""
    return FakeMetadataServer(host, port, email=email, token_lifetime=token_lifetime).start()


def env_lines(server: FakeMetadataServer) -> list[str]:
    return [f"{name}={value}" for name, value in server.env().items()]


class CommandLine(CommandLineSettings):
    """Fake Google metadata server issuing real RS256 ID tokens (dev/test only)."""

    model_config = SettingsConfigDict(cli_prog_name="python -m devtools.fake_metadata")

    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8090, ge=0, le=65535, description="port (0 = any free port)")
    email: str = Field(DEFAULT_EMAIL, description="the service account it vouches for")
    token_lifetime: float = Field(3600.0, gt=0, description="ID token lifetime in seconds")


def main(argv: list[str] | None = None) -> None:
    args = parse(CommandLine, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = FakeMetadataServer(
        args.host, args.port, email=args.email, token_lifetime=args.token_lifetime
    )
    print("Fake metadata server; give a client process this environment:", flush=True)
    for line in env_lines(server):
        print(f"  {line}", flush=True)
    print(f"Certificates for verifiers: {server.certs_url}", flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
