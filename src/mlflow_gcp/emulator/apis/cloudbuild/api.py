"""Cloud Build v1 routes: builds.create/get/list and their operations (running a build is runner.py's).

Behaviour kept from GCP:

- ``builds.create`` (global ``projects/p/builds`` or regional ``projects/p/locations/l/builds``) returns a
  google.longrunning operation (``operations/build/<project>/<id>``) whose metadata is a
  ``BuildOperationMetadata`` carrying the build as it progresses (QUEUED, WORKING, then SUCCESS/FAILURE).
  The finished operation's response is the Build; a failed build ends the operation with an error
  ("Build failed; check build logs for details") and the build carries ``statusDetail``/``failureInfo``.
- ``serviceAccount`` must be ``projects/{project}/serviceAccounts/{email}`` naming an existing account, and
  a build that sets it must keep its logs out of the default logs bucket: ``logsBucket``, or
  ``options.logging`` CLOUD_LOGGING_ONLY / NONE, or ``options.defaultLogsBucketBehavior``
  REGIONAL_USER_OWNED_BUCKET; otherwise 400 with Google's message (below). The build then runs as that
  account, with only the access IAM grants it (identity.py).
- The source ``storageSource {bucket, object}`` is fetched when the build runs; a missing or unreadable
  object fails the build (FETCH_SOURCE_FAILED), it does not fail the create call.
- Substitutions: ``$PROJECT_ID``, ``$BUILD_ID``, ``$PROJECT_NUMBER``, ``$LOCATION``,
  ``$SERVICE_ACCOUNT_EMAIL``, ``$SERVICE_ACCOUNT`` and user ``_KEYS``; an unknown built-in, a template key
  with no value, or an unused user key is refused with 400 unless ``options.substitutionOption`` is
  ALLOW_LOOSE. ``$$`` is a literal ``$``.
- ``builds.list`` takes a ``filter`` over build fields (``tags="x"``, ``status="WORKING"``,
  ``build_id="..."``, ``images="..."``, ``trigger_id``, ``create_time>...``, ``substitutions._KEY``,
  ``results.images.digest``, ...) in the Logging query syntax (AND/OR/NOT, parentheses); a field Cloud
  Build does not filter on is 400. Newest builds first, paged by ``pageSize``/``pageToken``.

Images a build makes live in that build's own docker daemon (they never show in the emulated local Docker
Engine), under ``<data_dir>/cloudbuild/<build id>/`` while the build runs. Logs are kept in
``<data_dir>/cloudbuild/logs/<id>.txt`` and served at ``/_emulator/cloudbuild/builds/<id>/log``, and go to
Cloud Logging as runner.py describes.

Emulator limits: only the docker builder runs (other builders fail their step with a message saying so);
only ``storageSource`` sources (or none) are fetched.
"""

from __future__ import annotations

import base64
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.cloud.devtools.cloudbuild_v1.types import cloudbuild as cb
from werkzeug.wrappers import Request, Response

from ...core.errors import invalid, not_found
from ...core.http import ApiModule, ApiRequest, json_response, route
from ...core.paging import page
from ...core.validation import normalize, parse_proto, render
from ...imagebuild import now_rfc3339
from ..logging.api import rfc3339_nanos
from ..logging.query import FilterError, dict_fields, parse_filter
from .identity import default_account
from .runner import BuildRunner

if TYPE_CHECKING:
    from ...core.world import World

