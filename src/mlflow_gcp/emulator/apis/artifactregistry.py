"""Artifact Registry v1: repositories (create/delete are operations), docker images, and the registry side
of ``docker push`` / Cloud Build pushes.

Behaviour kept from GCP:

- Resource names use the project *id* (``projects/my-proj/locations/us-central1/repositories/r``).
- Repository ids are lowercase letters, digits and hyphens, start with a letter, end with a letter or
  digit, at most 63 characters; anything else is 400. A repository needs a format.
- Creating a repository that exists is a synchronous 409 ALREADY_EXISTS ("the repository already exists");
  two creates racing each other end with ALREADY_EXISTS in the second operation. A missing repository or
  image is 404 "Requested entity was not found.".
- Deleting a repository (an operation) deletes its images.
- Repositories carry ``satisfiesPzi`` and a computed ``vulnerabilityScanningConfig``; the create
  operation's response leaves out ``createTime``/``updateTime``/``registryUri`` and a PATCH answer leaves out
  ``registryUri``, though GET returns them (recorded: tests/golden/recordings/artifactregistry-repository.log).
- Docker images are named ``<repository>/dockerImages/<url-escaped image>@sha256:<hex>`` with ``uri``
  ``<location>-docker.pkg.dev/<project>/<repository>/<image>@sha256:<hex>``; a tag belongs to one image of
  a package at a time, so pushing ``:latest`` again moves it.
- Pushing needs the API enabled in the image's project (SERVICE_DISABLED otherwise) and the repository to
  exist ("Repository "r" not found"); the Docker Engine API turns these into the registry's ``denied:`` /
  ``name unknown:`` push errors.

Pushed files live under ``<data_dir>/artifactregistry/<project>/<location>/<repository>/<digest hex>/rootfs``.
"""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from google.cloud.artifactregistry_v1 import types as ar
from google.iam.v1 import iam_policy_pb2

from ..core.errors import GcpError, invalid
from ..core.http import ApiModule, ApiRequest, route
from ..core.iam import PolicyMethods
from ..core.images import ImageRecord
from ..core.paging import page
from ..core.validation import normalize, parse_proto, render
from ..imagebuild import MANIFEST_MEDIA_TYPE, now_rfc3339

if TYPE_CHECKING:
    from ..core.world import World

_REPOSITORY_TYPE = "type.googleapis.com/google.devtools.artifactregistry.v1.Repository"
_METADATA_TYPE = "type.googleapis.com/google.devtools.artifactregistry.v1.OperationMetadata"
_REPOSITORY_ID = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*"
_AR_URI = re.compile(
    rf"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repository>[^/]+)"
    rf"/(?P<image>{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>[\w][\w.-]{{0,127}}))?(?:@(?P<digest>sha256:[0-9a-f]{{64}}))?$"
)
_MAX_PAGE = 1000
_IAM = PolicyMethods(
    "artifactregistry.", version_message="Invalid requested_policy_version {requested}: must be 0, 1 or 3."
)
_SCANNING_SERVICE = "containerscanning.googleapis.com"
#: Fields a create copies from the request; all but format and mode can be changed by PATCH.
_CREATE_FIELDS = (
    "description",
    "labels",
    "dockerConfig",
    "mavenConfig",
    "virtualRepositoryConfig",
    "remoteRepositoryConfig",
    "cleanupPolicies",
    "cleanupPolicyDryRun",
    "kmsKeyName",
    "vulnerabilityScanningConfig",
    "disallowUnspecifiedMode",
)
_UPDATABLE_FIELDS = frozenset(_CREATE_FIELDS) - {"kmsKeyName"}
_REPOSITORY_FIELDS = frozenset(f.json_name for f in ar.Repository.pb().DESCRIPTOR.fields)
NOT_FOUND_MESSAGE = "Requested entity was not found."


def parse_image_uri(uri: str) -> dict[str, str | None] | None:
    """``<loc>-docker.pkg.dev/<project>/<repo>/<image>[:tag][@digest]`` -> its parts, or None."""
    m = _AR_URI.match(uri)
    return m.groupdict() if m else None


