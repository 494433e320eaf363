"""What a Dockerfile's ``RUN pip install`` puts in an image, installed for real: one virtualenv per requirements hash.

The emulator has no container runtime, but what an image installs decides what it runs: which MLflow, and whether
its pins exist at all. So a RUN step that is a pip install (``pip install [options] -r FILE | REQ ...``, alone or
as one command of a ``&&``/``;`` chain) is run, the rest of the step is recorded as before:

- What it installs (the ``-r`` files as the stage's files hold them, the requirements given on the command line,
  ``-c`` constraints, ``--no-deps``) is written out as one requirements text; the image records that text
  (``BuiltImage.python_requirements``), and the environment is named by its hash and the host Python's version
  (``cp311-<16 hex>``). A revision of the image runs with that environment's interpreter first on its ``PATH``
  (``apis/run/launch.py``), so ``python /app/entrypoint.py`` sees exactly the image's packages and none of the host's.
- Environments live under ``<data dir>/python-envs/``, or the directory ``MLFLOW_GCP_EMULATOR_PYTHON_ENVS`` names
  (the test suite shares one across all its emulators). Each is built once, under a file lock (two builds of the
  same requirements at once, in threads or processes, install once; the other waits and reuses), finished by a
  marker file written last, and reused by every image and revision with the same requirements.
- The installer is ``uv`` when it is installed (the ``server`` extra has it: ``uv venv`` + ``uv pip install
  --compile-bytecode``), else the host Python's ``venv`` and pip. Measured for the server image (2 CPUs): uv 17 s cold
  (5.7 s of it resolving, downloading and linking; the rest compiling bytecode, as pip does by default and as a real
  image holds it: the image sets PYTHONDONTWRITEBYTECODE, so without it every revision start compiled MLflow again,
  +20 s of CPU per `up`), 15.5 s with uv's cache warm; pip 53 s cold. The environment: 850 MB, plus 65 MB of uv
  cache. Its output is the step's output; a pin that does not exist fails the step as it fails ``docker build``:
  ``The command '/bin/sh -c pip install ...' returned a non-zero code: 1``.

Limits: the interpreter is the host's Python (not the base image's: ``FROM python:3.11-slim`` on a 3.12 host runs
3.12), pip options that change where or how packages are installed (``--target``, ``--prefix``, ``--user``,
editable installs, nested ``-r`` inside a requirements file) are refused rather than ignored, and other RUN
commands (``apt-get``, ``useradd``) still have no effect.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import BuildStepError

CACHE_ENV = "MLFLOW_GCP_EMULATOR_PYTHON_ENVS"
#: How environments are made (bump it when that changes: environments made the old way are then not reused).
_RECIPE = "compiled-bytecode/1\n"
_MARKER = ".mlflow-gcp-complete"
_PIP = re.compile(r"^(?:.*/)?pip(?:3(?:\.\d+)?)?$")
_PYTHON = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")
# pip options that do not change what ends up installed.
_HARMLESS_FLAGS = frozenset(
    {"--no-cache-dir", "--disable-pip-version-check", "-q", "--quiet", "-v", "--verbose", "-U", "--upgrade",
     "--no-warn-script-location", "--no-compile", "--compile", "--force-reinstall", "--ignore-installed", "-I",
     "--break-system-packages", "--no-input", "--isolated"}
)  # fmt: skip
_HARMLESS_VALUED = frozenset({"--root-user-action", "--progress-bar", "--timeout", "--retries", "--upgrade-strategy"})
# Where packages come from: passed on to the installer (uv and pip both take them) and part of the hash.
_SOURCE_OPTIONS = frozenset({"-i", "--index-url", "--extra-index-url", "-f", "--find-links"})
_LONG = {"-i": "--index-url", "-f": "--find-links"}
# In the requirements text: a constraint (-c file's line) and --no-deps, which go to the installer, not the file.
_CONSTRAINT = "#constraint"
_NO_DEPS = "#no-deps"

Log = Callable[[str], None]


def cache_root(data_dir: Path) -> Path:
    """Where environments live: ``MLFLOW_GCP_EMULATOR_PYTHON_ENVS``, else under the emulator's data directory."""
    shared = os.environ.get(CACHE_ENV, "").strip()
    return Path(shared) if shared else data_dir / "python-envs"


