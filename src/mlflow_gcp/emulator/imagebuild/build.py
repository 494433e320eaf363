"""Running a parsed Dockerfile: stages, ARG/ENV, COPY/ADD into each stage's rootfs, the image config."""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import copy_file, copy_tree, scoped, tree_digest
from .dockerfile import EXPANDS, Instruction, exec_form, expand, pairs, split_words
from .errors import BuildStepError, DockerfileError
from .image import BuiltImage, now_rfc3339, sha256_hex
from .pythonenv import InstallFailed, PythonEnvironments, pip_install, stage_reader

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WILDCARD = re.compile(r"[*?\[]")

Log = Callable[[str], None]


def _base_config(ref: str) -> dict[str, Any]:
    """What the config of a base image carries that a build inherits (no registry to pull it from)."""
    if ref == "scratch":
        return {"Env": [], "Cmd": None}
    name = ref.split("@")[0]
    repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
    env = [f"PATH={DEFAULT_PATH}"]
    cmd: list[str] | None = None
    if repo.rsplit("/", 1)[-1] == "python":
        # The official python images: LANG, PYTHON_VERSION and CMD ["python3"].
        env.append("LANG=C.UTF-8")
        version = re.match(r"^(\d+(?:\.\d+)*)", tag)
        if version:
            env.append(f"PYTHON_VERSION={version.group(1)}")
        cmd = ["python3"]
    return {"Env": env, "Cmd": cmd}


@dataclass
class _Stage:
    name: str | None
    base: str
    rootfs: Path
    config: dict[str, Any]
    explicit_env: dict[str, str]
    args: dict[str, str]
    history: list[dict[str, Any]]
    layers: list[str]
    chain: str
    cmd_set: bool = False
    author: str = ""
    #: What this stage's RUN pip installs put in its Python environment (pythonenv.py), cumulative; "" for none.
    python_requirements: str = ""

    def env(self) -> dict[str, str]:
        out = dict(self.args)
        for item in self.config.get("Env") or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out

    def set_env(self, key: str, value: str) -> None:
        items = list(self.config.get("Env") or [])
        for i, item in enumerate(items):
            if item.partition("=")[0] == key:
                items[i] = f"{key}={value}"
                break
        else:
            items.append(f"{key}={value}")
        self.config["Env"] = items
        self.explicit_env[key] = value


def build_image(
    instructions: list[Instruction],
    context: Path,
    workdir: Path,
    *,
    buildargs: dict[str, str] | None = None,
    target: str | None = None,
    labels: dict[str, str] | None = None,
    log: Log = lambda _line: None,
    python_envs: PythonEnvironments,
) -> BuiltImage:
    """Run the instructions against ``context``; stage root filesystems go under ``workdir`` and the environments
    RUN pip installs make under ``python_envs``. The final stage's rootfs stays there (the caller moves it). Raises
    DockerfileError for a bad target, BuildStepError (after logging the steps that ran) when a step fails."""
    buildargs = dict(buildargs or {})
    if target:
        names = [_stage_name(inst) for inst in instructions if inst.keyword == "FROM"]
        if target.lower() not in names:
            raise DockerfileError(f'target stage "{target}" could not be found')
        count = names.index(target.lower())
        # Keep instructions up to the end of the target stage.
        seen, cut = -1, len(instructions)
        for i, inst in enumerate(instructions):
            if inst.keyword == "FROM":
                seen += 1
                if seen == count + 1:
                    cut = i
                    break
        instructions = instructions[:cut]
    total = len(instructions)
    meta_args: dict[str, str] = {}
    stages: list[_Stage] = []
    stage: _Stage | None = None
    for n, inst in enumerate(instructions, start=1):
        log(f"Step {n}/{total} : {inst.original}\n")
        if stage is None and inst.keyword == "ARG":
            # ARG before the first FROM: a meta argument, usable in FROM lines.
            for key, value in _arg_decls(inst.rest):
                meta_args[key] = buildargs.get(key, expand(value, meta_args) if value is not None else "")
            continue
        if inst.keyword == "FROM":
            stage = _from(inst, meta_args, stages, workdir, len(stages))
            stages.append(stage)
            log(f" ---> {stage.chain[:12]}\n")
            continue
        assert stage is not None
        _dispatch(inst, stage, stages, context, buildargs, meta_args, log, python_envs)
        stage.chain = sha256_hex(stage.chain + "\n" + inst.original)
        log(f" ---> {stage.chain[:12]}\n")
    assert stage is not None
    if labels:
        stage.config["Labels"] = {**(stage.config.get("Labels") or {}), **labels}
    digest, size = tree_digest(stage.rootfs)
    image_id = "sha256:" + sha256_hex(
        json.dumps(
            {"config": stage.config, "history": [h["created_by"] for h in stage.history], "files": digest,
             "base": stage.base, "layers": stage.layers, "python": stage.python_requirements},
            sort_keys=True,
        )
    )  # fmt: skip
    return BuiltImage(
        id=image_id,
        config=stage.config,
        rootfs=stage.rootfs,
        layers=stage.layers,
        history=stage.history,
        size=size,
        base=stage.base,
        env=stage.explicit_env,
        created=now_rfc3339(),
        author=stage.author,
        python_requirements=stage.python_requirements,
    )


