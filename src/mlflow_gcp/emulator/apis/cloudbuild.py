"""Cloud Build v1: builds from a source tarball in Cloud Storage, with docker builder steps, pushing to
Artifact Registry.

Behaviour kept from GCP:

- ``builds.create`` (global ``projects/p/builds`` or regional ``projects/p/locations/l/builds``) returns a
  google.longrunning operation (``operations/build/<project>/<id>``) whose metadata is a
  ``BuildOperationMetadata`` carrying the build as it progresses (QUEUED, WORKING, then SUCCESS/FAILURE).
  The finished operation's response is the Build; a failed build ends the operation with an error
  ("Build failed; check build logs for details") and the build carries ``statusDetail``/``failureInfo``.
- The source ``storageSource {bucket, object}`` is fetched when the build runs; a missing object fails the
  build (FETCH_SOURCE_FAILED), it does not fail the create call.
- Steps run in order in ``/workspace`` (``dir`` relative to it). The docker builder
  (``gcr.io/cloud-builders/docker``) supports ``build`` (``-t``, ``-f``, ``--build-arg``, ``--target``,
  ``--label``; ``.dockerignore`` applies as the docker CLI applies it), ``tag`` and ``push``. A failing step
  fails the build ('Build step failure: build step N "name" failed: step exited with non-zero status: 1').
- ``images`` are pushed to Artifact Registry after the steps, with the build's own credentials; each one
  must have been built by a step (PUSH_IMAGE_NOT_FOUND otherwise); ``results.images`` lists name + digest.
- Substitutions: ``$PROJECT_ID``, ``$BUILD_ID``, ``$PROJECT_NUMBER``, ``$LOCATION`` and user ``_KEYS``; an
  unknown built-in, a template key with no value, or an unused user key is refused with 400 unless
  ``options.substitutionOption`` is ALLOW_LOOSE. ``$$`` is a literal ``$``.

The images a build makes live in that build's own docker daemon (they never show in the emulated local
Docker Engine), under ``<data_dir>/cloudbuild/<build id>/`` while the build runs. Logs are kept in
``<data_dir>/cloudbuild/logs/<id>.txt`` and served at ``/_emulator/cloudbuild/builds/<id>/log``.

Emulator limits: only the docker builder runs (other builders fail their step with a message saying so);
only ``storageSource`` sources (or none) are fetched.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.cloud.devtools.cloudbuild_v1.types import cloudbuild as cb
from werkzeug.wrappers import Request, Response

from ..core.errors import GcpError, invalid, not_found
from ..core.http import ApiModule, ApiRequest, json_response, route
from ..core.validation import normalize, parse_proto, render
from ..imagebuild import (
    BuildStepError,
    BuiltImage,
    DockerfileError,
    InvalidReference,
    apply_dockerignore,
    build_image,
    now_rfc3339,
    parse_docker_build_args,
    parse_dockerfile,
    parse_reference,
    read_dockerignore,
    registry_host,
    sha256_hex,
    unpack_context,
)
from .artifactregistry import parse_image_uri, push_error_message

if TYPE_CHECKING:
    from ..core.world import World

_BUILD_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.Build"
_METADATA_TYPE = "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata"
_BUILTINS = ("PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION", "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT")
_SUBST = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _docker_builder(name: str) -> bool:
    repo = name.split("@")[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    return repo.endswith("cloud-builders/docker") or repo in ("docker", "docker.io/library/docker")


class _StepFailed(Exception):
    pass


class CloudBuildApi(ApiModule):
    prefix = "/cloudbuild"
    service = "cloudbuild.googleapis.com"
    title = "Cloud Build API"

    BUILD_KIND = "cloudbuild.build"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self._lock = threading.RLock()

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
                threading.Thread(target=self._run, args=(key,), name=f"build:{build['id']}", daemon=True).start()

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
        build_id = str(uuid.uuid4())
        self._substitute(build, pid, number, location, build_id)
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
                "logsBucket": build.get("logsBucket", f"gs://{number}.cloudbuild-logs.googleusercontent.com"),
                "logUrl": (
                    f"https://console.cloud.google.com/cloud-build/builds;region={location}/{build_id}?project={number}"
                ),
                "serviceAccount": build.get(
                    "serviceAccount", f"projects/{pid}/serviceAccounts/{number}-compute@developer.gserviceaccount.com"
                ),
            }
        )
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
        op = self._write_op(op_name, build)
        threading.Thread(target=self._run, args=(key,), name=f"build:{build_id}", daemon=True).start()
        return op

    def _substitute(self, build: dict[str, Any], pid: str, number: str, location: str, build_id: str) -> None:
        user = dict(build.get("substitutions", {}))
        for k in user:
            if not re.fullmatch(r"_[A-Z0-9_]+", k):
                raise invalid(f'invalid build: substitution key "{k}" must match ^_[A-Z0-9_]+$')
        loose = build.get("options", {}).get("substitutionOption") == "ALLOW_LOOSE"
        account = f"{number}-compute@developer.gserviceaccount.com"
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
        builds = self.world.store.list(self.BUILD_KIND, f"projects/{pid}/locations/{location}/builds/")
        builds.sort(key=lambda b: b.get("createTime", ""), reverse=True)
        return {"builds": [render(self._public(b), cb.Build, req.enum_int) for b in builds]}

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

    # --- running ----------------------------------------------------------------------------------------

    def _write_op(self, op_name: str, build: dict[str, Any]) -> dict[str, Any]:
        public = self._public(build)
        op: dict[str, Any] = {"name": op_name, "metadata": {"@type": _METADATA_TYPE, "build": public}}
        if build["status"] == "SUCCESS":
            op.update(done=True, response={"@type": _BUILD_TYPE, **public})
        elif build["status"] in ("FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"):
            op.update(done=True, error={"code": 2, "message": "Build failed; check build logs for details"})
        self.world.store.put(self.world.ops.KIND, op_name, op)
        return op

    def _save(self, key: str, build: dict[str, Any]) -> None:
        self.world.store.put(self.BUILD_KIND, key, build)
        self._write_op(build["_op"], build)

    def _run(self, key: str) -> None:
        build = self.world.store.get(self.BUILD_KIND, key)
        if build is None:
            return
        build_id = build["id"]
        work = self.root / build_id
        log_path = self.root / "logs" / f"{build_id}.txt"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # A build restarted after an emulator restart starts from nothing.
        shutil.rmtree(work, ignore_errors=True)
        log_path.write_text("")
        for field in ("results", "failureInfo", "statusDetail", "timing"):
            build.pop(field, None)

        def log(line: str) -> None:
            with log_path.open("a") as f:
                f.write(line + "\n")

        def fail(kind: str, detail: str, status: str = "FAILURE") -> None:
            build.update(status=status, statusDetail=detail, finishTime=now_rfc3339())
            if kind:
                build["failureInfo"] = {"type": kind, "detail": detail}
            log("ERROR")
            log(f"ERROR: {detail}")
            self._save(key, build)

        try:
            started = now_rfc3339()
            build.update(status="WORKING", startTime=started)
            for step in build["steps"]:
                step["status"] = "QUEUED"
            self._save(key, build)
            log(f'starting build "{build_id}"')
            log("")
            log("FETCHSOURCE")
            workspace = work / "workspace"
            workspace.mkdir(parents=True, exist_ok=True)
            source = build.get("source", {}).get("storageSource")
            fetched = now_rfc3339()
            if source:
                error = self._fetch(source, workspace, log)
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
            for i, step in enumerate(build["steps"]):
                label = f'Step #{i} - "{step["id"]}"' if step.get("id") else f"Step #{i}"
                log(f"Starting {label}")
                step["status"] = "WORKING"
                step["timing"] = {"startTime": now_rfc3339()}
                self._save(key, build)
                ok = self._step(build, step, workspace, work, daemon, lambda text, lb=label: log(f"{lb}: {text}"))
                step["timing"]["endTime"] = now_rfc3339()
                step["status"] = "SUCCESS" if ok else "FAILURE"
                step["exitCode"] = 0 if ok else 1
                if not ok:
                    log(f"Finished {label}")
                    timing["BUILD"] = {"startTime": fetched, "endTime": now_rfc3339()}
                    build["timing"] = timing
                    fail(
                        "USER_BUILD_STEP",
                        f'Build step failure: build step {i} "{step["name"]}" failed: '
                        "step exited with non-zero status: 1",
                    )
                    return
                log(f"Finished {label}")
            timing["BUILD"] = {"startTime": fetched, "endTime": now_rfc3339()}
            if build.get("images"):
                log("PUSH")
                push_start = now_rfc3339()
                missing = [i for i in build["images"] if self._local(daemon, i) is None]
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
                    digest, error = self._push(image, daemon, lambda text: log(text))
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
            self._save(key, build)
        except Exception as exc:  # an emulator bug must still end the build, loudly
            traceback.print_exc()
            fail("", f"internal emulator error: {exc}", "INTERNAL_ERROR")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _fetch(self, source: dict[str, Any], workspace: Path, log: Any) -> str | None:
        bucket, obj = source.get("bucket", ""), source.get("object", "")
        url = f"gs://{bucket}/{obj}"
        log(f"Fetching storage object: {url}")
        storage = self.world.apis.get("storage")
        if storage is None:
            return f"Failed to fetch {url}: Cloud Storage is not emulated in this emulator build"
        try:
            data = storage.read_object(bucket, obj)
        except GcpError as err:
            return f'Failed to fetch {url}, will no longer retry: fetching "{url}": {err.code} {err.message}'
        if isinstance(data, tuple):
            data = data[0]
        try:
            unpack_context(bytes(data), workspace)
        except DockerfileError as err:
            return f"Failed to unpack {url}: {err.message}"
        return None

    # --- the docker builder -------------------------------------------------------------------------------

    @staticmethod
    def _ref(name: str) -> str:
        repo, tag, _digest = parse_reference(name)
        return f"{repo}:{tag or 'latest'}"

    def _local(self, daemon: dict[str, BuiltImage], name: str) -> BuiltImage | None:
        try:
            return daemon.get(self._ref(name))
        except InvalidReference:
            return None

    def _step(
        self,
        build: dict[str, Any],
        step: dict[str, Any],
        workspace: Path,
        work: Path,
        daemon: dict[str, BuiltImage],
        log: Any,
    ) -> bool:
        name = step["name"]
        args = list(step.get("args", []))
        entrypoint = step.get("entrypoint", "")
        if not _docker_builder(name) or (entrypoint and entrypoint != "docker"):
            log(f"the mlflow-gcp emulator runs only the docker builder; cannot run {entrypoint or name}")
            return False
        cwd = workspace / step.get("dir", "")
        env = dict(e.partition("=")[::2] for e in step.get("env", []))
        try:
            if not args:
                raise BuildStepError('"docker" requires a command')
            command, rest = args[0], args[1:]
            if command == "build":
                self._docker_build(rest, cwd, work, daemon, env, log)
            elif command == "tag":
                if len(rest) != 2:
                    raise BuildStepError('"docker tag" requires exactly 2 arguments.')
                image = self._local(daemon, rest[0])
                if image is None:
                    raise BuildStepError(f"Error response from daemon: No such image: {rest[0]}")
                try:
                    daemon[self._ref(rest[1])] = image
                except InvalidReference as exc:
                    raise BuildStepError(
                        f'Error parsing reference: "{rest[1]}" is not a valid repository/tag: {exc}'
                    ) from None
            elif command == "push":
                targets = [a for a in rest if not a.startswith("-")]
                if len(targets) != 1:
                    raise BuildStepError('"docker push" requires exactly 1 argument.')
                if "-a" in rest or "--all-tags" in rest:
                    repo = parse_reference(targets[0])[0]
                    names = sorted(t for t in daemon if t.rsplit(":", 1)[0] == repo)
                else:
                    names = [targets[0]]
                if not names or all(self._local(daemon, n) is None for n in names):
                    raise BuildStepError(
                        f"An image does not exist locally with the tag: {parse_reference(targets[0])[0]}"
                    )
                for n in names:
                    _digest, error = self._push(n, daemon, log)
                    if error:
                        return False  # _push logged the registry's answer
            else:
                raise BuildStepError(f"the mlflow-gcp emulator does not run `docker {command}`")
        except BuildStepError as err:
            log(err.message)
            return False
        except InvalidReference as exc:
            log(f"invalid reference format: {exc}")
            return False
        return True

    def _docker_build(
        self, argv: list[str], cwd: Path, work: Path, daemon: dict[str, BuiltImage], env: dict[str, str], log: Any
    ) -> None:
        a = parse_docker_build_args(argv, env)
        tags = []
        for t in a.tags:
            try:
                tags.append(self._ref(t))
            except InvalidReference as exc:
                raise BuildStepError(f'invalid argument "{t}" for "-t, --tag" flag: {exc}') from None
        context = (cwd / a.context).resolve()
        if not context.is_dir():
            raise BuildStepError(f'unable to prepare context: path "{a.context}" not found')
        dockerfile = (cwd / a.dockerfile) if a.dockerfile else context / "Dockerfile"
        if not dockerfile.is_file():
            raise BuildStepError(
                f"unable to prepare context: unable to evaluate symlinks in Dockerfile path: lstat {dockerfile}: "
                "no such file or directory"
            )
        scratch = work / "docker" / uuid.uuid4().hex
        ctx = scratch / "context"
        shutil.copytree(context, ctx, symlinks=True)
        apply_dockerignore(ctx, read_dockerignore(context))
        size = sum(p.stat().st_size for p in ctx.rglob("*") if p.is_file() and not p.is_symlink())
        log(f"Sending build context to Docker daemon  {size / 1024:.2f}kB")
        try:
            instructions = parse_dockerfile(dockerfile.read_text(errors="replace"), dockerfile.name, classic=False)
            built = build_image(
                instructions, ctx, scratch / "stages", buildargs=a.buildargs, target=a.target, labels=a.labels,
                log=lambda line: log(line.rstrip("\n")),
            )  # fmt: skip
        except DockerfileError as err:
            raise BuildStepError(f"Error response from daemon: {err.message}") from None
        except BuildStepError as err:
            raise BuildStepError(err.message) from None
        images = work / "images" / built.id.split(":", 1)[1]
        if not images.exists():
            images.parent.mkdir(parents=True, exist_ok=True)
            built.rootfs.rename(images)
        built.rootfs = images
        for t in tags:
            daemon[t] = built
        log(f"Successfully built {built.short_id}")
        for t in tags:
            log(f"Successfully tagged {t}")

    def _push(self, name: str, daemon: dict[str, BuiltImage], log: Any) -> tuple[str, str | None]:
        """Push one local image of the build to Artifact Registry: (digest, error message or None)."""
        ref = self._ref(name)
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
        if error or image is None or parts is None:
            log(error)
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
