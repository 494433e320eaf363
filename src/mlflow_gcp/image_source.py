"""The server image's sources, shipped inside the package (``mlflow_gcp/server_image/``: Dockerfile, entrypoint.py,
requirements.txt, .dockerignore) and read through ``importlib.resources``, so a wheel installed anywhere builds the
same image as the source checkout.

The build context is what the docker CLI would send for that directory: every file, minus what ``.dockerignore``
excludes (docker-py's own matcher, the one its ``images.build(path=...)`` applies). The image tag is a hash of
exactly those files (names and bytes), so an unchanged image is never rebuilt, whichever way the tool was
installed (an installed package also holds the ``__pycache__`` pip compiled: ignored, not part of the image).

The MLflow version is configuration (``server.mlflow_version``): the context's ``requirements.txt`` is the shipped
one with its ``mlflow`` pin set to that version. The shipped pin is the default (the version this release is tested
with), so the default renders the shipped file byte for byte and its tag is the tag of the sources as they are.
Another version renders another file, hence another tag: two versions are two images.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import re
import tarfile
from importlib import resources
from pathlib import Path

from .errors import MlflowGcpError

_PIN = re.compile(r"^\s*mlflow(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)", re.MULTILINE)
REQUIREMENTS = "requirements.txt"
#: The MLflow releases the image runs. mlflow_gcp_serve.py and mlflow_gcp_artifacts.py use MLflow internals: the
#: artifact repository's StreamUploadMixin (3.15+), mlflow.server._bootstrap_basic_auth and auth.bootstrap_admin_user
#: (3.16+; get_flask_server_secret_key, 3.17+, is used when present). And the image's other pins must install with it:
#: MLflow 3.15 requires cryptography<50, which the image pins at 50.0.2 (`pip install` refuses the set). Measured:
#: an emulated `up --local` serves, logs runs, metrics and artifacts on 3.16.1 and 3.17.2. MLflow 4 may change any of
#: it: refused until tested.
SUPPORTED_MLFLOW = ">=3.16,<4"


def source_dir() -> Path:
    """The directory of the image sources in the installed package (a real directory: pip and pipx unpack wheels;
    a zipped install could not be sent to Docker and is refused clearly)."""
    path = resources.files("mlflow_gcp") / "server_image"
    if not isinstance(path, Path) or not (path / "Dockerfile").is_file():
        raise MlflowGcpError(
            f"The server image sources are missing from this installation of mlflow-gcp ({path}).",
            hint="Reinstall mlflow-gcp from its wheel or checkout, or pass --image with a prebuilt image.",
        )
    return path


def pinned_mlflow_version() -> str:
    """The MLflow version the shipped requirements.txt pins: the default of ``server.mlflow_version`` (read from the
    file alone, without the build context's machinery: every command's configuration needs it)."""
    m = _PIN.search((source_dir() / REQUIREMENTS).read_text())
    if m is None:
        raise MlflowGcpError(f"The shipped {REQUIREMENTS} pins no MLflow version: this installation is damaged.")
    return m.group(1)


def mlflow_version_problem(version: str) -> str | None:
    """Why the image cannot pin ``version`` (not a PEP 440 version, not written canonically, outside
    :data:`SUPPORTED_MLFLOW`), or None."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Version(version)
    except InvalidVersion:
        return f"{version!r} is not a version number (PEP 440), e.g. {pinned_mlflow_version()}"
    if str(parsed) != version:
        # pip would read "v3.17.2" as 3.17.2; the tag and what `status` compares are the canonical form.
        return f"{version!r}: write it as {str(parsed)!r}"
    if not SpecifierSet(SUPPORTED_MLFLOW).contains(parsed, prereleases=True):
        return (
            f"MLflow {version} is outside what the server image runs ({SUPPORTED_MLFLOW}): its entrypoint uses MLflow "
            f"internals that differ there; this release is tested with {pinned_mlflow_version()}"
        )
    return None


def render_requirements(text: str, mlflow_version: str) -> str:
    """``text`` (a requirements.txt) with its ``mlflow`` pin set to ``mlflow_version``, nothing else touched."""
    m = _PIN.search(text)
    if m is None:
        raise MlflowGcpError(f"The shipped {REQUIREMENTS} pins no MLflow version: this installation is damaged.")
    return text[: m.start(1)] + mlflow_version + text[m.end(1) :]


@functools.cache
def _shipped_files() -> tuple[tuple[str, bytes], ...]:
    from docker.utils.build import exclude_paths

    root = source_dir()
    ignore = root / ".dockerignore"
    patterns = ignore.read_text().splitlines() if ignore.is_file() else []
    included = sorted(p for p in exclude_paths(str(root), patterns) if (root / p).is_file())
    return tuple((name, (root / name).read_bytes()) for name in included)


@functools.cache
def context_files(mlflow_version: str | None = None) -> tuple[tuple[str, bytes], ...]:
    """(relative path, bytes) of every file the build sends, sorted by path; requirements.txt pins
    ``mlflow_version`` (default: the shipped pin, the shipped file unchanged)."""
    files = _shipped_files()
    if mlflow_version is None:
        return files
    return tuple(
        (name, render_requirements(data.decode(), mlflow_version).encode() if name == REQUIREMENTS else data)
        for name, data in files
    )


def input_hash(mlflow_version: str | None = None) -> str:
    """A content hash of the build context: the tag changes exactly when the image would."""
    digest = hashlib.sha256()
    for name, data in context_files(mlflow_version):
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def context_tar_gz(mlflow_version: str | None = None) -> bytes:
    """The build context as a gzipped tar, for Cloud Build (its ``storageSource`` takes a .tar.gz) and the Docker
    daemon (sent as a custom context). Entries carry no owner and a fixed time, so the same sources give the same
    bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in context_files(mlflow_version):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)
