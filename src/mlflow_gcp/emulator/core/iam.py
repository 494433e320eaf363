"""One IAM-policy store for every resource that has ``getIamPolicy``/``setIamPolicy``.

Policies carry etags: a write naming a stale etag is refused (409 ABORTED for the GAPIC APIs; Cloud
Storage uses 412, so the caller picks the error). Writes check their members as GCP does: a service
account that does not exist (or that eventual consistency still hides) is a 400, and ``allUsers`` is
refused while the simulated Domain Restricted Sharing org policy is on.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import GcpError, aborted, invalid

if TYPE_CHECKING:
    from .world import World

_MEMBER = re.compile(
    r"^(allUsers|allAuthenticatedUsers|(user|serviceAccount|group|domain|principal|principalSet"
    r"|projectOwner|projectEditor|projectViewer|deleted:user|deleted:serviceAccount|deleted:group):.+)$"
)
_ROLE = re.compile(r"^(roles/[\w.]+|projects/[^/]+/roles/[\w.]+|organizations/\d+/roles/[\w.]+)$")

# Basic and admin roles that include a narrower role, for the checks the emulator itself makes.
IMPLIED_BY: dict[str, set[str]] = {
    "roles/secretmanager.secretAccessor": {"roles/owner", "roles/secretmanager.admin"},
    "roles/cloudsql.client": {"roles/owner", "roles/editor", "roles/cloudsql.admin", "roles/cloudsql.editor"},
    "roles/run.invoker": {"roles/owner", "roles/editor", "roles/run.admin"},
    # storage.objects.get (https://cloud.google.com/storage/docs/access-control/iam-roles): the object roles
    # above it, and the basic roles through the convenience values (projectOwner/Editor/Viewer) every new
    # bucket's policy and default object ACLs grant object read to.
    "roles/storage.objectViewer": {
        "roles/storage.objectUser",
        "roles/storage.objectAdmin",
        "roles/storage.admin",
        "roles/owner",
        "roles/editor",
        "roles/viewer",
    },
    # artifactregistry.repositories.uploadArtifacts
    # (https://cloud.google.com/artifact-registry/docs/access-control#roles).
    "roles/artifactregistry.writer": {
        "roles/artifactregistry.repoAdmin",
        "roles/artifactregistry.admin",
        "roles/owner",
        "roles/editor",
    },
    # logging.logEntries.create (https://cloud.google.com/logging/docs/access-control#permissions_and_roles).
    "roles/logging.logWriter": {"roles/logging.admin", "roles/owner", "roles/editor"},
}


def new_etag() -> str:
    return base64.b64encode(os.urandom(8)).decode()


class IamPolicies:
    KIND = "iam.policy"

    def __init__(self, world: World) -> None:
        self.world = world
        # The store's own lock, not one of ours: callers that hold the store's lock call in here (deleting a
        # service account rewrites every policy that named it), and a second lock taken in the other order by
        # policy writes deadlocked the emulator (seen: a `down` deleting an account while granting on a secret).
        self._lock = world.store.lock
        # (resource, role, member) -> when the grant was written, for propagation delay.
        self._granted_at: dict[tuple[str, str, str], float] = {}

    def get(self, resource: str) -> dict[str, Any]:
        policy = self.world.store.get(self.KIND, resource)
        if policy is None:
            policy = {"version": 1, "etag": "ACAB", "bindings": []}
        return policy

    def set(
        self,
        resource: str,
        policy: dict[str, Any],
        *,
        stale_etag_error: Callable[[], GcpError] | None = None,
        initial: bool = False,
    ) -> dict[str, Any]:
        """Write a policy. ``initial``: the emulator itself creates a resource's first policy (no client wrote it,
        so no injected concurrent-change conflict)."""
        policy = copy.deepcopy(policy)
        bindings = policy.get("bindings", [])
        for binding in bindings:
            role = binding.get("role", "")
            if not _ROLE.match(role):
                raise invalid(f"Role {role} is not supported for this resource.")
            for member in binding.get("members", []):
                self._check_member(member)
        with self._lock:
            current = self.get(resource)
            etag = policy.get("etag")
            if etag and etag != current["etag"]:
                raise (stale_etag_error or _concurrent_change)()
            if not initial and self.world.control.roll("policy_conflict_rate"):
                raise (stale_etag_error or _concurrent_change)()
            old = {(b["role"], m) for b in current.get("bindings", []) for m in b.get("members", [])}
            merged: dict[str, list[str]] = {}
            for binding in bindings:
                members = merged.setdefault(binding["role"], [])
                for m in binding.get("members", []):
                    if m not in members:
                        members.append(m)
            # Propagation delay applies to grants written while eventual consistency is on: turning it on later
            # does not make long-settled grants unseen again.
            now = time.monotonic() if self.world.control.settings.consistency else 0.0
            for role, members in merged.items():
                for m in members:
                    if (role, m) not in old:
                        self._granted_at[(resource, role, m)] = now
            stored = {
                # A policy without conditions comes back as version 1, whatever version was written
                # (recorded on real GCP: tests/golden/recordings/project-iam-and-serviceaccount.log).
                "version": 3 if any(b.get("condition") for b in bindings) else 1,
                "etag": new_etag(),
                "bindings": [{"role": r, "members": sorted(ms)} for r, ms in sorted(merged.items()) if ms],
            }
            # Data Access audit logging is part of the policy (recorded on real GCP:
            # tests/golden/recordings/project-iam-and-serviceaccount.log); the caller decides whether a write
            # replaces it (Resource Manager's updateMask).
            audit = [a for a in policy.get("auditConfigs") or [] if a.get("service")]
            if audit:
                stored["auditConfigs"] = audit
            self.world.store.put(self.KIND, resource, stored)
            return copy.deepcopy(stored)

    def delete(self, resource: str) -> None:
        self.world.store.delete(self.KIND, resource)

    def principal_deleted(self, member: str, uid: str) -> None:
        """A deleted principal stays in every policy that named it as ``deleted:MEMBER?uid=UID``, as GCP shows
        it (recorded: tests/golden/recordings/project-iam-and-serviceaccount.log); a new principal of the
        same name does not inherit its grants."""
        replacement = f"deleted:{member}?uid={uid}"
        with self._lock:
            for resource in self.world.store.names(self.KIND):
                policy = self.world.store.get(self.KIND, resource)
                if policy is None or not any(member in b.get("members", []) for b in policy.get("bindings", [])):
                    continue
                for b in policy["bindings"]:
                    b["members"] = sorted({replacement if m == member else m for m in b.get("members", [])})
                policy["etag"] = new_etag()
                self.world.store.put(self.KIND, resource, policy)

    def members(self, resource: str, role: str) -> set[str]:
        for b in self.get(resource).get("bindings", []):
            if b["role"] == role:
                return set(b.get("members", []))
        return set()

    def has_role(self, resources: Iterable[str], member: str, role: str) -> bool:
        """Does ``member`` hold ``role`` (or a role that includes it) on any of ``resources``, counting
        only grants that IAM has propagated (``iam_propagation_seconds`` under eventual consistency)?"""
        roles = {role} | IMPLIED_BY.get(role, set())
        settings = self.world.control.settings
        wait = settings.iam_propagation_seconds if settings.consistency else 0.0
        now = time.monotonic()
        for resource in resources:
            for b in self.get(resource).get("bindings", []):
                if b["role"] in roles and member in b.get("members", []):
                    granted = self._granted_at.get((resource, b["role"], member), 0.0)
                    if now - granted >= wait:
                        return True
        return False

    def _check_member(self, member: str) -> None:
        if not _MEMBER.match(member):
            raise invalid(f"Invalid principal: {member}.")
        if member in ("allUsers", "allAuthenticatedUsers") and self.world.control.settings.domain_restricted_sharing:
            raise GcpError(
                400,
                "One or more users named in the policy do not belong to a permitted customer, "
                "perhaps due to an organization policy.",
                "FAILED_PRECONDITION",
                error_info={
                    "reason": "ORG_POLICY_CONSTRAINT_FAILED",
                    "domain": "cloudresourcemanager.googleapis.com",
                    "metadata": {"constraint": "constraints/iam.allowedPolicyMemberDomains"},
                },
            )
        if member.startswith("serviceAccount:"):
            email = member.split(":", 1)[1]
            if not self.world.service_account_visible(email):
                raise invalid(f"Service account {email} does not exist.")


def _concurrent_change() -> GcpError:
    return aborted(
        "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff."
    )


class PolicyMethods:
    """What every API's ``getIamPolicy``/``setIamPolicy``/``testIamPermissions`` routes share, over the one
    store (:class:`IamPolicies`). Each route finds its resource first (its own 404s, in its own order), then
    calls these with the resource's store key; what differs between APIs on the wire is set here once:

    - ``permission_prefix``: the emulator's caller owns every project, so it holds every permission of the
      API's own service (``run.``, ``secretmanager.``, ``iam.``, ``storage.``) and none other.
    - ``version_message``: how a bad ``options.requestedPolicyVersion`` is refused (formatted with it).
    - ``stale_etag_error``: a write naming a stale etag (409 ABORTED unless given; Cloud Storage answers 412).
    - ``omit_empty``: an answer granting nothing is ``{}`` (Secret Manager, IAM) rather than an empty list.
    """

    def __init__(
        self,
        permission_prefix: str,
        *,
        version_message: str = "",
        stale_etag_error: Callable[[], GcpError] | None = None,
        omit_empty: bool = True,
    ) -> None:
        self.permission_prefix = permission_prefix
        self.version_message = version_message
        self.stale_etag_error = stale_etag_error
        self.omit_empty = omit_empty

    def check_version(self, args: Any) -> None:
        requested = args.get("options.requestedPolicyVersion", "0")
        if requested not in ("0", "1", "3"):
            raise invalid(self.version_message.format(requested=requested))

    def get(self, world: World, resource: str) -> dict[str, Any]:
        return world.iam.get(resource)

    def set(self, world: World, resource: str, policy: dict[str, Any]) -> dict[str, Any]:
        return world.iam.set(resource, policy, stale_etag_error=self.stale_etag_error)

    def test(self, permissions: Iterable[str]) -> dict[str, Any]:
        granted = [p for p in permissions if p.startswith(self.permission_prefix)]
        return {"permissions": granted} if granted or not self.omit_empty else {}
