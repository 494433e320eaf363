"""Image builds without a container runtime, shared by the Docker Engine API and Cloud Build.

A build follows ``core/images.py``: the files a Dockerfile's COPY/ADD put in the image are unpacked into a
``rootfs`` directory, RUN steps are recorded (never executed), and ENTRYPOINT, CMD, ENV, WORKDIR, EXPOSE,
LABEL, USER, VOLUME, ... are recorded in the image config the way ``docker inspect`` shows them.

What follows the classic Docker builder (the one docker-py and ``docker build`` without BuildKit drive):

- The Dockerfile is parsed before anything is streamed, so an unknown instruction, a missing ``FROM`` or a
  bad flag is a :class:`DockerfileError` (the daemon answers it as a plain HTTP error, "dockerfile parse
  error line N: unknown instruction: X"); a failing step (a COPY source missing from the context) is a
  :class:`BuildStepError`, which the daemon streams as an ``errorDetail`` line after the steps so far.
- COPY/ADD: sources are relative to the context root and may not leave it; wildcards; a directory source
  copies its contents; a destination ending in ``/`` (or several sources) is a directory; relative
  destinations are relative to WORKDIR; ``--from=<stage>`` copies from an earlier stage; ADD unpacks a
  local tar archive. ``$VAR``/``${VAR:-x}`` substitution from ARG/ENV applies where Docker applies it.
- Multi-stage builds and ``target``; ARG before FROM; build args only fill declared ARGs.
- Setting ENTRYPOINT drops a CMD inherited from the base image.
- The image id is a digest of the config, the instructions and the files (not their mtimes), so rebuilding
  an unchanged context gives the same id, as the layer cache does on a real daemon.

Emulator limits: base images are never pulled (``FROM`` records the reference; ``python:*`` bases get the
config the official images carry), ``COPY --from=<image>`` of an external image and ``ADD <url>`` cannot be
served, and RUN has no effect on the files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import posixpath
import re
import shlex
import shutil
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.images import ImageRecord

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INSTRUCTIONS = frozenset(
    {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
        "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
    }
)  # fmt: skip
# Flags each instruction accepts (classic builder); anything else is a parse error, as on Docker.
_FLAGS: dict[str, frozenset[str]] = {
    "COPY": frozenset({"from", "chown", "chmod", "link", "parents", "exclude"}),
    "ADD": frozenset({"chown", "chmod", "link", "keep-git-dir", "checksum", "exclude"}),
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"mount", "network", "security"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}
# Instructions whose arguments get ARG/ENV substitution (Docker's "environment replacement" list).
_EXPANDS = frozenset(
    {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR", "ONBUILD"}
)
_WILDCARD = re.compile(r"[*?\[]")


class DockerfileError(Exception):
    """The Dockerfile cannot be parsed; the daemon refuses the build before streaming anything."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class BuildStepError(Exception):
    """A step failed while the build ran; the daemon reports it as an ``errorDetail`` stream line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


# --- Dockerfile parsing ----------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    #: Arguments after the keyword and its ``--flags``, continuations joined.
    rest: str
    flags: dict[str, str]
    #: As the daemon echoes it in "Step i/N : ...".
    original: str
    line: int


def parse_dockerfile(text: str, name: str = "Dockerfile", *, classic: bool = True) -> list[Instruction]:
    """Split a Dockerfile into instructions, refusing what the daemon refuses before a build starts."""
    if not text.strip():
        raise DockerfileError(f"the Dockerfile ({name}) cannot be empty", 500)
    lines = text.splitlines()
    escape = "\\"
    # Parser directives (`# escape=`, `# syntax=`) are only honoured at the very top.
    for raw in lines:
        m = re.match(r"^\s*#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$", raw)
        if not m:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"invalid ESCAPE '{m.group(2)}'. Must be ` or \\")
            escape = m.group(2)
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        start = i + 1
        joined = lines[i].strip()
        i += 1
        if not joined or joined.startswith("#"):
            continue
        # A trailing escape character continues the instruction; blank and comment lines inside are dropped.
        while joined.endswith(escape):
            joined = joined[: -len(escape)].rstrip()
            nxt = None
            while i < len(lines):
                candidate = lines[i].strip()
                i += 1
                if candidate and not candidate.startswith("#"):
                    nxt = candidate
                    break
            if nxt is None:
                break
            joined = f"{joined} {nxt}"
        keyword, rest = [*re.split(r"\s+", joined, maxsplit=1), ""][:2]
        if not keyword:
            continue
        upper = keyword.upper()
        if upper not in INSTRUCTIONS:
            raise DockerfileError(f"dockerfile parse error line {start}: unknown instruction: {upper}")
        rest = rest.strip()
        flags: dict[str, str] = {}
        if upper in _FLAGS:
            rest, flags = _take_flags(upper, rest, start)
        if not rest and upper not in ("RUN", "CMD", "ENTRYPOINT"):
            raise DockerfileError(f"dockerfile parse error line {start}: {upper} requires at least one argument")
        if upper in ("COPY", "ADD") and len(_words(rest)) < 2:
            raise DockerfileError(
                f"dockerfile parse error line {start}: {upper} requires at least two arguments, but only "
                "one was provided. Destination could not be determined."
            )
        if upper == "RUN" and classic and "mount" in flags:
            raise DockerfileError(
                "the --mount option requires BuildKit. Refer to https://docs.docker.com/go/buildkit/ to learn how "
                "to build images with BuildKit enabled"
            )
        out.append(Instruction(upper, rest, flags, f"{upper} {joined[len(keyword) :].strip()}".strip(), start))
    if not out:
        raise DockerfileError("file with no instructions", 500)
    seen_from = False
    for inst in out:
        if inst.keyword == "FROM":
            seen_from = True
        elif inst.keyword != "ARG" and not seen_from:
            raise DockerfileError("no build stage in current context")
    return out


def _take_flags(keyword: str, rest: str, line: int) -> tuple[str, dict[str, str]]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        token, _, remainder = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        if name not in _FLAGS[keyword]:
            raise DockerfileError(f"dockerfile parse error line {line}: unknown flag: {name}")
        flags[name] = value if value or "=" in token else "true"
        rest = remainder.strip()
    return rest, flags


def _words(rest: str) -> list[str]:
    """JSON (exec) form if it parses as a list of strings, else whitespace-separated words."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    try:
        return shlex.split(rest, posix=True)
    except ValueError:
        return rest.split()


