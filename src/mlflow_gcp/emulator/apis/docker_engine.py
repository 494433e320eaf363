"""A Docker Engine API (v1.45) daemon without containers: build, inspect, tag, list, remove and push images.

Point the docker SDK or CLI at it with ``DOCKER_HOST=tcp://127.0.0.1:PORT``. Builds follow
``emulator/imagebuild/`` (the classic builder: COPY/ADD files unpacked into a rootfs, RUN recorded, not run);
local images live under ``<data_dir>/docker/images/<id>/`` (``rootfs/`` and ``config.json``) and are
indexed in the store.

What follows the real daemon:

- Errors are ``{"message": ...}`` with the daemon's status codes (404 "No such image: x", 409 conflicts,
  400 bad parameters), never Google's envelope. Build and push answer 200 with a chunked stream of JSON
  lines; a failure once streaming started is an ``{"errorDetail": {"message"}, "error"}`` line, which
  docker-py turns into ``BuildError`` for builds and leaves in the stream for pushes (``push()`` does not
  raise). A Dockerfile that cannot be parsed (unknown instruction, no FROM) is refused before streaming
  (400 "dockerfile parse error line N: ..."), which docker-py raises as ``APIError``, as the daemon does.
- Build output: "Step i/N : ...", `` ---> <id>``, ``{"aux": {"ID": "sha256:..."}}``,
  "Successfully built <short id>", "Successfully tagged <tag>". Image ids are deterministic from the
  Dockerfile and the context's contents, so an unchanged context rebuilds to the same id (the layer cache).
- Push: "The push refers to repository [...]", per-layer Preparing / Pushed (or "Layer already exists"),
  "<tag>: digest: sha256:... size: N" and the ``aux`` line. Only Artifact Registry hosts
  (``<location>-docker.pkg.dev``) exist; other registries are unreachable, as on a machine with no network.
  A push without credentials in ``X-Registry-Auth`` is denied ("Unauthenticated request..."), as are
  pushes to a repository that does not exist ("name unknown: Repository ... not found") or a project with
  the Artifact Registry API disabled. A successful push registers the image in Artifact Registry
  (``ArtifactRegistryApi.register_image``) and adds the digest to the local image's RepoDigests.
- Containers, networks, volumes and pulls are not emulated (501 with a message saying so).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import platform
import re
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from ..core.errors import GcpError
from ..core.http import ApiModule, ApiRequest, route
from ..imagebuild import (
    BuildStepError,
    BuiltImage,
    DockerfileError,
    InvalidReference,
    build_image,
    parse_dockerfile,
    parse_reference,
    python_envs,
    registry_host,
    scoped,
    unpack_context,
)
from .artifactregistry import parse_image_uri, push_error_message, unauthenticated_push_message

if TYPE_CHECKING:
    from ..core.world import World

API_VERSION = "1.45"
MIN_API_VERSION = "1.24"
ENGINE_VERSION = "26.1.4"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
_HEADERS = {
    "Api-Version": API_VERSION,
    "Docker-Experimental": "false",
    "Ostype": "linux",
    "Server": f"Docker/{ENGINE_VERSION} (linux)",
}
_UNSUPPORTED = (
    "/v{version}/containers/{rest=**}",
    "/v{version}/networks",
    "/v{version}/networks/{rest=**}",
    "/v{version}/volumes",
    "/v{version}/volumes/{rest=**}",
    "/v{version}/exec/{rest=**}",
    "/v{version}/images/create",
    "/v{version}/images/load",
    "/v{version}/images/search",
    "/v{version}/images/prune",
    "/v{version}/build/prune",
    "/v{version}/commit",
    "/v{version}/events",
    "/v{version}/system/df",
    "/v{version}/distribution/{rest=**}",
    "/v{version}/swarm",
    "/v{version}/swarm/{rest=**}",
    "/v{version}/services",
    "/v{version}/services/{rest=**}",
    "/v{version}/plugins",
    "/v{version}/plugins/{rest=**}",
    "/v{version}/session",
)


class DockerApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=_HEADERS)


def _error(status: int, message: str) -> Response:
    return _json({"message": message}, status)


def _stream(events: Iterator[dict[str, Any]]) -> Response:
    def lines() -> Iterator[bytes]:
        try:
            for event in events:
                yield (json.dumps(event) + "\r\n").encode()
        except Exception as exc:  # an emulator bug must still end the stream the way the daemon would
            traceback.print_exc()
            message = f"internal emulator error: {exc}"
            yield (json.dumps({"errorDetail": {"message": message}, "error": message}) + "\r\n").encode()

    # No Content-Length: the dev server sends it chunked, as the daemon does (docker-py reads it so).
    return Response(lines(), status=200, mimetype="application/json", headers=_HEADERS)


def _error_line(message: str) -> dict[str, Any]:
    return {"errorDetail": {"message": message}, "error": message}


def _bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def docker_api(fn: Callable[[Any, ApiRequest], Response]) -> Callable[[Any, ApiRequest], Response]:
    """Check the API version in the path and answer errors the daemon's way."""

    @functools.wraps(fn)
    def wrapper(self: DockerEngineApi, req: ApiRequest) -> Response:
        try:
            version = req.params.get("version")
            if version is not None:
                try:
                    wanted = _version_tuple(version)
                except ValueError:
                    raise DockerApiError(404, "page not found") from None
                if wanted > _version_tuple(API_VERSION):
                    raise DockerApiError(
                        400, f"client version {version} is too new. Maximum supported API version is {API_VERSION}"
                    )
                if wanted < _version_tuple(MIN_API_VERSION):
                    raise DockerApiError(
                        400,
                        f"client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, "
                        "please upgrade your client to a newer version",
                    )
            return fn(self, req)
        except DockerApiError as err:
            return _error(err.status, err.message)
        except GcpError as err:
            return _error(err.code, err.message)

    return wrapper