def python_envs(data_dir: Path) -> PythonEnvironments:
    """The emulator's environments (see :func:`cache_root`)."""
    return PythonEnvironments(cache_root(data_dir))


def pip_install(command: str, read_file: Callable[[str], str]) -> str | None:
    """The requirements text a RUN command's pip install(s) install, or None when it runs no pip install.
    ``read_file(path)`` reads a file of the stage (a path as the command gives it, relative to WORKDIR)."""
    parts: list[str] = []
    for segment in re.split(r"&&|;|\|\|", command):
        try:
            argv = shlex.split(segment)
        except ValueError:
            continue
        while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
            argv = argv[1:]  # VAR=value before the command
        if len(argv) >= 3 and _PYTHON.match(argv[0]) and argv[1:3] == ["-m", "pip"]:
            argv = ["pip", *argv[3:]]
        if len(argv) < 2 or not _PIP.match(argv[0]) or argv[1] != "install":
            continue
        parts.append(_requirements(argv[2:], read_file, " ".join(argv)))
    return "".join(parts) if parts else None


def _requirements(args: list[str], read_file: Callable[[str], str], command: str) -> str:
    lines: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg.startswith("-r") and len(arg) > 2 and not arg.startswith("--"):
            name, inline, eq = "-r", arg[2:], "="
        takes_value = name in {"-r", "--requirement", "-c", "--constraint"} | _SOURCE_OPTIONS | _HARMLESS_VALUED
        value = inline if eq else (args[i + 1] if takes_value and i + 1 < len(args) else None)
        i += 1 if eq or not takes_value else 2
        if takes_value and value is None:
            raise BuildStepError(f"{command}: option {name} requires an argument")
        if name in ("-r", "--requirement"):
            lines.append(_file_lines(value or "", read_file, command))
        elif name in ("-c", "--constraint"):
            lines.append(_constraints(value or "", read_file, command))
        elif name in _SOURCE_OPTIONS:
            # Written as requirements-file lines: pip and uv both accept them there.
            options.append(f"{_LONG.get(name, name)} {value}\n")
        elif name == "--no-deps":
            options.append(f"{_NO_DEPS}\n")
        elif name in _HARMLESS_FLAGS or name in _HARMLESS_VALUED or re.fullmatch(r"-[qv]+", name):
            continue
        elif arg.startswith("-"):
            raise BuildStepError(
                f"{command}: the emulator installs packages into the image's environment and cannot honour {name}"
            )
        else:
            lines.append(arg + "\n")
    return "".join(options) + "".join(lines)


def _file_lines(path: str, read_file: Callable[[str], str], command: str) -> str:
    try:
        text = read_file(path)
    except OSError:
        # pip's own words for a missing requirements file.
        raise BuildStepError(
            f"ERROR: Could not open requirements file: [Errno 2] No such file or directory: '{path}'"
        ) from None
    out = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if re.match(r"^(-r|--requirement|-c|--constraint|-e|--editable)\b", line):
            raise BuildStepError(f"{command}: {path}: the emulator cannot follow {line.split()[0]} inside a file")
        out.append(line + "\n")
    return "".join(out)


def _constraints(path: str, read_file: Callable[[str], str], command: str) -> str:
    return "".join(f"{_CONSTRAINT} {line}" for line in _file_lines(path, read_file, command).splitlines(True))


def stage_reader(rootfs: Path, workdir: str) -> Callable[[str], str]:
    """``read_file`` for :func:`pip_install`: paths inside the stage, relative to its WORKDIR."""
    from .context import scoped

    def read(path: str) -> str:
        full = path if path.startswith("/") else posixpath.join(workdir or "/", path)
        target = scoped(rootfs, posixpath.normpath(full))
        return target.read_text()

    return read


