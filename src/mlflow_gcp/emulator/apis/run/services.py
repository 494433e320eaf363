"""Cloud Run Admin v2: services, revisions, their operations and IAM policies; deploys run for real.

See the package docstring for how a revision maps to a host process.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import random
import re
import shutil
import signal
import string
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2
from google.longrunning import operations_pb2
from werkzeug.wrappers import Request, Response

from ...core import paging
from ...core.errors import GcpError, aborted, invalid, permission_denied
from ...core.http import ApiModule, ApiRequest, json_response, route
from ...core.images import ImageRecord
from ...core.operations import Operations
from ...core.validation import normalize, parse_proto, render
from .frontend import FrontEnd, decode_jwt_email, google_error_page
from .revisions import (
    GRACE_SECONDS,
    Probe,
    RevisionProcess,
    Spawner,
    free_port,
    process_start_time,
    reap_orphan,
    stop_all,
    sync_links,
)

SERVICE_KIND = "run.service"
REVISION_KIND = "run.revision"
#: Per service, what the API does not show: the front end's port, revision numbering, pinned image
#: digests and the operations still to finish (re-run after a daemon restart).
STATE_KIND = "run.state"
#: Per running revision: pid and kernel start time, to reap what a crashed emulator left behind.
PROCESS_KIND = "run.process"

_TYPE_SERVICE = "type.googleapis.com/google.cloud.run.v2.Service"
_TYPE_REVISION = "type.googleapis.com/google.cloud.run.v2.Revision"
#: Who the emulator's callers are (anonymous credentials stand for the project owner).
CALLER = "owner@example.com"
INVOKER = "roles/run.invoker"
CLOUDSQL_CLIENT = "roles/cloudsql.client"
#: The seam for Cloud SQL volumes: a host directory standing for the volume's mount path.
CLOUDSQL_DIR_ENV = "MLFLOW_GCP_CLOUDSQL_DIR"

_SERVICE_ID = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
# Registries Cloud Run deploys from: Artifact Registry, Container Registry, Docker Hub (the default host).
_IMAGE_HOST = re.compile(r"^(?:[a-z0-9-]+-docker\.pkg\.dev|(?:[a-z]+\.)?gcr\.io|docker\.io)$")
_IMAGE_PATH = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::\w[\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
_RESERVED_KEY_PREFIXES = (
    "run.googleapis.com",
    "cloud.googleapis.com",
    "serving.knative.dev",
    "autoscaling.knative.dev",
)
_LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
_REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
_OUTPUT_ONLY = frozenset(
    {
        "name",
        "uid",
        "generation",
        "createTime",
        "updateTime",
        "deleteTime",
        "expireTime",
        "creator",
        "lastModifier",
        "observedGeneration",
        "terminalCondition",
        "conditions",
        "latestReadyRevision",
        "latestCreatedRevision",
        "trafficStatuses",
        "uri",
        "urls",
        "satisfiesPzs",
        "reconciling",
        "etag",
    }
)
_REVISION_FIELDS = frozenset(f.json_name for f in run_v2.Revision.pb().DESCRIPTOR.fields)
_DEFAULT_PROBE = {"timeoutSeconds": 240, "periodSeconds": 240, "failureThreshold": 1}
_TROUBLESHOOTING = "For more troubleshooting guidance, see https://cloud.google.com/run/docs/troubleshooting"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _etag() -> str:
    return '"' + base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("=") + '"'


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _seconds(duration: str | None, default: float) -> float:
    if not duration:
        return default
    try:
        return float(duration.rstrip("s"))
    except ValueError:
        return default


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _condition(ctype: str, state: str, message: str = "", **extra: str) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": ctype, "state": state, "lastTransitionTime": _now()}
    if message:
        cond["message"] = message
    cond.update(extra)
    return cond


def _violation(field: str, description: str) -> GcpError:
    return invalid(
        f"{field}: {description}",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": description}],
            }
        ],
    )


def _ingress(containers: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The container that receives requests: the one with a port (or the only one)."""
    for i, c in enumerate(containers):
        if c.get("ports"):
            return i, c
    return 0, containers[0]


def _valid_image(image: str) -> bool:
    first, _, rest = image.partition("/")
    # As docker reads a reference: a first component with "." or ":" is a registry host.
    if rest and ("." in first or ":" in first or first == "localhost"):
        return bool(_IMAGE_HOST.match(first)) and bool(_IMAGE_PATH.match(rest))
    return bool(_IMAGE_PATH.match(image))


def _exit_line(code: int | None) -> str:
    """How Cloud Run's system log reports a container that ended."""
    if code is not None and code < 0:
        return f"Container terminated on signal {-code}."
    return f"Container called exit({code})."


def _digest_ref(uri: str, digest: str) -> str:
    base = uri.split("@", 1)[0]
    head, _, last = base.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}@{digest}"


