"""The emulator's HTTP front door: one port, every API under its own prefix, plus the control plane.

Mounts (``base`` = ``http://127.0.0.1:PORT``):

=====================  ==========================================================================
``base/serviceusage``   Service Usage v1 (GAPIC ``api_endpoint``)
``base/resourcemanager`` Resource Manager v3
``base/artifactregistry`` Artifact Registry v1
``base/cloudbuild``     Cloud Build v1
``base/secretmanager``  Secret Manager v1
``base/run``            Cloud Run Admin v2
``base/sqladmin/``      Cloud SQL Admin v1 (googleapiclient ``api_endpoint``, trailing slash)
``base/iam/``           IAM v1 (googleapiclient)
``base/logging/``       Cloud Logging v2 (googleapiclient)
``base/iap/``           Cloud Identity-Aware Proxy v1 (googleapiclient); ``base/serviceusage/`` serves
                        Service Usage v1beta1's generateServiceIdentity to googleapiclient too
``base``                Cloud Storage JSON API (``STORAGE_EMULATOR_HOST``) and Docker Engine API
                        (``DOCKER_HOST=tcp://127.0.0.1:PORT``)
``base/_emulator``      control plane (reset, settings, request log, projects), and Google's identity:
                        ``/_emulator/oauth2/token`` (the OAuth 2.0 token endpoint), ``/_emulator/oauth2/v1/certs``,
                        ``/_emulator/identities`` (credential files), ``/_emulator/iap/...`` (IAP's keys,
                        assertions and the sign-in page); see ``apis/oauth2.py`` and ``apis/iap.py``
=====================  ==========================================================================
"""

from __future__ import annotations

import importlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from .core import permissions
from .core.control import Settings
from .core.errors import GcpError
from .core.http import ApiModule, ApiRequest, Route, error_response, json_response
from .core.world import World

# name -> "module:Class". Every one must load: an absent API is an error, never silently skipped.
API_MODULES: dict[str, str] = {
    "serviceusage": "mlflow_gcp.emulator.apis.serviceusage:ServiceUsageApi",
    "resourcemanager": "mlflow_gcp.emulator.apis.resourcemanager:ResourceManagerApi",
    "secretmanager": "mlflow_gcp.emulator.apis.secretmanager:SecretManagerApi",
    "iam": "mlflow_gcp.emulator.apis.iam:IamApi",
    "artifactregistry": "mlflow_gcp.emulator.apis.artifactregistry:ArtifactRegistryApi",
    "docker": "mlflow_gcp.emulator.apis.docker_engine:DockerEngineApi",
    "cloudbuild": "mlflow_gcp.emulator.apis.cloudbuild:CloudBuildApi",
    "logging": "mlflow_gcp.emulator.apis.logging:LoggingApi",
    "oauth2": "mlflow_gcp.emulator.apis.oauth2:OAuth2Api",
    "iap": "mlflow_gcp.emulator.apis.iap:IapApi",
    "sqladmin": "mlflow_gcp.emulator.apis.sqladmin:SqlAdminApi",
    "storage": "mlflow_gcp.emulator.apis.storage:StorageApi",
    "run": "mlflow_gcp.emulator.apis.run:CloudRunApi",
}

DEFAULT_PROJECT = "mlflow-local"
#: Control-plane paths served by a module other than the one they are named after.
_ADMIN_OWNERS = {"identities": "oauth2"}


def load_modules(world: World) -> None:
    for name, target in API_MODULES.items():
        module_name, cls_name = target.split(":")
        world.apis[name] = getattr(importlib.import_module(module_name), cls_name)(world)