def _credentials(header: str | None) -> bool:
    """Whether ``X-Registry-Auth`` (base64url JSON, as docker-py and the CLI encode it) carries credentials."""
    if not header:
        return False
    try:
        data = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    return bool(data.get("identitytoken") or data.get("registrytoken") or data.get("password") or data.get("auth"))


def _unix(ts: str) -> int:
    try:
        return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


class DockerEngineApi(ApiModule):
    prefix = ""
    error_style = "both"
    service = None
    title = "Docker Engine API"

    KIND = "docker.image"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self._lock = threading.RLock()

    @property
    def root(self) -> Path:
        return self.world.data_dir / "docker"

    def reset(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def restore(self) -> None:
        # Scratch space of builds a previous process did not finish.
        shutil.rmtree(self.root / "tmp", ignore_errors=True)

    # --- the local image store ------------------------------------------------------------------------

    def _image_dir(self, image_id: str) -> Path:
        return self.root / "images" / image_id.split(":", 1)[1]

    def _docs(self) -> list[dict[str, Any]]:
        return self.world.store.list(self.KIND)

    def _built(self, doc: dict[str, Any]) -> BuiltImage:
        return BuiltImage.from_json(doc["image"], self._image_dir(doc["Id"]) / "rootfs")

    def find(self, name: str) -> dict[str, Any] | None:
        """A local image by id, short id, ``repo[:tag]`` or ``repo@digest``."""
        docs = self._docs()
        if re.fullmatch(r"sha256:[0-9a-f]{64}", name):
            return next((d for d in docs if d["Id"] == name), None)
        try:
            repo, tag, digest = parse_reference(name)
        except InvalidReference:
            repo, tag, digest = "", None, None
        if repo:
            if digest:
                found = next((d for d in docs if f"{repo}@{digest}" in d.get("RepoDigests", [])), None)
            else:
                ref = f"{repo}:{tag or 'latest'}"
                found = next((d for d in docs if ref in d.get("RepoTags", [])), None)
            if found is not None:
                return found
        hexid = name.removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{1,64}", hexid):
            matches = [d for d in docs if d["Id"].split(":", 1)[1].startswith(hexid)]
            if len(matches) == 1:
                return matches[0]
        return None

    def _require(self, name: str) -> dict[str, Any]:
        doc = self.find(name)
        if doc is None:
            raise DockerApiError(404, f"No such image: {self._display(name)}")
        return doc

    @staticmethod
    def _display(name: str) -> str:
        try:
            repo, tag, digest = parse_reference(name)
        except InvalidReference:
            return name
        if digest or re.fullmatch(r"[0-9a-f]{12,64}", name):
            return name
        return f"{repo}:{tag or 'latest'}"

    def _untag(self, ref: str, keep: str | None = None) -> None:
        for doc in self._docs():
            if doc["Id"] != keep and ref in doc.get("RepoTags", []):
                doc["RepoTags"] = [t for t in doc["RepoTags"] if t != ref]
                self.world.store.put(self.KIND, doc["Id"], doc)

    def save(self, built: BuiltImage, tags: list[str]) -> dict[str, Any]:
        """Keep a built image (moving its rootfs in) and point ``tags`` at it."""
        with self._lock:
            dest = self._image_dir(built.id)
            if not (dest / "rootfs").exists():
                dest.mkdir(parents=True, exist_ok=True)
                os.replace(built.rootfs, dest / "rootfs")
                (dest / "config.json").write_text(json.dumps(built.to_json(), indent=1))
            doc = self.world.store.get(self.KIND, built.id) or {
                "Id": built.id,
                "RepoTags": [],
                "RepoDigests": [],
                "Created": built.created,
                "image": built.to_json(),
            }
            for tag in tags:
                self._untag(tag, keep=built.id)
                if tag not in doc["RepoTags"]:
                    doc["RepoTags"].append(tag)
            if tags:
                doc["LastTagTime"] = built.created
            self.world.store.put(self.KIND, built.id, doc)
            return doc

    def _inspect(self, doc: dict[str, Any]) -> dict[str, Any]:
        img = doc["image"]
        cfg = img["config"]
        config: dict[str, Any] = {
            "Hostname": "",
            "Domainname": "",
            "User": cfg.get("User", ""),
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "ExposedPorts": cfg.get("ExposedPorts"),
            "Tty": False,
            "OpenStdin": False,
            "StdinOnce": False,
            "Env": cfg.get("Env"),
            "Cmd": cfg.get("Cmd"),
            "Image": "",
            "Volumes": cfg.get("Volumes"),
            "WorkingDir": cfg.get("WorkingDir", ""),
            "Entrypoint": cfg.get("Entrypoint"),
            "OnBuild": cfg.get("OnBuild"),
            "Labels": cfg.get("Labels"),
        }
        for key in ("StopSignal", "Healthcheck", "Shell"):
            if key in cfg:
                config[key] = cfg[key]
        return {
            "Id": doc["Id"],
            "RepoTags": doc.get("RepoTags", []),
            "RepoDigests": doc.get("RepoDigests", []),
            "Parent": "",
            "Comment": "",
            "Created": doc["Created"],
            "DockerVersion": ENGINE_VERSION,
            "Author": img.get("author", ""),
            "Config": config,
            "Architecture": _ARCH,
            "Os": "linux",
            "Size": img["size"],
            "GraphDriver": {"Name": "overlay2", "Data": {"MergedDir": str(self._image_dir(doc["Id"]) / "rootfs")}},
            "RootFS": {"Type": "layers", "Layers": img["layers"]},
            "Metadata": {"LastTagTime": doc.get("LastTagTime", "0001-01-01T00:00:00Z")},
        }

    # --- system ---------------------------------------------------------------------------------------

    @route("GET", "/_ping", name="ping", check_service=False)
    @route("HEAD", "/_ping", name="ping", check_service=False)
    @route("GET", "/v{version}/_ping", name="ping", check_service=False)
    @route("HEAD", "/v{version}/_ping", name="ping", check_service=False)
    @docker_api
    def ping(self, req: ApiRequest) -> Response:
        # Builder-Version 1: clients use the classic builder, the one emulated here.
        return Response("OK", mimetype="text/plain", headers={**_HEADERS, "Builder-Version": "1"})

    @route("GET", "/version", name="version", check_service=False)
    @route("GET", "/v{version}/version", name="version", check_service=False)
    @docker_api
    def version(self, req: ApiRequest) -> Response:
        return _json(
            {
                "Platform": {"Name": "mlflow-gcp emulator"},
                "Components": [{"Name": "Engine", "Version": ENGINE_VERSION, "Details": {"ApiVersion": API_VERSION}}],
                "Version": ENGINE_VERSION,
                "ApiVersion": API_VERSION,
                "MinAPIVersion": MIN_API_VERSION,
                "GitCommit": "emulator",
                "GoVersion": "go1.21.11",
                "Os": "linux",
                "Arch": _ARCH,
                "KernelVersion": platform.release(),
            }
        )

    @route("GET", "/v{version}/info", name="info", check_service=False)
    @docker_api
    def info(self, req: ApiRequest) -> Response:
        return _json(
            {
                "ID": "mlflow-gcp-emulator",
                "Containers": 0,
                "ContainersRunning": 0,
                "ContainersPaused": 0,
                "ContainersStopped": 0,
                "Images": len(self._docs()),
                "Driver": "overlay2",
                "DockerRootDir": str(self.root),
                "OperatingSystem": "mlflow-gcp emulator (no container runtime)",
                "OSType": "linux",
                "Architecture": platform.machine(),
                "NCPU": os.cpu_count() or 1,
                "ServerVersion": ENGINE_VERSION,
                "Name": platform.node(),
                "IndexServerAddress": "https://index.docker.io/v1/",
                "Labels": [],
                "ExperimentalBuild": False,
            }
        )

    @route("POST", "/v{version}/auth", name="auth", check_service=False)
    @docker_api
    def auth(self, req: ApiRequest) -> Response:
        try:
            body = json.loads(req.raw.get_data() or b"{}")
        except ValueError:
            raise DockerApiError(400, "invalid JSON in request body") from None
        server = str(body.get("serveraddress") or "https://index.docker.io/v1/")
        host = re.sub(r"^https?://", "", server).split("/")[0]
        if not host.endswith("-docker.pkg.dev"):
            raise DockerApiError(500, f'Get "https://{host}/v2/": dial tcp: lookup {host}: no such host')
        if not (body.get("password") or body.get("identitytoken")):
            raise DockerApiError(401, f"login attempt to https://{host}/v2/ failed with status: 401 Unauthorized")
        return _json({"Status": "Login Succeeded", "IdentityToken": ""})

    def _unsupported(self, req: ApiRequest) -> Response:
        return _error(
            501,
            f"not implemented by the mlflow-gcp emulator (no container runtime): {req.raw.method} {req.raw.path}",
        )

    for _template in _UNSUPPORTED:
        for _method in ("GET", "POST", "PUT", "DELETE", "HEAD"):
            _unsupported = route(_method, _template, name="unsupported", check_service=False)(_unsupported)
    del _template, _method

    # --- build ----------------------------------------------------------------------------------------

    @route("POST", "/v{version}/build", name="build", check_service=False)
    @docker_api
    def build(self, req: ApiRequest) -> Response:
        args = req.args
        if args.get("remote"):
            raise DockerApiError(500, "the mlflow-gcp emulator cannot fetch remote build contexts; send a tar context")
        tags: list[str] = []
        for t in args.getlist("t"):
            try:
                repo, tag, digest = parse_reference(t)
            except InvalidReference as exc:
                raise DockerApiError(400, f'invalid tag "{t}": {exc}') from None
            if digest:
                raise DockerApiError(400, f'invalid tag "{t}": refusing to create a tag with a digest reference')
            tags.append(f"{repo}:{tag or 'latest'}")
        try:
            buildargs = json.loads(args.get("buildargs") or "{}")
            labels = json.loads(args.get("labels") or "{}")
        except ValueError as exc:
            raise DockerApiError(400, f"invalid JSON in build parameters: {exc}") from None
        buildargs = {k: "" if v is None else str(v) for k, v in buildargs.items()}
        dockerfile = args.get("dockerfile") or "Dockerfile"
        quiet = _bool(args.get("q"))
        work = self.root / "tmp" / uuid.uuid4().hex
        work.mkdir(parents=True)
        try:
            body = work / "context.tar"
            with body.open("wb") as f:
                shutil.copyfileobj(req.raw.stream, f)
            context = work / "context"
            unpack_context(body, context)
            body.unlink()
            path = scoped(context, dockerfile)
            if not path.is_file():
                raise DockerfileError(f"Cannot locate specified Dockerfile: {dockerfile}", 500)
            instructions = parse_dockerfile(path.read_text(errors="replace"), dockerfile, classic=True)
            lines: list[str] = []
            try:
                built = build_image(
                    instructions, context, work / "stages", buildargs=buildargs, target=args.get("target") or None,
                    labels=labels, log=lines.append, python_envs=python_envs(self.world.data_dir),
                )  # fmt: skip
            except BuildStepError as err:
                shutil.rmtree(work, ignore_errors=True)
                events = [] if quiet else [{"stream": line} for line in lines]
                return _stream(iter([*events, _error_line(err.message)]))
            doc = self.save(built, tags)
        except DockerfileError as err:
            shutil.rmtree(work, ignore_errors=True)
            raise DockerApiError(err.status, err.message) from None
        shutil.rmtree(work, ignore_errors=True)
        if quiet:
            return _stream(iter([{"stream": f"{doc['Id']}\n"}]))
        events: list[dict[str, Any]] = [{"stream": line} for line in lines]
        events.append({"aux": {"ID": doc["Id"]}})
        events.append({"stream": f"Successfully built {built.short_id}\n"})
        events.extend({"stream": f"Successfully tagged {t}\n"} for t in tags)
        return _stream(iter(events))

    # --- images ---------------------------------------------------------------------------------------

    @route("GET", "/v{version}/images/json", name="images.list", check_service=False)
    @docker_api
    def list_images(self, req: ApiRequest) -> Response:
        try:
            filters = json.loads(req.args.get("filters") or "{}")
        except ValueError:
            raise DockerApiError(400, "invalid filter") from None
        # Old clients send {"key": ["v"]}, newer {"key": {"v": true}}.
        filters = {k: list(v) if isinstance(v, dict | list) else [v] for k, v in filters.items()}
        out = []
        for doc in self._docs():
            tags = doc.get("RepoTags", [])
            labels = doc["image"]["config"].get("Labels") or {}
            if "dangling" in filters:
                want = _bool(filters["dangling"][0])
                if want != (not tags):
                    continue
            if "reference" in filters and not any(self._ref_matches(p, tags) for p in filters["reference"]):
                continue
            if "label" in filters and not all(
                (labels.get(k) == v) if sep else (k in labels)
                for k, sep, v in (f.partition("=") for f in filters["label"])
            ):
                continue
            out.append(
                {
                    "Id": doc["Id"],
                    "ParentId": "",
                    "RepoTags": tags,
                    "RepoDigests": doc.get("RepoDigests", []),
                    "Created": _unix(doc["Created"]),
                    "Size": doc["image"]["size"],
                    "SharedSize": -1,
                    "Labels": labels,
                    "Containers": -1,
                }
            )
        out.sort(key=lambda d: -d["Created"])
        if _bool(req.args.get("only_ids")):
            return _json([{"Id": d["Id"]} for d in out])
        return _json(out)

    @staticmethod
    def _ref_matches(pattern: str, tags: list[str]) -> bool:
        import fnmatch

        for t in tags:
            repo = t.rsplit(":", 1)[0]
            if fnmatch.fnmatchcase(t, pattern) or fnmatch.fnmatchcase(repo, pattern):
                return True
        return False

    @route("GET", "/v{version}/images/{name=**}/json", name="images.inspect", check_service=False)
    @docker_api
    def inspect(self, req: ApiRequest) -> Response:
        return _json(self._inspect(self._require(req["name"])))

    @route("GET", "/v{version}/images/{name=**}/history", name="images.history", check_service=False)
    @docker_api
    def history(self, req: ApiRequest) -> Response:
        doc = self._require(req["name"])
        created = _unix(doc["Created"])
        entries = [
            {
                "Id": doc["Id"] if i == 0 else "<missing>",
                "Created": created,
                "CreatedBy": h["created_by"],
                "Tags": doc.get("RepoTags", []) if i == 0 else None,
                "Size": 0,
                "Comment": "",
            }
            for i, h in enumerate(reversed(doc["image"]["history"]))
        ]
        return _json(entries)

    @route("POST", "/v{version}/images/{name=**}/tag", name="images.tag", check_service=False)
    @docker_api
    def tag(self, req: ApiRequest) -> Response:
        doc = self._require(req["name"])
        repo_arg = req.args.get("repo", "")
        if not repo_arg:
            raise DockerApiError(400, "repository name must have at least one component")
        tag_arg = req.args.get("tag", "")
        ref = f"{repo_arg}:{tag_arg}" if tag_arg else repo_arg
        try:
            repo, tag, digest = parse_reference(ref)
        except InvalidReference as exc:
            raise DockerApiError(400, str(exc)) from None
        if digest:
            raise DockerApiError(400, "refusing to create a tag with a digest reference")
        full = f"{repo}:{tag or 'latest'}"
        with self._lock:
            self._untag(full, keep=doc["Id"])
            doc = self.world.store.get(self.KIND, doc["Id"]) or doc
            if full not in doc["RepoTags"]:
                doc["RepoTags"].append(full)
            doc["LastTagTime"] = datetime.now().astimezone().isoformat()
            self.world.store.put(self.KIND, doc["Id"], doc)
        return Response("", status=201, headers=_HEADERS)

    @route("DELETE", "/v{version}/images/{name=**}", name="images.remove", check_service=False)
    @docker_api
    def remove(self, req: ApiRequest) -> Response:
        name = req["name"]
        force = _bool(req.args.get("force"))
        with self._lock:
            doc = self._require(name)
            tags = doc.get("RepoTags", [])
            hexname = name.removeprefix("sha256:")
            by_id = bool(re.fullmatch(r"[0-9a-f]{1,64}", hexname)) and doc["Id"].split(":", 1)[1].startswith(hexname)
            try:
                repo, tag, digest = parse_reference(name)
                as_ref = f"{repo}@{digest}" if digest else f"{repo}:{tag or 'latest'}"
            except InvalidReference:
                as_ref = ""
            result: list[dict[str, str]] = []
            if as_ref in tags or as_ref in doc.get("RepoDigests", []):
                by_id = False
            if not by_id:
                # Removing a reference only untags, unless it was the last one.
                doc["RepoTags"] = [t for t in tags if t != as_ref]
                doc["RepoDigests"] = [d for d in doc.get("RepoDigests", []) if d != as_ref]
                result.append({"Untagged": as_ref})
                if doc["RepoTags"]:
                    self.world.store.put(self.KIND, doc["Id"], doc)
                    return _json(result)
            else:
                if len({t.rsplit(":", 1)[0] for t in tags}) > 1 and not force:
                    raise DockerApiError(
                        409,
                        f"conflict: unable to delete {doc['Id'].split(':', 1)[1][:12]} (must be forced) - image is "
                        "referenced in multiple repositories",
                    )
                result.extend({"Untagged": t} for t in [*tags, *doc.get("RepoDigests", [])])
            self.world.store.delete(self.KIND, doc["Id"])
            shutil.rmtree(self._image_dir(doc["Id"]), ignore_errors=True)
            result.append({"Deleted": doc["Id"]})
        return _json(result)

    # --- push -----------------------------------------------------------------------------------------

    @route("POST", "/v{version}/images/{name=**}/push", name="images.push", check_service=False)
    @docker_api
    def push(self, req: ApiRequest) -> Response:
        name = req["name"]
        try:
            repo, ref_tag, digest = parse_reference(name)
        except InvalidReference as exc:
            raise DockerApiError(400, str(exc)) from None
        if digest:
            raise DockerApiError(400, "cannot push a digest reference")
        tag = req.args.get("tag") or ref_tag
        authed = _credentials(req.raw.headers.get("X-Registry-Auth"))
        return _stream(self._push_events(repo, tag, authed))

    def _push_events(self, repo: str, tag: str | None, authed: bool) -> Iterator[dict[str, Any]]:
        yield {"status": f"The push refers to repository [{repo}]"}
        local = [
            (t.rsplit(":", 1)[1], d) for d in self._docs() for t in d.get("RepoTags", []) if t.rsplit(":", 1)[0] == repo
        ]
        if not local:
            yield _error_line(f"An image does not exist locally with the tag: {repo}")
            return
        if tag:
            local = [(t, d) for t, d in local if t == tag]
            if not local:
                yield _error_line(f"tag does not exist: {repo}:{tag}")
                return
        host = registry_host(repo)
        if not host.endswith("-docker.pkg.dev"):
            target = "registry-1.docker.io" if host == "docker.io" else host
            yield _error_line(f'Get "https://{target}/v2/": dial tcp: lookup {target}: no such host')
            return
        registry = self.world.apis.get("artifactregistry")
        for tag_name, doc in sorted(local, key=lambda td: td[0]):
            uri = f"{repo}:{tag_name}"
            parts = parse_image_uri(uri)
            if parts is None:
                yield _error_line(
                    "name invalid: Missing image name. Pushes should be of the form docker push "
                    "HOST-NAME/PROJECT-ID/REPOSITORY/IMAGE"
                )
                return
            built = self._built(doc)
            manifest_digest, size, _raw = built.manifest()
            layer_ids = [layer.split(":", 1)[1][:12] for layer in reversed(built.layers)]
            for lid in layer_ids:
                yield {"status": "Preparing", "progressDetail": {}, "id": lid}
            if not authed:
                yield _error_line(unauthenticated_push_message(parts))
                return
            if registry is None:
                yield _error_line(f"denied: the Artifact Registry API is not emulated here ({host})")
                return
            try:
                registry.check_push(uri)
            except GcpError as err:
                yield _error_line(push_error_message(err, parts))
                return
            exists = registry.has_digest(uri, manifest_digest)
            if delay := self.world.control.delay("docker.push"):
                time.sleep(delay)
            try:
                registry.register_image(built.record(uri, manifest_digest), [tag_name])
            except GcpError as err:
                yield _error_line(push_error_message(err, parts))
                return
            for lid in layer_ids:
                yield {"status": "Layer already exists" if exists else "Pushed", "progressDetail": {}, "id": lid}
            with self._lock:
                fresh = self.world.store.get(self.KIND, doc["Id"])
                if fresh is not None:
                    ref = f"{repo}@{manifest_digest}"
                    if ref not in fresh.setdefault("RepoDigests", []):
                        fresh["RepoDigests"].append(ref)
                        self.world.store.put(self.KIND, doc["Id"], fresh)
            yield {"status": f"{tag_name}: digest: {manifest_digest} size: {size}"}
            yield {"progressDetail": {}, "aux": {"Tag": tag_name, "Digest": manifest_digest, "Size": size}}