class _RevisionFailure(Exception):
    """Why a revision could not become ready; ``detail`` is what Cloud Run says after the
    "Revision 'x' is not ready and cannot serve traffic." lead."""

    def __init__(self, detail: str, reason: str | None = None, container: bool = False, missing: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason
        self.container = container
        #: The revision itself does not exist (a traffic target naming an unknown revision).
        self.missing = missing


class _Cancelled(Exception):
    """The emulator was reset or shut down while a deploy was under way."""


@dataclass
class _Target:
    revision: str  # full name
    percent: int


class CloudRunApi(ApiModule):
    prefix = "/run"
    service = "run.googleapis.com"
    title = "Cloud Run Admin API"

    def __init__(self, world: Any) -> None:
        super().__init__(world)
        self._lock = threading.RLock()
        self._service_locks: dict[str, threading.Lock] = {}
        self._frontends: dict[str, FrontEnd] = {}
        self._procs: dict[str, RevisionProcess] = {}
        # Revision -> (consecutive failed restarts, when to try again), for instances that crashed.
        self._restarts: dict[str, tuple[int, float]] = {}
        self._epoch = 0
        self._spawner = Spawner()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    # --- names and lookups ------------------------------------------------------------------------

    def _parent(self, req: ApiRequest) -> tuple[str, str]:
        """(project id, location) of the request, refusing unknown projects as GCP does."""
        return self.world.project(req["project"])["projectId"], req["location"]

    def _service_name(self, req: ApiRequest) -> str:
        pid, loc = self._parent(req)
        return f"projects/{pid}/locations/{loc}/services/{req['service']}"

    @staticmethod
    def _not_found(kind: str, name: str) -> GcpError:
        parts = name.split("/")
        return GcpError(
            404,
            f"Resource '{parts[-1]}' of kind '{kind}' in region '{parts[3]}' in project '{parts[1]}' does not exist.",
            "NOT_FOUND",
        )

    def _require_service(self, name: str) -> dict[str, Any]:
        svc = self.world.store.get(SERVICE_KIND, name)
        if svc is None:
            raise self._not_found("SERVICE", name)
        return svc

    def _service_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._service_locks.setdefault(name, threading.Lock())

    def _check_epoch(self, epoch: int) -> None:
        if self._epoch != epoch:
            raise _Cancelled

    # --- input ------------------------------------------------------------------------------------

    def _input(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The body as a Service (unknown fields refused), minus what only the server sets."""
        svc = normalize(body, run_v2.Service)
        etag = svc.get("etag", "")
        return {k: v for k, v in svc.items() if k not in _OUTPUT_ONLY}, etag

    def _validate(self, svc: dict[str, Any], project: dict[str, Any]) -> None:
        template = svc.get("template")
        if not template or not template.get("containers"):
            raise _violation("spec.template.spec.containers", "at least one container must be specified.")
        containers = template["containers"]
        if len(containers) > 1 and sum(1 for c in containers if c.get("ports")) != 1:
            raise _violation(
                "spec.template.spec.containers",
                "exactly one container must specify a port (the ingress container) when there are several.",
            )
        for i, c in enumerate(containers):
            if not c.get("image"):
                raise _violation(f"spec.template.spec.containers[{i}].image", "Required")
            if not _valid_image(c["image"]):
                raise _violation(
                    f"spec.template.spec.containers[{i}].image",
                    "Expected an image path like [host/]repo-path[:tag and/or @digest], where host is one of "
                    f"[region.]gcr.io, [region-]docker.pkg.dev or docker.io but obtained {c['image']}",
                )
            names = [e.get("name", "") for e in c.get("env", [])]
            reserved = [n for n in _RESERVED_ENV if n in names]
            if reserved:
                raise _violation(
                    f"spec.template.spec.containers[{i}].env",
                    f"The following reserved env names were provided: {', '.join(reserved)}. "
                    "These values are automatically set by the system.",
                )
            for j, e in enumerate(c.get("env", [])):
                if not e.get("name"):
                    raise _violation(f"spec.template.spec.containers[{i}].env[{j}].name", "Required")
                if "valueSource" in e and not e["valueSource"].get("secretKeyRef", {}).get("secret"):
                    raise _violation(
                        f"spec.template.spec.containers[{i}].env[{j}].value_from.secret_key_ref.name", "Required"
                    )
        for where, mapping in (
            ("metadata.labels", svc.get("labels", {})),
            ("metadata.annotations", svc.get("annotations", {})),
            ("spec.template.metadata.labels", template.get("labels", {})),
            ("spec.template.metadata.annotations", template.get("annotations", {})),
        ):
            for key in mapping:
                if key.split("/", 1)[0].endswith(_RESERVED_KEY_PREFIXES):
                    raise _violation(where, f"Unsupported key: {key}. System keys are not supported in Cloud Run v2.")
        traffic = svc.get("traffic") or []
        if traffic:
            total = sum(t.get("percent", 0) for t in traffic)
            if total != 100:
                raise _violation("spec.traffic", f"Traffic percents must add up to 100, got {total}.")
            for t in traffic:
                if t.get("type") == _REVISION and not t.get("revision"):
                    raise _violation("spec.traffic.revision", "A revision is required for a REVISION traffic target.")
        account = template.get("serviceAccount", "")
        iam = self.world.apis.get("iam")
        user_managed = account.endswith(".iam.gserviceaccount.com")
        if user_managed and iam is not None and not iam.service_account_exists(account):
            raise permission_denied(
                f"Permission 'iam.serviceaccounts.actAs' denied on service account {account} (or it may not exist)."
            )

    @staticmethod
    def _apply_defaults(svc: dict[str, Any], project: dict[str, Any]) -> None:
        """Fill in what Cloud Run fills in, so a read-modify-write round trip changes nothing."""
        number = project["name"].split("/")[1]
        svc.setdefault("ingress", "INGRESS_TRAFFIC_ALL")
        svc.setdefault("launchStage", "GA")
        if not svc.get("traffic"):
            svc["traffic"] = [{"type": _LATEST, "percent": 100}]
        for t in svc["traffic"]:
            t.setdefault("type", _REVISION if t.get("revision") else _LATEST)
        template = svc["template"]
        template.setdefault("scaling", {}).setdefault("maxInstanceCount", 100)
        template.setdefault("timeout", "300s")
        template.setdefault("serviceAccount", f"{number}-compute@developer.gserviceaccount.com")
        template.setdefault("maxInstanceRequestConcurrency", 80)
        containers = template["containers"]
        for c in containers:
            resources = c.setdefault("resources", {})
            limits = resources.setdefault("limits", {})
            limits.setdefault("cpu", "1000m")
            limits.setdefault("memory", "512Mi")
            resources.setdefault("cpuIdle", True)
        _, c = _ingress(containers)
        ports = c.get("ports") or [{}]
        ports[0].setdefault("name", "http1")
        ports[0].setdefault("containerPort", 8080)
        c["ports"] = ports
        port = ports[0]["containerPort"]
        probe = c.get("startupProbe")
        if not probe:
            c["startupProbe"] = {**_DEFAULT_PROBE, "tcpSocket": {"port": port}}
        else:
            probe.setdefault("timeoutSeconds", 1)
            probe.setdefault("periodSeconds", 10)
            probe.setdefault("failureThreshold", 3)
            if "httpGet" in probe:
                probe["httpGet"].setdefault("path", "/")
                probe["httpGet"].setdefault("port", port)
            elif "grpc" in probe:
                probe["grpc"].setdefault("port", port)
            else:
                probe.setdefault("tcpSocket", {}).setdefault("port", port)

    # --- services ---------------------------------------------------------------------------------

    @route("POST", "/v2/projects/{project}/locations/{location}/services", name="services.create")
    def create_service(self, req: ApiRequest) -> dict[str, Any]:
        project = self.world.project(req["project"])
        sid = req.args.get("serviceId", "")
        self._check_service_id(sid)
        svc, _ = self._input(req.json())
        self._validate(svc, project)
        self._apply_defaults(svc, project)
        return self._create(project, req["location"], sid, svc, _flag(req.args.get("validateOnly")))

    @staticmethod
    def _check_service_id(sid: str) -> None:
        if not _SERVICE_ID.match(sid):
            description = (
                "only lowercase, digits, and hyphens; must begin with letter, and cannot end with hyphen; "
                "must be less than 50 characters."
            )
            raise invalid(
                f"Violation in CreateServiceRequest.service_id: {description}",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [
                            {"field": "Violation in CreateServiceRequest.service_id", "description": description}
                        ],
                    }
                ],
            )

    def _create(
        self, project: dict[str, Any], location: str, sid: str, spec: dict[str, Any], validate_only: bool
    ) -> dict[str, Any]:
        pid = project["projectId"]
        parent = f"projects/{pid}/locations/{location}"
        name = f"{parent}/services/{sid}"
        now = _now()
        svc = {
            **spec,
            "name": name,
            "uid": str(uuid.uuid4()),
            "generation": "1",
            "createTime": now,
            "updateTime": now,
            "creator": CALLER,
            "lastModifier": CALLER,
        }
        if validate_only:
            return self._validated(parent, svc)
        with self._lock:
            if self.world.store.get(SERVICE_KIND, name) is not None:
                raise GcpError(409, f"Resource '{sid}' already exists.", "ALREADY_EXISTS")
            state: dict[str, Any] = {"port": 0, "revisionCount": 0, "numbers": {}, "images": {}, "pending": []}
            revision = self._new_revision(svc, state, sid)
            frontend = self._start_frontend(name, 0)
            state["port"] = frontend.port
            svc["uri"] = f"http://127.0.0.1:{frontend.port}"
            svc["urls"] = [svc["uri"]]
            svc["latestCreatedRevision"] = f"{name}/revisions/{revision}"
            svc["etag"] = _etag()
            self._mark_reconciling(svc)
            op_name = f"{parent}/operations/{uuid.uuid4()}"
            state["pending"].append({"op": op_name, "kind": "deploy", "revision": revision, "generation": 1})
            self.world.store.put(STATE_KIND, name, state)
            self.world.store.put(SERVICE_KIND, name, svc)
        return self._start_deploy(op_name, name, revision, 1)

    def _validated(self, parent: str, svc: dict[str, Any]) -> dict[str, Any]:
        """validateOnly: an operation that answers with the service as it would be, persisting nothing."""
        rendered = render(svc, run_v2.Service, False)
        return self.world.ops.start(
            parent,
            lambda: rendered,
            delay_key="run.service.validate",
            metadata={"@type": _TYPE_SERVICE, **rendered},
            response_type=_TYPE_SERVICE,
        )

    @route("GET", "/v2/projects/{project}/locations/{location}/services/{service}", name="services.get")
    def get_service(self, req: ApiRequest) -> dict[str, Any]:
        return render(self._require_service(self._service_name(req)), run_v2.Service, req.enum_int)

    @route("GET", "/v2/projects/{project}/locations/{location}/services", name="services.list")
    def list_services(self, req: ApiRequest) -> dict[str, Any]:
        pid, loc = self._parent(req)
        items = self.world.store.list(SERVICE_KIND, f"projects/{pid}/locations/{loc}/services/")
        page, token = paging.page(items, req.args, default=100, maximum=1000)
        out: dict[str, Any] = {"services": [render(s, run_v2.Service, req.enum_int) for s in page]}
        if token:
            out["nextPageToken"] = token
        return out

    @route("PATCH", "/v2/projects/{project}/locations/{location}/services/{service}", name="services.update")
    def update_service(self, req: ApiRequest) -> dict[str, Any]:
        project = self.world.project(req["project"])
        name = self._service_name(req)
        body = req.json()
        if body.get("name") and body["name"] != name:
            raise invalid(f"service.name {body['name']!r} does not match the request URL.")
        spec, etag = self._input(body)
        validate_only = _flag(req.args.get("validateOnly"))
        mask = [p for p in req.args.get("updateMask", "").split(",") if p]
        with self._lock:
            current = self.world.store.get(SERVICE_KIND, name)
            if current is None:
                if not _flag(req.args.get("allowMissing")):
                    raise self._not_found("SERVICE", name)
                self._check_service_id(req["service"])
                self._validate(spec, project)
                self._apply_defaults(spec, project)
                return self._create(project, req["location"], req["service"], spec, validate_only)
            if etag and etag != current.get("etag"):
                raise aborted(
                    f"Etag {etag} does not match the current etag of service {req['service']}: it was modified "
                    "since it was read. Read it again and retry."
                )
            if mask:
                merged = {k: copy.deepcopy(v) for k, v in current.items() if k not in _OUTPUT_ONLY}
                for path in mask:
                    _copy_path(spec, merged, path)
            else:
                merged = spec
            self._validate(merged, project)
            self._apply_defaults(merged, project)
            svc = {k: v for k, v in current.items() if k in _OUTPUT_ONLY}
            svc.update(merged)
            generation = int(current["generation"]) + 1
            svc.update(generation=str(generation), updateTime=_now(), lastModifier=CALLER)
            parent = name.rsplit("/services/", 1)[0]
            if validate_only:
                return self._validated(parent, svc)
            template_changed = _canon(merged["template"]) != _canon(current["template"])
            state = self.world.store.get(STATE_KIND, name) or {}
            revision = self._new_revision(svc, state, req["service"]) if template_changed else None
            if revision:
                svc["latestCreatedRevision"] = f"{name}/revisions/{revision}"
            svc["etag"] = _etag()
            self._mark_reconciling(svc)
            op_name = f"{parent}/operations/{uuid.uuid4()}"
            state.setdefault("pending", []).append(
                {"op": op_name, "kind": "deploy", "revision": revision, "generation": generation}
            )
            self.world.store.put(STATE_KIND, name, state)
            self.world.store.put(SERVICE_KIND, name, svc)
        return self._start_deploy(op_name, name, revision, generation)

    @route("DELETE", "/v2/projects/{project}/locations/{location}/services/{service}", name="services.delete")
    def delete_service(self, req: ApiRequest) -> dict[str, Any]:
        name = self._service_name(req)
        parent = name.rsplit("/services/", 1)[0]
        with self._lock:
            svc = self._require_service(name)
            etag = req.args.get("etag")
            if etag and etag != svc.get("etag"):
                raise aborted(f"Etag {etag} does not match the current etag of service {req['service']}.")
            if _flag(req.args.get("validateOnly")):
                return self._validated(parent, svc)
            op_name = f"{parent}/operations/{uuid.uuid4()}"
            state = self.world.store.get(STATE_KIND, name) or {}
            state.setdefault("pending", []).append({"op": op_name, "kind": "delete"})
            self.world.store.put(STATE_KIND, name, state)
            svc["reconciling"] = True
            self.world.store.put(SERVICE_KIND, name, svc)
        return self._start_delete(op_name, name)

    # --- IAM --------------------------------------------------------------------------------------

    @route(
        "GET",
        "/v2/projects/{project}/locations/{location}/services/{service}:getIamPolicy",
        name="services.getIamPolicy",
    )
    def get_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        name = self._service_name(req)
        self._require_service(name)
        return self.world.iam.get(name)

    @route(
        "POST",
        "/v2/projects/{project}/locations/{location}/services/{service}:setIamPolicy",
        name="services.setIamPolicy",
    )
    def set_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        parse_proto(body, iam_policy_pb2.SetIamPolicyRequest)
        name = self._service_name(req)
        self._require_service(name)
        return self.world.iam.set(name, body.get("policy", {}))

    @route(
        "POST",
        "/v2/projects/{project}/locations/{location}/services/{service}:testIamPermissions",
        name="services.testIamPermissions",
        mutating=False,
    )
    def test_iam_permissions(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        parse_proto(body, iam_policy_pb2.TestIamPermissionsRequest)
        self._require_service(self._service_name(req))
        # The emulator's caller owns the project, so it holds every Cloud Run permission.
        return {"permissions": [p for p in body.get("permissions", []) if p.startswith("run.")]}

    # --- revisions --------------------------------------------------------------------------------

    @route(
        "GET",
        "/v2/projects/{project}/locations/{location}/services/{service}/revisions",
        name="revisions.list",
    )
    def list_revisions(self, req: ApiRequest) -> dict[str, Any]:
        name = self._service_name(req)
        self._require_service(name)
        items = self.world.store.list(REVISION_KIND, f"{name}/revisions/")
        items.sort(key=lambda r: r["createTime"], reverse=True)  # newest first, as gcloud lists them
        page, token = paging.page(items, req.args, default=100, maximum=1000)
        out: dict[str, Any] = {"revisions": [render(r, run_v2.Revision, req.enum_int) for r in page]}
        if token:
            out["nextPageToken"] = token
        return out

    def _require_revision(self, req: ApiRequest) -> dict[str, Any]:
        name = f"{self._service_name(req)}/revisions/{req['revision']}"
        rev = self.world.store.get(REVISION_KIND, name)
        if rev is None:
            raise self._not_found("REVISION", name)
        return rev

    @route(
        "GET",
        "/v2/projects/{project}/locations/{location}/services/{service}/revisions/{revision}",
        name="revisions.get",
    )
    def get_revision(self, req: ApiRequest) -> dict[str, Any]:
        return render(self._require_revision(req), run_v2.Revision, req.enum_int)

    @route(
        "DELETE",
        "/v2/projects/{project}/locations/{location}/services/{service}/revisions/{revision}",
        name="revisions.delete",
    )
    def delete_revision(self, req: ApiRequest) -> dict[str, Any]:
        rev = self._require_revision(req)
        service = self._service_name(req)
        svc = self._require_service(service)
        serving = {t.revision for t in self._targets(svc)}
        if rev["name"] in serving:
            raise GcpError(
                400,
                f"Revision {req['revision']} is serving traffic and cannot be deleted. Move its traffic to "
                "another revision first.",
                "FAILED_PRECONDITION",
            )
        if _flag(req.args.get("validateOnly")):
            rendered = render(rev, run_v2.Revision, False)
            return self.world.ops.start(
                service.rsplit("/services/", 1)[0],
                lambda: rendered,
                delay_key="run.revision.validate",
                metadata={"@type": _TYPE_REVISION, **rendered},
                response_type=_TYPE_REVISION,
            )

        def work() -> dict[str, Any]:
            with self._lock:
                proc = self._procs.pop(rev["name"], None)
                self.world.store.delete(PROCESS_KIND, rev["name"])
            if proc is not None:
                proc.stop(grace=GRACE_SECONDS)
            self._remove_cloudsql_dir(rev["name"])
            self.world.store.delete(REVISION_KIND, rev["name"])
            return render(rev, run_v2.Revision, False)

        return self.world.ops.start(
            service.rsplit("/services/", 1)[0],
            work,
            delay_key="run.revision.delete",
            metadata={"@type": _TYPE_REVISION, **render(rev, run_v2.Revision, False)},
            response_type=_TYPE_REVISION,
        )

    # --- operations -------------------------------------------------------------------------------

    def _operation_name(self, req: ApiRequest) -> str:
        pid, loc = self._parent(req)
        return f"projects/{pid}/locations/{loc}/operations/{req['operation']}"

    @route("GET", "/v2/projects/{project}/locations/{location}/operations/{operation}", name="operations.get")
    def get_operation(self, req: ApiRequest) -> dict[str, Any]:
        return self.world.ops.get(self._operation_name(req))

    @route("GET", "/v2/projects/{project}/locations/{location}/operations", name="operations.list")
    def list_operations(self, req: ApiRequest) -> dict[str, Any]:
        pid, loc = self._parent(req)
        names = self.world.store.names(Operations.KIND, f"projects/{pid}/locations/{loc}/operations/")
        ops = [self.world.store.get(Operations.KIND, n) or {} for n in names]
        page, token = paging.page(ops, req.args, default=100, maximum=1000)
        out: dict[str, Any] = {"operations": page}
        if token:
            out["nextPageToken"] = token
        return out

    @route("DELETE", "/v2/projects/{project}/locations/{location}/operations/{operation}", name="operations.delete")
    def delete_operation(self, req: ApiRequest) -> dict[str, Any]:
        name = self._operation_name(req)
        self.world.ops.get(name)  # 404 when unknown
        self.world.store.delete(Operations.KIND, name)
        return {}

    @route(
        "POST",
        "/v2/projects/{project}/locations/{location}/operations/{operation}:wait",
        name="operations.wait",
        mutating=False,
    )
    def wait_operation(self, req: ApiRequest) -> dict[str, Any]:
        name = self._operation_name(req)
        body = req.json()
        parse_proto(body, operations_pb2.WaitOperationRequest)
        timeout = min(_seconds(body.get("timeout"), 60.0), 600.0)
        deadline = time.monotonic() + timeout
        op = self.world.ops.get(name)
        while not op.get("done") and time.monotonic() < deadline:
            time.sleep(0.1)
            op = self.world.ops.get(name)
        return op

    # --- the emulator's own control endpoints ------------------------------------------------------

    def admin(self, request: Request, subpath: str) -> Response:
        """``/_emulator/run/stats?service=<full name>`` -> the front end's request counts;
        ``/_emulator/run/processes`` -> the revision processes running now."""
        if subpath == "/stats":
            service = request.args.get("service", "")
            with self._lock:
                frontend = self._frontends.get(service)
            if frontend is None:
                return json_response({"error": {"code": 404, "message": f"no front end for {service!r}"}}, 404)
            return json_response(frontend.stats())
        if subpath == "/processes":
            with self._lock:
                procs = dict(self._procs)
            return json_response(
                {
                    name: {"pid": p.pid, "port": p.port, "ready": p.ready, "alive": p.alive(), "log": str(p.log_path)}
                    for name, p in procs.items()
                }
            )
        return json_response({"error": {"code": 404, "message": f"no admin endpoint /run{subpath}"}}, 404)

    # --- spec bookkeeping -------------------------------------------------------------------------

    def _new_revision(self, svc: dict[str, Any], state: dict[str, Any], sid: str) -> str:
        """Record the revision the service's (new) template makes; returns its short name."""
        template = svc["template"]
        number = int(state.get("revisionCount", 0)) + 1
        short = template.get("revision") or (
            f"{sid}-{number:05d}-" + "".join(random.choices(string.ascii_lowercase + string.digits, k=3))
        )
        if template.get("revision") and not short.startswith(f"{sid}-"):
            raise _violation(
                "spec.template.metadata.name",
                "Revision name must be prefixed by the name of the enclosing Service or Configuration.",
            )
        full = f"{svc['name']}/revisions/{short}"
        if self.world.store.get(REVISION_KIND, full) is not None:
            raise GcpError(
                409, f"Revision named '{short}' with different configuration already exists.", "ALREADY_EXISTS"
            )
        state["revisionCount"] = number
        state.setdefault("numbers", {})[short] = number
        now = _now()
        rev: dict[str, Any] = {
            k: copy.deepcopy(v) for k, v in template.items() if k in _REVISION_FIELDS and k != "name"
        }
        rev.update(
            name=full,
            uid=str(uuid.uuid4()),
            generation="1",
            createTime=now,
            updateTime=now,
            launchStage=svc.get("launchStage", "GA"),
            service=sid,
            creator=CALLER,
            logUri=self._log_path(full).as_uri(),
            reconciling=True,
            conditions=[_condition("Ready", "CONDITION_RECONCILING")],
            observedGeneration="1",
            etag=_etag(),
        )
        self.world.store.put(REVISION_KIND, full, rev)
        return short

    @staticmethod
    def _mark_reconciling(svc: dict[str, Any]) -> None:
        svc["reconciling"] = True
        svc["terminalCondition"] = _condition("Ready", "CONDITION_RECONCILING")
        svc["conditions"] = [
            _condition("RoutesReady", "CONDITION_RECONCILING"),
            _condition("ConfigurationsReady", "CONDITION_RECONCILING"),
        ]

    def _log_path(self, revision: str) -> Path:
        parts = revision.split("/")
        return self.world.data_dir / "run" / parts[1] / parts[5] / f"{parts[7]}.log"

    def _cloudsql_dir(self, revision: str) -> Path:
        # Short on purpose: a unix socket path under it must stay within 107 bytes.
        return self.world.data_dir / "r" / hashlib.sha256(revision.encode()).hexdigest()[:8]

    def _remove_cloudsql_dir(self, revision: str) -> None:
        shutil.rmtree(self._cloudsql_dir(revision), ignore_errors=True)

    # --- operations' work -------------------------------------------------------------------------

    def _start_deploy(self, op_name: str, name: str, revision: str | None, generation: int) -> dict[str, Any]:
        epoch = self._epoch
        svc = self.world.store.get(SERVICE_KIND, name) or {}
        return self.world.ops.start(
            name.rsplit("/services/", 1)[0],
            lambda: self._deploy(op_name, name, revision, generation, epoch),
            delay_key="run.service.deploy",
            metadata={"@type": _TYPE_SERVICE, **render(svc, run_v2.Service, False)},
            response_type=_TYPE_SERVICE,
            name=op_name,
        )

    def _start_delete(self, op_name: str, name: str) -> dict[str, Any]:
        epoch = self._epoch
        svc = self.world.store.get(SERVICE_KIND, name) or {}
        return self.world.ops.start(
            name.rsplit("/services/", 1)[0],
            lambda: self._delete(op_name, name, epoch),
            delay_key="run.service.delete",
            metadata={"@type": _TYPE_SERVICE, **render(svc, run_v2.Service, False)},
            response_type=_TYPE_SERVICE,
            name=op_name,
        )

    def _deploy(self, op_name: str, name: str, revision: str | None, generation: int, epoch: int) -> dict[str, Any]:
        try:
            with self._service_lock(name):
                return self._deploy_locked(op_name, name, revision, generation, epoch)
        except _Cancelled:
            raise GcpError(503, "The operation was interrupted: the emulator stopped.", "UNAVAILABLE") from None

    def _deploy_locked(
        self, op_name: str, name: str, revision: str | None, generation: int, epoch: int
    ) -> dict[str, Any]:
        self._check_epoch(epoch)
        self._require_service(name)
        failure: _RevisionFailure | None = None
        full = f"{name}/revisions/{revision}" if revision else None
        if full is not None:
            failure = self._roll_out(full, epoch)
        with self._lock:
            self._check_epoch(epoch)
            svc = self._require_service(name)
            state = self.world.store.get(STATE_KIND, name) or {}
            if full is not None and failure is None:
                numbers = state.get("numbers", {})
                current = svc.get("latestReadyRevision", "")
                if not current or numbers.get(current.rsplit("/", 1)[1], 0) < numbers.get(revision, 0):
                    svc["latestReadyRevision"] = full
                    self.world.store.put(SERVICE_KIND, name, svc)
        routes_error = self._route(name, epoch)
        with self._lock:
            self._check_epoch(epoch)
            svc = self._require_service(name)
            state = self.world.store.get(STATE_KIND, name) or {}
            if not routes_error or not svc.get("trafficStatuses"):
                svc["trafficStatuses"] = self._traffic_statuses(svc)
            svc["observedGeneration"] = str(max(int(svc.get("observedGeneration", 0) or 0), generation))
            still_pending = [p for p in state.get("pending", []) if p["op"] != op_name]
            message = ""
            if failure is not None:
                message = f"Revision '{revision}' is not ready and cannot serve traffic. {failure.detail}"
            if still_pending:
                self._mark_reconciling(svc)
            else:
                svc["reconciling"] = False
                config_failed = failure is not None
                if config_failed:
                    svc["terminalCondition"] = _condition("Ready", "CONDITION_FAILED", message)
                elif routes_error:
                    svc["terminalCondition"] = _condition("Ready", "CONDITION_FAILED", routes_error)
                else:
                    svc["terminalCondition"] = _condition("Ready", "CONDITION_SUCCEEDED")
                svc["conditions"] = [
                    _condition("RoutesReady", "CONDITION_FAILED", message if config_failed else routes_error)
                    if routes_error
                    else _condition("RoutesReady", "CONDITION_SUCCEEDED"),
                    _condition("ConfigurationsReady", "CONDITION_FAILED", message, reason="REVISION_FAILED")
                    if config_failed
                    else _condition("ConfigurationsReady", "CONDITION_SUCCEEDED"),
                ]
            state["pending"] = still_pending
            self.world.store.put(STATE_KIND, name, state)
            self.world.store.put(SERVICE_KIND, name, svc)
        if failure is not None:
            raise GcpError(400, message, "FAILED_PRECONDITION")
        if routes_error:
            raise GcpError(400, routes_error, "FAILED_PRECONDITION")
        return render(svc, run_v2.Service, False)

    def _delete(self, op_name: str, name: str, epoch: int) -> dict[str, Any]:
        with self._service_lock(name):
            if self._epoch != epoch:
                raise GcpError(503, "The operation was interrupted: the emulator stopped.", "UNAVAILABLE")
            with self._lock:
                svc = self._require_service(name)
                frontend = self._frontends.pop(name, None)
                prefix = f"{name}/revisions/"
                procs = [self._procs.pop(r) for r in list(self._procs) if r.startswith(prefix)]
                for r in list(self._restarts):
                    if r.startswith(prefix):
                        del self._restarts[r]
            if frontend is not None:
                frontend.stop()
            stop_all(procs)
            with self._lock:
                for rev in self.world.store.names(REVISION_KIND, prefix):
                    self._remove_cloudsql_dir(rev)
                    self.world.store.delete(REVISION_KIND, rev)
                    self.world.store.delete(PROCESS_KIND, rev)
                self.world.store.delete(STATE_KIND, name)
                self.world.store.delete(SERVICE_KIND, name)
                self.world.iam.delete(name)
            svc["deleteTime"] = _now()
            return render(svc, run_v2.Service, False)

    # --- rolling out a revision -------------------------------------------------------------------

    def _roll_out(self, revision: str, epoch: int) -> _RevisionFailure | None:
        """Start the revision's process and wait for its startup probe; record how it went."""
        try:
            self._bring_up(revision, epoch)
        except _RevisionFailure as failure:
            self._set_revision_conditions(revision, failure)
            return failure
        self._set_revision_conditions(revision, None)
        return None

    def _bring_up(self, revision: str, epoch: int) -> RevisionProcess:
        """A ready process for ``revision`` (the running one, or a new one once it passed its probe)."""
        with self._lock:
            proc = self._procs.get(revision)
        if proc is not None and proc.ready and proc.alive():
            return proc
        rev = self.world.store.get(REVISION_KIND, revision)
        if rev is None:
            raise _RevisionFailure(
                f"Revision '{revision.rsplit('/', 1)[1]}' does not exist or is deleted. Update all traffic to "
                "route to currently available revisions.",
                missing=True,
            )
        proc = self._launch(rev, epoch)
        _, container = _ingress(rev["containers"])
        probe = self._probe(container, proc.port)
        why = proc.wait_ready(probe, cancelled=lambda: self._epoch != epoch)
        if why is None:
            return proc
        # Stop it before letting go of it, so a reset racing with this never loses track of a process.
        proc.stop(grace=GRACE_SECONDS)
        with self._lock:
            if self._procs.get(revision) is proc:
                del self._procs[revision]
                self.world.store.delete(PROCESS_KIND, revision)
        self._check_epoch(epoch)
        port = container["ports"][0]["containerPort"]
        label = f' for container "{container["name"]}"' if container.get("name") else ""
        code = proc.proc.returncode
        if why == "exit":
            proc.system_log(_exit_line(code))
        elif probe.default:
            proc.system_log(
                f"Default STARTUP TCP probe failed {probe.failure_threshold} time consecutively{label} on port "
                f"{port}. The instance was not started."
            )
        else:
            where = f' path "{probe.path}"' if probe.kind == "http" else ""
            proc.system_log(
                f"STARTUP {probe.kind.upper()} probe failed {probe.failure_threshold} times consecutively{label} "
                f"on port {port}{where}. The instance was not started."
            )
        logs = f"Logs URL: {proc.log_path.as_uri()}\n{_TROUBLESHOOTING}#container-failed-to-start"
        if why == "exit" or probe.default:
            detail = (
                "The user-provided container failed to start and listen on the port defined provided by the "
                f"PORT={port} environment variable within the allocated timeout. This can happen when the container "
                "port is misconfigured or if the timeout is too short. The health check timeout can be extended. "
                f"Logs for this revision might contain more information.\n\n{logs}"
            )
        else:
            detail = (
                "The user-provided container failed the configured startup probe checks. Logs for this revision "
                f"might contain more information.\n\n{logs}"
            )
        raise _RevisionFailure(detail, container=True)

    @staticmethod
    def _probe(container: dict[str, Any], host_port: int) -> Probe:
        spec = container["startupProbe"]
        default = {k: v for k, v in spec.items() if k != "tcpSocket"} == _DEFAULT_PROBE and "tcpSocket" in spec
        common = {
            "port": host_port,
            "initial_delay": float(spec.get("initialDelaySeconds", 0)),
            "timeout": float(spec.get("timeoutSeconds", 1)),
            "period": float(spec.get("periodSeconds", 10)),
            "failure_threshold": int(spec.get("failureThreshold", 3)),
            "default": default,
        }
        if "httpGet" in spec:
            http_get = spec["httpGet"]
            headers = [(h["name"], h.get("value", "")) for h in http_get.get("httpHeaders", [])]
            return Probe(kind="http", path=http_get.get("path", "/"), headers=headers, **common)  # type: ignore[arg-type]
        return Probe(kind="tcp", **common)  # type: ignore[arg-type]

    def _set_revision_conditions(self, revision: str, failure: _RevisionFailure | None) -> None:
        with self._lock:
            rev = self.world.store.get(REVISION_KIND, revision)
            if rev is None:
                return
            rev["reconciling"] = False
            rev["updateTime"] = _now()
            if failure is None:
                rev["conditions"] = [
                    _condition("Ready", "CONDITION_SUCCEEDED"),
                    _condition("ContainerHealthy", "CONDITION_SUCCEEDED"),
                    _condition("ResourcesAvailable", "CONDITION_SUCCEEDED"),
                ]
            else:
                extra = {"reason": failure.reason} if failure.reason else {}
                ready = _condition("Ready", "CONDITION_FAILED", failure.detail, **extra)
                rev["conditions"] = [ready]
                if failure.container:
                    rev["conditions"].append(
                        _condition(
                            "ContainerHealthy",
                            "CONDITION_FAILED",
                            failure.detail,
                            revisionReason="HEALTH_CHECK_CONTAINER_ERROR",
                        )
                    )
            self.world.store.put(REVISION_KIND, revision, rev)

    def _launch(self, rev: dict[str, Any], epoch: int) -> RevisionProcess:
        """Resolve everything the revision needs as Cloud Run does when an instance starts, then start it."""
        revision = rev["name"]
        parts = revision.split("/")
        pid, sid, short = parts[1], parts[5], parts[7]
        service = revision.rsplit("/revisions/", 1)[0]
        index, container = _ingress(rev["containers"])
        record = self._resolve_image(service, short, container["image"])
        if record is None:
            raise _RevisionFailure(f"Image '{container['image']}' not found.", reason="CONTAINER_MISSING")
        account = rev.get("serviceAccount", "")
        member = f"serviceAccount:{account}"

        env: dict[str, str] = {k: v for k, v in record.env.items() if k != "PATH"}
        image_path = [record.host_path(p) for p in record.env.get("PATH", "").split(":") if p]
        path = [
            str(Path(sys.executable).parent),
            *[p for p in image_path if Path(p).is_absolute() and Path(p).exists()],
        ]
        path += os.environ.get("PATH", "").split(":")
        env["PATH"] = ":".join(dict.fromkeys(p for p in path if p))
        for key in ("HOME", "LANG"):
            if key in os.environ:
                env[key] = os.environ[key]
        for j, var in enumerate(container.get("env", [])):
            if "valueSource" in var:
                env[var["name"]] = self._secret_value(pid, index, j, var, member, account)
            else:
                env[var["name"]] = var.get("value", "")
        port = free_port()
        env.update(PORT=str(port), K_SERVICE=sid, K_REVISION=short, K_CONFIGURATION=sid)
        # Google APIs: on Cloud Run the container reaches them with the runtime account's token from the metadata
        # server; here Cloud Storage is the emulator's (google-cloud-storage honours STORAGE_EMULATOR_HOST).
        env["STORAGE_EMULATOR_HOST"] = self.world.base_url

        cloudsql = self._cloudsql_instances(rev, container)
        cloudsql_dir = self._cloudsql_dir(revision) if cloudsql else None
        if cloudsql_dir is not None:
            env[CLOUDSQL_DIR_ENV] = str(cloudsql_dir)

        argv = record.command(container.get("command"), container.get("args"))
        if not argv:
            raise _RevisionFailure(
                "Application failed to start: the image has no ENTRYPOINT or CMD and the container sets no command.",
                container=True,
            )
        cwd = record.host_workdir()
        if container.get("workingDir"):
            mapped = Path(record.host_path(container["workingDir"]))
            cwd = mapped if mapped.is_dir() else cwd
        log_path = self._log_path(revision)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._check_epoch(epoch)
        try:
            popen = self._spawner.spawn(argv, env=env, cwd=cwd, log=log_path)
        except OSError as exc:
            raise _RevisionFailure(f"Application failed to start: {exc.strerror or exc}", container=True) from None
        proc = RevisionProcess(
            revision,
            popen,
            port=port,
            container_port=int(container["ports"][0]["containerPort"]),
            h2c=container["ports"][0].get("name") == "h2c",
            log_path=log_path,
            cloudsql_dir=cloudsql_dir,
        )
        proc.request_timeout = _seconds(rev.get("timeout"), 300.0)
        proc.cloudsql_instances = cloudsql
        proc.member = member
        proc.system_log(
            f"Starting revision {short} (host port {port} stands for container port {proc.container_port})."
        )
        with self._lock:
            if self._epoch != epoch:
                proc.signal(signal.SIGKILL)
                raise _Cancelled
            old = self._procs.get(revision)
            self._procs[revision] = proc
            self.world.store.put(PROCESS_KIND, revision, {"pid": popen.pid, "startTime": process_start_time(popen.pid)})
        if old is not None and old is not proc:
            threading.Thread(target=old.stop, daemon=True).start()
        self._sync_cloudsql(proc)
        self._ensure_watchdog()
        return proc

    def _resolve_image(self, service: str, revision: str, uri: str) -> ImageRecord | None:
        """The image a revision runs, pinned to the digest it had when the revision first started."""
        ar = self.world.apis.get("artifactregistry")
        if ar is None:
            return None
        state = self.world.store.get(STATE_KIND, service) or {}
        pinned = state.get("images", {}).get(revision)
        if pinned:
            record = ar.resolve_image(pinned)
            if record is None:
                record = ar.resolve_image(uri)
                if record is not None and f"@{record.digest}" not in pinned:
                    record = None
            return record
        record = ar.resolve_image(uri)
        if record is not None:
            with self._lock:
                state = self.world.store.get(STATE_KIND, service)
                if state is not None:
                    state.setdefault("images", {})[revision] = _digest_ref(uri, record.digest)
                    self.world.store.put(STATE_KIND, service, state)
        return record

    def _secret_value(
        self, project_id: str, container: int, index: int, var: dict[str, Any], member: str, account: str
    ) -> str:
        ref = var["valueSource"]["secretKeyRef"]
        secret = ref["secret"]
        if secret.startswith("projects/"):
            secret_name = secret
        else:
            # A short id names a secret of the service's project; GCP spells it with the project number.
            project = self.world.find_project(project_id) or {"name": f"projects/{project_id}"}
            secret_name = f"{project['name']}/secrets/{secret}"
        version = f"{secret_name}/versions/{ref.get('version') or 'latest'}"
        field = f"spec.template.spec.containers[{container}].env[{index}].value_from.secret_key_ref.name"
        sm = self.world.apis.get("secretmanager")
        if sm is None:
            raise _RevisionFailure(f"{field}: Secret {version} was not found", reason="SECRETS_ACCESS_CHECK_FAILED")
        try:
            allowed = sm.can_access(member, secret_name)
        except GcpError:
            raise _RevisionFailure(
                f"{field}: Secret {version} was not found", reason="SECRETS_ACCESS_CHECK_FAILED"
            ) from None
        if not allowed:
            raise _RevisionFailure(
                f"{field}: Permission denied on secret: {version} for Revision service account {account}. The "
                "service account used must be granted the 'Secret Manager Secret Accessor' role "
                "(roles/secretmanager.secretAccessor) at the secret, project or higher level.",
                reason="SECRETS_ACCESS_CHECK_FAILED",
            )
        try:
            data: bytes = sm.access(version)
        except GcpError as err:
            if err.code == 404:
                raise _RevisionFailure(
                    f"{field}: Secret {version} was not found", reason="SECRETS_ACCESS_CHECK_FAILED"
                ) from None
            raise _RevisionFailure(f"{field}: {err.message}", reason="SECRETS_ACCESS_CHECK_FAILED") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            # The message names the secret, never its bytes.
            raise _RevisionFailure(
                f"{field}: Secret {version} is not valid UTF-8 and cannot be used as an environment variable.",
                reason="SECRETS_ACCESS_CHECK_FAILED",
            ) from None

    # --- Cloud SQL volumes ------------------------------------------------------------------------

    @staticmethod
    def _cloudsql_instances(rev: dict[str, Any], container: dict[str, Any]) -> list[str]:
        mounted = {m.get("name") for m in container.get("volumeMounts", [])}
        out: list[str] = []
        for volume in rev.get("volumes", []):
            if volume.get("name") in mounted and "cloudSqlInstance" in volume:
                out.extend(volume["cloudSqlInstance"].get("instances", []))
        return list(dict.fromkeys(out))

    def _sync_cloudsql(self, proc: RevisionProcess) -> None:
        """Link each instance's socket directory into the revision's Cloud SQL directory while the runtime
        service account may connect (roles/cloudsql.client, Cloud SQL Admin API enabled) — re-checked
        every second, as the Cloud SQL connector checks on each connection."""
        if proc.cloudsql_dir is None:
            return
        wanted: dict[str, str] = {}
        sqladmin = self.world.apis.get("sqladmin")
        for conn in proc.cloudsql_instances:
            if sqladmin is None or conn.count(":") < 2:
                continue
            project = conn.rsplit(":", 2)[0]
            if self.world.find_project(project) is None:
                continue
            if self.world.service_state(project, "sqladmin.googleapis.com") != "ENABLED":
                continue
            if not self.world.iam.has_role([f"projects/{project}"], proc.member, CLOUDSQL_CLIENT):
                continue
            try:
                # Linked whether or not the instance exists: without one, connecting fails as on GCP.
                wanted[conn] = str(sqladmin.socket_dir(conn))
            except ValueError:
                continue
        with contextlib.suppress(OSError):
            sync_links(proc.cloudsql_dir, wanted)

    # --- traffic ----------------------------------------------------------------------------------

    def _targets(self, svc: dict[str, Any]) -> list[_Target]:
        out: list[_Target] = []
        for t in svc.get("traffic", []):
            percent = int(t.get("percent", 0))
            if t.get("type", _LATEST) == _LATEST:
                revision = svc.get("latestReadyRevision", "")
            else:
                revision = f"{svc['name']}/revisions/{t['revision']}"
            if percent > 0 and revision:
                out.append(_Target(revision, percent))
        return out

    def _traffic_statuses(self, svc: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for t in svc.get("traffic", []):
            status: dict[str, Any] = {"type": t.get("type", _LATEST), "percent": int(t.get("percent", 0))}
            revision = (
                svc.get("latestReadyRevision", "").rsplit("/", 1)[-1] if status["type"] == _LATEST else t["revision"]
            )
            if revision:
                status["revision"] = revision
            if t.get("tag"):
                status["tag"] = t["tag"]
            out.append(status)
        return out

    def _route(self, name: str, epoch: int) -> str:
        """Point the front end at the processes the traffic spec names (starting any that are not running)
        and retire the rest once their requests finished. Returns why routing failed, or ""."""
        svc = self._require_service(name)
        targets = self._targets(svc)
        routed: list[tuple[RevisionProcess, int]] = []
        error = ""
        if not targets:
            error = "Revision is not ready and cannot serve traffic: the service has no ready revision."
        for target in targets:
            try:
                routed.append((self._bring_up(target.revision, epoch), target.percent))
            except _RevisionFailure as failure:
                short = target.revision.rsplit("/", 1)[1]
                error = error or (
                    failure.detail
                    if failure.missing
                    else f"Revision '{short}' is not ready and cannot serve traffic. {failure.detail}"
                )
        if error and targets:
            # As Knative does, a route that cannot be reconciled keeps serving as it did; instances started
            # only for it are let go.
            with self._lock:
                frontend = self._frontends.get(name)
                serving = set(frontend.targets()) if frontend is not None else set()
                started = [p for p, _ in routed if p not in serving and self._procs.get(p.revision) is p]
                for proc in started:
                    del self._procs[proc.revision]
                    self.world.store.delete(PROCESS_KIND, proc.revision)
            for proc in started:
                threading.Thread(target=proc.stop, daemon=True).start()
            return error
        with self._lock:
            self._check_epoch(epoch)
            frontend = self._frontends.get(name)
            if frontend is not None:
                frontend.set_targets(routed)
            keep = {p.revision for p, _ in routed}
            prefix = f"{name}/revisions/"
            retired = [self._procs.pop(r) for r in list(self._procs) if r.startswith(prefix) and r not in keep]
            for proc in retired:
                self.world.store.delete(PROCESS_KIND, proc.revision)
        for proc in retired:
            # Retired instances finish what they are serving (up to the request timeout), then stop.
            threading.Thread(
                target=proc.stop, kwargs={"drain_timeout": proc.request_timeout}, name="run-retire", daemon=True
            ).start()
        return error

    # --- front ends and callers -------------------------------------------------------------------

    def _start_frontend(self, name: str, port: int) -> FrontEnd:
        frontend = FrontEnd(name, port, lambda headers, path: self._authorize(name, headers, path))
        with self._lock:
            self._frontends[name] = frontend
        return frontend

    def _authorize(self, name: str, headers: dict[str, str], path: str) -> tuple[int, str] | None:
        """Cloud Run's invoker check: allUsers (or invokerIamDisabled) lets anyone in; otherwise the
        caller's identity token must name a member holding roles/run.invoker."""
        svc = self.world.store.get(SERVICE_KIND, name)
        if svc is None:
            return 404, google_error_page(404, "Not Found", f"The requested URL <code>{path}</code> was not found.")
        if svc.get("invokerIamDisabled"):
            return None
        resources = [name, f"projects/{name.split('/')[1]}"]
        if self.world.iam.has_role(resources, "allUsers", INVOKER):
            return None
        forbidden = (
            403,
            google_error_page(
                403,
                "Forbidden",
                f"Your client does not have permission to get URL <code>{path}</code> from this server.",
            ),
        )
        auth = headers.get("x-serverless-authorization") or headers.get("authorization") or ""
        if not auth:
            return forbidden
        scheme, _, token = auth.partition(" ")
        email = decode_jwt_email(token.strip()) if scheme.lower() == "bearer" else None
        if email is None:
            return 401, google_error_page(
                401, "Unauthorized", f"Your client does not have permission to the requested URL <code>{path}</code>."
            )
        member = ("serviceAccount:" if email.endswith(".gserviceaccount.com") else "user:") + email
        for who in (member, "allAuthenticatedUsers"):
            if self.world.iam.has_role(resources, who, INVOKER):
                return None
        return forbidden

    # --- the watchdog: crashed instances and Cloud SQL links --------------------------------------

    def _ensure_watchdog(self) -> None:
        with self._lock:
            if self._watchdog is None or not self._watchdog.is_alive():
                self._stop.clear()
                self._watchdog = threading.Thread(target=self._watch, name="run-watchdog", daemon=True)
                self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._tick()
            except Exception:  # the watchdog must outlive any one bad tick
                traceback.print_exc()

    def _tick(self) -> None:
        epoch = self._epoch
        with self._lock:
            procs = list(self._procs.items())
        now = time.monotonic()
        for revision, proc in procs:
            if proc.stopping:
                continue
            if proc.ready and not proc.alive():
                # A serving instance died: Cloud Run starts another one, backing off while it keeps dying.
                proc.system_log(_exit_line(proc.proc.returncode))
                with self._lock:
                    if self._procs.get(revision) is proc:
                        del self._procs[revision]
                    failures, _ = self._restarts.get(revision, (0, 0.0))
                    self._restarts[revision] = (failures, now + min(30.0, 2.0**failures))
                continue
            self._sync_cloudsql(proc)
        with self._lock:
            due = [r for r, (_, when) in self._restarts.items() if when <= now]
        for revision in due:
            service = revision.rsplit("/revisions/", 1)[0]
            lock = self._service_lock(service)
            if not lock.acquire(blocking=False):
                continue
            try:
                if self.world.store.get(SERVICE_KIND, service) is None:
                    with self._lock:
                        self._restarts.pop(revision, None)
                    continue
                error = self._route(service, epoch)
                with self._lock:
                    if error and revision not in self._procs:
                        failures, _ = self._restarts.get(revision, (0, 0.0))
                        self._restarts[revision] = (failures + 1, time.monotonic() + min(30.0, 2.0 ** (failures + 1)))
                    else:
                        self._restarts.pop(revision, None)
            except _Cancelled:
                return
            finally:
                lock.release()

    # --- lifecycle --------------------------------------------------------------------------------

    def _stop_everything(self) -> None:
        with self._lock:
            self._epoch += 1
            frontends = list(self._frontends.values())
            procs = list(self._procs.values())
            self._frontends.clear()
            self._procs.clear()
            self._restarts.clear()
        for frontend in frontends:
            frontend.stop()
        stop_all(procs)
        for proc in procs:
            self.world.store.delete(PROCESS_KIND, proc.revision)

    def _reap_orphans(self) -> None:
        for name in self.world.store.names(PROCESS_KIND):
            entry = self.world.store.get(PROCESS_KIND, name) or {}
            reap_orphan(int(entry.get("pid", 0) or 0), entry.get("startTime"))
            self.world.store.delete(PROCESS_KIND, name)

    def reset(self) -> None:
        self._stop_everything()
        self._reap_orphans()
        shutil.rmtree(self.world.data_dir / "r", ignore_errors=True)

    def shutdown(self) -> None:
        self._stop.set()
        self._stop_everything()

    def restore(self) -> None:
        """After a daemon restart: reap what a crash left running, reopen every front end on its port,
        start the serving revisions and finish the operations that were under way."""
        self._reap_orphans()
        epoch = self._epoch
        for svc in self.world.store.list(SERVICE_KIND):
            name = svc["name"]
            state = self.world.store.get(STATE_KIND, name) or {}
            try:
                frontend = self._start_frontend(name, int(state.get("port", 0)))
            except OSError:
                # The port was taken while the emulator was down: the service gets a new URL.
                frontend = self._start_frontend(name, 0)
            if frontend.port != state.get("port"):
                state["port"] = frontend.port
                svc["uri"] = f"http://127.0.0.1:{frontend.port}"
                svc["urls"] = [svc["uri"]]
                self.world.store.put(STATE_KIND, name, state)
                self.world.store.put(SERVICE_KIND, name, svc)
            threading.Thread(
                target=self._resume, args=(name, list(state.get("pending", [])), epoch), daemon=True
            ).start()

    def _resume(self, name: str, pending: list[dict[str, Any]], epoch: int) -> None:
        if not any(p["kind"] == "delete" for p in pending):
            with self._service_lock(name), contextlib.suppress(_Cancelled, GcpError):
                self._route(name, epoch)
        for p in pending:
            if self._epoch != epoch:
                return
            if p["kind"] == "delete":
                self._start_delete(p["op"], name)
            else:
                self._start_deploy(p["op"], name, p.get("revision"), int(p.get("generation", 0)))


def _copy_path(src: dict[str, Any], dst: dict[str, Any], path: str) -> None:
    """Apply one updateMask path (camelCase or snake_case, dotted) from ``src`` onto ``dst``."""
    keys = [re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k) for k in path.split(".")]
    s: Any = src
    d: dict[str, Any] = dst
    for k in keys[:-1]:
        s = s.get(k, {}) if isinstance(s, dict) else {}
        d = d.setdefault(k, {})
    last = keys[-1]
    if isinstance(s, dict) and last in s:
        d[last] = copy.deepcopy(s[last])
    else:
        d.pop(last, None)
