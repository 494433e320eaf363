"""Service Usage v1: enable APIs per project (batchEnable, at most 20 ids, returns an operation), get, list; and
v1beta1's ``generateServiceIdentity`` (discovery REST, ``build("serviceusage", "v1beta1")``), which creates a
service's agent in the project (IAP's ``service-NUMBER@gcp-sa-iap.iam.gserviceaccount.com`` exists only once
asked for; see ``apis/iam.py``) and answers with a done operation whose response is the ServiceIdentity
``{email, uniqueId}``; asking again answers with the same identity.

Every other module's calls are refused with SERVICE_DISABLED until its service is enabled here; see
``World.require_enabled``.
"""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Any

import googleapiclient
from google.cloud.service_usage_v1 import types as su

from ..core.errors import GcpError, failed_precondition, invalid
from ..core.http import ApiModule, ApiRequest, route
from ..core.validation import parse_proto, render

# Services the emulator knows by name, with the titles GCP uses in SERVICE_DISABLED messages.
KNOWN_SERVICES: dict[str, str] = {
    "serviceusage.googleapis.com": "Service Usage API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
    "artifactregistry.googleapis.com": "Artifact Registry API",
    "cloudbuild.googleapis.com": "Cloud Build API",
    "sqladmin.googleapis.com": "Cloud SQL Admin API",
    "secretmanager.googleapis.com": "Secret Manager API",
    "iam.googleapis.com": "Identity and Access Management (IAM) API",
    "iamcredentials.googleapis.com": "IAM Service Account Credentials API",
    "run.googleapis.com": "Cloud Run Admin API",
    "storage.googleapis.com": "Cloud Storage API",
    "storage-api.googleapis.com": "Google Cloud Storage JSON API",
    "storage-component.googleapis.com": "Cloud Storage",
    "compute.googleapis.com": "Compute Engine API",
    "logging.googleapis.com": "Cloud Logging API",
    "monitoring.googleapis.com": "Cloud Monitoring API",
    "iap.googleapis.com": "Cloud Identity-Aware Proxy API",
}


@functools.cache
def _public_services() -> frozenset[str]:
    """Every public Google API with a discovery document (``runtimeconfig.v1.json`` ->
    ``runtimeconfig.googleapis.com``): GCP knows them all, enabled or not (recorded:
    tests/golden/recordings/serviceusage-service.log gets and enables runtimeconfig.googleapis.com)."""
    documents = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
    return frozenset(f"{p.name.split('.', 1)[0]}.googleapis.com" for p in documents.glob("*.json"))


def is_known(name: str) -> bool:
    return name in KNOWN_SERVICES or name in _public_services()


MAX_BATCH = 20
_RESPONSE = "type.googleapis.com/google.api.serviceusage.v1.BatchEnableServicesResponse"
_ENABLE_RESPONSE = "type.googleapis.com/google.api.serviceusage.v1.EnableServiceResponse"
_DISABLE_RESPONSE = "type.googleapis.com/google.api.serviceusage.v1.DisableServiceResponse"
_METADATA = "type.googleapis.com/google.api.serviceusage.v1.OperationMetadata"
_IDENTITY = "type.googleapis.com/google.api.serviceusage.v1beta1.ServiceIdentity"
# services.enable/disable operations carry an Empty as metadata (recorded: serviceusage-service.log).
_EMPTY_METADATA = {"@type": "type.googleapis.com/google.protobuf.Empty", "value": {}}