_BUILD_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.Build"
_METADATA_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata"
_SUBST = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_SERVICE_ACCOUNT = re.compile(r"^projects/([^/]+)/serviceAccounts/([^/]+)$")
#: Google's answer to a user-specified service account whose logs would go to the default bucket, as
#: builds report it today ("Failed to trigger build: if 'build.service_account' is specified, ...", quoted in
#: https://github.com/cert-manager/cert-manager/pull/8851 and, as "generic::invalid_argument: if ...",
#: https://github.com/in28minutes/course-material/pull/11); older builds said "(b) use the
#: CLOUD_LOGGING_ONLY logging option, or (c) use the NONE logging option".
SERVICE_ACCOUNT_LOGS_MESSAGE = (
    "if 'build.service_account' is specified, the build must either (a) specify 'build.logs_bucket', "
    "(b) use the REGIONAL_USER_OWNED_BUCKET build.options.default_logs_bucket_behavior option, or "
    "(c) use either CLOUD_LOGGING_ONLY / NONE logging options"
)
#: builds.list filter fields -> the Build JSON path they read (snake_case, as the Cloud Build filter names
#: them; nested paths below these convert the same way, except substitution keys).
_LIST_FIELDS = {
    "build_id": "id",
    "id": "id",
    "status": "status",
    "tags": "tags",
    "images": "images",
    "trigger_id": "buildTriggerId",
    "project_id": "projectId",
    "create_time": "createTime",
    "start_time": "startTime",
    "finish_time": "finishTime",
    "service_account": "serviceAccount",
    "substitutions": "substitutions",
    "results": "results",
    "source": "source",
    "options": "options",
}
_TIME_FIELDS = {"createTime", "startTime", "finishTime"}
_FAILED = ("FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _build_path(path: tuple[str, ...]) -> tuple[str, ...]:
    head = _LIST_FIELDS[path[0]]
    if head == "substitutions":
        return (head, *path[1:])
    return (head, *(_camel(p) for p in path[1:]))


class CloudBuildApi(ApiModule):
    prefix = "/cloudbuild"
    service = "cloudbuild.googleapis.com"
    title = "Cloud Build API"

    BUILD_KIND = "cloudbuild.build"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self._lock = threading.RLock()
        self.runner = BuildRunner(self)

    @property
    def root(self) -> Path:
        return self.world.data_dir / "cloudbuild"

    def reset(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def restore(self) -> None:
        """Builds a previous emulator process left unfinished start over (their source is still in GCS)."""
        for build in self.world.store.list(self.BUILD_KIND):
            if build.get("status") in ("QUEUED", "WORKING"):
                key = self._key(build["projectId"], build["name"].split("/")[3], build["id"])
                self._start(key, build["id"])

    def _start(self, key: str, build_id: str) -> None:
        threading.Thread(target=self.runner.run, args=(key,), name=f"build:{build_id}", daemon=True).start()

    # --- create -----------------------------------------------------------------------------------------

    @route("POST", "/v1/projects/{project}/builds", name="builds.create")
    def create(self, req: ApiRequest) -> dict[str, Any]:
        # A request with both project_id and parent is sent to the global URI with `parent` in the query.
        parent = req.args.get("parent", "")
        m = re.match(r"^projects/[^/]+/locations/([^/]+)$", parent)
        return self._create(req, m.group(1) if m else "global")

    @route("POST", "/v1/projects/{project}/locations/{location}/builds", name="builds.create")
    def create_regional(self, req: ApiRequest) -> dict[str, Any]:
        return self._create(req, req["location"])

    def _create(self, req: ApiRequest, location: str) -> dict[str, Any]:
        project = self.world.project(req["project"])
        pid, number = project["projectId"], project["name"].split("/")[1]
        body = req.json()
        parse_proto(body, cb.Build)
        build = normalize(body, cb.Build)
        steps = build.get("steps", [])
        if not steps:
            raise invalid("invalid build: build must have at least one step")
        for i, step in enumerate(steps):
            if not step.get("name"):
                raise invalid(f"invalid build: step {i} must specify name")
        source = build.get("source", {})
        if source and "storageSource" not in source:
            raise invalid("invalid build: the emulator fetches storageSource sources only")
        account = self._check_service_account(build)
        build_id = str(uuid.uuid4())
        email = account or default_account(number)
        self._substitute(build, pid, number, location, build_id, email)
        now = now_rfc3339()
        build.update(
            {
                "name": f"projects/{number}/locations/{location}/builds/{build_id}",
                "id": build_id,
                "projectId": pid,
                "status": "QUEUED",
                "createTime": now,
                "timeout": build.get("timeout", "600s"),
                "queueTtl": build.get("queueTtl", "3600s"),
                "logUrl": (
                    f"https://console.cloud.google.com/cloud-build/builds;region={location}/{build_id}?project={number}"
                ),
                "serviceAccount": build.get("serviceAccount", f"projects/{pid}/serviceAccounts/{email}"),
            }
        )
        if not account:
            # Only the default account's builds log to the default bucket (a user-specified account cannot).
            build.setdefault("logsBucket", f"gs://{number}.cloudbuild-logs.googleusercontent.com")
        for step in build["steps"]:
            step.pop("status", None)
        key = self._key(pid, location, build_id)
        token = base64.urlsafe_b64encode(build_id.encode()).decode().rstrip("=")
        op_name = (
            f"operations/build/{pid}/{token}"
            if location == "global"
            else f"projects/{pid}/locations/{location}/operations/{token}"
        )
        build["_op"] = op_name
        self.world.store.put(self.BUILD_KIND, key, build)
        op = self.write_op(op_name, build)
        self._start(key, build_id)
        return op

    def _check_service_account(self, build: dict[str, Any]) -> str:
        """The email of the build's user-specified account ("" for none), refusing what GCP refuses."""
        name = build.get("serviceAccount", "")
        if not name:
            return ""
        m = _SERVICE_ACCOUNT.match(name)
        if not m:
            # The emulator's wording: GCP's answer to a malformed name was not found in public material.
            raise invalid(
                f'invalid build: invalid service account "{name}": must be of the form '
                "projects/{project}/serviceAccounts/{email}"
            )
        options = build.get("options", {})
        if not (
            build.get("logsBucket")
            or options.get("logging") in ("CLOUD_LOGGING_ONLY", "STACKDRIVER_ONLY", "NONE")
            or options.get("defaultLogsBucketBehavior") == "REGIONAL_USER_OWNED_BUCKET"
        ):
            raise invalid(SERVICE_ACCOUNT_LOGS_MESSAGE)
        email = m.group(2)
        if not self.world.service_account_visible(email):
            # The emulator's wording (GCP's was not found in public material); 400, as for any invalid build.
            raise invalid(f'invalid build: service account "{name}" does not exist')
        return email

    def _substitute(
        self, build: dict[str, Any], pid: str, number: str, location: str, build_id: str, account: str
    ) -> None:
        user = dict(build.get("substitutions", {}))
        for k in user:
            if not re.fullmatch(r"_[A-Z0-9_]+", k):
                raise invalid(f'invalid build: substitution key "{k}" must match ^_[A-Z0-9_]+$')
        loose = build.get("options", {}).get("substitutionOption") == "ALLOW_LOOSE"
        values = {
            "PROJECT_ID": pid,
            "BUILD_ID": build_id,
            "PROJECT_NUMBER": number,
            "LOCATION": location,
            "SERVICE_ACCOUNT_EMAIL": account,
            "SERVICE_ACCOUNT": f"projects/{pid}/serviceAccounts/{account}",
            **user,
        }
        used: set[str] = set()

        def sub(text: str) -> str:
            def one(m: re.Match[str]) -> str:
                if m.group(0) == "$$":
                    return "$"
                key = m.group(1) or m.group(2)
                if key in values:
                    used.add(key)
                    return values[key]
                if loose:
                    return ""
                if key.startswith("_"):
                    raise invalid(f'invalid build: key in the template "{key}" is not matched in the substitution list')
                raise invalid(f'invalid build: key in the template "{key}" is not a valid built-in substitution')

            return _SUBST.sub(one, text)

        for step in build["steps"]:
            for field in ("name", "dir", "entrypoint", "id"):
                if field in step:
                    step[field] = sub(step[field])
            for field in ("args", "env"):
                if field in step:
                    step[field] = [sub(a) for a in step[field]]
        for field in ("images", "tags"):
            if field in build:
                build[field] = [sub(v) for v in build[field]]
        unused = [k for k in user if k not in used]
        if unused and not loose:
            raise invalid(f'invalid build: key "{unused[0]}" in the substitution data is not matched in the template')

    # --- read -------------------------------------------------------------------------------------------

    def _key(self, project: str, location: str, build_id: str) -> str:
        return f"projects/{project}/locations/{location}/builds/{build_id}"

    @staticmethod
    def _public(build: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in build.items() if not k.startswith("_")}

    def _get(self, project: str, location: str, build_id: str) -> dict[str, Any]:
        pid = self.world.project(project)["projectId"]
        build = self.world.store.get(self.BUILD_KIND, self._key(pid, location, build_id))
        if build is None:
            raise not_found(f"Build {build_id}")
        return build

    @route("GET", "/v1/projects/{project}/builds/{build}", name="builds.get")
    def get(self, req: ApiRequest) -> dict[str, Any]:
        return render(self._public(self._get(req["project"], "global", req["build"])), cb.Build, req.enum_int)

    @route("GET", "/v1/projects/{project}/locations/{location}/builds/{build}", name="builds.get")
    def get_regional(self, req: ApiRequest) -> dict[str, Any]:
        build = self._get(req["project"], req["location"], req["build"])
        return render(self._public(build), cb.Build, req.enum_int)

    def _list(self, req: ApiRequest, location: str) -> dict[str, Any]:
        pid = self.world.project(req["project"])["projectId"]
        text = req.args.get("filter", "")
        try:
            query = parse_filter(text)
        except FilterError as err:
            raise invalid(f"invalid filter: {err.message}") from None
        unknown = sorted(".".join(p) for p in query.paths if p[0] not in _LIST_FIELDS)
        if unknown:
            # The emulator's wording: GCP refuses an unknown field with 400, its text was not found.
            raise invalid(f'invalid filter "{text}": unknown field "{unknown[0]}"')

        def key(path: tuple[str, ...], value: Any) -> Any:
            # Times order as instants; everything else as the query module orders text.
            if path and _build_path(path)[0] in _TIME_FIELDS:
                nanos = rfc3339_nanos(str(value))
                return nanos if nanos is not None else str(value)
            return value if isinstance(value, int | float) else str(value)

        builds = self.world.store.list(self.BUILD_KIND, f"projects/{pid}/locations/{location}/builds/")
        builds.sort(key=lambda b: b.get("createTime", ""), reverse=True)
        found = []
        for b in builds:
            read = dict_fields(self._public(b))
            if query.matches(lambda p, read=read: read(_build_path(p) if p else p), key=key):
                found.append(b)
        items, token = page(found, req.args, default=50, maximum=1000, opaque=True)
        out: dict[str, Any] = {"builds": [render(self._public(b), cb.Build, req.enum_int) for b in items]}
        if token:
            out["nextPageToken"] = token
        return out

    @route("GET", "/v1/projects/{project}/builds", name="builds.list")
    def list(self, req: ApiRequest) -> dict[str, Any]:
        return self._list(req, "global")

    @route("GET", "/v1/projects/{project}/locations/{location}/builds", name="builds.list")
    def list_regional(self, req: ApiRequest) -> dict[str, Any]:
        return self._list(req, req["location"])

    @route("GET", "/v1/operations/{operation=**}", name="operations.get", check_service=False)
    def get_operation(self, req: ApiRequest) -> dict[str, Any]:
        return self.world.ops.get(f"operations/{req['operation']}")

    @route("GET", "/v1/projects/{project}/locations/{location}/operations/{operation}", name="operations.get")
    def get_regional_operation(self, req: ApiRequest) -> dict[str, Any]:
        pid = self.world.project(req["project"])["projectId"]
        return self.world.ops.get(f"projects/{pid}/locations/{req['location']}/operations/{req['operation']}")

    def admin(self, request: Request, path: str) -> Response:
        m = re.match(r"^/builds/([^/]+)/log$", path)
        if m:
            log = self.root / "logs" / f"{m.group(1)}.txt"
            if log.is_file():
                return Response(log.read_text(), mimetype="text/plain")
        return json_response({"error": {"code": 404, "message": f"no cloudbuild admin endpoint {path}"}}, 404)

    # --- state, for the runner ------------------------------------------------------------------------------

    def write_op(self, op_name: str, build: dict[str, Any]) -> dict[str, Any]:
        public = self._public(build)
        op: dict[str, Any] = {"name": op_name, "metadata": {"@type": _METADATA_TYPE, "build": public}}
        if build["status"] == "SUCCESS":
            op.update(done=True, response={"@type": _BUILD_TYPE, **public})
        elif build["status"] in _FAILED:
            op.update(done=True, error={"code": 2, "message": "Build failed; check build logs for details"})
        self.world.store.put(self.world.ops.KIND, op_name, op)
        return op

    def save(self, key: str, build: dict[str, Any]) -> None:
        self.world.store.put(self.BUILD_KIND, key, build)
        self.write_op(build["_op"], build)
