"""Build the server image remotely with Cloud Build: no Docker on the user's machine.

The build context (image_source.context_tar_gz) is uploaded to the staging bucket as ``source/<tag>.tar.gz`` (one
object per image tag, so a repeated upload replaces it; the bucket's lifecycle rule deletes what a failed or killed
run leaves, and a successful build deletes its own). ``builds.create`` runs one docker build step and pushes the
image (``images``), as the stack's build service account, never the project's default Compute Engine account
(which holds roles/editor in older projects). A build given a service account must say where its log goes
(Cloud Build refuses one with neither ``logsBucket`` nor ``options.logging`` CLOUD_LOGGING_ONLY/NONE:
https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts); it logs to Cloud
Logging, where a failed build's last lines are read back through ``entries.list``.

A run killed while its build ran does not start a second one: builds carry the tag ``mlflow-gcp-<image tag>``, and a
build with that tag still queued or working is adopted and waited for. A finished one pushed the image, which the
image step then finds by its tag.

IAM grants take a while to reach every Google server (typically within 2 minutes, sometimes 7 or more:
https://cloud.google.com/iam/docs/access-change-propagation). A build refused for a permission right after this
run granted the build account its roles is submitted again, until MLFLOW_GCP_IAM_PROPAGATION_SECONDS (default 120)
have passed since the grant.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ..errors import MlflowGcpError
from ..image_source import context_tar_gz
from ..retry import wait_until

if TYPE_CHECKING:
    from ..context import Context

DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
SOURCE_PREFIX = "source/"
#: Deleted by the staging bucket's lifecycle rule after this many days.
SOURCE_RETENTION_DAYS = 3
TIMEOUT_SECONDS = 1200
LOG_TAIL_LINES = 20
_RUNNING = ("PENDING", "QUEUED", "WORKING")
# Failure shapes of a build whose account lacks (or does not yet see) a role: fetching the source (403 on the
# object) or pushing (the registry's "denied: Permission ... uploadArtifacts").
_PERMISSION_MARKS = ("denied: Permission", "storage.objects.get", "403", "Permission denied")


def propagation_seconds() -> float:
    return float(os.environ.get("MLFLOW_GCP_IAM_PROPAGATION_SECONDS", "120"))


def marker(tag: str) -> str:
    """The build tag naming the image a build makes (Cloud Build tags match ^[\\w][\\w.-]{0,127}$)."""
    return f"mlflow-gcp-{tag}"


def build(ctx: Context, repo: str, tag: str) -> dict[str, Any]:
    """Build and push ``repo:tag`` with Cloud Build; answer ``{"uri": repo@digest, "build": id}``."""
    from google.cloud.devtools import cloudbuild_v1

    status = cloudbuild_v1.Build.Status
    account = f"serviceAccount:{ctx.names.build_account}"
    found = _running(ctx, tag)
    if found is not None:
        ctx.note(f"cloudbuild: adopting build {found.id}, started by an earlier run")
        done = _wait(ctx, found.id)
    else:
        generation = _upload(ctx, tag)
        while True:
            done = _wait(ctx, _submit(ctx, repo, tag, generation))
            since = ctx.seconds_since_grant(account)
            if done.status == status.SUCCESS or since is None or since > propagation_seconds():
                break
            tail = _log_tail(ctx, done.id)
            if not _permission_shaped(done, tail):
                break
            ctx.note(f"cloudbuild: build {done.id} was refused a permission granted {since:.0f}s ago; trying again")
            time.sleep(min(10.0, max(1.0, since / 4)))
    if done.status != status.SUCCESS:
        raise _failure(ctx, done)
    digest = next((i.digest for i in done.results.images if i.name == f"{repo}:{tag}"), "")
    if not digest:
        raise MlflowGcpError(f"Cloud Build build {done.id} succeeded but reports no digest for {repo}:{tag}.")
    _delete_source(ctx, tag)
    return {"uri": f"{repo}@{digest}", "build": done.id}


def _parent(ctx: Context) -> str:
    return f"projects/{ctx.names.project}/locations/{ctx.names.region}"


def _running(ctx: Context, tag: str) -> Any | None:
    """A build of this image still queued or working (left by a killed run), if any."""
    cb = ctx.clients.cloud_build
    # Only `parent` (no project_id): the client then uses the regional URI (with both, it calls the global one).
    request = {"parent": _parent(ctx), "filter": f'tags="{marker(tag)}"'}
    builds = ctx.api("cloudbuild.builds.list", lambda: list(cb.list_builds(request=request)))
    return next((b for b in builds if b.status.name in _RUNNING), None)


def _upload(ctx: Context, tag: str) -> int:
    storage = ctx.clients.storage
    blob = storage.bucket(ctx.names.build_bucket).blob(f"{SOURCE_PREFIX}{tag}.tar.gz")
    data = context_tar_gz(ctx.mlflow_version)
    ctx.api(
        f"storage.objects.insert gs://{ctx.names.build_bucket}/{blob.name}",
        blob.upload_from_string,
        data,
        content_type="application/gzip",
    )
    return int(blob.generation)


def _submit(ctx: Context, repo: str, tag: str, generation: int) -> str:
    from google.cloud.devtools import cloudbuild_v1 as cb

    n = ctx.names
    image = f"{repo}:{tag}"
    request = cb.Build(
        source=cb.Source(
            storage_source=cb.StorageSource(
                bucket=n.build_bucket, object_=f"{SOURCE_PREFIX}{tag}.tar.gz", generation=generation
            )
        ),
        steps=[cb.BuildStep(name=DOCKER_BUILDER, args=["build", "-t", image, "."])],
        images=[image],
        tags=["mlflow-gcp", marker(tag)],
        service_account=f"projects/{n.project}/serviceAccounts/{n.build_account}",
        options=cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY),
        timeout={"seconds": TIMEOUT_SECONDS},
    )
    client = ctx.clients.cloud_build
    operation = ctx.api(
        "cloudbuild.builds.create",
        client.create_build,
        request={"parent": _parent(ctx), "build": request},
    )
    build_id = operation.metadata.build.id
    ctx.note(f"cloudbuild: build {build_id} of {image}")
    return build_id


def _wait(ctx: Context, build_id: str) -> Any:
    client = ctx.clients.cloud_build
    name = f"{_parent(ctx)}/builds/{build_id}"

    def poll() -> Any:
        return ctx.api(
            f"cloudbuild.builds.get {build_id}",
            client.get_build,
            request={"name": name},
        )

    return wait_until(
        f"Cloud Build build {build_id}", poll, lambda b: b.status.name not in _RUNNING, TIMEOUT_SECONDS + 120
    )


def _log_tail(ctx: Context, build_id: str) -> list[str]:
    """The last lines the build logged (Cloud Logging; a few seconds behind the build on GCP)."""
    body = {
        "resourceNames": [f"projects/{ctx.names.project}"],
        "filter": f'resource.type="build" AND resource.labels.build_id="{build_id}"',
        "orderBy": "timestamp desc",
        "pageSize": LOG_TAIL_LINES,
    }
    try:
        answer = ctx.api("logging.entries.list", lambda: ctx.clients.logging.entries().list(body=body).execute())
    except Exception as exc:  # the failure matters more than its log: say why the log is missing
        return [f"(the build's log could not be read: {type(exc).__name__})"]
    lines = []
    for entry in reversed(answer.get("entries", [])):
        # Cloud Logging keeps the step in a label ("Step #0", or "MAIN" for the build's own lines).
        step = (entry.get("labels") or {}).get("build_step", "MAIN")
        text = str(entry.get("textPayload", "")).rstrip()
        lines.append(text if step == "MAIN" else f"{step}: {text}")
    return lines


def _permission_shaped(done: Any, tail: list[str]) -> bool:
    text = "\n".join([done.status_detail, done.failure_info.detail, *tail])
    return any(mark in text for mark in _PERMISSION_MARKS)


def _failure(ctx: Context, done: Any) -> MlflowGcpError:
    tail = _log_tail(ctx, done.id)
    failing = next(((i, s) for i, s in enumerate(done.steps) if s.status.name in ("FAILURE", "TIMEOUT")), None)
    lines = [f"Cloud Build build {done.id} ended {done.status.name}: {done.status_detail or 'no detail given'}"]
    if failing:
        i, step = failing
        lines.append(f"failing step #{i}: {step.name} {' '.join(step.args)}")
    elif done.failure_info.type:
        lines.append(f"failure: {done.failure_info.type.name}")
    lines.append("last lines of its log:" if tail else "its log has no lines yet")
    lines += [f"  {line}" for line in tail]
    lines.append(f"full log: {done.log_url}")
    hint = None
    if _permission_shaped(done, tail):
        hint = (
            f"The build account {ctx.names.build_account} needs roles/artifactregistry.writer on the repository and "
            "roles/storage.objectViewer on the staging bucket; `up` grants them. If it just did, IAM may still be "
            "propagating: run `up` again in a few minutes."
        )
    return MlflowGcpError("\n  ".join(lines), hint=hint)


def _delete_source(ctx: Context, tag: str) -> None:
    from google.api_core import exceptions

    blob = ctx.clients.storage.bucket(ctx.names.build_bucket).blob(f"{SOURCE_PREFIX}{tag}.tar.gz")
    try:
        ctx.api(f"storage.objects.delete gs://{ctx.names.build_bucket}/{blob.name}", blob.delete)
    except exceptions.NotFound:
        pass
