"""A built image: its config, history and manifest, and the :class:`ImageRecord` a registry keeps of it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.images import ImageRecord

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


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
    #: What the image's RUN pip installs installed (imagebuild/pythonenv.py); "" when it installs nothing.
    python_requirements: str = ""

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
            "python_requirements": self.python_requirements,
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
            python_requirements=doc.get("python_requirements", ""),
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
            python_requirements=self.python_requirements,
        )
