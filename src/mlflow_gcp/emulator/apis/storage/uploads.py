"""Uploads: ``uploadType=media``, ``multipart`` and ``resumable`` sessions (Location URL, chunks PUT with
``Content-Range``, 308 answers with ``Range`` until the last chunk, cancel), checked against the sent hashes."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

from werkzeug.http import parse_options_header
from werkzeug.wrappers import Response

from ...core.errors import GcpError, invalid
from ...core.http import ApiRequest, route
from ...core.validation import validate_discovery
from .common import (
    _CONTENT_RANGE,
    _READ_CHUNK,
    OBJECT_KIND,
    UPLOAD_KIND,
    Preconditions,
    _bad,
    _goog_hash,
    _Hasher,
    _upload_params_missing,
    _validate_object_name,
    _verify_checksums,
)


class Uploads:
    """The ``/upload/storage/v1/b/{bucket}/o`` routes of :class:`StorageApi`."""

    def _upload_metadata(self, metadata: dict[str, Any], req: ApiRequest) -> str:
        validate_discovery(metadata, "storage", "v1", "Object")
        name = metadata.get("name") or req.args.get("name")
        if not name:
            raise _upload_params_missing()
        _validate_object_name(name)
        return name

    # --- uploads -------------------------------------------------------------------------------------

    @route("POST", "/upload/storage/v1/b/{bucket}/o", name="objects.insert")
    def upload(self, req: ApiRequest) -> Any:
        if "upload_id" in req.args:
            return self._resumable_chunk(req)
        upload_type = req.args.get("uploadType")
        if upload_type == "media":
            return self._media_upload(req)
        if upload_type == "multipart":
            return self._multipart_upload(req)
        if upload_type == "resumable":
            return self._resumable_start(req)
        raise _upload_params_missing()

    @route("PUT", "/upload/storage/v1/b/{bucket}/o", name="objects.insert.chunk")
    def upload_chunk(self, req: ApiRequest) -> Any:
        if "upload_id" not in req.args:
            raise _upload_params_missing()
        return self._resumable_chunk(req)

    @route("DELETE", "/upload/storage/v1/b/{bucket}/o", name="objects.insert.cancel")
    def upload_cancel(self, req: ApiRequest) -> Any:
        upload_id = req.args.get("upload_id", "")
        with self._session_lock(upload_id):
            session = self.world.store.get(UPLOAD_KIND, upload_id)
            if session is None:
                raise GcpError(404, "No such upload session.", "NOT_FOUND", reason="notFound")
            self.world.store.delete(UPLOAD_KIND, upload_id)
            self._part_path(upload_id).unlink(missing_ok=True)
            self._hashers.pop(upload_id, None)
        # GCS answers a cancelled session with the nginx-style "client closed request".
        return Response(status=499)

    def _media_upload(self, req: ApiRequest) -> dict[str, Any]:
        name = req.args.get("name")
        if not name:
            raise _upload_params_missing()
        _validate_object_name(name)
        bucket = req["bucket"]
        self._bucket(bucket)
        pre = Preconditions.from_request(req)
        path, f = self._tmp_file()
        hasher = _Hasher()
        try:
            with f:
                stream = req.raw.stream
                while chunk := stream.read(_READ_CHUNK):
                    f.write(chunk)
                    hasher.update(chunk)
            sent = _goog_hash(req.raw.headers.get("X-Goog-Hash"))
            _verify_checksums(hasher, crc32c=sent.get("crc32c"), md5=sent.get("md5"))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        content_type = req.raw.headers.get("Content-Type") or "application/octet-stream"
        obj = self._commit(bucket, name, path, hasher, {}, content_type, pre)
        return self._render_object(req, obj)

    def _multipart_upload(self, req: ApiRequest) -> dict[str, Any]:
        bucket = req["bucket"]
        self._bucket(bucket)
        pre = Preconditions.from_request(req)
        mimetype, options = parse_options_header(req.raw.headers.get("Content-Type", ""))
        boundary = options.get("boundary")
        if not mimetype.startswith("multipart/") or not boundary:
            raise _bad("Multipart upload requests must have a multipart/related Content-Type with a boundary.")
        metadata, part_type, path, hasher = self._read_multipart(req, boundary.encode())
        try:
            name = self._upload_metadata(metadata, req)
            _verify_checksums(hasher, crc32c=metadata.get("crc32c"), md5=metadata.get("md5Hash"))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        obj = self._commit(bucket, name, path, hasher, metadata, part_type, pre)
        return self._render_object(req, obj)

    def _read_multipart(self, req: ApiRequest, boundary: bytes) -> tuple[dict[str, Any], str, Path, _Hasher]:
        """Parse ``multipart/related``: a JSON metadata part, then the media part, streamed to a file."""
        stream = req.raw.stream
        delim = b"--" + boundary
        buf = b""

        def fill(until: bytes, start: int) -> int:
            nonlocal buf
            while True:
                idx = buf.find(until, start)
                if idx >= 0:
                    return idx
                if len(buf) > 16 << 20:
                    raise _bad("Multipart upload metadata is too large.")
                chunk = stream.read(64 << 10)
                if not chunk:
                    raise _bad("Malformed multipart body.")
                buf += chunk

        first = fill(delim, 0)
        head_end = fill(b"\r\n\r\n", first)
        meta_end = fill(b"\r\n" + delim, head_end + 4)
        try:
            metadata = json.loads(buf[head_end + 4 : meta_end] or b"{}")
        except ValueError as exc:
            raise invalid(f"Invalid JSON payload received. {exc}") from None
        if not isinstance(metadata, dict):
            raise invalid("Invalid JSON payload received. Expected an object.")
        media_head = meta_end + 2 + len(delim)
        media_head_end = fill(b"\r\n\r\n", media_head)
        part_type = "application/octet-stream"
        for line in buf[media_head:media_head_end].decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-type" and value.strip():
                part_type = value.strip()
        buf = buf[media_head_end + 4 :]

        closing = b"\r\n" + delim
        keep = len(closing) - 1
        path, f = self._tmp_file()
        hasher = _Hasher()
        try:
            with f:
                while True:
                    idx = buf.find(closing)
                    if idx >= 0:
                        data = buf[:idx]
                        f.write(data)
                        hasher.update(data)
                        break
                    if len(buf) > keep:
                        data = buf[:-keep]
                        f.write(data)
                        hasher.update(data)
                        buf = buf[-keep:]
                    chunk = stream.read(_READ_CHUNK)
                    if not chunk:
                        raise _bad("Malformed multipart body: missing closing boundary.")
                    buf += chunk
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return metadata, part_type, path, hasher

    def _session_lock(self, upload_id: str) -> threading.Lock:
        with self._lock:
            return self._session_locks.setdefault(upload_id, threading.Lock())

    def _resumable_start(self, req: ApiRequest) -> Response:
        metadata = req.json()
        name = self._upload_metadata(metadata, req)
        bucket = req["bucket"]
        self._bucket(bucket)
        pre = Preconditions.from_request(req)
        # Checked now (so a doomed upload fails before any bytes move) and again when it completes.
        pre.check(self.world.store.get(OBJECT_KIND, f"{bucket}/{name}"), read=False)
        total_raw = req.raw.headers.get("X-Upload-Content-Length")
        total = None
        if total_raw is not None:
            try:
                total = int(total_raw)
            except ValueError:
                raise _bad(f"Invalid X-Upload-Content-Length: {total_raw}") from None
        content_type = (
            req.raw.headers.get("X-Upload-Content-Type") or metadata.get("contentType") or "application/octet-stream"
        )
        upload_id = uuid.uuid4().hex
        part = self._part_path(upload_id)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.touch()
        session = {
            "bucket": bucket,
            "name": name,
            "metadata": metadata,
            "contentType": content_type,
            "preconditions": pre.as_dict(),
            "total": total,
            "received": 0,
            "done": False,
        }
        self.world.store.put(UPLOAD_KIND, upload_id, session)
        location = f"{self._host(req)}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={upload_id}"
        return Response(status=200, headers={"Location": location, "X-GUploader-UploadID": upload_id})

    def _resumable_chunk(self, req: ApiRequest) -> Response | dict[str, Any]:
        upload_id = req.args.get("upload_id", "")
        with self._session_lock(upload_id):
            session = self.world.store.get(UPLOAD_KIND, upload_id)
            if session is None:
                raise GcpError(404, "No such upload session.", "NOT_FOUND", reason="notFound")
            if session["done"]:
                # A retried final request: GCS answers with the object it made.
                return self._render_object(req, session["object"])
            received = int(session["received"])
            total = session["total"]
            crange = req.raw.headers.get("Content-Range")
            start: int | None = 0
            if crange:
                m = _CONTENT_RANGE.match(crange.strip())
                if not m:
                    raise _bad(f"Invalid Content-Range header: {crange}")
                start = int(m.group(1)) if m.group(1) is not None else None
                if m.group(3) != "*":
                    declared = int(m.group(3))
                    if total is not None and declared != total:
                        raise _bad("The total object size does not match the size given when the upload started.")
                    total = declared
            else:
                total = req.raw.content_length or 0
            if start is not None and start > received:
                raise _bad(
                    f"Invalid request.  According to the Content-Range header, the upload offset is {start} "
                    f"byte(s), which exceeds already uploaded size of {received} byte(s)."
                )
            part = self._part_path(upload_id)
            hasher = self._hashers.get(upload_id)
            if hasher is None or hasher.size != received:
                hasher = _Hasher.of_file(part, received)
            if start is not None:
                skip = received - start  # bytes the client re-sent that we already have
                with part.open("r+b") as f:
                    f.seek(received)
                    f.truncate()
                    stream = req.raw.stream
                    while chunk := stream.read(_READ_CHUNK):
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk = chunk[dropped:]
                            skip -= dropped
                        if chunk:
                            f.write(chunk)
                            hasher.update(chunk)
                if total is not None and hasher.size > total:
                    self._abandon(upload_id)
                    raise _bad("The uploaded data exceeds the declared object size.")
            received = hasher.size
            self._hashers[upload_id] = hasher
            session["received"] = received
            session["total"] = total
            if total is None or received < total:
                self.world.store.put(UPLOAD_KIND, upload_id, session)
                headers = {"Range": f"bytes=0-{received - 1}"} if received else {}
                return Response(status=308, headers=headers)
            return self._resumable_finish(req, upload_id, session, hasher)

    def _resumable_finish(
        self, req: ApiRequest, upload_id: str, session: dict[str, Any], hasher: _Hasher
    ) -> dict[str, Any]:
        metadata = session["metadata"]
        sent = _goog_hash(req.raw.headers.get("X-Goog-Hash"))
        try:
            _verify_checksums(hasher, crc32c=sent.get("crc32c"), md5=sent.get("md5"))
            _verify_checksums(hasher, crc32c=metadata.get("crc32c"), md5=metadata.get("md5Hash"))
            obj = self._commit(
                session["bucket"],
                session["name"],
                self._part_path(upload_id),
                hasher,
                metadata,
                session["contentType"],
                Preconditions.from_dict(session["preconditions"]),
            )
        except GcpError:
            # A failed finalisation ends the session, as on GCS; the client must start over.
            self._abandon(upload_id)
            raise
        self._hashers.pop(upload_id, None)
        session.update({"done": True, "object": obj})
        self.world.store.put(UPLOAD_KIND, upload_id, session)
        return self._render_object(req, obj)

    def _abandon(self, upload_id: str) -> None:
        self.world.store.delete(UPLOAD_KIND, upload_id)
        self._part_path(upload_id).unlink(missing_ok=True)
        self._hashers.pop(upload_id, None)
