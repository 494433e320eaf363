"""Objects: metadata (get, list, patch/update, delete, copy, rewrite), media downloads, and committing a
finished upload as an object's new generation."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from werkzeug.wrappers import Response

from ...core.errors import GcpError
from ...core.http import ApiRequest, json_response, route
from ...core.validation import validate_discovery
from .common import (
    _OBJECT_WRITABLE,
    _RANGE,
    _READ_CHUNK,
    _STORAGE_CLASSES,
    OBJECT_KIND,
    Preconditions,
    _bad,
    _bool_arg,
    _condition_not_met,
    _decode_token,
    _Digest,
    _encode_token,
    _glob,
    _Hasher,
    _int_arg,
    _max_results,
    _merge,
    _not_modified,
    _object_etag,
    _parse_ts,
    _ts,
    _validate_object_name,
)


class Objects:
    """The object and download routes of :class:`StorageApi`."""

    # --- object resources ----------------------------------------------------------------------------

    def _render_object(self, req: ApiRequest, obj: dict[str, Any]) -> dict[str, Any]:
        host = self._host(req)
        quoted = quote(obj["name"], safe="")
        return {
            **obj,
            "selfLink": f"{host}/storage/v1/b/{obj['bucket']}/o/{quoted}",
            "mediaLink": f"{host}/download/storage/v1/b/{obj['bucket']}/o/{quoted}"
            f"?generation={obj['generation']}&alt=media",
        }

    def _commit(
        self,
        bucket_name: str,
        name: str,
        source: Path,
        digest: _Hasher,
        metadata: dict[str, Any],
        content_type: str,
        pre: Preconditions,
    ) -> dict[str, Any]:
        """Make ``source`` (a finished upload file whose size and hashes ``digest`` holds) the live
        generation of ``bucket/name``, if the preconditions still hold. ``source`` is consumed either way."""
        try:
            with self._lock:
                bucket = self._bucket(bucket_name)
                storage_class = str(metadata.get("storageClass") or bucket.get("storageClass", "STANDARD")).upper()
                if storage_class not in _STORAGE_CLASSES:
                    raise _bad(f"Invalid storage class: {metadata.get('storageClass')}")
                key = f"{bucket_name}/{name}"
                current = self.world.store.get(OBJECT_KIND, key)
                pre.check(current, read=False)
                generation = self._next_generation()
                target = self._blob_path(bucket_name, generation)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                clock = self._now()
                now = _ts(clock)
                obj: dict[str, Any] = {k: v for k, v in metadata.items() if k in _OBJECT_WRITABLE and v is not None}
                obj.update(
                    {
                        "kind": "storage#object",
                        "id": f"{bucket_name}/{name}/{generation}",
                        "name": name,
                        "bucket": bucket_name,
                        "generation": str(generation),
                        "metageneration": "1",
                        "contentType": metadata.get("contentType") or content_type or "application/octet-stream",
                        "storageClass": storage_class,
                        "size": str(digest.size),
                        "md5Hash": digest.md5_b64,
                        "crc32c": digest.crc_b64,
                        "etag": _object_etag(generation, 1),
                        "timeCreated": now,
                        "updated": now,
                        "timeStorageClassUpdated": now,
                        "timeFinalized": now,
                    }
                )
                self.world.store.put(OBJECT_KIND, key, obj)
                if current is not None:
                    # Overwritten: soft-deleted when the bucket keeps deleted objects (softdelete.py).
                    self._retire(bucket, current, clock)
                return obj
        finally:
            source.unlink(missing_ok=True)

    # --- downloads -----------------------------------------------------------------------------------

    def _check_etag_headers(self, req: ApiRequest, obj: dict[str, Any]) -> None:
        if_match = req.raw.headers.get("If-Match")
        if if_match and if_match.strip('"') != obj["etag"]:
            raise _condition_not_met()
        if_none = req.raw.headers.get("If-None-Match")
        if if_none and if_none.strip('"') == obj["etag"]:
            raise _not_modified()

    def _download(self, req: ApiRequest, bucket: str, name: str) -> Response:
        with self._lock:
            obj = self._object(bucket, name, _int_arg(req, "generation"))
            Preconditions.from_request(req).check(obj, read=True)
            self._check_etag_headers(req, obj)
            # Opened under the lock: a concurrent overwrite unlinks the old file, but an open handle
            # still reads the generation we answered for.
            f = self._blob_path(bucket, int(obj["generation"])).open("rb")
        size = int(obj["size"])
        headers = {
            "X-Goog-Hash": f"crc32c={obj['crc32c']},md5={obj['md5Hash']}",
            "X-Goog-Generation": obj["generation"],
            "X-Goog-Metageneration": obj["metageneration"],
            "X-Goog-Stored-Content-Length": str(size),
            "X-Goog-Stored-Content-Encoding": obj.get("contentEncoding", "identity"),
            "X-Goog-Storage-Class": obj["storageClass"],
            "ETag": obj["etag"],
            "Last-Modified": formatdate(_parse_ts(obj["updated"]), usegmt=True),
            "Accept-Ranges": "bytes",
        }
        for field, header in (
            ("cacheControl", "Cache-Control"),
            ("contentDisposition", "Content-Disposition"),
            ("contentLanguage", "Content-Language"),
            ("contentEncoding", "Content-Encoding"),
        ):
            if obj.get(field):
                headers[header] = obj[field]
        start, end, status = 0, size - 1, 200
        range_header = req.raw.headers.get("Range")
        m = _RANGE.match(range_header.strip()) if range_header else None
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
                if int(m.group(2)) == 0:
                    start = size
            if start >= size or (m.group(1) and m.group(2) and int(m.group(2)) < start):
                f.close()
                err = GcpError(
                    416,
                    "The requested range cannot be satisfied.",
                    "OUT_OF_RANGE",
                    reason="requestedRangeNotSatisfiable",
                )
                response = json_response(err.envelope(self.error_style), 416)
                response.headers["Content-Range"] = f"bytes */{size}"
                return response
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        return Response(
            _stream_file(f, start, length),
            status=status,
            headers=headers,
            content_type=obj["contentType"],
            direct_passthrough=True,
        )

    @route("GET", "/download/storage/v1/b/{bucket}/o/{object=**}", name="objects.download")
    def download(self, req: ApiRequest) -> Response:
        if _bool_arg(req, "softDeleted"):
            return self._get_soft_deleted(req)  # which refuses media: a soft-deleted object cannot be read
        return self._download(req, req["bucket"], req["object"])

    # --- objects -------------------------------------------------------------------------------------

    @route("GET", "/storage/v1/b/{bucket}/o/{object=**}", name="objects.get")
    def get_object(self, req: ApiRequest) -> Any:
        if _bool_arg(req, "softDeleted"):
            return self._get_soft_deleted(req)
        if req.args.get("alt") == "media":
            return self._download(req, req["bucket"], req["object"])
        obj = self._object(req["bucket"], req["object"], _int_arg(req, "generation"))
        Preconditions.from_request(req).check(obj, read=True)
        self._check_etag_headers(req, obj)
        return self._render_object(req, obj)

    @route("GET", "/storage/v1/b/{bucket}/o", name="objects.list")
    def list_objects(self, req: ApiRequest) -> dict[str, Any]:
        bucket = req["bucket"]
        self._bucket(bucket)
        prefix = req.args.get("prefix", "")
        delimiter = req.args.get("delimiter", "")
        start_offset = req.args.get("startOffset", "")
        end_offset = req.args.get("endOffset", "")
        trailing = req.args.get("includeTrailingDelimiter", "").lower() == "true"
        glob = _glob(req.args["matchGlob"]) if req.args.get("matchGlob") else None
        soft_deleted = bool(_bool_arg(req, "softDeleted"))
        if soft_deleted and _bool_arg(req, "versions"):
            raise _bad("softDeleted and versions cannot both be true.")
        token = req.args.get("pageToken")
        # A token is the last name answered; in a soft-deleted listing, where a name may come several times,
        # "<name>\n<generation>" (names cannot hold a newline).
        after, _, after_gen = (_decode_token(token) if token else "").partition("\n")
        after_generation = int(after_gen) if after_gen.isdigit() else None
        limit = _max_results(req)
        items: list[dict[str, Any]] = []
        prefixes: list[str] = []
        last = ""
        count = 0
        next_token = None
        # Keys sort by object name, so every name under one prefix is contiguous.
        if soft_deleted:
            listed = self._soft_deleted_listing(bucket, prefix)
        else:
            listed = self.world.store.list(OBJECT_KIND, f"{bucket}/{prefix}")
        for obj in listed:
            name = obj["name"]
            if token and (
                name < after
                or (name == after and (after_generation is None or int(obj["generation"]) <= after_generation))
            ):
                continue
            if name < start_offset or (end_offset and name >= end_offset):
                continue
            if glob is not None and not glob.match(name):
                continue
            if delimiter:
                idx = name.find(delimiter, len(prefix))
                if idx >= 0:
                    group = name[: idx + len(delimiter)]
                    if group == after or (prefixes and prefixes[-1] == group):
                        if trailing and name == group:
                            items.append(obj)
                        continue
                    if count >= limit:
                        next_token = _encode_token(last)
                        break
                    prefixes.append(group)
                    last, count = group, count + 1
                    if trailing and name == group:
                        items.append(obj)
                    continue
            if count >= limit:
                next_token = _encode_token(last)
                break
            items.append(obj)
            last, count = (f"{name}\n{obj['generation']}" if soft_deleted else name), count + 1
        # GCS leaves `items` out of an empty page.
        out: dict[str, Any] = {"kind": "storage#objects"}
        if items:
            out["items"] = [self._render_object(req, o) for o in items]
        if prefixes:
            out["prefixes"] = prefixes
        if next_token:
            out["nextPageToken"] = next_token
        return out

    def _write_object(self, req: ApiRequest, replace: bool) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "storage", "v1", "Object")
        bucket, name = req["bucket"], req["object"]
        with self._lock:
            current = self._object(bucket, name, _int_arg(req, "generation"))
            Preconditions.from_request(req).check(current, read=False)
            changes = {k: v for k, v in body.items() if k in _OBJECT_WRITABLE}
            if replace:
                kept = {k: v for k, v in current.items() if k not in _OBJECT_WRITABLE}
                updated = {**kept, **{k: v for k, v in changes.items() if v is not None}}
            else:
                updated = _merge(current, changes)
            if not updated.get("metadata"):
                updated.pop("metadata", None)
            updated["contentType"] = updated.get("contentType") or "application/octet-stream"
            meta = int(current["metageneration"]) + 1
            updated.update(
                {
                    "metageneration": str(meta),
                    "updated": _ts(self._now()),
                    "etag": _object_etag(int(current["generation"]), meta),
                }
            )
            self.world.store.put(OBJECT_KIND, f"{bucket}/{name}", updated)
        return self._render_object(req, updated)

    @route("PATCH", "/storage/v1/b/{bucket}/o/{object=**}", name="objects.patch")
    def patch_object(self, req: ApiRequest) -> dict[str, Any]:
        return self._write_object(req, replace=False)

    @route("PUT", "/storage/v1/b/{bucket}/o/{object=**}", name="objects.update")
    def update_object(self, req: ApiRequest) -> dict[str, Any]:
        return self._write_object(req, replace=True)

    @route("DELETE", "/storage/v1/b/{bucket}/o/{object=**}", name="objects.delete")
    def delete_object(self, req: ApiRequest) -> Response:
        bucket, name = req["bucket"], req["object"]
        with self._lock:
            current = self._object(bucket, name, _int_arg(req, "generation"))
            Preconditions.from_request(req).check(current, read=False)
            self.world.store.delete(OBJECT_KIND, f"{bucket}/{name}")
            self._retire(self._bucket(bucket), current, self._now())
        return Response(status=204)

    def _copy(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "storage", "v1", "Object")
        src_bucket, src_name = req["bucket"], req["object"]
        dst_bucket, dst_name = req["destinationBucket"], req["destinationObject"]
        _validate_object_name(dst_name)
        with self._lock:
            src = self._object(src_bucket, src_name, _int_arg(req, "sourceGeneration"))
            Preconditions.from_request(req, "ifSource").check(src, read=False)
            self._bucket(dst_bucket)
            # Generation files never change, so a hard link is as good as a copy.
            src_path = self._blob_path(src_bucket, int(src["generation"]))
            tmp = self._tmp_path()
            try:
                os.link(src_path, tmp)
            except OSError:
                shutil.copyfile(src_path, tmp)
            metadata = {k: v for k, v in src.items() if k in _OBJECT_WRITABLE}
            metadata.update({k: v for k, v in body.items() if k in _OBJECT_WRITABLE})
            metadata["storageClass"] = body.get("storageClass") or src["storageClass"]
            return self._commit(
                dst_bucket,
                dst_name,
                tmp,
                _Digest.of(src),
                metadata,
                src["contentType"],
                Preconditions.from_request(req),
            )

    @route(
        "POST",
        "/storage/v1/b/{bucket}/o/{object=**}/copyTo/b/{destinationBucket}/o/{destinationObject=**}",
        name="objects.copy",
    )
    def copy_object(self, req: ApiRequest) -> dict[str, Any]:
        return self._render_object(req, self._copy(req))

    @route(
        "POST",
        "/storage/v1/b/{bucket}/o/{object=**}/rewriteTo/b/{destinationBucket}/o/{destinationObject=**}",
        name="objects.rewrite",
    )
    def rewrite_object(self, req: ApiRequest) -> dict[str, Any]:
        obj = self._copy(req)
        return {
            "kind": "storage#rewriteResponse",
            "totalBytesRewritten": obj["size"],
            "objectSize": obj["size"],
            "done": True,
            "resource": self._render_object(req, obj),
        }


def _stream_file(f: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    try:
        f.seek(start)
        remaining = length
        while remaining > 0:
            chunk = f.read(min(_READ_CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk
    finally:
        f.close()