def _stage_name(inst: Instruction) -> str:
    words = inst.rest.split()
    return words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else ""


def _arg_decls(rest: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for token in split_words(rest):
        key, sep, value = token.partition("=")
        out.append((key, value if sep else None))
    return out


def _from(inst: Instruction, meta_args: dict[str, str], stages: list[_Stage], workdir: Path, index: int) -> _Stage:
    words = expand(inst.rest, meta_args).split()
    if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
        raise BuildStepError("FROM requires either one or three arguments")
    ref = words[0]
    name = words[2].lower() if len(words) == 3 else None
    rootfs = workdir / f"stage-{index}"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(parents=True)
    parent = next((s for s in stages if s.name and s.name == ref.lower()), None)
    if parent is not None:
        # FROM an earlier stage continues from its files and config.
        copy_tree(parent.rootfs, rootfs)
        return _Stage(
            name, parent.base, rootfs, json.loads(json.dumps(parent.config)), dict(parent.explicit_env), {},
            list(parent.history), list(parent.layers), parent.chain, python_requirements=parent.python_requirements,
        )  # fmt: skip
    base = _base_config(ref)
    config: dict[str, Any] = {
        "Env": base["Env"] or None,
        "Cmd": base["Cmd"],
        "Entrypoint": None,
        "WorkingDir": "",
        "Labels": None,
        "User": "",
        "ExposedPorts": None,
        "Volumes": None,
        "OnBuild": None,
    }
    layer = "sha256:" + sha256_hex(f"base-layer:{ref}")
    chain = sha256_hex(f"base:{ref}")
    return _Stage(
        name, ref, rootfs, config, {}, {}, [{"created_by": f"FROM {ref}"}], [] if ref == "scratch" else [layer], chain
    )


def _dispatch(
    inst: Instruction,
    stage: _Stage,
    stages: list[_Stage],
    context: Path,
    buildargs: dict[str, str],
    meta_args: dict[str, str],
    log: Log,
    python_envs: PythonEnvironments,
) -> None:
    kw = inst.keyword
    env = stage.env()
    rest = expand(inst.rest, env) if kw in EXPANDS and kw not in ("ENV", "LABEL", "COPY", "ADD") else inst.rest
    config = stage.config
    created_by = inst.original
    if kw == "RUN":
        container = sha256_hex(stage.chain + inst.original)[:12]
        log(f" ---> Running in {container}\n")
        argv = exec_form(inst.rest)
        shell = config.get("Shell") or ["/bin/sh", "-c"]
        command = " ".join(argv) if argv is not None else " ".join([*shell, inst.rest])
        # Only a pip install is run (pythonenv.py); the rest of the step is recorded, as Docker's layer would be.
        installs = pip_install(
            shlex.join(argv) if argv is not None else inst.rest,
            stage_reader(stage.rootfs, config.get("WorkingDir") or "/"),
        )
        if installs is not None:
            stage.python_requirements += installs
            try:
                python_envs.ensure(stage.python_requirements, log)
            except InstallFailed:
                # The classic builder's words when a RUN command exits non-zero (its output came first).
                raise BuildStepError(f"The command '{command}' returned a non-zero code: 1") from None
        log(f" ---> Removed intermediate container {container}\n")
        stage.layers.append("sha256:" + sha256_hex(f"run:{stage.chain}:{inst.original}:{stage.python_requirements}"))
        created_by = f"/bin/sh -c {inst.rest}"
    elif kw in ("COPY", "ADD"):
        _copy(inst, stage, stages, context, env)
        digest, _ = tree_digest(stage.rootfs)
        stage.layers.append("sha256:" + sha256_hex(f"layer:{inst.original}:{digest}"))
    elif kw == "ENV":
        for key, value in pairs(inst.rest, "ENV", env):
            stage.set_env(key, value)
    elif kw == "LABEL":
        config["Labels"] = {**(config.get("Labels") or {}), **dict(pairs(inst.rest, "LABEL", env))}
    elif kw == "ARG":
        for key, value in _arg_decls(inst.rest):
            if key in buildargs:
                stage.args[key] = buildargs[key]
            elif value is not None:
                stage.args[key] = expand(value, env)
            elif key in meta_args:
                stage.args[key] = meta_args[key]
    elif kw in ("CMD", "ENTRYPOINT"):
        argv = exec_form(inst.rest)
        if argv is None:
            shell = config.get("Shell") or ["/bin/sh", "-c"]
            argv = [*shell, inst.rest] if inst.rest else []
        if kw == "CMD":
            config["Cmd"] = argv
            stage.cmd_set = True
        else:
            config["Entrypoint"] = argv
            if not stage.cmd_set:
                # Setting ENTRYPOINT resets a CMD inherited from the base image.
                config["Cmd"] = None
    elif kw == "WORKDIR":
        path = rest if rest.startswith("/") else posixpath.join(config.get("WorkingDir") or "/", rest)
        path = posixpath.normpath(path)
        config["WorkingDir"] = path
        target = scoped(stage.rootfs, path)
        if not target.is_dir():
            if target.exists() or target.is_symlink():
                raise BuildStepError(f"mkdir {path}: not a directory")
            target.mkdir(parents=True, exist_ok=True)
    elif kw == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for word in rest.split():
            port, _, proto = word.partition("/")
            proto = (proto or "tcp").lower()
            if not re.fullmatch(r"\d+(-\d+)?", port) or proto not in ("tcp", "udp", "sctp"):
                raise BuildStepError(f"Invalid containerPort: {word}")
            ports[f"{port}/{proto}"] = {}
        config["ExposedPorts"] = ports
    elif kw == "USER":
        config["User"] = rest
    elif kw == "VOLUME":
        vols = dict(config.get("Volumes") or {})
        for v in split_words(rest):
            vols[v] = {}
        config["Volumes"] = vols
    elif kw == "STOPSIGNAL":
        config["StopSignal"] = rest
    elif kw == "SHELL":
        argv = exec_form(inst.rest)
        if not argv:
            raise BuildStepError("SHELL requires the arguments to be in JSON form")
        config["Shell"] = argv
    elif kw == "ONBUILD":
        config["OnBuild"] = [*(config.get("OnBuild") or []), rest]
    elif kw == "MAINTAINER":
        stage.author = rest
    elif kw == "HEALTHCHECK":
        words = inst.rest.split(None, 1)
        if words[0].upper() == "NONE":
            config["Healthcheck"] = {"Test": ["NONE"]}
        else:
            cmd = words[1] if len(words) > 1 else ""
            argv = exec_form(cmd)
            config["Healthcheck"] = {"Test": ["CMD", *argv] if argv is not None else ["CMD-SHELL", cmd]}
    entry: dict[str, Any] = {"created_by": created_by}
    if kw not in ("RUN", "COPY", "ADD"):
        entry["empty_layer"] = True
    stage.history.append(entry)


def _copy(inst: Instruction, stage: _Stage, stages: list[_Stage], context: Path, env: dict[str, str]) -> None:
    kw = inst.keyword
    words = [expand(w, env) for w in split_words(inst.rest)]
    srcs, dest = words[:-1], words[-1]
    src_root = context
    from_stage = inst.flags.get("from")
    if from_stage:
        src_name = expand(from_stage, env).lower()
        found = next((s for s in stages[:-1] if s.name == src_name), None)
        if found is None and src_name.isdigit() and int(src_name) < len(stages) - 1:
            found = stages[int(src_name)]
        if found is None:
            raise BuildStepError(
                f"{kw} failed: the emulator cannot pull {from_stage!r} for --from: only earlier build stages can be "
                "copied from"
            )
        src_root = found.rootfs
    workdir = stage.config.get("WorkingDir") or "/"
    dest_path = dest if dest.startswith("/") else posixpath.join(workdir, dest)
    dest_is_dir = dest.endswith("/") or dest in (".", "./") or len(srcs) > 1
    matches: list[Path] = []
    for src in srcs:
        if kw == "ADD" and re.match(r"^https?://", src):
            raise BuildStepError(f"ADD failed: the emulator has no network to download {src}")
        rel = posixpath.normpath(src.lstrip("/") or ".")
        if rel == ".." or rel.startswith("../"):
            raise BuildStepError(f"{kw} failed: forbidden path outside the build context: {src} ()")
        if _WILDCARD.search(rel):
            found = sorted(_glob(src_root, rel))
            if not found:
                raise BuildStepError(f"{kw} failed: no source files were specified")
            matches.extend(found)
            dest_is_dir = dest_is_dir or len(found) > 1
            continue
        path = scoped(src_root, rel)
        if not path.exists() and not path.is_symlink():
            where = "build context or excluded by .dockerignore" if not from_stage else f"stage {from_stage}"
            raise BuildStepError(f"{kw} failed: file not found in {where}: stat {rel}: file does not exist")
        matches.append(path)
    target = scoped(stage.rootfs, dest_path)
    if not dest_is_dir and target.is_dir():
        dest_is_dir = True
    for src_path in matches:
        if src_path.is_dir():
            out = target
            copy_tree(src_path, out)
        elif kw == "ADD" and _is_archive(src_path):
            out = target
            out.mkdir(parents=True, exist_ok=True)
            with tarfile.open(src_path, mode="r:*") as tf:
                tf.extractall(out, filter="tar")
        else:
            out = target / src_path.name if dest_is_dir else target
            copy_file(src_path, out)
        if "chmod" in inst.flags:
            _chmod(out, inst.flags["chmod"])


def _glob(root: Path, pattern: str) -> Iterable[Path]:
    parts = pattern.split("/")
    current = [root]
    for part in parts:
        nxt = []
        for base in current:
            if not base.is_dir():
                continue
            if _WILDCARD.search(part):
                nxt.extend(base / name for name in sorted(os.listdir(base)) if fnmatch.fnmatchcase(name, part))
            elif (base / part).exists() or (base / part).is_symlink():
                nxt.append(base / part)
        current = nxt
    return current


def _is_archive(path: Path) -> bool:
    try:
        return path.is_file() and tarfile.is_tarfile(path)
    except OSError:
        return False


def _chmod(path: Path, mode: str) -> None:
    try:
        value = int(mode, 8)
    except ValueError:
        raise BuildStepError(f"invalid chmod parameter: {mode}") from None
    if path.is_dir():
        for dirpath, _dirs, files in os.walk(path):
            os.chmod(dirpath, value)
            for f in files:
                if not os.path.islink(os.path.join(dirpath, f)):
                    os.chmod(os.path.join(dirpath, f), value)
    elif path.exists() and not path.is_symlink():
        os.chmod(path, value)