def _exec_form(rest: str) -> list[str] | None:
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return None


_VAR = re.compile(
    r"\\\$|\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:[-+])?(?P<word>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand(text: str, env: dict[str, str]) -> str:
    """Docker's environment replacement: ``$X``, ``${X}``, ``${X:-default}``, ``${X:+alt}``, ``\\$`` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        if m.group("bare"):
            return env.get(m.group("bare"), "")
        name, op, word = m.group("braced"), m.group("op"), m.group("word")
        value = env.get(name, "")
        if op == ":-":
            return value or expand(word, env)
        if op == ":+":
            return expand(word, env) if value else ""
        return value

    return _VAR.sub(sub, text)


def _pairs(rest: str, keyword: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """``K=V K2="v 2"`` or the legacy ``K some value`` form of ENV/LABEL, values expanded."""
    try:
        tokens = shlex.split(rest, posix=True)
    except ValueError as exc:
        raise BuildStepError(f"{keyword} {rest}: {exc}") from None
    if tokens and "=" not in tokens[0]:
        key, _, value = rest.partition(" ")
        if not value.strip():
            raise BuildStepError(
                f"{keyword} names can not be blank" if not key else f"{keyword} must have two arguments"
            )
        return [(key, expand(value.strip(), env))]
    out = []
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise BuildStepError(f'Syntax error - can\'t find = in "{token}". Must be of the form: name=value')
        out.append((key, expand(value, env)))
    return out


# --- build contexts ----------------------------------------------------------------------------------------


def unpack_context(data: bytes | io.IOBase | Path, dest: Path) -> None:
    """Unpack a (possibly gzip/bzip2/xz compressed) tar build context; members may not leave ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes | bytearray):
        data = io.BytesIO(data)
    try:
        with (
            tarfile.open(data, mode="r:*") if isinstance(data, Path) else tarfile.open(fileobj=data, mode="r:*")  # type: ignore[arg-type]
        ) as tf:
            tf.extractall(dest, filter="tar")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DockerfileError(f"Error processing tar file({exc}): ", 500) from None


