"""Running one build: FETCHSOURCE, the steps, PUSH of ``images``, DONE -- as the build's own identity --
with every log line kept in the emulator's log file and, unless the build's logging option keeps it out,
written to Cloud Logging as GCP writes build logs.

Build log entries in Cloud Logging (``projects/P/logs/cloudbuild``), as public queries over real build logs
read them:

- ``resource {type: "build", labels: {build_id, build_trigger_id, project_id}}`` -- queried as
  ``resource.type="build" AND resource.labels.build_id="..."`` with ``logName="projects/P/logs/cloudbuild"``
  (e.g. DefangLabs' Cloud Build log query, pkg/clouds/gcp/query.go);
- ``labels.build_step``: ``"MAIN"`` for the build's own lines ("starting build", FETCHSOURCE, PUSH, DONE,
  ERROR -- a Terraform sink filter ``labels.build_step = "MAIN" textPayload : ("starting build" OR ("DONE"
  OR "ERROR"))`` reads them so), and the step's label for a step's lines (``Step #2 - "build"``, as a
  query ``labels.build_step="Step #2 - \\"build\\""`` names it); the label was added at
  https://github.com/GoogleCloudPlatform/cloud-builders/issues/125;
- ``labels.build_tags``: the build's tags (sinks filter ``labels.build_tags : "trigger"``); the emulator
  joins them with commas, a format not checked against a real entry;
- ``textPayload``: the line without the ``Step #N:`` prefix the text log shows (the step is in the label),
  severity INFO. The emulator's assumption: no recorded entry was found to confirm the prefix is left out.

Which builds write there: logging LEGACY (and unspecified, whose default is LEGACY), STACKDRIVER_ONLY and
CLOUD_LOGGING_ONLY; GCS_ONLY and NONE do not (BuildOptions.LoggingMode). A build whose account lacks
roles/logging.logWriter runs, but writes no entry (see identity.py).
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.errors import GcpError
from ...imagebuild import (
    BuiltImage,
    DockerfileError,
    now_rfc3339,
    python_envs,
    registry_host,
    sha256_hex,
    unpack_context,
)
from ..artifactregistry import parse_image_uri, push_error_message
from . import docker_builder
from .identity import BuildIdentity

if TYPE_CHECKING:
    from .api import CloudBuildApi

_CLOUD_LOGGING_MODES = ("LOGGING_UNSPECIFIED", "LEGACY", "STACKDRIVER_ONLY", "CLOUD_LOGGING_ONLY")
MAIN = "MAIN"


class BuildLog:
    """The build's log: the emulator's text file (``Step #0: line``) and, when the build writes to Cloud
    Logging, one LogEntry per line."""

    def __init__(self, path: Path, build: dict[str, Any], to_logging: Callable[..., Any] | None) -> None:
        self.path = path
        self.to_logging = to_logging
        self.resource = {
            "type": "build",
            "labels": {
                "build_id": build["id"],
                "build_trigger_id": build.get("buildTriggerId", ""),
                "project_id": build["projectId"],
            },
        }
        self.log_name = f"projects/{build['projectId']}/logs/cloudbuild"
        self.tags = ",".join(build.get("tags", []))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def __call__(self, line: str, step: str = MAIN) -> None:
        with self.path.open("a") as f:
            f.write((line if step == MAIN else f"{step}: {line}") + "\n")
        if self.to_logging is not None:
            labels = {"build_step": step, **({"build_tags": self.tags} if self.tags else {})}
            entry = {
                "logName": self.log_name,
                "resource": self.resource,
                "textPayload": line,
                "severity": "INFO",
                "labels": labels,
            }
            self.to_logging([entry])

    def step(self, label: str) -> Callable[[str], None]:
        return lambda text: self(text, label)


class BuildRunner:
    def __init__(self, api: CloudBuildApi) -> None:
        self.api = api
        self.world = api.world

    def identity(self, build: dict[str, Any]) -> BuildIdentity:
        project = self.world.project(build["projectId"])
        number = project["name"].split("/")[1]
        email = build["serviceAccount"].rsplit("/", 1)[-1]
        return BuildIdentity(self.world, project["projectId"], number, email)

    def _log(self, build: dict[str, Any], who: BuildIdentity) -> BuildLog:
        mode = build.get("options", {}).get("logging", "LOGGING_UNSPECIFIED")
        logging = self.world.apis.get("logging")
        to_logging = None
        if logging is not None and mode in _CLOUD_LOGGING_MODES and who.can_write_logs():
            pid = build["projectId"]
            to_logging = lambda entries: logging.append(pid, entries)  # noqa: E731
        return BuildLog(self.api.root / "logs" / f"{build['id']}.txt", build, to_logging)

    def run(self, key: str) -> None:
        build = self.world.store.get(self.api.BUILD_KIND, key)
        if build is None:
            return
        build_id = build["id"]
        work = self.api.root / build_id
        # A build restarted after an emulator restart starts from nothing.
        shutil.rmtree(work, ignore_errors=True)
        for field in ("results", "failureInfo", "statusDetail", "timing"):
            build.pop(field, None)
        who = self.identity(build)
        log = self._log(build, who)

        def fail(kind: str, detail: str, status: str = "FAILURE") -> None:
            build.update(status=status, statusDetail=detail, finishTime=now_rfc3339())
            if kind:
                build["failureInfo"] = {"type": kind, "detail": detail}
            log("ERROR")
            log(f"ERROR: {detail}")
            self.api.save(key, build)

        try:
            started = now_rfc3339()
            build.update(status="WORKING", startTime=started)
            for step in build["steps"]:
                step["status"] = "QUEUED"
            self.api.save(key, build)
            log(f'starting build "{build_id}"')
            log("")
            log("FETCHSOURCE")
            workspace = work / "workspace"
            workspace.mkdir(parents=True, exist_ok=True)
            source = build.get("source", {}).get("storageSource")
            fetched = now_rfc3339()
            if source:
                error = self._fetch(source, workspace, who, log)
                if error:
                    build["timing"] = {"FETCHSOURCE": {"startTime": started, "endTime": now_rfc3339()}}
                    fail("FETCH_SOURCE_FAILED", error)
                    return
                fetched = now_rfc3339()
            timing = {"FETCHSOURCE": {"startTime": started, "endTime": fetched}}
            if delay := self.world.control.delay("cloudbuild.build"):
                time.sleep(delay)
            log("BUILD")
            daemon: dict[str, BuiltImage] = {}
            build["results"] = {
                "buildStepImages": ["sha256:" + sha256_hex(f"builder:{s['name']}") for s in build["steps"]],
                "buildStepOutputs": ["" for _ in build["steps"]],
            }

            def push(name: str, daemon: dict[str, BuiltImage], out: Callable[[str], None]) -> tuple[str, str | None]:
                return self._push(name, daemon, who, out)

            for i, step in enumerate(build["steps"]):
                label = f'Step #{i} - "{step["id"]}"' if step.get("id") else f"Step #{i}"
                log(f"Starting {label}")
                step["status"] = "WORKING"
                step["timing"] = {"startTime": now_rfc3339()}
                self.api.save(key, build)
                ok = docker_builder.run_step(
                    step, workspace, work, daemon, log.step(label), push, python_envs(self.world.data_dir)
                )
                step["timing"]["endTime"] = now_rfc3339()
                step["status"] = "SUCCESS" if ok else "FAILURE"
                step["exitCode"] = 0 if ok else 1
                log(f"Finished {label}")
                if not ok:
                    timing["BUILD"] = {"startTime": fetched, "endTime": now_rfc3339()}
                    build["timing"] = timing
                    fail(
                        "USER_BUILD_STEP",
                        f'Build step failure: build step {i} "{step["name"]}" failed: '
                        "step exited with non-zero status: 1",
                    )
                    return
            timing["BUILD"] = {"startTime": fetched, "endTime": now_rfc3339()}
            if build.get("images"):
                log("PUSH")
                push_start = now_rfc3339()
                missing = [i for i in build["images"] if docker_builder.local(daemon, i) is None]
                if missing:
                    build["timing"] = timing
                    fail(
                        "PUSH_IMAGE_NOT_FOUND",
                        "failed to find one or more images after execution of build steps: "
                        + json.dumps(missing).replace(", ", " "),
                    )
                    return
                pushed = []
                for image in build["images"]:
                    t0 = now_rfc3339()
                    digest, error = self._push(image, daemon, who, log)
                    if error:
                        build["timing"] = timing
                        fail("PUSH_FAILED", f'failed to push image "{image}": {error}')
                        return
                    pushed.append(
                        {"name": image, "digest": digest, "pushTiming": {"startTime": t0, "endTime": now_rfc3339()}}
                    )
                build["results"]["images"] = pushed
                timing["PUSH"] = {"startTime": push_start, "endTime": now_rfc3339()}
            log("DONE")
            build.update(status="SUCCESS", finishTime=now_rfc3339(), timing=timing)
            self.api.save(key, build)
        except Exception as exc:  # an emulator bug must still end the build, loudly
            traceback.print_exc()
            fail("", f"internal emulator error: {exc}", "INTERNAL_ERROR")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _fetch(
        self, source: dict[str, Any], workspace: Path, who: BuildIdentity, log: Callable[[str], None]
    ) -> str | None:
        bucket, obj = source.get("bucket", ""), source.get("object", "")
        url = f"gs://{bucket}/{obj}"
        log(f"Fetching storage object: {url}")
        storage = self.world.apis.get("storage")
        if storage is None:
            return f"Failed to fetch {url}: Cloud Storage is not emulated in this emulator build"
        try:
            if storage.bucket_exists(bucket) and not who.can_read_object(bucket):
                # Checked before the object is looked up: without access, a missing object is the same 403.
                raise GcpError(403, who.object_denied(), "PERMISSION_DENIED")
            data = storage.read_object(bucket, obj)
        except GcpError as err:
            if err.code == 403:
                log(f"AccessDeniedException: 403 {err.message}")
            return f'Failed to fetch {url}, will no longer retry: fetching "{url}": {err.code} {err.message}'
        if isinstance(data, tuple):
            data = data[0]
        try:
            unpack_context(bytes(data), workspace)
        except DockerfileError as err:
            return f"Failed to unpack {url}: {err.message}"
        return None

    def _push(
        self, name: str, daemon: dict[str, BuiltImage], who: BuildIdentity, log: Callable[[str], None]
    ) -> tuple[str, str | None]:
        """Push one local image of the build to Artifact Registry as the build's identity: (digest, error
        message or None)."""
        ref = docker_builder.ref(name)
        repo, tag = ref.rsplit(":", 1)
        image = daemon.get(ref)
        log(f"The push refers to repository [{repo}]")
        host = registry_host(repo)
        parts = parse_image_uri(ref)
        registry = self.world.apis.get("artifactregistry")
        error = None
        if image is None:
            error = f"tag does not exist: {ref}"
        elif not host.endswith("-docker.pkg.dev"):
            error = f'Get "https://{host}/v2/": dial tcp: lookup {host}: no such host'
        elif parts is None:
            error = (
                "name invalid: Missing image name. Pushes should be of the form docker push "
                "HOST-NAME/PROJECT-ID/REPOSITORY/IMAGE"
            )
        elif registry is None:
            error = "denied: Artifact Registry is not emulated in this emulator build"
        elif not who.can_push(parts["project"] or "", parts["location"] or "", parts["repository"] or ""):
            # The registry's answer to an identity without uploadArtifacts, whether or not the repository
            # exists (the wording of push_error_message in artifactregistry.py).
            error = push_error_message(
                GcpError(403, "", "PERMISSION_DENIED", error_info={"reason": "CONSUMER_INVALID"}), parts
            )
        if error or image is None or parts is None:
            log(error or "")
            return "", error
        digest, size, _raw = image.manifest()
        layer_ids = [layer.split(":", 1)[1][:12] for layer in reversed(image.layers)]
        for lid in layer_ids:
            log(f"{lid}: Preparing")
        try:
            exists = registry.has_digest(ref, digest)
            registry.register_image(image.record(ref, digest), [tag])
        except GcpError as err:
            message = push_error_message(err, parts)
            log(message)
            return "", message
        for lid in layer_ids:
            log(f"{lid}: {'Layer already exists' if exists else 'Pushed'}")
        log(f"{tag}: digest: {digest} size: {size}")
        return digest, None
