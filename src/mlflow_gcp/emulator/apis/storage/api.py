"""The Cloud Storage API module: its state (data directory, locks, generations, upload hashers), the
lookups every route shares, and what other APIs call (``read_object``, ``bucket_exists``, ``policy_resource``)."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from ...core.errors import GcpError
from ...core.http import ApiModule, ApiRequest
from .buckets import Buckets
from .common import (
    BUCKET_KIND,
    OBJECT_KIND,
    _bucket_not_found,
    _Hasher,
    _object_not_found,
    _required,
)
from .objects import Objects
from .softdelete import SoftDelete
from .uploads import Uploads


class StorageApi(Buckets, Objects, SoftDelete, Uploads, ApiModule):
    prefix = ""
    error_style = "legacy"
    service = "storage.googleapis.com"
    title = "Cloud Storage API"

    def __init__(self, world: Any) -> None:
        super().__init__(world)
        self.root: Path = world.data_dir / "gcs"
        self.root.mkdir(parents=True, exist_ok=True)
        # One lock for every check-then-write on metadata, so `ifGenerationMatch=0` is a real lock.
        self._lock = threading.RLock()
        self._gen_lock = threading.Lock()
        self._last_generation = 0
        self._session_locks: dict[str, threading.Lock] = {}
        self._hashers: dict[str, _Hasher] = {}

    # --- public, for other modules -------------------------------------------------------------------

    def read_object(self, bucket: str, name: str) -> bytes:
        """The bytes of the live generation of ``bucket/name`` (404 NOT_FOUND if absent)."""
        with self._lock:
            obj = self._object(bucket, name)
            f = self._blob_path(bucket, int(obj["generation"])).open("rb")
        with f:
            return f.read()

    def bucket_exists(self, bucket: str) -> bool:
        return self.world.store.get(BUCKET_KIND, bucket) is not None

    def policy_resource(self, bucket: str) -> str:
        """The key of a bucket's policy in ``world.iam``."""
        return f"buckets/{bucket}"

    # --- lifecycle -----------------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
            self._hashers.clear()
            self._session_locks.clear()

    def restore(self) -> None:
        # Half-written upload bodies from a killed daemon are garbage; resumable sessions are kept.
        shutil.rmtree(self.root / ".tmp", ignore_errors=True)

    # --- internals -----------------------------------------------------------------------------------

    def _now(self) -> float:
        """The emulator's clock: the host's, moved on by the control setting ``clock_offset_seconds``."""
        return time.time() + self.world.control.settings.clock_offset_seconds

    def _next_generation(self) -> int:
        # Generations are microsecond timestamps on GCS; keep them strictly increasing.
        with self._gen_lock:
            gen = max(time.time_ns() // 1000, self._last_generation + 1)
            self._last_generation = gen
            return gen

    def _blob_path(self, bucket: str, generation: int) -> Path:
        return self.root / bucket / f"{generation}.bin"

    def _tmp_path(self) -> Path:
        tmp_dir = self.root / ".tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        return tmp_dir / uuid.uuid4().hex

    def _tmp_file(self) -> tuple[Path, IO[bytes]]:
        path = self._tmp_path()
        return path, path.open("wb")

    def _part_path(self, upload_id: str) -> Path:
        return self.root / ".uploads" / upload_id

    def _bucket(self, name: str) -> dict[str, Any]:
        bucket = self.world.store.get(BUCKET_KIND, name)
        if bucket is None:
            raise _bucket_not_found()
        return bucket

    def _object(self, bucket: str, name: str, generation: int | None = None) -> dict[str, Any]:
        self._bucket(bucket)
        obj = self.world.store.get(OBJECT_KIND, f"{bucket}/{name}")
        if obj is None or (generation is not None and int(obj["generation"]) != generation):
            raise _object_not_found(bucket, name)
        return obj

    @staticmethod
    def _host(req: ApiRequest) -> str:
        return req.raw.host_url.rstrip("/")

    def _project(self, project: str | None) -> dict[str, Any]:
        if not project:
            raise _required("project")
        if self.world.find_project(project) is None:
            raise GcpError(404, "The requested project was not found.", "NOT_FOUND", reason="notFound")
        return self.world.require_enabled(project, self.service, self.title)