class EmulatorApp:
    """The WSGI application: control plane, then each API by prefix."""

    def __init__(self, world: World) -> None:
        self.world = world
        # Longest prefix first; root-mounted modules last.
        self.mounts = sorted(world.apis.items(), key=lambda kv: -len(kv[1].prefix))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path.startswith("/_emulator/"):
            response = self.admin(request)
        else:
            response = self.dispatch(request, environ)
        return response(environ, start_response)

    def resolve(self, method: str, path: str) -> tuple[str, ApiModule, Route, dict[str, str]] | None:
        for name, module in self.mounts:
            prefix = module.prefix
            if prefix and not (path == prefix or path.startswith(prefix + "/")):
                continue
            found = module.match(method, path[len(prefix) :] or "/")
            if found:
                return name, module, *found
        return None

    def dispatch(self, request: Request, environ: dict[str, Any]) -> Response:
        arrived = environ.get("mlflow_gcp.arrived") or time.time()
        world = self.world
        api, route_name, mutating = "", "", False
        style = "both"
        try:
            resolved = self.resolve(request.method, request.path)
            if resolved is None:
                raise GcpError(404, f"The requested URL {request.path} was not found on this server.", "NOT_FOUND")
            api, module, route, params = resolved
            route_name, mutating, style = route.name, route.mutating, module.error_style
            fault = world.control.maybe_fault(api, route.name)
            if fault is not None:
                raise fault
            if (denied := world.control.settings.denied_permissions) and (
                needed := permissions.permission(api, route.name)
            ) in denied:
                raise permissions.denied(api, module.service, needed, request.path)
            if delay := world.control.delay("request"):
                time.sleep(delay)
            if route.check_service and module.service and "project" in params:
                world.require_enabled(params["project"], module.service, module.title)
            result = route.handler(ApiRequest(request, params, route))
            response = self._to_response(result)
        except GcpError as err:
            response = error_response(err, style)
        ordinal, action = world.control.count_mutation() if mutating and route_name else (None, None)
        world.control.record(
            {
                "started_at": round(arrived, 6),
                "api": api,
                "route": route_name,
                "method": request.method,
                "path": request.full_path.rstrip("?"),
                "status": response.status_code,
                "request_bytes": request.content_length or 0,
                "mutating": mutating,
                # From arrival, so started_at + latency_ms is when the answer was ready (and a kill rule acted).
                "latency_ms": round((time.time() - arrived) * 1000, 2),
                # While a kill rule is set: the mutation's ordinal, and where the rule acted ("kill" or "drop"),
                # so a test can prove exactly after which request a process died.
                **({"mutation": ordinal} if ordinal else {}),
                **({"kill": action} if action else {}),
            }
        )
        if action == "drop":
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return response

    @staticmethod
    def _to_response(result: Any) -> Response:
        if isinstance(result, Response):
            return result
        if isinstance(result, tuple):
            body, status = result
            return json_response(body, status)
        return json_response(result if result is not None else {})

    # --- control plane --------------------------------------------------------------------------------

    def admin(self, request: Request) -> Response:
        world = self.world
        path = request.path[len("/_emulator") :]
        try:
            body = request.get_json(silent=True) or {}
            if path == "/health":
                return json_response({"ok": True, "apis": sorted(world.apis), "base_url": world.base_url})
            if path == "/reset" and request.method == "POST":
                self.reset()
                return json_response({"ok": True})
            if path == "/settings":
                if request.method in ("PATCH", "PUT"):
                    try:
                        world.control.update(body)
                    except ValueError as exc:
                        return json_response({"error": {"code": 400, "message": str(exc)}}, 400)
                return json_response(world.control.settings.model_dump())
            if path == "/requests":
                if request.method == "DELETE":
                    world.control.log.clear()
                    return json_response({"ok": True})
                since = int(request.args.get("since", 0))
                lines = "".join(json.dumps(e) + "\n" for e in world.control.log[since:])
                return Response(lines, mimetype="application/x-ndjson")
            if path == "/projects" and request.method == "POST":
                return json_response(world.add_project(body["projectId"]))
            if path == "/state":
                return json_response({k: world.store.names(k) for k in world.store._data})
            # `/_emulator/<api>/...` goes to that module's own control endpoints (e.g. Cloud Run stats).
            api_name, _, rest = path.lstrip("/").partition("/")
            if api_name in _ADMIN_OWNERS:
                api_name, rest = _ADMIN_OWNERS[api_name], path.lstrip("/")
            module = world.apis.get(api_name)
            if module is not None and hasattr(module, "admin"):
                return module.admin(request, "/" + rest)
        except (KeyError, TypeError) as exc:
            return json_response({"error": {"code": 400, "message": f"bad admin request: {exc}"}}, 400)
        return json_response({"error": {"code": 404, "message": f"no admin endpoint {path}"}}, 404)

    def reset(self) -> None:
        for module in self.world.apis.values():
            module.reset()
        self.world.store.reset()
        self.world.control.reset()
        self.world.add_project(DEFAULT_PROJECT)


class _Handler(WSGIRequestHandler):
    # Keep-alive, so clients reuse connections as they do with Google's front ends.
    protocol_version = "HTTP/1.1"

    def log_request(self, code: Any = "-", size: Any = "-") -> None:  # the request log replaces this
        pass

    def parse_request(self) -> bool:
        # The request line has just been read: the request's arrival. Dispatch may start later when threads are
        # busy; the request log's started_at is this moment, so a request a client sent before it was killed
        # never looks as if it was sent after (tests/e2e/conftest.py kill_after).
        self.arrived = time.time()
        return super().parse_request()

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ["mlflow_gcp.arrived"] = getattr(self, "arrived", None) or time.time()
        return environ


class Emulator:
    """Runs the emulator on a port, in a background thread (tests) or the foreground (CLI)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        projects: tuple[str, ...] = (DEFAULT_PROJECT,),
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.world = World(Path(data_dir))
        if settings:
            self.world.control.update(settings)
        load_modules(self.world)
        for p in projects:
            if self.world.find_project(p) is None:
                self.world.add_project(p)
        self.app = EmulatorApp(self.world)
        self.server: BaseWSGIServer = make_server(host, port, self.app, threaded=True, request_handler=_Handler)
        self.server.daemon_threads = True
        self.host, self.port = host, self.server.server_port
        self.world.base_url = f"http://{host}:{self.port}"
        for module in self.world.apis.values():
            module.restore()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return self.world.base_url

    def endpoints(self) -> dict[str, str]:
        base = self.base_url
        out = {
            name: base + (module.prefix + ("/" if name in ("sqladmin", "iam", "logging", "iap") else ""))
            for name, module in self.world.apis.items()
            if module.prefix
        }
        out["storage"] = base
        out["docker"] = f"tcp://{self.host}:{self.port}"
        out["control"] = base + "/_emulator"
        return out

    def start(self) -> Emulator:
        self._thread = threading.Thread(target=self.server.serve_forever, name="emulator", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.server.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread = None
        for module in self.world.apis.values():
            module.shutdown()
        self.server.server_close()


__all__ = ["API_MODULES", "DEFAULT_PROJECT", "Emulator", "EmulatorApp", "Settings"]