class PythonEnvironments:
    """The environments under ``root``, one per requirements text (and host Python version)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def key(requirements: str) -> str:
        python = f"cp{sys.version_info.major}{sys.version_info.minor}"
        return f"{python}-{hashlib.sha256((_RECIPE + requirements).encode()).hexdigest()[:16]}"

    def path(self, requirements: str) -> Path:
        return self.root / self.key(requirements)

    def ready(self, requirements: str) -> Path | None:
        """The environment's ``bin`` directory if it is built, else None (nothing is installed)."""
        env = self.path(requirements)
        return env / "bin" if (env / _MARKER).is_file() else None

    def ensure(self, requirements: str, log: Log = lambda _line: None) -> Path:
        """The ``bin`` directory of the environment for ``requirements``, built first if need be (once, whoever
        else asks at the same time). Raises :class:`InstallFailed` with the installer's output."""
        done = self.ready(requirements)
        if done is not None:
            return done
        env = self.path(requirements)
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f"{env.name}.lock"):
            done = self.ready(requirements)
            if done is not None:
                return done  # built by whoever held the lock before us
            if env.exists():
                shutil.rmtree(env)  # a build that died half way
            started = time.monotonic()
            installer = _install_uv if _uv() else _install_pip
            try:
                installer(env, requirements, self.root, log)
            except InstallFailed:
                shutil.rmtree(env, ignore_errors=True)
                raise
            line = f"installing requirements (hash {env.name}): {time.monotonic() - started:.1f} s\n"
            log(line)
            print(f"[emulator] {line.rstrip()} into {env}", file=sys.stderr, flush=True)
            (env / _MARKER).write_text(requirements)
            return env / "bin"


class InstallFailed(Exception):
    """The installer refused (a pin that does not exist, a conflict); its output was logged."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _uv() -> str | None:
    try:
        from uv import find_uv_bin
    except ImportError:
        return shutil.which("uv")
    try:
        return find_uv_bin()
    except FileNotFoundError:
        return shutil.which("uv")


def _base_python() -> str:
    """The host's interpreter itself, not the virtualenv the emulator may run in (whose packages must not leak)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX")}
    env.update(extra)
    return env


def _write_inputs(env: Path, requirements: str) -> list[str]:
    """The requirements text as installer input in ``env``: a requirements file (index options included, which
    requirements files may carry), a constraints file; the installer's arguments."""
    reqs: list[str] = []
    constraints: list[str] = []
    args: list[str] = []
    for line in requirements.splitlines():
        if line.startswith(_CONSTRAINT + " "):
            constraints.append(line.removeprefix(_CONSTRAINT + " "))
        elif line == _NO_DEPS:
            args.append("--no-deps")
        else:
            reqs.append(line)
    (env / "requirements.txt").write_text("".join(f"{r}\n" for r in reqs))
    args += ["-r", str(env / "requirements.txt")]
    if constraints:
        (env / "constraints.txt").write_text("".join(f"{c}\n" for c in constraints))
        args += ["-c", str(env / "constraints.txt")]
    return args


def _run(argv: list[str], env: dict[str, str], log: Log) -> None:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        log(line)
    if proc.wait() != 0:
        raise InstallFailed(f"{Path(argv[0]).name} exited {proc.returncode}")


def _install_uv(env: Path, requirements: str, root: Path, log: Log) -> None:
    uv = _uv()
    assert uv is not None
    run_env = _clean_env(UV_CACHE_DIR=str(root / "uv-cache"), UV_NO_PROGRESS="1")
    _run([uv, "venv", "--quiet", "--python", _base_python(), str(env)], run_env, log)
    args = _write_inputs(env, requirements)
    # pip compiles what it installs, so a real image holds the .pyc files; the image sets PYTHONDONTWRITEBYTECODE, so
    # without them every start would compile MLflow again (measured: +20 s of CPU per `up`).
    _run([uv, "pip", "install", "--compile-bytecode", "--python", str(env / "bin" / "python"), *args], run_env, log)


def _install_pip(env: Path, requirements: str, root: Path, log: Log) -> None:
    run_env = _clean_env(PIP_CACHE_DIR=str(root / "pip-cache"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([_base_python(), "-m", "venv", str(env)], run_env, log)
    args = _write_inputs(env, requirements)
    _run([str(env / "bin" / "python"), "-m", "pip", "install", *args], run_env, log)
