"""The emulator's shared context: store, IAM, identity, operations, control plane, projects and enabled services.

API modules reach each other only through ``world.api(name)`` and the public methods documented on each
module, so every cross-API rule (Cloud Run resolving secrets, checking IAM, finding images and Cloud SQL
sockets) is written once, in the module that owns the resource.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .control import Control
from .errors import GcpError, service_disabled
from .iam import IamPolicies
from .identity import Identity
from .operations import Operations
from .store import Store

if TYPE_CHECKING:
    from .http import ApiModule

# Enabled in every new project, as on GCP (the rest must be enabled through Service Usage).
DEFAULT_SERVICES = frozenset(
    {
        "serviceusage.googleapis.com",
        "storage.googleapis.com",
        "storage-api.googleapis.com",
        "storage-component.googleapis.com",
        "cloudresourcemanager.googleapis.com",
        "logging.googleapis.com",
        "monitoring.googleapis.com",
    }
)


def project_number(project_id: str) -> str:
    return str(100000000000 + int(hashlib.sha256(project_id.encode()).hexdigest(), 16) % 900000000000)


class World:
    PROJECT_KIND = "resourcemanager.project"
    SERVICE_KIND = "serviceusage.service"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(data_dir / "store.json")
        self.control = Control(data_dir / "requests.jsonl")
        self.iam = IamPolicies(self)
        self.ops = Operations(self)
        #: The keys and tokens of the emulator's Google (OIDC ID tokens) and IAP (signed headers).
        self.identity = Identity(self)
        self.apis: dict[str, ApiModule] = {}
        #: Set by the server once it listens, e.g. "http://127.0.0.1:8085".
        self.base_url = ""
        # When each service was enabled (monotonic), for SERVICE_DISABLED propagation.
        self._enabled_at: dict[tuple[str, str], float] = {}

    def api(self, name: str) -> Any:
        return self.apis[name]

    # --- projects -------------------------------------------------------------------------------------

    def add_project(self, project_id: str) -> dict[str, Any]:
        number = project_number(project_id)
        project = {
            "name": f"projects/{number}",
            "projectId": project_id,
            "state": "ACTIVE",
            "displayName": project_id,
            "parent": "organizations/123456789012",
            "etag": 'W/"emulator"',
        }
        self.store.put(self.PROJECT_KIND, project_id, project)
        return project

    def find_project(self, id_or_number: str) -> dict[str, Any] | None:
        project = self.store.get(self.PROJECT_KIND, id_or_number)
        if project is not None:
            return project
        for p in self.store.list(self.PROJECT_KIND):
            if p["name"] == f"projects/{id_or_number}":
                return p
        return None

    def project(self, id_or_number: str) -> dict[str, Any]:
        """The project, or the 403 GCP answers for a project that does not exist or is not yours."""
        project = self.find_project(id_or_number)
        if project is None:
            raise GcpError(
                403,
                f"Permission denied on resource project {id_or_number}.",
                "PERMISSION_DENIED",
                error_info={
                    "reason": "CONSUMER_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"consumer": f"projects/{id_or_number}"},
                },
                style="both",
            )
        return project

    # --- services -------------------------------------------------------------------------------------

    def service_state(self, project_id: str, service: str) -> str:
        if service in DEFAULT_SERVICES:
            return "ENABLED"
        stored = self.store.get(self.SERVICE_KIND, f"{project_id}/{service}")
        return stored["state"] if stored else "DISABLED"

    def set_service_state(self, project_id: str, service: str, enabled: bool) -> None:
        self.store.put(
            self.SERVICE_KIND,
            f"{project_id}/{service}",
            {"state": "ENABLED" if enabled else "DISABLED"},
        )
        if enabled:
            self._enabled_at[(project_id, service)] = time.monotonic()

    def require_enabled(self, project: str, service: str, title: str) -> dict[str, Any]:
        """Refuse a call to a disabled API with SERVICE_DISABLED, including for a while after it was
        enabled when eventual consistency is on, as GCP does."""
        proj = self.project(project)
        pid = proj["projectId"]
        number = proj["name"].split("/")[1]
        if self.service_state(pid, service) != "ENABLED":
            raise service_disabled(service, title, number)
        s = self.control.settings
        if s.consistency and service not in DEFAULT_SERVICES:
            enabled_at = self._enabled_at.get((pid, service))
            if enabled_at is not None and time.monotonic() - enabled_at < s.service_enable_seconds:
                raise service_disabled(service, title, number)
        return proj

    # --- cross-API questions with a safe default when the owning module is absent ---------------------

    def service_account_visible(self, email: str) -> bool:
        iam = self.apis.get("iam")
        if iam is None or not email.endswith(".iam.gserviceaccount.com"):
            return True
        return iam.service_account_visible(email)  # type: ignore[attr-defined]