class ServiceUsageApi(ApiModule):
    prefix = "/serviceusage"
    service = "serviceusage.googleapis.com"
    title = "Service Usage API"

    def _service(self, project: dict[str, Any], name: str) -> dict[str, Any]:
        number = project["name"].split("/")[1]
        return {
            "name": f"projects/{number}/services/{name}",
            "parent": f"projects/{number}",
            "config": {"name": name, "title": KNOWN_SERVICES.get(name, name)},
            "state": self.world.service_state(project["projectId"], name),
        }

    def _service_state_view(self, project: dict[str, Any], name: str) -> dict[str, Any]:
        """The service as services.get and operation responses show it: no ``config``, and no ``parent``
        until the project has ever had it enabled (recorded: serviceusage-service.log)."""
        svc = self._service(project, name)
        del svc["config"]
        ever = self.world.store.get(self.world.SERVICE_KIND, f"{project['projectId']}/{name}") is not None
        if not ever and svc["state"] != "ENABLED":
            del svc["parent"]
        return svc

    def _check_known(self, names: list[str]) -> None:
        unknown = [n for n in names if not is_known(n)]
        if unknown:
            raise GcpError(
                403,
                f"Not found or permission denied for service(s): {', '.join(unknown)}.",
                "PERMISSION_DENIED",
                error_info={
                    "reason": "SERVICE_CONFIG_NOT_FOUND_OR_PERMISSION_DENIED",
                    "domain": "serviceusage.googleapis.com",
                    "metadata": {"services": ",".join(unknown)},
                },
            )

    def _enable_op(self, project: dict[str, Any], names: list[str], response_type: str) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            for n in names:
                self.world.set_service_state(project["projectId"], n, True)
            services = [self._service_state_view(project, n) for n in names]
            return {"services": services} if response_type == _RESPONSE else {"service": services[0]}

        metadata = {"@type": _METADATA} if response_type == _RESPONSE else _EMPTY_METADATA
        return self.world.ops.start(
            "", work, delay_key="serviceusage.enable", metadata=metadata, response_type=response_type
        )

    @route("POST", "/v1/projects/{project}/services:batchEnable", name="services.batchEnable")
    def batch_enable(self, req: ApiRequest) -> dict[str, Any]:
        body = parse_proto(req.json(), su.BatchEnableServicesRequest)
        names = list(body.service_ids)  # type: ignore[attr-defined]
        if not names:
            raise invalid("serviceIds must not be empty.")
        if len(names) > MAX_BATCH:
            raise failed_precondition(
                f"Too many services in batch: {len(names)}; a batch may enable at most {MAX_BATCH} services."
            )
        self._check_known(names)
        return self._enable_op(self.world.project(req["project"]), names, _RESPONSE)

    @route("POST", "/v1/projects/{project}/services/{service}:enable", name="services.enable")
    def enable(self, req: ApiRequest) -> dict[str, Any]:
        parse_proto(req.json(), su.EnableServiceRequest)
        self._check_known([req["service"]])
        op = self._enable_op(self.world.project(req["project"]), [req["service"]], _ENABLE_RESPONSE)
        # The first answer names the operation only; its metadata shows once polled (recorded:
        # serviceusage-service.log; services.disable answers with the metadata at once).
        return {"name": op["name"]}

    @route("POST", "/v1/projects/{project}/services/{service}:disable", name="services.disable")
    def disable(self, req: ApiRequest) -> dict[str, Any]:
        parse_proto(req.json(), su.DisableServiceRequest)
        project = self.world.project(req["project"])
        name = req["service"]
        self._check_known([name])

        def work() -> dict[str, Any]:
            self.world.set_service_state(project["projectId"], name, False)
            return {"service": self._service_state_view(project, name)}

        return self.world.ops.start(
            "", work, delay_key="serviceusage.enable", metadata=_EMPTY_METADATA, response_type=_DISABLE_RESPONSE
        )

    @route("GET", "/v1/projects/{project}/services/{service}", name="services.get")
    def get(self, req: ApiRequest) -> dict[str, Any]:
        self._check_known([req["service"]])
        svc = self._service_state_view(self.world.project(req["project"]), req["service"])
        return render(svc, su.Service, req.enum_int)

    @route("GET", "/v1/projects/{project}/services:batchGet", name="services.batchGet")
    def batch_get(self, req: ApiRequest) -> dict[str, Any]:
        project = self.world.project(req["project"])
        names = [n.rsplit("/", 1)[-1] for n in req.args.getlist("names")]
        self._check_known(names)
        return {"services": [render(self._service(project, n), su.Service, req.enum_int) for n in names]}

    @route("GET", "/v1/projects/{project}/services", name="services.list")
    def list(self, req: ApiRequest) -> dict[str, Any]:
        project = self.world.project(req["project"])
        services = [self._service(project, n) for n in sorted(KNOWN_SERVICES)]
        flt = req.args.get("filter", "")
        if "state:ENABLED" in flt:
            services = [s for s in services if s["state"] == "ENABLED"]
        elif "state:DISABLED" in flt:
            services = [s for s in services if s["state"] == "DISABLED"]
        return {"services": [render(s, su.Service, req.enum_int) for s in services]}

    @route("GET", "/v1/operations/{op}", name="operations.get", check_service=False)
    def get_operation(self, req: ApiRequest) -> dict[str, Any]:
        return self.world.ops.get(f"operations/{req['op']}")

    # --- v1beta1 ----------------------------------------------------------------------------------

    @route(
        "POST",
        "/v1beta1/projects/{project}/services/{service}:generateServiceIdentity",
        name="services.generateServiceIdentity",
    )
    def generate_service_identity(self, req: ApiRequest) -> dict[str, Any]:
        # The method takes no request body (serviceusage v1beta1 discovery document): any field is unknown.
        for field in req.json():
            raise invalid(f'Invalid JSON payload received. Unknown name "{field}": Cannot find field.')
        self._check_known([req["service"]])
        project = self.world.project(req["project"])
        agent = self.world.api("iam").generate_service_agent(project["name"].split("/")[1], req["service"])
        # Done at once: the identity exists (or already existed) when the call returns.
        op = {
            "name": f"operations/{uuid.uuid4()}",
            "done": True,
            "response": {"@type": _IDENTITY, "email": agent["email"], "uniqueId": agent["uniqueId"]},
        }
        self.world.store.put(self.world.ops.KIND, op["name"], op)
        return op

    @route("GET", "/v1beta1/operations/{op}", name="operations.get.v1beta1", check_service=False)
    def get_operation_v1beta1(self, req: ApiRequest) -> dict[str, Any]:
        return self.world.ops.get(f"operations/{req['op']}")