def read_dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if pattern.startswith("/", i):
                out[-1] = "(?:.*/)?"
                i += 1
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i)
            if j == -1:
                out.append(re.escape(c))
            else:
                out.append(pattern[i : j + 1])
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def apply_dockerignore(context: Path, patterns: list[str]) -> None:
    """Remove what ``.dockerignore`` excludes, as the docker CLI does before sending the context (last match
    wins; ``!`` re-includes; a matched directory excludes its contents)."""
    if not patterns:
        return
    rules = []
    for p in patterns:
        negate = p.startswith("!")
        p = p[1:].strip() if negate else p
        p = posixpath.normpath(p.lstrip("/"))
        if p in (".", ""):
            continue
        rules.append((negate, _pattern_regex(p)))

    def excluded(rel: str) -> bool:
        parts = rel.split("/")
        result = False
        for negate, rx in rules:
            for k in range(1, len(parts) + 1):
                if rx.match("/".join(parts[:k])):
                    result = not negate
                    break
        return result

    for root, dirs, files in os.walk(context, topdown=True):
        rel_root = os.path.relpath(root, context)
        for name in list(dirs) + files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel in ("Dockerfile", ".dockerignore"):
                continue  # the CLI always sends these two
            if excluded(rel):
                path = Path(root) / name
                if path.is_dir() and not path.is_symlink():
                    # A later "!" rule may re-include something below; keep the directory then.
                    if any(neg for neg, _ in rules):
                        continue
                    shutil.rmtree(path)
                    dirs.remove(name)
                else:
                    path.unlink()


# --- file operations scoped to a root -------------------------------------------------------------------


def scoped(root: Path, rel: str, *, follow_last: bool = True) -> Path:
    """``root/rel`` with symlinks resolved as if ``root`` were ``/`` (what Docker does for COPY), so no link
    can lead outside ``root``."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    cur: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if cur:
                cur.pop()
            continue
        candidate = root.joinpath(*cur, part)
        if candidate.is_symlink() and (parts or follow_last):
            hops += 1
            if hops > 40:
                raise BuildStepError(f"too many levels of symbolic links: {rel}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                cur = []
            parts = [q for q in target.split("/") if q not in ("", ".")] + parts
            continue
        cur.append(part)
    return root.joinpath(*cur)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _copy_file(src: Path, dst: Path) -> None:
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    """Merge the contents of ``src`` into the directory ``dst`` (links copied as links)."""
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        _remove(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        s, d = Path(entry.path), dst / entry.name
        if entry.is_symlink() or not entry.is_dir():
            _copy_file(s, d)
        else:
            _copy_tree(s, d)
    shutil.copystat(src, dst, follow_symlinks=False)


def tree_digest(root: Path) -> tuple[str, int]:
    """A digest of the files under ``root`` (paths, types, exec bits, contents; not mtimes) and their size."""
    h = hashlib.sha256()
    total = 0
    if not root.exists():
        return h.hexdigest(), 0
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel_dir = os.path.relpath(dirpath, root)
        h.update(f"d {rel_dir}\n".encode())
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]):
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(path):
                h.update(f"l {rel} {os.readlink(path)}\n".encode())
                continue
            st = os.stat(path)
            h.update(f"f {rel} {st.st_mode & 0o111:o} {st.st_size}\n".encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            total += st.st_size
    return h.hexdigest(), total


# --- building ---------------------------------------------------------------------------------------------


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


@dataclass
class BuiltImage:
    """A finished build: config as ``docker inspect`` shows it, and the rootfs of COPY/ADD'ed files."""

    id: str
    config: dict[str, Any]
    rootfs: Path
    layers: list[str]
    history: list[dict[str, Any]]
    size: int
    base: str
    #: Variables the Dockerfile's ENV set (a base image's PATH and friends are not the host's business).
    env: dict[str, str] = field(default_factory=dict)
    created: str = ""
    author: str = ""

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[1][:12]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "config": self.config,
            "layers": self.layers,
            "history": self.history,
            "size": self.size,
            "base": self.base,
            "env": self.env,
            "created": self.created,
            "author": self.author,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], rootfs: Path) -> BuiltImage:
        return cls(
            id=doc["id"],
            config=doc["config"],
            rootfs=rootfs,
            layers=list(doc["layers"]),
            history=list(doc["history"]),
            size=int(doc["size"]),
            base=doc.get("base", ""),
            env=dict(doc.get("env", {})),
            created=doc.get("created", ""),
            author=doc.get("author", ""),
        )

    def manifest(self) -> tuple[str, int, bytes]:
        """The v2 manifest a push uploads: (digest, size, bytes). Deterministic from the image."""
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "size": len(json.dumps(self.config)), "digest": self.id},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "size": 0, "digest": d} for d in self.layers],
        }
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + sha256_hex(raw), len(raw), raw

    def record(self, uri: str, digest: str, rootfs: Path | None = None) -> ImageRecord:
        ports = []
        for key in self.config.get("ExposedPorts") or {}:
            try:
                ports.append(int(key.split("/")[0]))
            except ValueError:
                pass
        return ImageRecord(
            uri=uri,
            digest=digest,
            rootfs=rootfs or self.rootfs,
            entrypoint=list(self.config.get("Entrypoint") or []),
            cmd=list(self.config.get("Cmd") or []),
            env=dict(self.env),
            workdir=self.config.get("WorkingDir") or "/",
            exposed_ports=sorted(ports),
            size_bytes=self.size,
        )


