"""Cloud Storage JSON API v1: buckets (with IAM), objects, uploads and media downloads.

Mounted at the root, as ``STORAGE_EMULATOR_HOST`` and ``client_options={"api_endpoint": base}`` expect:
``/storage/v1/b...`` (metadata), ``/upload/storage/v1/b/{bucket}/o`` (``uploadType=media|multipart|resumable``)
and ``/download/storage/v1/b/{bucket}/o/{object}?alt=media``.

Behaviour kept from GCS:

- Bucket names are global: a second insert answers 409, with a different message depending on whether the
  name is already yours. Names are validated (400 ``Invalid bucket name``); ``location`` is upper-cased;
  the whole body (labels, iamConfiguration, versioning, lifecycle, softDeletePolicy...) is kept.
- Every write bumps ``metageneration``; ``ifMetagenerationMatch``/``ifGenerationMatch`` (0 = must not exist)
  and their ``NotMatch`` twins are enforced with 412 ``conditionNotMet``, except that a failed ``NotMatch``
  on a read (GET metadata or media) is 304 Not Modified, as GCS answers it.
- Uploads are verified: a client-sent ``crc32c``/``md5Hash`` (metadata) or ``X-Goog-Hash`` that does not
  match the bytes is a 400. Downloads carry ``X-Goog-Hash``, ``X-Goog-Generation`` and friends, which the
  client checks; ``Range`` gives 206 (or 416).
- Resumable uploads: the POST answers with a ``Location`` session URL; chunks are PUT with
  ``Content-Range``; intermediate answers are 308 with ``Range`` (absent while nothing is stored); the last
  answers 200 with the object. Preconditions are checked when the session starts and again at the end.
- Bucket IAM policies carry etags (stale -> 412); with public access prevention enforced, ``allUsers`` and
  ``allAuthenticatedUsers`` are refused with 412.

Object bytes live in files, one per generation, under ``data_dir/gcs/<bucket>/``; bodies are streamed to
and from disk so large objects never sit in memory. Metadata lives in the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import google_crc32c
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Response

from ..core.errors import GcpError, invalid
from ..core.http import ApiModule, ApiRequest, json_response, route
from ..core.validation import validate_discovery

BUCKET_KIND = "storage.bucket"
OBJECT_KIND = "storage.object"
UPLOAD_KIND = "storage.upload"

_READ_CHUNK = 1 << 20
_MAX_PAGE = 1000
_UBLA_LOCK = timedelta(days=90)
_DEFAULT_SOFT_DELETE = 7 * 24 * 3600
_MAX_SOFT_DELETE = 90 * 24 * 3600

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
_REGION = re.compile(r"^[A-Z]+-[A-Z]+\d+$")
_MULTI_REGIONS = {"US", "EU", "ASIA"}
_DUAL_REGIONS = {"NAM4", "EUR4", "EUR5", "EUR7", "EUR8", "ASIA1"}
_STORAGE_CLASSES = {
    "STANDARD",
    "NEARLINE",
    "COLDLINE",
    "ARCHIVE",
    "MULTI_REGIONAL",
    "REGIONAL",
    "DURABLE_REDUCED_AVAILABILITY",
}
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_CONTENT_RANGE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

# Fields a client may set when creating or patching (everything else is the server's to say).
_BUCKET_MUTABLE = {
    "acl",
    "autoclass",
    "billing",
    "cors",
    "defaultEventBasedHold",
    "defaultObjectAcl",
    "encryption",
    "iamConfiguration",
    "ipFilter",
    "labels",
    "lifecycle",
    "logging",
    "retentionPolicy",
    "rpo",
    "softDeletePolicy",
    "storageClass",
    "versioning",
    "website",
}
_BUCKET_CREATE_ONLY = {"location", "customPlacementConfig", "hierarchicalNamespace", "objectRetention", "name"}
_OBJECT_WRITABLE = {
    "cacheControl",
    "contentDisposition",
    "contentEncoding",
    "contentLanguage",
    "contentType",
    "customTime",
    "metadata",
    "temporaryHold",
    "eventBasedHold",
}
_PRECONDITIONS = ("ifGenerationMatch", "ifGenerationNotMatch", "ifMetagenerationMatch", "ifMetagenerationNotMatch")


# --- errors GCS answers with ------------------------------------------------------------------------


def _bucket_not_found() -> GcpError:
    return GcpError(404, "The specified bucket does not exist.", "NOT_FOUND", reason="notFound")


def _object_not_found(bucket: str, name: str) -> GcpError:
    return GcpError(404, f"No such object: {bucket}/{name}", "NOT_FOUND", reason="notFound")


def _condition_not_met() -> GcpError:
    return GcpError(
        412,
        "At least one of the pre-conditions you specified did not hold.",
        "FAILED_PRECONDITION",
        reason="conditionNotMet",
    )


def _not_modified() -> GcpError:
    # A 304 carries no body; werkzeug drops it, so only the status reaches the client.
    return GcpError(304, "Not Modified", "NOT_MODIFIED", reason="notModified")


def _required(what: str) -> GcpError:
    return GcpError(400, f"Required parameter: {what}", "INVALID_ARGUMENT", reason="required")


def _bad(message: str) -> GcpError:
    return GcpError(400, message, "INVALID_ARGUMENT", reason="invalid")


def _upload_params_missing() -> GcpError:
    return _bad("Upload requests must include an uploadType URL parameter and a URL-encoded object name.")


# --- small helpers ----------------------------------------------------------------------------------


def _ts(t: float) -> str:
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bucket_etag(metageneration: int) -> str:
    # GCS etags are base64 protobuf encodings of the (meta)generation numbers, e.g. "CAE=".
    return base64.b64encode(b"\x08" + _varint(metageneration)).decode()


def _object_etag(generation: int, metageneration: int) -> str:
    return base64.b64encode(b"\x08" + _varint(generation) + b"\x10" + _varint(metageneration)).decode()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Patch semantics: nested objects merge, ``null`` removes a key, anything else replaces."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _bad("Invalid page token.") from None


def _max_results(req: ApiRequest) -> int:
    raw = req.args.get("maxResults")
    if raw is None:
        return _MAX_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise _bad(f"Invalid value for maxResults: {raw}") from None
    if value < 0:
        raise _bad(f"Invalid value for maxResults: {raw}")
    return min(value, _MAX_PAGE) or _MAX_PAGE


def _int_arg(req: ApiRequest, *names: str) -> int | None:
    for name in names:
        raw = req.args.get(name)
        if raw is not None:
            try:
                return int(raw)
            except ValueError:
                raise _bad(f"Invalid value for {name}: {raw}") from None
    return None


def _glob(pattern: str) -> re.Pattern[str]:
    """``matchGlob``: ``*`` and ``?`` stay within a path segment, ``**`` crosses them, plus ``[...]``
    classes and ``{a,b}`` alternatives."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (j := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1 : j]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j + 1
        elif c == "{" and (j := pattern.find("}", i)) > 0:
            out.append("(?:" + "|".join(re.escape(a) for a in pattern[i + 1 : j].split(",")) + ")")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    try:
        return re.compile("^" + "".join(out) + "$", re.DOTALL)
    except re.error:
        raise _bad(f"Invalid matchGlob: {pattern}") from None


