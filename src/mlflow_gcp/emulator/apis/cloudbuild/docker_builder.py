"""The docker builder (``gcr.io/cloud-builders/docker``) as a Cloud Build step runs it: ``build`` (``-t``,
``-f``, ``--build-arg``, ``--target``, ``--label``; ``.dockerignore`` applies as the docker CLI applies it),
``tag`` and ``push``. Images live in the build's own daemon (a dict of ``repo:tag`` -> image); pushing is the
runner's (it checks the build's identity), passed in as ``push``."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...imagebuild import (
    BuildStepError,
    BuiltImage,
    DockerfileError,
    InvalidReference,
    PythonEnvironments,
    apply_dockerignore,
    build_image,
    parse_docker_build_args,
    parse_dockerfile,
    parse_reference,
    read_dockerignore,
)

Log = Callable[[str], None]
#: push(name, daemon, log) -> (digest, error message or None)
Push = Callable[[str, dict[str, BuiltImage], Log], tuple[str, str | None]]


def is_docker_builder(name: str) -> bool:
    repo = name.split("@")[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    return repo.endswith("cloud-builders/docker") or repo in ("docker", "docker.io/library/docker")


def ref(name: str) -> str:
    """``name`` as the daemon keys it: ``repo:tag`` (``latest`` when untagged)."""
    repo, tag, _digest = parse_reference(name)
    return f"{repo}:{tag or 'latest'}"


def local(daemon: dict[str, BuiltImage], name: str) -> BuiltImage | None:
    try:
        return daemon.get(ref(name))
    except InvalidReference:
        return None


def run_step(
    step: dict[str, Any],
    workspace: Path,
    work: Path,
    daemon: dict[str, BuiltImage],
    log: Log,
    push: Push,
    python_envs: PythonEnvironments,
) -> bool:
    """Run one step; False when it fails (its output, including the error, went to ``log``)."""
    name = step["name"]
    args = list(step.get("args", []))
    entrypoint = step.get("entrypoint", "")
    if not is_docker_builder(name) or (entrypoint and entrypoint != "docker"):
        log(f"the mlflow-gcp emulator runs only the docker builder; cannot run {entrypoint or name}")
        return False
    cwd = workspace / step.get("dir", "")
    env = dict(e.partition("=")[::2] for e in step.get("env", []))
    try:
        if not args:
            raise BuildStepError('"docker" requires a command')
        command, rest = args[0], args[1:]
        if command == "build":
            _docker_build(rest, cwd, work, daemon, env, log, python_envs)
        elif command == "tag":
            if len(rest) != 2:
                raise BuildStepError('"docker tag" requires exactly 2 arguments.')
            image = local(daemon, rest[0])
            if image is None:
                raise BuildStepError(f"Error response from daemon: No such image: {rest[0]}")
            try:
                daemon[ref(rest[1])] = image
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
            if not names or all(local(daemon, n) is None for n in names):
                raise BuildStepError(f"An image does not exist locally with the tag: {parse_reference(targets[0])[0]}")
            for n in names:
                _digest, error = push(n, daemon, log)
                if error:
                    return False  # push logged the registry's answer
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
    argv: list[str],
    cwd: Path,
    work: Path,
    daemon: dict[str, BuiltImage],
    env: dict[str, str],
    log: Log,
    python_envs: PythonEnvironments,
) -> None:
    a = parse_docker_build_args(argv, env)
    tags = []
    for t in a.tags:
        try:
            tags.append(ref(t))
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
            log=lambda line: log(line.rstrip("\n")), python_envs=python_envs,
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
