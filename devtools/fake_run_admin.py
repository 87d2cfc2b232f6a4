"""A recording fake of the Google APIs that `gcloud run deploy` talks to, for tests that run the
real gcloud against it (tests/test_deploy_gcloud.py).

It speaks just enough of three APIs, over plain HTTP, for gcloud 528 to finish its commands:
- Cloud Run Admin API v1, Knative surface (`/apis/serving.knative.dev/v1/namespaces/{project}/
  services[/{name}]`): GET answers 404 until a service exists; POST (create) and PUT (replace)
  store the Service gcloud sends and report it Ready at once, with a run.app-style URL;
  listing revisions answers an empty list;
- Cloud Run Admin API v1 IAM (`/v1/projects/{p}/locations/{r}/services/{s}:getIamPolicy` and
  `:setIamPolicy`);
- Service Usage (`/v1/projects/{p}/services/{api}`): every API is ENABLED.
Every request is recorded (method, Host header, path, JSON body) for the test to assert on.

gcloud reaches it through endpoint overrides (CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN=
http://<host>:<port>/ ...). For regional calls gcloud prefixes the region to the override's
host name (googlecloudsdk/command_lib/run/connection_context.py, DeriveRegionalEndpoint), so the
test also makes `<region>-<host>` resolve to 127.0.0.1 inside gcloud's Python; see
`resolver_shim()`.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Host names under this suffix resolve to 127.0.0.1 inside gcloud (resolver_shim()).
FAKE_DOMAIN = "fake-googleapis.test"

KNATIVE_SERVICE = re.compile(
    r"^/apis/serving\.knative\.dev/v1/namespaces/(?P<ns>[^/]+)/services(?:/(?P<name>[^/:]+))?$"
)
IAM_POLICY = re.compile(
    r"^/v1/projects/[^/]+/locations/[^/]+/services/(?P<name>[^/:]+):(?P<verb>getIamPolicy|setIamPolicy)$"
)
KNATIVE_REVISIONS = re.compile(
    r"^/apis/serving\.knative\.dev/v1/namespaces/(?P<ns>[^/]+)/revisions$"
)
SERVICE_USAGE = re.compile(r"^/v1/projects/(?P<project>[^/]+)/services/(?P<api>[^/:]+)$")


def resolver_shim() -> str:
    """A sitecustomize.py that makes every host under FAKE_DOMAIN resolve to 127.0.0.1.

    Put it in a directory on gcloud's PYTHONPATH (with CLOUDSDK_PYTHON_SITEPACKAGES=1, so that
    gcloud does not start Python with -S, which skips sitecustomize). Only that process and the
    fake's domain are affected; no hosts file changes.
    """
    return (
        "import socket\n"
        "_getaddrinfo = socket.getaddrinfo\n"
        "def _fake_getaddrinfo(host, *args, **kwargs):\n"
        f"    if isinstance(host, str) and host.endswith({FAKE_DOMAIN!r}):\n"
        "        host = '127.0.0.1'\n"
        "    return _getaddrinfo(host, *args, **kwargs)\n"
        "socket.getaddrinfo = _fake_getaddrinfo\n"
    )


@dataclass(frozen=True)
class Recorded:
    method: str
    host: str
    path: str  # without the query string
    body: Any  # parsed JSON, or None


class FakeRunAdmin:
    """The fake API server on 127.0.0.1; `endpoint` is what the overrides point at."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.services: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, payload: object) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path = self.path.split("?", 1)[0]
                with fake._lock:
                    fake.requests.append(
                        Recorded(self.command, self.headers.get("Host", ""), path, body)
                    )
                    status, payload = fake.answer(self.command, path, body)
                self.reply(status, payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{FAKE_DOMAIN}:{self.port}/"

    def start(self) -> FakeRunAdmin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url_of(self, name: str) -> str:
        return f"https://{name}-abc123-ew.a.run.app"

    # --- the APIs ---------------------------------------------------------------------------

    def answer(self, method: str, path: str, body: Any) -> tuple[int, object]:
        if match := KNATIVE_SERVICE.match(path):
            return self.knative(method, match.group("name"), body)
        if KNATIVE_REVISIONS.match(path) and method == "GET":
            return 200, {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "RevisionList",
                "items": [],
            }
        if match := IAM_POLICY.match(path):
            name = match.group("name")
            if match.group("verb") == "setIamPolicy":
                self.policies[name] = {**body["policy"], "etag": "BwYfakeEtag="}
            return 200, self.policies.get(name, {"etag": "ACAB"})
        if match := SERVICE_USAGE.match(path):
            return 200, {
                "name": f"projects/{match.group('project')}/services/{match.group('api')}",
                "state": "ENABLED",
            }
        return 404, not_found(f"the fake does not serve {method} {path}")

    def knative(self, method: str, name: str | None, body: Any) -> tuple[int, object]:
        if method == "GET" and name:
            if name not in self.services:
                return 404, not_found(f"Resource '{name}' of kind 'SERVICE' does not exist.")
            return 200, self.services[name]
        if method in ("POST", "PUT") and isinstance(body, dict):
            name = body["metadata"]["name"]
            previous = self.services.get(name)
            generation = previous["metadata"]["generation"] + 1 if previous else 1
            stored = copy.deepcopy(body)
            stored["metadata"]["generation"] = generation
            revision = f"{name}-{generation:05d}-abc"
            stored["status"] = {
                "observedGeneration": generation,
                "latestCreatedRevisionName": revision,
                "latestReadyRevisionName": revision,
                "url": self.url_of(name),
                "address": {"url": self.url_of(name)},
                "conditions": [
                    {"type": kind, "status": "True"}
                    for kind in ("Ready", "ConfigurationsReady", "RoutesReady")
                ],
                "traffic": [{"revisionName": revision, "percent": 100, "latestRevision": True}],
            }
            self.services[name] = stored
            return 200, stored
        return 404, not_found(f"the fake does not serve {method} on services")

    # --- what the tests read ----------------------------------------------------------------

    def sent_services(self, name: str) -> list[dict[str, Any]]:
        """Every Service body gcloud sent for `name` (create, then replaces), in order."""
        with self._lock:
            return [
                r.body
                for r in self.requests
                if r.method in ("POST", "PUT")
                and isinstance(r.body, dict)
                and r.body.get("kind") == "Service"
                and r.body["metadata"]["name"] == name
            ]


def not_found(message: str) -> dict[str, object]:
    return {"error": {"code": 404, "message": message, "status": "NOT_FOUND"}}