Log = Callable[[str], None]


def build_image(
    instructions: list[Instruction],
    context: Path,
    workdir: Path,
    *,
    buildargs: dict[str, str] | None = None,
    target: str | None = None,
    labels: dict[str, str] | None = None,
    log: Log = lambda _line: None,
) -> BuiltImage:
    """Run the instructions against ``context``; stage root filesystems go under ``workdir``. The final
    stage's rootfs stays there (the caller moves it). Raises DockerfileError for a bad target, BuildStepError
    (after logging the steps that ran) when a step fails."""
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
        _dispatch(inst, stage, stages, context, buildargs, meta_args, log)
        stage.chain = sha256_hex(stage.chain + "\n" + inst.original)
        log(f" ---> {stage.chain[:12]}\n")
    assert stage is not None
    if labels:
        stage.config["Labels"] = {**(stage.config.get("Labels") or {}), **labels}
    digest, size = tree_digest(stage.rootfs)
    image_id = "sha256:" + sha256_hex(
        json.dumps(
            {"config": stage.config, "history": [h["created_by"] for h in stage.history], "files": digest,
             "base": stage.base, "layers": stage.layers},
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
    )


def _stage_name(inst: Instruction) -> str:
    words = inst.rest.split()
    return words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else ""


def _arg_decls(rest: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for token in _words(rest):
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
        _copy_tree(parent.rootfs, rootfs)
        return _Stage(
            name, parent.base, rootfs, json.loads(json.dumps(parent.config)), dict(parent.explicit_env), {},
            list(parent.history), list(parent.layers), parent.chain,
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
) -> None:
    kw = inst.keyword
    env = stage.env()
    rest = expand(inst.rest, env) if kw in _EXPANDS and kw not in ("ENV", "LABEL", "COPY", "ADD") else inst.rest
    config = stage.config
    created_by = inst.original
    if kw == "RUN":
        container = sha256_hex(stage.chain + inst.original)[:12]
        log(f" ---> Running in {container}\n")
        log(f" ---> Removed intermediate container {container}\n")
        stage.layers.append("sha256:" + sha256_hex(f"run:{stage.chain}:{inst.original}"))
        created_by = f"/bin/sh -c {inst.rest}"
    elif kw in ("COPY", "ADD"):
        _copy(inst, stage, stages, context, env)
        digest, _ = tree_digest(stage.rootfs)
        stage.layers.append("sha256:" + sha256_hex(f"layer:{inst.original}:{digest}"))
    elif kw == "ENV":
        for key, value in _pairs(inst.rest, "ENV", env):
            stage.set_env(key, value)
    elif kw == "LABEL":
        config["Labels"] = {**(config.get("Labels") or {}), **dict(_pairs(inst.rest, "LABEL", env))}
    elif kw == "ARG":
        for key, value in _arg_decls(inst.rest):
            if key in buildargs:
                stage.args[key] = buildargs[key]
            elif value is not None:
                stage.args[key] = expand(value, env)
            elif key in meta_args:
                stage.args[key] = meta_args[key]
    elif kw in ("CMD", "ENTRYPOINT"):
        argv = _exec_form(inst.rest)
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
        for v in _words(rest):
            vols[v] = {}
        config["Volumes"] = vols
    elif kw == "STOPSIGNAL":
        config["StopSignal"] = rest
    elif kw == "SHELL":
        argv = _exec_form(inst.rest)
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
            argv = _exec_form(cmd)
            config["Healthcheck"] = {"Test": ["CMD", *argv] if argv is not None else ["CMD-SHELL", cmd]}
    entry: dict[str, Any] = {"created_by": created_by}
    if kw not in ("RUN", "COPY", "ADD"):
        entry["empty_layer"] = True
    stage.history.append(entry)


def _copy(inst: Instruction, stage: _Stage, stages: list[_Stage], context: Path, env: dict[str, str]) -> None:
    kw = inst.keyword
    words = [expand(w, env) for w in _words(inst.rest)]
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
            _copy_tree(src_path, out)
        elif kw == "ADD" and _is_archive(src_path):
            out = target
            out.mkdir(parents=True, exist_ok=True)
            with tarfile.open(src_path, mode="r:*") as tf:
                tf.extractall(out, filter="tar")
        else:
            out = target / src_path.name if dest_is_dir else target
            _copy_file(src_path, out)
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


# --- image references --------------------------------------------------------------------------------------

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
# A first component is a registry host only with a dot, a port, or as "localhost" (as Docker splits names).
_DOMAIN = rf"(?:(?:localhost|{_LABEL}(?:\.{_LABEL})+)(?::[0-9]+)?|{_LABEL}:[0-9]+)"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>[\w][\w.-]{{0,127}}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


class InvalidReference(ValueError):
    pass


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` -> (familiar name, tag, digest), as the daemon's reference parser reads it."""
    m = _REFERENCE.match(ref)
    if not m:
        name_part = ref.split("@")[0].rsplit(":", 1)[0] if ":" in ref.split("/")[-1] else ref.split("@")[0]
        if name_part != name_part.lower() and _REFERENCE.match(ref.lower()):
            raise InvalidReference(f"invalid reference format: repository name ({name_part}) must be lowercase")
        raise InvalidReference("invalid reference format")
    return familiar(m.group("name")), m.group("tag"), m.group("digest")


def familiar(name: str) -> str:
    """``docker.io/library/python`` -> ``python``, as RepoTags show names."""
    for prefix in ("docker.io/library/", "index.docker.io/library/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def registry_host(name: str) -> str:
    first, sep, _rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# --- the docker builder's command line (Cloud Build steps) -------------------------------------------------


@dataclass
class DockerBuildArgs:
    tags: list[str]
    dockerfile: str | None
    context: str
    buildargs: dict[str, str]
    target: str | None
    labels: dict[str, str]


def parse_docker_build_args(args: list[str], env: dict[str, str]) -> DockerBuildArgs:
    """``docker build`` flags as the docker CLI parses them (the subset builds use)."""
    tags: list[str] = []
    dockerfile = None
    target = None
    buildargs: dict[str, str] = {}
    labels: dict[str, str] = {}
    positional: list[str] = []
    valued = {"-t", "--tag", "-f", "--file", "--build-arg", "--target", "--label", "--cache-from", "--network",
              "--platform", "--progress", "--iidfile", "--shm-size", "-m", "--memory", "--add-host", "--secret",
              "--ssh", "--output", "-o", "--cache-to", "--builder"}  # fmt: skip
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and a != "-":
            name, eq, value = a.partition("=")
            if name in valued and not eq:
                i += 1
                if i >= len(args):
                    raise BuildStepError(f'flag needs an argument: "{name}" in {name}')
                value = args[i]
            if name in ("-t", "--tag"):
                tags.append(value)
            elif name in ("-f", "--file"):
                dockerfile = value
            elif name == "--target":
                target = value
            elif name == "--build-arg":
                k, sep, v = value.partition("=")
                if sep:
                    buildargs[k] = v
                elif k in env:
                    buildargs[k] = env[k]
            elif name == "--label":
                k, _, v = value.partition("=")
                labels[k] = v
            elif name not in valued and name not in ("-q", "--quiet", "--no-cache", "--pull", "--rm", "--force-rm",
                                                     "--squash", "--compress", "--load", "--push"):  # fmt: skip
                raise BuildStepError(f"unknown flag: {name}")
        else:
            positional.append(a)
        i += 1
    if len(positional) != 1:
        raise BuildStepError('"docker build" requires exactly 1 argument.')
    return DockerBuildArgs(tags, dockerfile, positional[0], buildargs, target, labels)
