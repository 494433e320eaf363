"""Cloud Run Admin v2's handlers: services, revisions, operations and service IAM policies; the service
resource itself (validation, defaults, revision records) and the module's lifecycle (reset, shutdown, restore).

The work behind the handlers is split by idea, each a mixin of :class:`CloudRunApi`: ``rollout.py`` (a
deploy's or delete's operation, conditions), ``launch.py`` (starting a revision's process and probing it),
``traffic.py`` (routing), ``secretenv.py`` (secret env vars), ``cloudsql.py`` (the /cloudsql links),
``invoker.py`` (who may call a service) and ``watchdog.py`` (restarting crashed instances). See the package
docstring for how a revision maps to a host process.
"""

from __future__ import annotations

import contextlib
import copy
import random
import re
import shutil
import string
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.cloud import run_v2
from google.iam.v1 import iam_policy_pb2
from google.longrunning import operations_pb2
from werkzeug.wrappers import Request, Response

from ...core import paging
from ...core.errors import GcpError, aborted, invalid, permission_denied
from ...core.http import ApiModule, ApiRequest, json_response, route
from ...core.iam import PolicyMethods
from ...core.operations import Operations
from ...core.validation import normalize, parse_proto, render
from .cloudsql import CloudSqlLinks
from .common import (
    _DEFAULT_PROBE,
    _LATEST,
    _REVISION,
    _TYPE_REVISION,
    _TYPE_SERVICE,
    CALLER,
    PROCESS_KIND,
    REVISION_KIND,
    SERVICE_KIND,
    STATE_KIND,
    _Cancelled,
    _canon,
    _condition,
    _etag,
    _flag,
    _ingress,
    _now,
    _seconds,
    _violation,
)
from .frontend import FrontEnd
from .invoker import Invoker
from .launch import Launch
from .logs import LogShipper
from .revisions import (
    GRACE_SECONDS,
    RevisionProcess,
    Spawner,
    reap_orphan,
    stop_all,
)
from .rollout import Rollout
from .secretenv import SecretEnv
from .traffic import Traffic
from .watchdog import Watchdog

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

#: How long a deleted service is kept before it is purged: its ``expireTime`` is ``deleteTime`` plus this
#: (recorded: tests/golden/recordings/run-service.tf.yaml, 30 days).
_EXPIRY = timedelta(days=30)
#: Service IAM policies: an empty ``testIamPermissions`` answer still lists ``permissions``.
_IAM = PolicyMethods("run.", omit_empty=False)


def _valid_image(image: str) -> bool:
    first, _, rest = image.partition("/")
    # As docker reads a reference: a first component with "." or ":" is a registry host.
    if rest and ("." in first or ":" in first or first == "localhost"):
        return bool(_IMAGE_HOST.match(first)) and bool(_IMAGE_PATH.match(rest))
    return bool(_IMAGE_PATH.match(image))


class CloudRunApi(Rollout, Launch, Traffic, SecretEnv, CloudSqlLinks, Invoker, Watchdog, ApiModule):
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
        self._log_shipper = LogShipper(self.world)
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

    def find_service(self, name: str) -> dict[str, Any] | None:
        """The service ``projects/ID/locations/REGION/services/S`` as stored, or None (for the IAP API)."""
        return self.world.store.get(SERVICE_KIND, name)

    def service_at(self, origin: str) -> dict[str, Any] | None:
        """The service whose front end is at ``origin`` (``http://127.0.0.1:PORT``), or None."""
        return next((s for s in self.world.store.list(SERVICE_KIND) if s.get("uri") == origin), None)

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
            given = "resources" in c
            resources = c.setdefault("resources", {})
            limits = resources.setdefault("limits", {})
            limits.setdefault("cpu", "1000m")
            limits.setdefault("memory", "512Mi")
            # "cpuIdle: true by default. However, if ResourceRequirements is set, the caller must explicitly set
            # this field to true to preserve the default behavior" (Cloud Run Admin v2 reference,
            # ResourceRequirements); proto3 JSON leaves a false one out, so absent means false then.
            # recorded: tests/golden/recordings/run-service.tf.yaml (no resources sent: cpuIdle true)
            if not given:
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
            # The URL and the new revision are reported once the deploy starts (see _deploy_locked).
            svc["etag"] = _etag()
            self._mark_pending(svc)
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
            # latestCreatedRevision still names the previous revision until the deploy starts (recorded:
            # tests/golden/recordings/run-service.tf.yaml, the PATCH's first answer).
            svc["etag"] = _etag()
            self._mark_pending(svc)
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
            # Deleting is a change of the desired state: a new generation, with deleteTime and expireTime
            # (recorded: tests/golden/recordings/run-service.tf.yaml).
            now = datetime.now(UTC)
            svc.update(
                generation=str(int(svc["generation"]) + 1),
                updateTime=_now(now),
                deleteTime=_now(now),
                expireTime=_now(now + _EXPIRY),
                lastModifier=CALLER,
                etag=_etag(),
            )
            self._mark_pending(svc)
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
        return _IAM.get(self.world, name)

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
        return _IAM.set(self.world, name, body.get("policy", {}))

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
        return _IAM.test(body.get("permissions", []))

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
    def _mark_pending(svc: dict[str, Any]) -> None:
        """A change accepted, not yet reconciled: the Ready condition turns CONDITION_PENDING and the rest of
        the status stays as it was; a new service has no status yet (recorded:
        tests/golden/recordings/run-service.tf.yaml, the first answers of the POST, PATCH and DELETE)."""
        svc["reconciling"] = True
        svc["terminalCondition"] = {**svc.get("terminalCondition", {}), "state": "CONDITION_PENDING"}

    def _log_path(self, revision: str) -> Path:
        parts = revision.split("/")
        return self.world.data_dir / "run" / parts[1] / parts[5] / f"{parts[7]}.log"

    # --- front ends and callers -------------------------------------------------------------------

    def _start_frontend(self, name: str, port: int) -> FrontEnd:
        frontend = FrontEnd(name, port, lambda headers, path: self._authorize(name, headers, path))
        with self._lock:
            self._frontends[name] = frontend
        return frontend

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
        self._remove_cloudsql_targets()
        shutil.rmtree(self.world.data_dir / "r", ignore_errors=True)

    def shutdown(self) -> None:
        self._stop.set()
        self._stop_everything()
        self._log_shipper.flush(timeout=2.0)  # the stopped instances' last lines
        self._remove_cloudsql_targets()

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
