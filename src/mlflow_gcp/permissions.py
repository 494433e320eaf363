"""Which predefined role a refused call needs, so a 403 ends with something a user can ask an admin for.

Google names the missing permission in most 403s (an ErrorInfo ``metadata.permission``, or the message text);
Cloud SQL says only "not authorized", so the step that failed stands in for it."""

from __future__ import annotations

import re
from typing import Any

#: Permission prefix -> least-privilege predefined role holding it; the longest matching prefix wins.
_ROLE_BY_PERMISSION = {
    "serviceusage.services.": "roles/serviceusage.serviceUsageAdmin",
    "artifactregistry.repositories.uploadArtifacts": "roles/artifactregistry.writer",
    "artifactregistry.": "roles/artifactregistry.admin",
    "cloudsql.": "roles/cloudsql.admin",
    "secretmanager.versions.access": "roles/secretmanager.secretAccessor",
    "secretmanager.": "roles/secretmanager.admin",
    "iam.serviceAccounts.actAs": "roles/iam.serviceAccountUser",
    "iam.serviceAccountKeys.": "roles/iam.serviceAccountKeyAdmin",
    "iam.serviceAccounts.": "roles/iam.serviceAccountAdmin",
    "resourcemanager.projects.setIamPolicy": "roles/resourcemanager.projectIamAdmin",
    "resourcemanager.projects.getIamPolicy": "roles/resourcemanager.projectIamAdmin",
    "resourcemanager.projects.get": "roles/browser",
    "storage.objects.": "roles/storage.objectAdmin",
    "storage.": "roles/storage.admin",
    "run.": "roles/run.admin",
    "cloudbuild.": "roles/cloudbuild.builds.editor",
}

#: Step key (or its prefix before ":") -> the role its calls need, for 403s that name no permission.
_ROLE_BY_STEP = {
    "apis": "roles/serviceusage.serviceUsageAdmin",
    "registry": "roles/artifactregistry.admin",
    "image": "roles/artifactregistry.writer",
    "sql": "roles/cloudsql.admin",
    "secret": "roles/secretmanager.admin",
    "sa": "roles/iam.serviceAccountAdmin",
    "client-key": "roles/iam.serviceAccountKeyAdmin",
    "bucket": "roles/storage.admin",
    "iam:project": "roles/resourcemanager.projectIamAdmin",
    "iam:secrets": "roles/secretmanager.admin",
    "iam:bucket": "roles/storage.admin",
    "iam:invoker": "roles/run.admin",
    "run": "roles/run.admin",
}

_PERMISSION_IN_TEXT = re.compile(
    r"Permission '([\w.]+)'|does not have ([\w.]+) access|permission ([a-z]+\.\w+\.\w+)|([a-z]+\.\w+\.\w+) permission"
)


def denied_permission(exc: BaseException) -> str | None:
    """The permission a 403 names, from its ErrorInfo or its message."""
    from .retry import error_infos

    metadata = getattr(exc, "metadata", None)  # google.api_core: the ErrorInfo's metadata
    if isinstance(metadata, dict) and metadata.get("permission"):
        return str(metadata["permission"])
    # An ErrorInfo from either client family, whichever envelope its API uses (see retry.error_infos); the legacy
    # envelopes (Cloud SQL, Cloud Storage) have none, and name the permission in the message if at all.
    for info in error_infos(exc):
        if info["metadata"].get("permission"):
            return str(info["metadata"]["permission"])
    text = str(getattr(exc, "message", None) or getattr(exc, "reason", None) or exc)
    match = _PERMISSION_IN_TEXT.search(text)
    return next((g for g in match.groups() if g), None) if match else None


def role_for(permission: str | None, step: str | None) -> str | None:
    if permission:
        prefixes = [p for p in _ROLE_BY_PERMISSION if permission.startswith(p)]
        if prefixes:
            return _ROLE_BY_PERMISSION[max(prefixes, key=len)]
    if step:
        return _ROLE_BY_STEP.get(step) or _ROLE_BY_STEP.get(step.split(":", 1)[0])
    return None


def permission_hint(exc: Any, step: str | None = None) -> str:
    """What to ask for: the role (and the permission, when Google named it)."""
    permission = denied_permission(exc)
    role = role_for(permission, step)
    lacking = f"the permission {permission}" if permission else "a permission this step needs"
    if role is None:
        return f"your account lacks {lacking}; roles/owner on the project covers everything mlflow-gcp does."
    extra = " (and roles/iam.serviceAccountUser on the runtime service account)" if step == "run" else ""
    return (
        f"your account lacks {lacking}: ask a project admin to grant you {role}{extra}, or roles/owner, which "
        "covers everything mlflow-gcp does."
    )