def unauthenticated_push_message(parts: dict[str, str | None]) -> str:
    """What a registry push without credentials is told."""
    return (
        "denied: Unauthenticated request. Unauthenticated requests do not have permission "
        f'"artifactregistry.repositories.uploadArtifacts" on resource "projects/{parts["project"]}/locations/'
        f'{parts["location"]}/repositories/{parts["repository"]}" (or it may not exist)'
    )


def push_error_message(err: GcpError, parts: dict[str, str | None]) -> str:
    """The registry's answer to a refused push, as the docker daemon prints it (``<code>: <message>``)."""
    if err.status == "NOT_FOUND":
        return f"name unknown: {err.message}"
    if err.error_info and err.error_info.get("reason") == "CONSUMER_INVALID":
        return (
            'denied: Permission "artifactregistry.repositories.uploadArtifacts" denied on resource '
            f'"projects/{parts["project"]}/locations/{parts["location"]}/repositories/{parts["repository"]}" '
            "(or it may not exist)"
        )
    return f"denied: {err.message}"


def _camel(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _not_found() -> GcpError:
    return GcpError(404, NOT_FOUND_MESSAGE, "NOT_FOUND")


class ArtifactRegistryApi(ApiModule):
    prefix = "/artifactregistry"
    service = "artifactregistry.googleapis.com"
    title = "Artifact Registry API"

    REPO_KIND = "artifactregistry.repository"
    IMAGE_KIND = "artifactregistry.dockerImage"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self._lock = threading.RLock()

    @property
    def root(self) -> Path:
        return self.world.data_dir / "artifactregistry"

    def reset(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # --- names ----------------------------------------------------------------------------------------

    def _project_id(self, ref: str) -> str:
        return self.world.project(ref)["projectId"]

    def _repo_name(self, project: str, location: str, repository: str) -> str:
        return f"projects/{self._project_id(project)}/locations/{location}/repositories/{repository}"

    def _blob_dir(self, project: str, location: str, repository: str, digest: str) -> Path:
        return self.root / project / location / repository / digest.split(":", 1)[1]

    def _render_repo(self, repo: dict[str, Any], enum_int: bool, omit: tuple[str, ...] = ()) -> dict[str, Any]:
        size = sum(
            int(i.get("imageSizeBytes", "0")) for i in self.world.store.list(self.IMAGE_KIND, repo["name"] + "/")
        )
        doc = {
            **repo,
            "sizeBytes": str(size),
            # recorded: tests/golden/recordings/artifactregistry-repository.log (every answer carries both)
            "satisfiesPzi": True,
            "vulnerabilityScanningConfig": self._scanning(repo),
        }
        for key in omit:
            doc.pop(key, None)
        return render(doc, ar.Repository, enum_int)

    def _scanning(self, repo: dict[str, Any]) -> dict[str, Any]:
        """The repository's vulnerability scanning state, as GCP computes it."""
        # recorded: tests/golden/recordings/artifactregistry-repository.log: a virtual repository is
        # SCANNING_UNSUPPORTED, a standard one SCANNING_DISABLED while Container Scanning is not enabled.
        config: dict[str, Any] = dict(repo.get("vulnerabilityScanningConfig", {}))
        config["lastEnableTime"] = repo["createTime"]
        mode = repo.get("mode", "STANDARD_REPOSITORY")
        project = repo["name"].split("/")[1]
        if mode != "STANDARD_REPOSITORY":
            config["enablementState"] = "SCANNING_UNSUPPORTED"
            config["enablementStateReason"] = f"Repository mode {mode} is not supported."
        elif config.get("enablementConfig") == "DISABLED":
            config["enablementState"] = "SCANNING_DISABLED"
            config["enablementStateReason"] = "Vulnerability scanning is disabled in the repository's config."
        elif self.world.service_state(project, _SCANNING_SERVICE) != "ENABLED":
            config["enablementState"] = "SCANNING_DISABLED"
            config["enablementStateReason"] = f"API {_SCANNING_SERVICE} is not enabled."
        else:
            config["enablementState"] = "SCANNING_ACTIVE"
            config.pop("enablementStateReason", None)
        return config

    # --- repositories -----------------------------------------------------------------------------------

    @route("POST", "/v1/projects/{project}/locations/{location}/repositories", name="repositories.create")
    def create_repository(self, req: ApiRequest) -> dict[str, Any]:
        body = normalize(req.json(), ar.Repository)  # canonical JSON: enums by name, whatever the client sent
        repo_id = req.args.get("repositoryId", "")
        if not repo_id:
            raise invalid("repository_id must be specified.")
        if not _REPOSITORY_ID.match(repo_id):
            raise invalid(
                f'Invalid repository ID "{repo_id}": repository IDs may contain only lowercase letters, numbers '
                "and hyphens, must start with a letter, end with a letter or number, and be at most 63 characters."
            )
        fmt = body.get("format", "FORMAT_UNSPECIFIED")
        if isinstance(fmt, int):
            fmt = ar.Repository.Format(fmt).name
        if fmt == "FORMAT_UNSPECIFIED":
            raise invalid("Repository format must be specified.")
        mode = body.get("mode", "MODE_UNSPECIFIED")
        if isinstance(mode, int):
            mode = ar.Repository.Mode(mode).name
        project, location = self._project_id(req["project"]), req["location"]
        name = self._repo_name(project, location, repo_id)
        if self.world.store.get(self.REPO_KIND, name) is not None:
            raise GcpError(409, "the repository already exists", "ALREADY_EXISTS") from None
        now = now_rfc3339()
        repo: dict[str, Any] = {
            "name": name,
            "format": fmt,
            "mode": "STANDARD_REPOSITORY" if mode == "MODE_UNSPECIFIED" else mode,
            "createTime": now,
            "updateTime": now,
        }
        for key in _CREATE_FIELDS:
            if key in body:
                repo[key] = body[key]
        if "vulnerabilityScanningConfig" in repo:  # only its enablementConfig is input; the rest is computed
            repo["vulnerabilityScanningConfig"] = {
                k: v for k, v in repo["vulnerabilityScanningConfig"].items() if k == "enablementConfig"
            }
        if fmt == "DOCKER":
            repo["registryUri"] = f"{location}-docker.pkg.dev/{project}/{repo_id}"

        def work() -> dict[str, Any]:
            try:
                self.world.store.create(self.REPO_KIND, name, repo)
            except GcpError:
                raise GcpError(409, "the repository already exists", "ALREADY_EXISTS") from None
            # recorded: tests/golden/recordings/artifactregistry-repository.log: the operation's response has
            # no createTime, updateTime or registryUri (GET has them).
            return self._render_repo(repo, False, omit=("createTime", "updateTime", "registryUri"))

        return self.world.ops.start(
            f"projects/{project}/locations/{location}",
            work,
            delay_key="artifactregistry.repository.create",
            metadata={"@type": _METADATA_TYPE},
            response_type=_REPOSITORY_TYPE,
        )

    @route("GET", "/v1/projects/{project}/locations/{location}/repositories", name="repositories.list")
    def list_repositories(self, req: ApiRequest) -> dict[str, Any]:
        prefix = f"projects/{self._project_id(req['project'])}/locations/{req['location']}/repositories/"
        repos = [r for r in self.world.store.list(self.REPO_KIND, prefix) if "/" not in r["name"][len(prefix) :]]
        if req.args.get("orderBy", "").strip().endswith("desc"):
            repos.reverse()
        chunk, token = page(repos, req.args, default=_MAX_PAGE, maximum=_MAX_PAGE)
        out: dict[str, Any] = {"repositories": [self._render_repo(r, req.enum_int) for r in chunk]}
        if token:
            out["nextPageToken"] = token
        return out

    @route("GET", "/v1/projects/{project}/locations/{location}/repositories/{repository}", name="repositories.get")
    def get_repository(self, req: ApiRequest) -> dict[str, Any]:
        name = self._repo_name(req["project"], req["location"], req["repository"])
        repo = self.world.store.get(self.REPO_KIND, name)
        if repo is None:
            raise _not_found()
        return self._render_repo(repo, req.enum_int)

    @route("PATCH", "/v1/projects/{project}/locations/{location}/repositories/{repository}", name="repositories.patch")
    def update_repository(self, req: ApiRequest) -> dict[str, Any]:
        """Synchronous, unlike create and delete (recorded: tests/golden/recordings/artifactregistry-repository.log)."""
        body = normalize(req.json(), ar.Repository)
        name = self._repo_name(req["project"], req["location"], req["repository"])
        if body.get("name") and body["name"] != name:
            raise invalid(f"The repository name {body['name']!r} does not match the name in the URL ({name!r}).")
        mask = [_camel(p.strip()) for p in req.args.get("updateMask", "").split(",") if p.strip()]
        for path in mask:
            top = path.split(".")[0]
            if top not in _REPOSITORY_FIELDS:
                raise invalid(f"Invalid update_mask path {path!r}: no such field in Repository.")
            if top not in _UPDATABLE_FIELDS:
                raise invalid(f"Field {path!r} of a repository cannot be updated.")
        with self._lock:
            repo = self.world.store.get(self.REPO_KIND, name)
            if repo is None:
                raise _not_found()
            if not mask:  # no mask: every updatable field the request populates; format and mode stay
                for key in ("format", "mode"):
                    if key in body and body[key] != repo.get(key):
                        raise invalid(f"Field {key!r} of a repository cannot be updated.")
                mask = [k for k in body if k in _UPDATABLE_FIELDS]
            for path in mask:
                top = path.split(".")[0]
                value = body.get(top)
                if top == "vulnerabilityScanningConfig" and value is not None:
                    value = {k: v for k, v in value.items() if k == "enablementConfig"}
                if value is None:
                    repo.pop(top, None)
                else:
                    repo[top] = value
            repo["updateTime"] = now_rfc3339()
            self.world.store.put(self.REPO_KIND, name, repo)
        # recorded: tests/golden/recordings/artifactregistry-repository.log: the answer has no registryUri.
        return self._render_repo(repo, req.enum_int, omit=("registryUri",))

    # --- repository IAM policy (who may push: roles/artifactregistry.writer; Cloud Build's account needs it) -----

    @route(
        "GET",
        "/v1/projects/{project}/locations/{location}/repositories/{repository}:getIamPolicy",
        name="repositories.getIamPolicy",
    )
    def get_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        _IAM.check_version(req.args)
        return _IAM.get(self.world, self._require_repo(req))

    @route(
        "POST",
        "/v1/projects/{project}/locations/{location}/repositories/{repository}:setIamPolicy",
        name="repositories.setIamPolicy",
    )
    def set_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        parse_proto(body, iam_policy_pb2.SetIamPolicyRequest)
        return _IAM.set(self.world, self._require_repo(req), body.get("policy", {}))

    @route(
        "POST",
        "/v1/projects/{project}/locations/{location}/repositories/{repository}:testIamPermissions",
        name="repositories.testIamPermissions",
        mutating=False,
    )
    def test_iam_permissions(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        parse_proto(body, iam_policy_pb2.TestIamPermissionsRequest)
        self._require_repo(req)
        return _IAM.test(body.get("permissions", []))

    def may_push(self, member: str, repo_name: str) -> bool:
        """Does ``member`` hold roles/artifactregistry.writer (or a role including it) on the repository or its
        project? (what a Cloud Build push as a user-specified service account needs)"""
        project = repo_name.split("/locations/")[0]
        return self.world.iam.has_role([repo_name, project], member, "roles/artifactregistry.writer")

    @route(
        "DELETE", "/v1/projects/{project}/locations/{location}/repositories/{repository}", name="repositories.delete"
    )
    def delete_repository(self, req: ApiRequest) -> dict[str, Any]:
        project, location, repo_id = self._project_id(req["project"]), req["location"], req["repository"]
        name = self._repo_name(project, location, repo_id)
        if self.world.store.get(self.REPO_KIND, name) is None:
            raise _not_found()

        def work() -> None:
            with self._lock:
                if self.world.store.delete(self.REPO_KIND, name) is None:
                    raise _not_found()
                self.world.iam.delete(name)
                for image in self.world.store.names(self.IMAGE_KIND, name + "/"):
                    self.world.store.delete(self.IMAGE_KIND, image)
                shutil.rmtree(self.root / project / location / repo_id, ignore_errors=True)
            return None

        return self.world.ops.start(
            f"projects/{project}/locations/{location}",
            work,
            delay_key="artifactregistry.repository.delete",
            metadata={"@type": _METADATA_TYPE},
        )

    @route("GET", "/v1/projects/{project}/locations/{location}/operations/{operation}", name="operations.get")
    def get_operation(self, req: ApiRequest) -> dict[str, Any]:
        name = f"projects/{self._project_id(req['project'])}/locations/{req['location']}/operations/{req['operation']}"
        return self.world.ops.get(name)

    # --- docker images ----------------------------------------------------------------------------------

    def _require_repo(self, req: ApiRequest) -> str:
        name = self._repo_name(req["project"], req["location"], req["repository"])
        if self.world.store.get(self.REPO_KIND, name) is None:
            raise _not_found()
        return name

    @route(
        "GET",
        "/v1/projects/{project}/locations/{location}/repositories/{repository}/dockerImages",
        name="dockerImages.list",
    )
    def list_docker_images(self, req: ApiRequest) -> dict[str, Any]:
        repo = self._require_repo(req)
        images = self.world.store.list(self.IMAGE_KIND, repo + "/dockerImages/")
        order = req.args.get("orderBy", "").strip()
        if order:
            field, _, direction = order.partition(" ")
            key = {"update_time": "updateTime", "upload_time": "uploadTime", "build_time": "buildTime"}.get(
                field, "name"
            )
            images.sort(key=lambda i: i.get(key, ""), reverse=direction.strip().lower() == "desc")
        chunk, token = page(images, req.args, default=_MAX_PAGE, maximum=_MAX_PAGE)
        out: dict[str, Any] = {"dockerImages": [render(i, ar.DockerImage, req.enum_int) for i in chunk]}
        if token:
            out["nextPageToken"] = token
        return out

    @route(
        "GET",
        "/v1/projects/{project}/locations/{location}/repositories/{repository}/dockerImages/{image=**}",
        name="dockerImages.get",
    )
    def get_docker_image(self, req: ApiRequest) -> dict[str, Any]:
        repo = self._require_repo(req)
        # The path arrives decoded ("team/app@sha256:..."); names are stored with the image part escaped.
        image, sep, digest = unquote(req["image"]).rpartition("@")
        if not sep:
            raise _not_found()
        doc = self.world.store.get(self.IMAGE_KIND, f"{repo}/dockerImages/{quote(image, safe='')}@{digest}")
        if doc is None:
            raise _not_found()
        return render(doc, ar.DockerImage, req.enum_int)

    # --- the registry side of pushes (Docker Engine API, Cloud Build) and pulls (Cloud Run) ------------

    def check_push(self, uri: str) -> tuple[str, dict[str, Any]]:
        """Refuse a push to ``uri`` the way GCP does: unknown project (403), API disabled (403
        SERVICE_DISABLED), repository missing (404 'Repository "r" not found'), not a DOCKER repository.
        Returns (project id, repository)."""
        parts = parse_image_uri(uri)
        if parts is None:
            raise invalid(f"Invalid image name {uri!r}: expected LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE.")
        project = self.world.require_enabled(parts["project"] or "", self.service or "", self.title)["projectId"]
        repo_name = f"projects/{project}/locations/{parts['location']}/repositories/{parts['repository']}"
        repo = self.world.store.get(self.REPO_KIND, repo_name)
        if repo is None:
            raise GcpError(404, f'Repository "{parts["repository"]}" not found', "NOT_FOUND")
        if repo.get("format") != "DOCKER":
            raise GcpError(400, f'Repository "{parts["repository"]}" is not a Docker repository', "FAILED_PRECONDITION")
        return project, repo

    def register_image(self, record: ImageRecord, tags: list[str]) -> ImageRecord:
        """Store a pushed image (its files copied from ``record.rootfs``) under ``tags``. Raises GcpError where
        GCP refuses the push (see :meth:`check_push`)."""
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", record.digest):
            raise invalid(f"Invalid digest {record.digest!r}.")
        project, repo = self.check_push(record.uri)
        parts = parse_image_uri(record.uri) or {}
        location, repository, image = parts["location"] or "", parts["repository"] or "", parts["image"] or ""
        repo_name = repo["name"]
        blob = self._blob_dir(project, location, repository, record.digest)
        with self._lock:
            if not (blob / "rootfs").exists():
                tmp = blob.with_name(f".{blob.name}.{uuid.uuid4().hex}")
                shutil.copytree(record.rootfs, tmp / "rootfs", symlinks=True)
                tmp.parent.mkdir(parents=True, exist_ok=True)
                try:
                    tmp.rename(blob)
                except OSError:
                    shutil.rmtree(tmp, ignore_errors=True)  # a concurrent push of the same digest won
            now = now_rfc3339()
            prefix = f"{repo_name}/dockerImages/{quote(image, safe='')}@"
            name = prefix + record.digest
            # A tag names one image of a package: pushing it again moves it.
            for other in self.world.store.list(self.IMAGE_KIND, prefix):
                moved = [t for t in other.get("tags", []) if t not in tags]
                if other["name"] != name and moved != other.get("tags", []):
                    other["tags"] = moved
                    other["updateTime"] = now
                    self.world.store.put(self.IMAGE_KIND, other["name"], other)
            doc = self.world.store.get(self.IMAGE_KIND, name)
            if doc is None:
                doc = {
                    "name": name,
                    "uri": f"{location}-docker.pkg.dev/{project}/{repository}/{image}@{record.digest}",
                    "tags": [],
                    "imageSizeBytes": str(record.size_bytes),
                    "uploadTime": now,
                    "buildTime": now,
                    "mediaType": MANIFEST_MEDIA_TYPE,
                    "_config": {
                        "entrypoint": record.entrypoint,
                        "cmd": record.cmd,
                        "env": record.env,
                        "workdir": record.workdir,
                        "exposedPorts": record.exposed_ports,
                        "pythonRequirements": record.python_requirements,
                    },
                }
            doc["tags"] = list(dict.fromkeys([*doc.get("tags", []), *tags]))
            doc["updateTime"] = now
            self.world.store.put(self.IMAGE_KIND, name, doc)
        return self._record(doc, record.uri, blob / "rootfs")

    def resolve_image(self, uri: str) -> ImageRecord | None:
        """The image a tag or digest URI names, or None when it (or its repository) does not exist."""
        parts = parse_image_uri(uri)
        if parts is None:
            return None
        project = self.world.find_project(parts["project"] or "")
        if project is None:
            return None
        pid = project["projectId"]
        repo_name = f"projects/{pid}/locations/{parts['location']}/repositories/{parts['repository']}"
        if self.world.store.get(self.REPO_KIND, repo_name) is None:
            return None
        prefix = f"{repo_name}/dockerImages/{quote(parts['image'] or '', safe='')}@"
        doc: dict[str, Any] | None = None
        if parts["digest"]:
            # As on a pull, the digest wins over a tag given with it.
            doc = self.world.store.get(self.IMAGE_KIND, prefix + parts["digest"])
        else:
            tag = parts["tag"] or "latest"
            doc = next((d for d in self.world.store.list(self.IMAGE_KIND, prefix) if tag in d.get("tags", [])), None)
        if doc is None:
            return None
        digest = doc["name"].rsplit("@", 1)[1]
        return self._record(
            doc, uri, self._blob_dir(pid, parts["location"] or "", parts["repository"] or "", digest) / "rootfs"
        )

    def has_digest(self, uri: str, digest: str) -> bool:
        """Whether the repository of ``uri`` already holds ``digest`` (a push then reports "Layer already exists")."""
        parts = parse_image_uri(uri)
        if parts is None:
            return False
        project = self.world.find_project(parts["project"] or "")
        if project is None:
            return False
        name = (
            f"projects/{project['projectId']}/locations/{parts['location']}/repositories/{parts['repository']}"
            f"/dockerImages/{quote(parts['image'] or '', safe='')}@{digest}"
        )
        return self.world.store.get(self.IMAGE_KIND, name) is not None

    @staticmethod
    def _record(doc: dict[str, Any], uri: str, rootfs: Path) -> ImageRecord:
        config = doc.get("_config", {})
        return ImageRecord(
            uri=uri,
            digest=doc["name"].rsplit("@", 1)[1],
            rootfs=rootfs,
            entrypoint=list(config.get("entrypoint", [])),
            cmd=list(config.get("cmd", [])),
            env=dict(config.get("env", {})),
            workdir=config.get("workdir", "/"),
            exposed_ports=list(config.get("exposedPorts", [])),
            size_bytes=int(doc.get("imageSizeBytes", "0")),
            python_requirements=config.get("pythonRequirements", ""),
        )
