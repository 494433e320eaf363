"""What the Cloud Storage modules share: store kinds, the errors GCS answers with, name and label checks,
preconditions, and the CRC32C/MD5 hashing of object bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import google_crc32c

from ...core.errors import GcpError
from ...core.http import ApiRequest

BUCKET_KIND = "storage.bucket"
OBJECT_KIND = "storage.object"
#: Soft-deleted generations, keyed ``<bucket>/<object>#<generation>`` (softdelete.py).
SOFT_DELETED_KIND = "storage.object.softDeleted"
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


def _bool_arg(req: ApiRequest, name: str) -> bool | None:
    """A boolean query parameter. The Python client sends ``True``/``False`` (str() of a bool) and GCS takes
    them, so the case is ignored."""
    raw = req.args.get(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise _bad(f"Invalid value for {name}: {raw}")


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
