"""The IAM permission each emulated method needs, and the 403 each API answers when the caller lacks it
(control setting ``denied_permissions``), so the tool's permission hints are tested against Google's shapes."""

from __future__ import annotations

import re

from .errors import GcpError

#: Emulator module -> the permission prefix of its service.
_SERVICE = {
    "serviceusage": "serviceusage",
    "resourcemanager": "resourcemanager",
    "secretmanager": "secretmanager",
    "iam": "iam",
    "artifactregistry": "artifactregistry",
    "cloudbuild": "cloudbuild",
    "sqladmin": "cloudsql",
    "storage": "storage",
    "run": "run",
}
#: Method verbs whose permission verb differs.
_VERB = {"insert": "create", "patch": "update", "batchEnable": "enable", "batchGet": "get", "download": "get"}
#: Whole-name exceptions, by "<module>:<route>".
_EXCEPTIONS = {
    "iam:serviceAccounts.keys.create": "iam.serviceAccountKeys.create",
    "iam:serviceAccounts.keys.delete": "iam.serviceAccountKeys.delete",
    "iam:serviceAccounts.keys.get": "iam.serviceAccountKeys.get",
    "iam:serviceAccounts.keys.list": "iam.serviceAccountKeys.list",
    "storage:objects.insert.chunk": "storage.objects.create",
    "storage:objects.insert.cancel": "storage.objects.create",
    "storage:objects.copy": "storage.objects.create",
    "storage:objects.rewrite": "storage.objects.create",
}


def permission(api: str, route: str) -> str | None:
    """The permission a call needs; None for calls IAM does not check (operations, testIamPermissions, Docker)."""
    if api not in _SERVICE or route.startswith("operations.") or route.endswith(".testIamPermissions"):
        return None
    if f"{api}:{route}" in _EXCEPTIONS:
        return _EXCEPTIONS[f"{api}:{route}"]
    resource, _, verb = route.rpartition(".")
    return f"{_SERVICE[api]}.{resource}.{_VERB.get(verb, verb)}"


def denied(api: str, service: str | None, perm: str, path: str) -> GcpError:
    """The 403 the API answers, in its own words: Cloud SQL and Cloud Storage keep their legacy shapes, the
    others name the permission in an ErrorInfo (reason IAM_PERMISSION_DENIED)."""
    if api == "sqladmin":
        return GcpError(403, "The client is not authorized to make this request.", reason="notAuthorized")
    if api == "storage":
        return GcpError(
            403,
            f"The caller does not have {perm} access to the Google Cloud Storage resource. "
            f"Permission '{perm}' denied on resource (or it may not exist).",
            reason="forbidden",
        )
    resource = re.sub(r"^.*?/v\d+/|:.*$", "", path)  # /secretmanager/v1/projects/p/secrets:x -> projects/p/secrets
    return GcpError(
        403,
        f"Permission '{perm}' denied on resource '{resource}' (or it may not exist).",
        error_info={
            "reason": "IAM_PERMISSION_DENIED",
            "domain": "iam.googleapis.com",
            "metadata": {"permission": perm, **({"service": service} if service else {})},
        },
    )
