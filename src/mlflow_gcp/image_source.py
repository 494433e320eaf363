"""The server image's sources, shipped inside the package (``mlflow_gcp/server_image/``: Dockerfile, entrypoint.py,
requirements.txt, .dockerignore) and read through ``importlib.resources``, so a wheel installed anywhere builds the
same image as the source checkout.

The build context is what the docker CLI would send for that directory: every file, minus what ``.dockerignore``
excludes (docker-py's own matcher, the one its ``images.build(path=...)`` applies). The image tag is a hash of
exactly those files (names and bytes), so an unchanged image is never rebuilt, whichever way the tool was
installed (an installed package also holds the ``__pycache__`` pip compiled: ignored, not part of the image).
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


@functools.cache
def context_files() -> tuple[tuple[str, bytes], ...]:
    """(relative path, bytes) of every file the build sends, sorted by path."""
    from docker.utils.build import exclude_paths

    root = source_dir()
    ignore = root / ".dockerignore"
    patterns = ignore.read_text().splitlines() if ignore.is_file() else []
    included = sorted(p for p in exclude_paths(str(root), patterns) if (root / p).is_file())
    return tuple((name, (root / name).read_bytes()) for name in included)


def input_hash() -> str:
    """A content hash of the build context: the tag changes exactly when the image would."""
    digest = hashlib.sha256()
    for name, data in context_files():
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def context_tar_gz() -> bytes:
    """The build context as a gzipped tar, for Cloud Build (its ``storageSource`` takes a .tar.gz). Entries carry no
    owner and a fixed time, so the same sources give the same bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in context_files():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


def pinned_mlflow_version() -> str:
    """The MLflow version requirements.txt pins (what the server image runs)."""
    text = dict(context_files()).get("requirements.txt", b"").decode()
    m = _PIN.search(text)
    return m.group(1) if m else "unpinned"
