"""What the emulated build records of an image, and how a Cloud Run revision runs it on the host.

The emulator has no container runtime. A build (Docker Engine API or Cloud Build) unpacks the files that
the Dockerfile's COPY/ADD put in the image into ``rootfs`` and records the config (ENTRYPOINT, CMD, ENV,
WORKDIR, EXPOSE). RUN steps are recorded, not executed, except pip installs: what they install is the image's
``python_requirements``, installed into a virtualenv per requirements hash (``imagebuild/pythonenv.py``). A revision
runs ``entrypoint + cmd`` as a host process: absolute paths that exist under ``rootfs`` are rewritten to the
unpacked files, the working directory is ``rootfs/WORKDIR``, and the image's environment (if any) comes first on
its ``PATH``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ImageRecord:
    #: As pushed, e.g. "us-central1-docker.pkg.dev/proj/repo/mlflow:abc123".
    uri: str
    #: "sha256:<64 hex>" manifest digest, as Artifact Registry reports it.
    digest: str
    #: Host directory holding the files the image's COPY/ADD instructions placed.
    rootfs: Path
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    exposed_ports: list[int] = field(default_factory=list)
    size_bytes: int = 0
    #: What the image's RUN pip installs installed ("" for nothing): the key of its Python environment.
    python_requirements: str = ""

    def host_path(self, path: str) -> str:
        """Map an absolute path inside the image to the host, when the image holds it."""
        if path.startswith("/"):
            candidate = self.rootfs / path.lstrip("/")
            if candidate.exists():
                return str(candidate)
        return path

    def command(self, command: list[str] | None = None, args: list[str] | None = None) -> list[str]:
        """The argv a container runs: the service's command/args override ENTRYPOINT/CMD, as on Cloud Run."""
        argv = list(command) if command else list(self.entrypoint)
        argv += list(args) if args else ([] if command else list(self.cmd))
        return [self.host_path(a) for a in argv]

    def host_workdir(self) -> Path:
        wd = self.rootfs / self.workdir.lstrip("/")
        return wd if wd.is_dir() else self.rootfs