def _validate_bucket_name(name: str) -> None:
    ok = 3 <= len(name) <= 222 and bool(_BUCKET_NAME.match(name))
    if ok and "." in name:
        ok = all(1 <= len(part) <= 63 for part in name.split(".")) and not _IP_ADDRESS.match(name)
    elif ok:
        ok = len(name) <= 63
    if ok and (name.startswith("goog") or "google" in name or "g00gle" in name):
        ok = False
    if not ok:
        raise _bad(f"Invalid bucket name: '{name}'")


def _validate_object_name(name: str) -> None:
    if not name or len(name.encode()) > 1024 or "\r" in name or "\n" in name or name in (".", ".."):
        raise _bad("The specified object name is not valid.")
    if name.startswith(".well-known/acme-challenge/"):
        raise _bad("The specified object name is not valid.")


@dataclass
class Preconditions:
    generation_match: int | None = None
    generation_not_match: int | None = None
    metageneration_match: int | None = None
    metageneration_not_match: int | None = None

    @classmethod
    def from_request(cls, req: ApiRequest, prefix: str = "if") -> Preconditions:
        # The client spells one of them `ifMetaGenerationNotMatch` on uploads; GCS takes both spellings.
        return cls(
            _int_arg(req, f"{prefix}GenerationMatch"),
            _int_arg(req, f"{prefix}GenerationNotMatch"),
            _int_arg(req, f"{prefix}MetagenerationMatch", f"{prefix}MetaGenerationMatch"),
            _int_arg(req, f"{prefix}MetagenerationNotMatch", f"{prefix}MetaGenerationNotMatch"),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preconditions:
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return {
            "generation_match": self.generation_match,
            "generation_not_match": self.generation_not_match,
            "metageneration_match": self.metageneration_match,
            "metageneration_not_match": self.metageneration_not_match,
        }

    def check(self, current: dict[str, Any] | None, *, read: bool) -> None:
        """Raise what GCS answers when a precondition fails on ``current`` (None: no live object)."""
        gen = int(current["generation"]) if current else None
        meta = int(current["metageneration"]) if current else None
        if self.generation_match is not None:
            if self.generation_match == 0 and current is not None:
                raise _condition_not_met()
            if self.generation_match != 0 and gen != self.generation_match:
                raise _condition_not_met()
        if self.metageneration_match is not None and meta != self.metageneration_match:
            raise _condition_not_met()
        if self.generation_not_match is not None and (gen is None or gen == self.generation_not_match):
            raise _not_modified() if read and gen is not None else _condition_not_met()
        if self.metageneration_not_match is not None and (meta is None or meta == self.metageneration_not_match):
            raise _not_modified() if read and meta is not None else _condition_not_met()


class _Hasher:
    """md5 and crc32c of a byte stream, computed as it is written."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.crc = google_crc32c.Checksum()
        self.size = 0

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        self.crc.update(data)
        self.size += len(data)

    @classmethod
    def of_file(cls, path: Path, length: int) -> _Hasher:
        h = cls()
        with path.open("rb") as f:
            remaining = length
            while remaining > 0:
                chunk = f.read(min(_READ_CHUNK, remaining))
                if not chunk:
                    break
                h.update(chunk)
                remaining -= len(chunk)
        return h

    @property
    def md5_b64(self) -> str:
        return _b64(self.md5.digest())

    @property
    def crc_b64(self) -> str:
        return _b64(self.crc.digest())


class _Digest(_Hasher):
    """Size and hashes already known (a copy of an existing object)."""

    def __init__(self, size: int, md5_b64: str, crc_b64: str) -> None:
        super().__init__()
        self.size = size
        self._md5 = md5_b64
        self._crc = crc_b64

    @classmethod
    def of(cls, obj: dict[str, Any]) -> _Digest:
        return cls(int(obj["size"]), obj["md5Hash"], obj["crc32c"])

    @property
    def md5_b64(self) -> str:
        return self._md5

    @property
    def crc_b64(self) -> str:
        return self._crc


def _verify_checksums(h: _Hasher, *, crc32c: str | None, md5: str | None) -> None:
    if crc32c is not None and crc32c != h.crc_b64:
        raise _bad(f'Provided CRC32C "{crc32c}" doesn\'t match calculated CRC32C "{h.crc_b64}".')
    if md5 is not None and md5 != h.md5_b64:
        raise _bad(f'Provided MD5 hash "{md5}" doesn\'t match calculated MD5 hash "{h.md5_b64}".')


def _goog_hash(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (header or "").split(","):
        key, sep, value = part.strip().partition("=")
        if sep and key in ("crc32c", "md5"):
            out[key] = value
    return out


class StorageApi(ApiModule):
    prefix = ""
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

    # --- bucket resources ----------------------------------------------------------------------------

    def _render_bucket(self, req: ApiRequest, bucket: dict[str, Any]) -> dict[str, Any]:
        return {**bucket, "selfLink": f"{self._host(req)}/storage/v1/b/{bucket['name']}"}

    def _normalize_bucket(
        self, bucket: dict[str, Any], previous: dict[str, Any] | None, requested: dict[str, Any], now: float
    ) -> dict[str, Any]:
        """Apply GCS's defaults and checks to a bucket's configurable fields. ``requested`` is the
        request body (what the caller asked to change), ``bucket`` the merged result."""
        storage_class = str(bucket.get("storageClass") or "STANDARD").upper()
        if storage_class not in _STORAGE_CLASSES:
            raise _bad(f"Invalid storage class: {bucket.get('storageClass')}")
        bucket["storageClass"] = storage_class

        labels = bucket.get("labels") or {}
        if len(labels) > 64:
            raise _bad("A bucket may have at most 64 labels.")
        for key, value in labels.items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(value)):
                raise _bad(f"Invalid label: {key}={value}")
        if "labels" in bucket and not labels:
            bucket.pop("labels")

        iam = dict(bucket.get("iamConfiguration") or {})
        asked = requested.get("iamConfiguration") or {}
        ubla = dict(asked.get("uniformBucketLevelAccess") or {})
        legacy = dict(asked.get("bucketPolicyOnly") or {})
        # `bucketPolicyOnly` is the old name; GCS keeps the two identical, the new one winning (clients
        # send back the whole block they read, so a stale `bucketPolicyOnly` must not undo a change).
        prev_iam = (previous or {}).get("iamConfiguration", {})
        prev_enabled = bool(prev_iam.get("uniformBucketLevelAccess", {}).get("enabled"))
        if "enabled" in ubla:
            enabled = bool(ubla["enabled"])
        elif "enabled" in legacy:
            enabled = bool(legacy["enabled"])
        else:
            enabled = prev_enabled
        state: dict[str, Any] = {"enabled": enabled}
        if enabled:
            prev_locked = prev_iam.get("uniformBucketLevelAccess", {}).get("lockedTime")
            state["lockedTime"] = prev_locked if prev_enabled and prev_locked else _ts(now + _UBLA_LOCK.total_seconds())
        elif prev_enabled:
            locked = prev_iam.get("uniformBucketLevelAccess", {}).get("lockedTime")
            if locked and _parse_ts(locked) <= now:
                raise _bad("Uniform bucket-level access can no longer be disabled: its lockedTime has passed.")
        pap = iam.get("publicAccessPrevention") or "inherited"
        if pap == "unspecified":
            pap = "inherited"
        if pap not in ("inherited", "enforced"):
            raise _bad(f"Invalid value for publicAccessPrevention: {pap}")
        bucket["iamConfiguration"] = {
            "bucketPolicyOnly": dict(state),
            "uniformBucketLevelAccess": dict(state),
            "publicAccessPrevention": pap,
        }

        soft = dict(bucket.get("softDeletePolicy") or {})
        seconds = int(soft.get("retentionDurationSeconds", _DEFAULT_SOFT_DELETE))
        if seconds != 0 and not _DEFAULT_SOFT_DELETE <= seconds <= _MAX_SOFT_DELETE:
            raise _bad("The soft delete retention duration must be 0 or between 7 and 90 days.")
        prev_soft = (previous or {}).get("softDeletePolicy", {})
        same = prev_soft.get("retentionDurationSeconds") == str(seconds)
        soft["retentionDurationSeconds"] = str(seconds)
        soft["effectiveTime"] = prev_soft["effectiveTime"] if same and "effectiveTime" in prev_soft else _ts(now)
        bucket["softDeletePolicy"] = soft
        return bucket

    def _check_bucket_preconditions(self, req: ApiRequest, bucket: dict[str, Any], *, read: bool) -> None:
        meta = int(bucket["metageneration"])
        match = _int_arg(req, "ifMetagenerationMatch")
        not_match = _int_arg(req, "ifMetagenerationNotMatch")
        if match is not None and meta != match:
            raise _condition_not_met()
        if not_match is not None and meta == not_match:
            raise _not_modified() if read else _condition_not_met()

    def _default_policy(self, project_id: str, ubla: bool) -> dict[str, Any]:
        bindings = [
            {
                "role": "roles/storage.legacyBucketOwner",
                "members": [f"projectEditor:{project_id}", f"projectOwner:{project_id}"],
            },
            {"role": "roles/storage.legacyBucketReader", "members": [f"projectViewer:{project_id}"]},
        ]
        if ubla:
            # With uniform access, the default object ACLs become these two bindings.
            bindings += [
                {
                    "role": "roles/storage.legacyObjectOwner",
                    "members": [f"projectEditor:{project_id}", f"projectOwner:{project_id}"],
                },
                {"role": "roles/storage.legacyObjectReader", "members": [f"projectViewer:{project_id}"]},
            ]
        return {"version": 1, "bindings": bindings}

    # --- buckets -------------------------------------------------------------------------------------

    @route("POST", "/storage/v1/b", name="buckets.insert")
    def insert_bucket(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "storage", "v1", "Bucket")
        project = self._project(req.args.get("project"))
        name = body.get("name")
        if not name:
            raise GcpError(400, "Required", "INVALID_ARGUMENT", reason="required")
        _validate_bucket_name(name)
        location = str(body.get("location") or "US").upper()
        if location in _MULTI_REGIONS:
            location_type = "multi-region"
        elif location in _DUAL_REGIONS or body.get("customPlacementConfig"):
            location_type = "dual-region"
        elif _REGION.match(location):
            location_type = "region"
        else:
            raise _bad("The specified location constraint is not valid.")
        now = time.time()
        number = project["name"].split("/")[1]
        bucket: dict[str, Any] = {
            k: v for k, v in body.items() if k in _BUCKET_MUTABLE | _BUCKET_CREATE_ONLY and v is not None
        }
        bucket = self._normalize_bucket(bucket, None, body, now)
        bucket.update(
            {
                "kind": "storage#bucket",
                "id": name,
                "name": name,
                "projectNumber": number,
                "generation": str(self._next_generation()),
                "metageneration": "1",
                "location": location,
                "locationType": location_type,
                "timeCreated": _ts(now),
                "updated": _ts(now),
                "etag": _bucket_etag(1),
            }
        )
        if location_type == "dual-region":
            bucket.setdefault("rpo", "DEFAULT")
        with self._lock:
            existing = self.world.store.get(BUCKET_KIND, name)
            if existing is not None:
                if existing["projectNumber"] == number:
                    message = "Your previous request to create the named bucket succeeded and you already own it."
                else:
                    message = (
                        "The requested bucket name is not available. The bucket namespace is shared by all users "
                        "of the system. Please select a different name and try again."
                    )
                raise GcpError(409, message, "ALREADY_EXISTS", reason="conflict")
            self.world.store.put(BUCKET_KIND, name, bucket)
            ubla = bucket["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"]
            self.world.iam.set(
                self.policy_resource(name), self._default_policy(project["projectId"], ubla), initial=True
            )
        if delay := self.world.control.delay("storage.bucket"):
            time.sleep(delay)
        return self._render_bucket(req, bucket)

    @route("GET", "/storage/v1/b", name="buckets.list")
    def list_buckets(self, req: ApiRequest) -> dict[str, Any]:
        project = self._project(req.args.get("project"))
        number = project["name"].split("/")[1]
        prefix = req.args.get("prefix", "")
        token = req.args.get("pageToken")
        after = _decode_token(token) if token else None
        limit = _max_results(req)
        items: list[dict[str, Any]] = []
        next_token = None
        for bucket in self.world.store.list(BUCKET_KIND, prefix):
            if bucket["projectNumber"] != number or (after is not None and bucket["name"] <= after):
                continue
            if len(items) >= limit:
                next_token = _encode_token(items[-1]["name"])
                break
            items.append(bucket)
        out: dict[str, Any] = {"kind": "storage#buckets"}
        if items:
            out["items"] = [self._render_bucket(req, b) for b in items]
        if next_token:
            out["nextPageToken"] = next_token
        return out

    @route("GET", "/storage/v1/b/{bucket}", name="buckets.get")
    def get_bucket(self, req: ApiRequest) -> dict[str, Any]:
        bucket = self._bucket(req["bucket"])
        self._check_bucket_preconditions(req, bucket, read=True)
        return self._render_bucket(req, bucket)

    def _write_bucket(self, req: ApiRequest, replace: bool) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "storage", "v1", "Bucket")
        with self._lock:
            current = self._bucket(req["bucket"])
            self._check_bucket_preconditions(req, current, read=False)
            changes = {k: v for k, v in body.items() if k in _BUCKET_MUTABLE}
            if replace:
                kept = {k: v for k, v in current.items() if k not in _BUCKET_MUTABLE}
                updated = {**kept, **{k: v for k, v in changes.items() if v is not None}}
            else:
                updated = _merge(current, changes)
            now = time.time()
            updated = self._normalize_bucket(updated, current, changes, now)
            meta = int(current["metageneration"]) + 1
            updated.update({"metageneration": str(meta), "updated": _ts(now), "etag": _bucket_etag(meta)})
            self.world.store.put(BUCKET_KIND, current["name"], updated)
        return self._render_bucket(req, updated)

    @route("PATCH", "/storage/v1/b/{bucket}", name="buckets.patch")
    def patch_bucket(self, req: ApiRequest) -> dict[str, Any]:
        return self._write_bucket(req, replace=False)

    @route("PUT", "/storage/v1/b/{bucket}", name="buckets.update")
    def update_bucket(self, req: ApiRequest) -> dict[str, Any]:
        return self._write_bucket(req, replace=True)

    @route("DELETE", "/storage/v1/b/{bucket}", name="buckets.delete")
    def delete_bucket(self, req: ApiRequest) -> Response:
        name = req["bucket"]
        with self._lock:
            bucket = self._bucket(name)
            self._check_bucket_preconditions(req, bucket, read=False)
            if self.world.store.names(OBJECT_KIND, f"{name}/"):
                raise GcpError(409, "The bucket you tried to delete is not empty.", "ALREADY_EXISTS", reason="conflict")
            self.world.store.delete(BUCKET_KIND, name)
            self.world.iam.delete(self.policy_resource(name))
            shutil.rmtree(self.root / name, ignore_errors=True)
        if delay := self.world.control.delay("storage.bucket"):
            time.sleep(delay)
        return Response(status=204)

    # --- bucket IAM ----------------------------------------------------------------------------------

    def _render_policy(self, bucket: str, policy: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "storage#policy",
            "resourceId": f"projects/_/buckets/{bucket}",
            "version": policy.get("version", 1),
            "etag": policy["etag"],
            "bindings": policy.get("bindings", []),
        }

    @route("GET", "/storage/v1/b/{bucket}/iam", name="buckets.getIamPolicy")
    def get_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        name = req["bucket"]
        self._bucket(name)
        return self._render_policy(name, self.world.iam.get(self.policy_resource(name)))

    @route("PUT", "/storage/v1/b/{bucket}/iam", name="buckets.setIamPolicy")
    def set_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "storage", "v1", "Policy")
        name = req["bucket"]
        bucket = self._bucket(name)
        bindings = body.get("bindings") or []
        for binding in bindings:
            role = binding.get("role", "")
            if not (role.startswith("roles/storage") or "/roles/" in role):
                raise _bad(f"Role {role} is not supported for this resource.")
        public = {m for b in bindings for m in b.get("members", [])} & {"allUsers", "allAuthenticatedUsers"}
        if public and bucket["iamConfiguration"]["publicAccessPrevention"] == "enforced":
            raise GcpError(
                412,
                "The member bindings allUsers and allAuthenticatedUsers are not allowed since public access "
                "prevention is enforced.",
                "FAILED_PRECONDITION",
                reason="conditionNotMet",
            )
        policy = {"bindings": bindings, "version": body.get("version", 1)}
        if body.get("etag"):
            policy["etag"] = body["etag"]
        stored = self.world.iam.set(
            self.policy_resource(name),
            policy,
            stale_etag_error=lambda: GcpError(
                412, "Precondition Failed", "FAILED_PRECONDITION", reason="conditionNotMet"
            ),
        )
        return self._render_policy(name, stored)

    @route("GET", "/storage/v1/b/{bucket}/iam/testPermissions", name="buckets.testIamPermissions")
    def test_iam_permissions(self, req: ApiRequest) -> dict[str, Any]:
        self._bucket(req["bucket"])
        permissions = req.args.getlist("permissions")
        if not permissions:
            raise _required("permissions")
        for permission in permissions:
            if not re.match(r"^storage\.[a-zA-Z]+\.[a-zA-Z]+$", permission):
                raise _bad(f"Permission '{permission}' is not valid.")
        # The emulator's caller owns every project, so it holds every storage permission it asks about.
        return {"kind": "storage#testIamPermissionsResponse", "permissions": permissions}

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
                now = _ts(time.time())
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
                    self._blob_path(bucket_name, int(current["generation"])).unlink(missing_ok=True)
                return obj
        finally:
            source.unlink(missing_ok=True)

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
                response = json_response(err.envelope(), 416)
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
        return self._download(req, req["bucket"], req["object"])

    # --- objects -------------------------------------------------------------------------------------

    @route("GET", "/storage/v1/b/{bucket}/o/{object=**}", name="objects.get")
    def get_object(self, req: ApiRequest) -> Any:
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
        token = req.args.get("pageToken")
        after = _decode_token(token) if token else None
        limit = _max_results(req)
        items: list[dict[str, Any]] = []
        prefixes: list[str] = []
        last = ""
        count = 0
        next_token = None
        # Keys sort by object name, so every name under one prefix is contiguous.
        for obj in self.world.store.list(OBJECT_KIND, f"{bucket}/{prefix}"):
            name = obj["name"]
            if (after is not None and name <= after) or name < start_offset or (end_offset and name >= end_offset):
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
            last, count = name, count + 1
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
                    "updated": _ts(time.time()),
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
            self._blob_path(bucket, int(current["generation"])).unlink(missing_ok=True)
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
