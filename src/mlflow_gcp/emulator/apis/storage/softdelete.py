"""Object soft delete: a generation that stops being live (deleted, overwritten, or replaced by a restore) in a
bucket whose ``softDeletePolicy.retentionDurationSeconds`` is not 0 is kept, unreadable, until its
``hardDeleteTime``; ``objects.list?softDeleted=true`` lists such generations, ``objects.get?softDeleted=true&
generation=N`` reads their metadata and ``objects.restore`` makes one live again as a new generation.

What GCS does, and where it says so:

- Deleting or overwriting a live object soft-deletes it; delete cannot remove a soft-deleted generation, which
  goes at its ``hardDeleteTime`` only (storage.v2 ``DeleteObject``/``RestoreObject`` comments, vendored in
  googleapis/storage-testbench google/storage/v2/storage_pb2_grpc.py; https://cloud.google.com/storage/docs/soft-delete:
  "preserves objects ... that get deleted or overwritten"; "soft-deleted objects cannot be read or modified").
- ``hardDeleteTime`` is fixed when the object is soft-deleted: "Existing soft-deleted objects aren't affected by
  updates made to the soft delete policy and are retained for the duration that was in effect when they were
  deleted" (https://cloud.google.com/storage/docs/use-soft-delete), and turning the policy off keeps them "until the
  previously applied retention duration expires" (https://cloud.google.com/storage/docs/disable-soft-delete), so a
  bucket at 0 still lists and restores what it soft-deleted before.
- A soft-deleted object carries ``softDeleteTime`` and ``hardDeleteTime`` and no ``timeDeleted`` (that one is for
  noncurrent versions: the Object schema of the storage v1 discovery document).
- Restore (https://cloud.google.com/storage/docs/json_api/v1/objects/restore): "a new copy of that object is
  created" with the metadata it had when soft-deleted, except ``timeCreated`` (now), no soft/hard delete times, a
  new generation and metageneration 1, Standard storage if the bucket has Autoclass; a live object of that name is
  itself soft-deleted (no Object Versioning). The soft-deleted generation is a copy's source, so it stays listed until
  its own ``hardDeleteTime``. ``generation`` is required; ``ifGenerationMatch`` and friends are about the live object
  (``ifGenerationMatch=0``: only if none is live).
- Listing soft-deleted and noncurrent versions at once is refused (google-cloud-storage's ``list_blobs``: "soft_deleted
  and versions cannot be set to True simultaneously"; 400 in storage-testbench testbench/database.py ``list_object``).
  A soft-deleted ``get`` needs ``generation`` and has no media (testbench/rest_server.py ``object_get``).
- Restoring a generation that is live, not soft-deleted, is 412 ``objectNotSoftDeleted`` (storage-testbench
  testbench/error.py ``not_soft_deleted``, commit deb04f3 "feat: add object restore functionality"; no recording
  of real GCS has it).

Left out, said plainly: soft-deleted *buckets* (deleting a bucket drops its soft-deleted objects here; on GCS the
bucket itself becomes restorable, with them), ``restoreToken`` (hierarchical-namespace buckets only), object ACLs
(``copySourceAcl`` is checked as a boolean; the emulator keeps no per-object ACLs) and Object Versioning (an
overwritten or deleted object is soft-deleted even when ``versioning.enabled``, where GCS would keep it noncurrent).
Hard deletion happens when a soft-delete route or a delete in that bucket next looks, not on a timer; nothing can
observe the difference. Time is the emulator's clock (control setting ``clock_offset_seconds``), so a test can move
past a 7-day retention.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from ...core.errors import GcpError
from ...core.http import ApiRequest, route
from .common import (
    OBJECT_KIND,
    SOFT_DELETED_KIND,
    Preconditions,
    _bad,
    _bool_arg,
    _int_arg,
    _object_etag,
    _object_not_found,
    _parse_ts,
    _required,
    _ts,
)


def _key(bucket: str, name: str, generation: int | str) -> str:
    return f"{bucket}/{name}#{generation}"


def retention_seconds(bucket: dict[str, Any]) -> int:
    return int((bucket.get("softDeletePolicy") or {}).get("retentionDurationSeconds", 0))


class SoftDelete:
    """The soft-delete half of :class:`StorageApi`: what happens to a generation that stops being live, and the
    routes that see soft-deleted generations."""

    def _retire(self, bucket: dict[str, Any], obj: dict[str, Any], now: float) -> None:
        """``obj`` stopped being the live generation (the caller holds ``_lock`` and has replaced or removed it):
        keep it soft-deleted for the bucket's retention, or delete its bytes when soft delete is off."""
        self._expire(bucket["name"], now, obj["name"])
        seconds = retention_seconds(bucket)
        if seconds <= 0:
            self._blob_path(bucket["name"], int(obj["generation"])).unlink(missing_ok=True)
            return
        kept = {**obj, "softDeleteTime": _ts(now), "hardDeleteTime": _ts(now + seconds)}
        self.world.store.put(SOFT_DELETED_KIND, _key(bucket["name"], obj["name"], obj["generation"]), kept)

    def _expire(self, bucket: str, now: float, prefix: str = "") -> None:
        """Hard-delete the soft-deleted generations whose ``hardDeleteTime`` has passed."""
        for obj in self.world.store.list(SOFT_DELETED_KIND, f"{bucket}/{prefix}"):
            if _parse_ts(obj["hardDeleteTime"]) <= now:
                self.world.store.delete(SOFT_DELETED_KIND, _key(bucket, obj["name"], obj["generation"]))
                self._blob_path(bucket, int(obj["generation"])).unlink(missing_ok=True)

    def _forget_soft_deleted(self, bucket: str) -> None:
        """The bucket is gone (its files with it): so are its soft-deleted generations."""
        for key in self.world.store.names(SOFT_DELETED_KIND, f"{bucket}/"):
            self.world.store.delete(SOFT_DELETED_KIND, key)

    def _soft_deleted_listing(self, bucket: str, prefix: str) -> list[dict[str, Any]]:
        """The soft-deleted generations under ``prefix``, by name then generation (as ``versions=true`` lists)."""
        with self._lock:
            self._expire(bucket, self._now(), prefix)
            found = self.world.store.list(SOFT_DELETED_KIND, f"{bucket}/{prefix}")
        return sorted(found, key=lambda o: (o["name"], int(o["generation"])))

    def _soft_deleted(self, bucket: str, name: str, generation: int) -> dict[str, Any]:
        self._bucket(bucket)
        self._expire(bucket, self._now(), name)
        obj = self.world.store.get(SOFT_DELETED_KIND, _key(bucket, name, generation))
        if obj is None:
            raise _object_not_found(bucket, name)
        return obj

    def _get_soft_deleted(self, req: ApiRequest) -> dict[str, Any]:
        """``objects.get?softDeleted=true``: the metadata of one soft-deleted generation."""
        if req.args.get("alt") == "media":
            raise _bad("Soft-deleted objects cannot be read; restore the object first.")
        generation = _int_arg(req, "generation")
        if generation is None:
            raise _required("generation")
        with self._lock:
            obj = self._soft_deleted(req["bucket"], req["object"], generation)
        return self._render_object(req, obj)

    @route("POST", "/storage/v1/b/{bucket}/o/{object=**}/restore", name="objects.restore")
    def restore_object(self, req: ApiRequest) -> dict[str, Any]:
        bucket_name, name = req["bucket"], req["object"]
        generation = _int_arg(req, "generation")
        if generation is None:
            raise _required("generation")
        _bool_arg(req, "copySourceAcl")  # a boolean, or 400; there are no object ACLs to copy here
        projection = req.args.get("projection") or "full"
        if projection not in ("full", "noAcl"):
            raise _bad(f"Invalid value for projection: {projection}")
        pre = Preconditions.from_request(req)
        with self._lock:
            bucket = self._bucket(bucket_name)
            current = self.world.store.get(OBJECT_KIND, f"{bucket_name}/{name}")
            if current is not None and int(current["generation"]) == generation:
                raise GcpError(412, "objectNotSoftDeleted", "FAILED_PRECONDITION", reason="conditionNotMet")
            source = self._soft_deleted(bucket_name, name, generation)
            pre.check(current, read=False)
            new_generation = self._next_generation()
            target = self._blob_path(bucket_name, new_generation)
            # Generation files never change, so the restored generation may share the soft-deleted one's bytes.
            try:
                os.link(self._blob_path(bucket_name, generation), target)
            except OSError:
                shutil.copyfile(self._blob_path(bucket_name, generation), target)
            now = self._now()
            restored = {k: v for k, v in source.items() if k not in ("softDeleteTime", "hardDeleteTime")}
            restored.update(
                {
                    "id": f"{bucket_name}/{name}/{new_generation}",
                    "generation": str(new_generation),
                    "metageneration": "1",
                    "etag": _object_etag(new_generation, 1),
                    "timeCreated": _ts(now),
                    "updated": _ts(now),
                    "timeFinalized": _ts(now),
                }
            )
            if (bucket.get("autoclass") or {}).get("enabled"):
                restored.update({"storageClass": "STANDARD", "timeStorageClassUpdated": _ts(now)})
            self.world.store.put(OBJECT_KIND, f"{bucket_name}/{name}", restored)
            if current is not None:
                self._retire(bucket, current, now)
        return self._render_object(req, restored)
