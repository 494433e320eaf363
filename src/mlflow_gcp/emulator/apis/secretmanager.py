"""Secret Manager v1: secrets, versions (add, access, disable, enable, destroy) and secret IAM policies.

Behaviour kept from GCP:

- Resource names in responses carry the project *number* (``projects/123/secrets/s/versions/2``), whatever
  form the caller used; the store is keyed by project id so both forms reach the same secret.
- A secret needs a replication policy; ids are ``[a-zA-Z0-9_-]{1,255}``; payloads are at most 64 KiB and a
  client-sent ``dataCrc32c`` is verified.
- ``latest`` is an alias of the most recently *created* version, whatever its state (the API reference says
  so, and users hit "Secret Version [.../versions/4] is in DESTROYED state." when accessing ``latest``).
- Accessing a DISABLED or DESTROYED version is 400 FAILED_PRECONDITION; destroying wipes the payload.
- Stale etags (secret, version, IAM policy) are 409 ABORTED.

Payloads are kept base64 in their own store kind (never inside the version resource) and never appear in
logs or error messages.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import google_crc32c
from google.cloud.secretmanager_v1.types import resources as smr
from google.cloud.secretmanager_v1.types import service as sms
from google.iam.v1 import iam_policy_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from ..core.errors import GcpError, aborted, failed_precondition, invalid, not_found
from ..core.http import ApiModule, ApiRequest, route
from ..core.iam import PolicyMethods
from ..core.paging import page
from ..core.validation import normalize, parse_proto, render

MAX_PAYLOAD_BYTES = 64 * 1024
_SECRET_ID = re.compile(r"^[a-zA-Z0-9_-]{1,255}$")
_LABEL_KEY = re.compile(r"^[\w-]{1,63}$")
_SECRET_NAME = re.compile(r"^projects/([^/]+)/secrets/([^/]+)(?:/versions/([^/]+))?$")
_MUTABLE_FIELDS = {
    "labels",
    "annotations",
    "topics",
    "expireTime",
    "ttl",
    "rotation",
    "versionAliases",
    "versionDestroyTtl",
}
_SECRET_FIELDS = {f.json_name for f in smr.Secret.pb().DESCRIPTOR.fields}
_BASIC_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
_MAX_PAGE = 25000
_IAM = PolicyMethods(
    "secretmanager.", version_message="Invalid requested_policy_version {requested}: must be 0, 1 or 3."
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _etag() -> str:
    # GCP's Secret Manager etags are quoted opaque strings, e.g. "\"16035bd4c0b8e5\"".
    return f'"{uuid.uuid4().hex[:14]}"'


def _expired(secret: dict[str, Any]) -> bool:
    if not secret.get("expireTime"):
        return False
    expire = timestamp_pb2.Timestamp()
    expire.FromJsonString(secret["expireTime"])
    return expire.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)


def _camel(path: str) -> str:
    head, *rest = path.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class SecretManagerApi(ApiModule):
    prefix = "/secretmanager"
    service = "secretmanager.googleapis.com"
    title = "Secret Manager API"

    SECRET_KIND = "secretmanager.secret"
    VERSION_KIND = "secretmanager.version"
    PAYLOAD_KIND = "secretmanager.payload"

    # --- names ----------------------------------------------------------------------------------------

    def _project(self, ref: str) -> tuple[str, str]:
        """(project id, project number) for a project id or number; 403 for an unknown project."""
        project = self.world.project(ref)
        return project["projectId"], project["name"].split("/")[1]

    def _parse(self, name: str) -> tuple[str, str, str, str | None]:
        """``projects/<id|number>/secrets/<s>[/versions/<v>]`` -> (project id, number, secret id, version)."""
        m = _SECRET_NAME.match(name)
        if not m:
            raise invalid(f"Invalid resource name: {name!r}; expected projects/*/secrets/*[/versions/*].")
        pid, number = self._project(m.group(1))
        return pid, number, m.group(2), m.group(3)

    @staticmethod
    def _key(pid: str, secret_id: str) -> str:
        return f"projects/{pid}/secrets/{secret_id}"

    def secret_policy_resource(self, secret: str) -> str:
        """The IAM store key of a secret, from its name with project id or number (a version name works too)."""
        pid, _, secret_id, _ = self._parse(secret)
        return self._key(pid, secret_id)

    # --- loading --------------------------------------------------------------------------------------

    def _load_secret(self, pid: str, number: str, secret_id: str) -> dict[str, Any]:
        key = self._key(pid, secret_id)
        secret = self.world.store.get(self.SECRET_KIND, key)
        if secret is not None and _expired(secret):
            # An expired secret is deleted by GCP at its expiry; the emulator does it on the next read.
            self._delete_secret(pid, secret_id)
            secret = None
        if secret is None:
            raise not_found(f"Secret [projects/{number}/secrets/{secret_id}]")
        return secret

    def _versions(self, pid: str, secret_id: str) -> list[dict[str, Any]]:
        """The secret's versions, newest first (the order GCP lists them in)."""
        prefix = self._key(pid, secret_id) + "/versions/"
        versions = self.world.store.list(self.VERSION_KIND, prefix)
        return sorted(versions, key=lambda v: -int(v["name"].rsplit("/", 1)[1]))

    def _load_version(self, pid: str, number: str, secret_id: str, version: str) -> dict[str, Any]:
        """A version by number, ``latest`` (the most recently created one) or an alias."""
        secret = self._load_secret(pid, number, secret_id)
        if version == "latest":
            versions = self._versions(pid, secret_id)
            if not versions:
                raise GcpError(
                    404, f"Secret [projects/{number}/secrets/{secret_id}] not found or has no versions.", "NOT_FOUND"
                )
            return versions[0]
        if not version.isdigit():
            alias = secret.get("versionAliases", {}).get(version)
            if alias is None:
                raise not_found(f"Secret Version [projects/{number}/secrets/{secret_id}/versions/{version}]")
            version = str(alias)
        found = self.world.store.get(self.VERSION_KIND, f"{self._key(pid, secret_id)}/versions/{int(version)}")
        if found is None:
            raise not_found(f"Secret Version [projects/{number}/secrets/{secret_id}/versions/{version}]")
        return found

    @staticmethod
    def _version_key(version: dict[str, Any], pid: str) -> str:
        # Stored names carry the project number; store keys carry the project id.
        _, _, rest = version["name"].partition("/secrets/")
        return f"projects/{pid}/secrets/{rest}"

    @staticmethod
    def _check_accessible(version: dict[str, Any]) -> None:
        state = version.get("state")
        if state != "ENABLED":
            raise failed_precondition(f"Secret Version [{version['name']}] is in {state} state.")

    def _resolve(self, name: str) -> tuple[str, dict[str, Any]]:
        pid, number, secret_id, version = self._parse(name)
        if version is None:
            raise invalid(f"Invalid resource name: {name!r}; expected projects/*/secrets/*/versions/*.")
        return pid, self._load_version(pid, number, secret_id, version)

    # --- cross-module API -----------------------------------------------------------------------------

    def resolve_version(self, name: str) -> str:
        """Canonical full name (project number, concrete version number) of a version name that may use the
        project id and ``latest``; NOT_FOUND if the secret or version does not exist."""
        return self._resolve(name)[1]["name"]

    def access(self, name: str) -> bytes:
        """A version's payload, with the API's resolution and state rules (FAILED_PRECONDITION unless ENABLED)."""
        pid, version = self._resolve(name)
        self._check_accessible(version)
        payload = self.world.store.get(self.PAYLOAD_KIND, self._version_key(version, pid))
        if payload is None:  # an ENABLED version always has one; guard against a hand-edited store
            raise GcpError(500, "Internal error encountered.", "INTERNAL")
        return base64.b64decode(payload["data"])

    def can_access(self, member: str, secret: str) -> bool:
        """Does ``member`` hold roles/secretmanager.secretAccessor (or a role including it) on the secret or
        its project, counting only propagated grants?"""
        key = self.secret_policy_resource(secret)
        pid = key.split("/")[1]
        return self.world.iam.has_role([key, f"projects/{pid}"], member, "roles/secretmanager.secretAccessor")

    # --- secrets --------------------------------------------------------------------------------------

    @route("POST", "/v1/projects/{project}/secrets", name="secrets.create")
    def create_secret(self, req: ApiRequest) -> dict[str, Any]:
        pid, number = self._project(req["project"])
        body = normalize(req.json(), smr.Secret, "secret")
        secret_id = req.args.get("secretId", "")
        if not _SECRET_ID.match(secret_id):
            raise invalid(
                f"Secret id {secret_id!r} is invalid: it must be 1 to 255 characters of letters, numerals, "
                "hyphens and underscores."
            )
        replication = body.get("replication") or {}
        if "automatic" not in replication and "userManaged" not in replication:
            raise invalid("Secret.replication.replication must be set: choose automatic or user-managed replication.")
        if "userManaged" in replication:
            replicas = replication["userManaged"].get("replicas", [])
            if not replicas or any(not r.get("location") for r in replicas):
                raise invalid("Secret.replication.user_managed.replicas must name at least one location.")
        self._check_labels(body)
        now = _now()
        secret: dict[str, Any] = {
            "name": f"projects/{number}/secrets/{secret_id}",
            "replication": replication,
            "createTime": now,
            "etag": _etag(),
        }
        for field in _MUTABLE_FIELDS - {"ttl"}:
            if field in body:
                secret[field] = body[field]
        if "ttl" in body:
            secret["expireTime"] = self._expire_from_ttl(body["ttl"])
        stored = self.world.store.create(
            self.SECRET_KIND,
            self._key(pid, secret_id),
            secret,
            what=f"Secret [projects/{number}/secrets/{secret_id}]",
        )
        return render(stored, smr.Secret, req.enum_int)

    @staticmethod
    def _check_labels(body: dict[str, Any]) -> None:
        for key in body.get("labels", {}):
            if not _LABEL_KEY.match(key) or key != key.lower() or not key[0].isalpha():
                raise invalid(
                    f"Label key {key!r} is invalid: keys start with a lowercase letter and contain only lowercase "
                    "letters, numerals, hyphens and underscores (at most 63 characters)."
                )

    @staticmethod
    def _expire_from_ttl(ttl: str) -> str:
        duration = duration_pb2.Duration()
        duration.FromJsonString(ttl)
        expire = timestamp_pb2.Timestamp()
        expire.FromDatetime(datetime.now(UTC) + duration.ToTimedelta())
        return expire.ToJsonString()

    @route("GET", "/v1/projects/{project}/secrets/{secret}", name="secrets.get")
    def get_secret(self, req: ApiRequest) -> dict[str, Any]:
        pid, number = self._project(req["project"])
        return render(self._load_secret(pid, number, req["secret"]), smr.Secret, req.enum_int)

    @route("GET", "/v1/projects/{project}/secrets", name="secrets.list")
    def list_secrets(self, req: ApiRequest) -> dict[str, Any]:
        pid, _ = self._project(req["project"])
        secrets = []
        for s in self.world.store.list(self.SECRET_KIND, f"projects/{pid}/secrets/"):
            if _expired(s):
                self._delete_secret(pid, s["name"].rsplit("/", 1)[1])
            else:
                secrets.append(s)
        flt = req.args.get("filter", "")
        if flt:
            secrets = [s for s in secrets if self._matches(s, flt)]
        chunk, token = page(secrets, req.args, default=_MAX_PAGE, maximum=_MAX_PAGE, opaque=True)
        out: dict[str, Any] = {"secrets": [render(s, smr.Secret, req.enum_int) for s in chunk]}
        if token:
            out["nextPageToken"] = token
        out["totalSize"] = len(secrets)
        return out

    @staticmethod
    def _matches(secret: dict[str, Any], flt: str) -> bool:
        """The list filter's common terms, ANDed: ``name:x``, ``labels.k=v``, ``labels.k:*``."""
        for term in flt.split():
            if term.upper() == "AND":
                continue
            m = re.match(r"^([\w.-]+)\s*([:=])\s*\"?([^\"]*)\"?$", term)
            if not m:
                raise invalid(f"Invalid filter: {flt!r}.")
            field, op, value = m.groups()
            if field == "name":
                actual: str | None = secret["name"].rsplit("/", 1)[1]
            elif field.startswith("labels."):
                actual = secret.get("labels", {}).get(field[len("labels.") :])
            else:
                raise invalid(f"Invalid filter: unsupported field {field!r}.")
            if actual is None:
                return False
            if op == ":" and value not in ("*", "") and value not in actual:
                return False
            if op == "=" and actual != value:
                return False
        return True

    @route("PATCH", "/v1/projects/{project}/secrets/{secret}", name="secrets.patch")
    def update_secret(self, req: ApiRequest) -> dict[str, Any]:
        pid, number = self._project(req["project"])
        body = normalize(req.json(), smr.Secret, "secret")
        mask = [_camel(p.strip()) for p in req.args.get("updateMask", "").split(",") if p.strip()]
        if not mask:
            raise invalid("update_mask must be specified.")
        for path in mask:
            top = path.split(".")[0]
            if top == "replication":
                raise invalid("The replication policy of a secret cannot be updated.")
            if top not in _MUTABLE_FIELDS:
                raise invalid(
                    f"Invalid update_mask path {path!r}."
                    if top not in _SECRET_FIELDS
                    else f"Field {path!r} cannot be updated."
                )
        self._check_labels(body)
        with self.world.store.lock:
            secret = self._load_secret(pid, number, req["secret"])
            if body.get("etag") and body["etag"] != secret["etag"]:
                raise aborted("The etag provided in the request does not match the secret's current etag.")
            for path in mask:
                top = path.split(".")[0]
                if top == "ttl":
                    secret.pop("expireTime", None)
                    if "ttl" in body:
                        secret["expireTime"] = self._expire_from_ttl(body["ttl"])
                elif top in body:
                    secret[top] = body[top]
                else:
                    secret.pop(top, None)
            secret["etag"] = _etag()
            self.world.store.put(self.SECRET_KIND, self._key(pid, req["secret"]), secret)
        return render(secret, smr.Secret, req.enum_int)

    @route("DELETE", "/v1/projects/{project}/secrets/{secret}", name="secrets.delete")
    def delete_secret(self, req: ApiRequest) -> dict[str, Any]:
        pid, number = self._project(req["project"])
        with self.world.store.lock:
            secret = self._load_secret(pid, number, req["secret"])
            etag = req.args.get("etag")
            if etag and etag != secret["etag"]:
                raise aborted("The etag provided in the request does not match the secret's current etag.")
            self._delete_secret(pid, req["secret"])
        return {}

    def _delete_secret(self, pid: str, secret_id: str) -> None:
        key = self._key(pid, secret_id)
        store = self.world.store
        with store.lock:
            for name in store.names(self.VERSION_KIND, key + "/versions/"):
                store.delete(self.VERSION_KIND, name)
                store.delete(self.PAYLOAD_KIND, name)
            store.delete(self.SECRET_KIND, key)
            self.world.iam.delete(key)

    # --- secret IAM policy ----------------------------------------------------------------------------

    @route("GET", "/v1/projects/{project}/secrets/{secret}:getIamPolicy", name="secrets.getIamPolicy")
    def get_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        pid, number = self._project(req["project"])
        _IAM.check_version(req.args)
        self._load_secret(pid, number, req["secret"])
        return _IAM.get(self.world, self._key(pid, req["secret"]))

    @route("POST", "/v1/projects/{project}/secrets/{secret}:setIamPolicy", name="secrets.setIamPolicy")
    def set_iam_policy(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        parse_proto(body, iam_policy_pb2.SetIamPolicyRequest)
        pid, number = self._project(req["project"])
        self._load_secret(pid, number, req["secret"])
        policy = body.get("policy", {})
        for binding in policy.get("bindings", []):
            role = binding.get("role", "")
            if role.startswith("roles/") and not (role in _BASIC_ROLES or role.startswith("roles/secretmanager.")):
                raise invalid(f"Role {role} is not supported for this resource.")
        return _IAM.set(self.world, self._key(pid, req["secret"]), policy)

    @route(
        "POST",
        "/v1/projects/{project}/secrets/{secret}:testIamPermissions",
        name="secrets.testIamPermissions",
        mutating=False,
    )
    def test_iam_permissions(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        parse_proto(body, iam_policy_pb2.TestIamPermissionsRequest)
        pid, number = self._project(req["project"])
        self._load_secret(pid, number, req["secret"])
        return _IAM.test(body.get("permissions", []))

    # --- versions -------------------------------------------------------------------------------------

    @route("POST", "/v1/projects/{project}/secrets/{secret}:addVersion", name="versions.add")
    def add_version(self, req: ApiRequest) -> dict[str, Any]:
        msg = parse_proto(req.json(), sms.AddSecretVersionRequest)
        pid, number = self._project(req["project"])
        secret_id = req["secret"]
        if not msg.HasField("payload"):  # type: ignore[attr-defined]
            raise invalid("AddSecretVersionRequest.payload is required.")
        payload = msg.payload  # type: ignore[attr-defined]
        data: bytes = payload.data
        if len(data) > MAX_PAYLOAD_BYTES:
            raise invalid(
                f"Secret payload is {len(data)} bytes; a secret version can hold at most {MAX_PAYLOAD_BYTES} bytes."
            )
        crc = google_crc32c.value(data)
        client_checksum = payload.HasField("data_crc32c")
        if client_checksum and payload.data_crc32c != crc:
            raise invalid("Checksum mismatch: data_crc32c does not match the CRC32C of the payload data.")
        store = self.world.store
        with store.lock:
            secret = self._load_secret(pid, number, secret_id)
            existing = self._versions(pid, secret_id)
            n = int(existing[0]["name"].rsplit("/", 1)[1]) + 1 if existing else 1
            replication = secret.get("replication", {})
            if "userManaged" in replication:
                status: dict[str, Any] = {
                    "userManaged": {
                        "replicas": [{"location": r["location"]} for r in replication["userManaged"]["replicas"]]
                    }
                }
            else:
                status = {"automatic": {}}
            version: dict[str, Any] = {
                "name": f"projects/{number}/secrets/{secret_id}/versions/{n}",
                "createTime": _now(),
                "state": "ENABLED",
                "etag": _etag(),
                "replicationStatus": status,
                "clientSpecifiedPayloadChecksum": client_checksum,
            }
            key = f"{self._key(pid, secret_id)}/versions/{n}"
            store.put(self.PAYLOAD_KIND, key, {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc)})
            store.put(self.VERSION_KIND, key, version)
        return render(version, smr.SecretVersion, req.enum_int)

    @route("GET", "/v1/projects/{project}/secrets/{secret}/versions/{version}", name="versions.get")
    def get_version(self, req: ApiRequest) -> dict[str, Any]:
        pid, number = self._project(req["project"])
        version = self._load_version(pid, number, req["secret"], req["version"])
        return render(version, smr.SecretVersion, req.enum_int)

    @route("GET", "/v1/projects/{project}/secrets/{secret}/versions", name="versions.list")
    def list_versions(self, req: ApiRequest) -> dict[str, Any]:
        pid, number = self._project(req["project"])
        self._load_secret(pid, number, req["secret"])
        versions = self._versions(pid, req["secret"])
        flt = req.args.get("filter", "")
        if flt:
            m = re.match(r"^state\s*[:=]\s*(ENABLED|DISABLED|DESTROYED)$", flt.strip())
            if not m:
                raise invalid(f"Invalid filter: {flt!r}.")
            versions = [v for v in versions if v["state"] == m.group(1)]
        chunk, token = page(versions, req.args, default=_MAX_PAGE, maximum=_MAX_PAGE, opaque=True)
        out: dict[str, Any] = {"versions": [render(v, smr.SecretVersion, req.enum_int) for v in chunk]}
        if token:
            out["nextPageToken"] = token
        out["totalSize"] = len(versions)
        return out

    @route("GET", "/v1/projects/{project}/secrets/{secret}/versions/{version}:access", name="versions.access")
    def access_version(self, req: ApiRequest) -> dict[str, Any]:
        pid, number = self._project(req["project"])
        version = self._load_version(pid, number, req["secret"], req["version"])
        self._check_accessible(version)
        payload = self.world.store.get(self.PAYLOAD_KIND, self._version_key(version, pid))
        if payload is None:
            raise GcpError(500, "Internal error encountered.", "INTERNAL")
        return render({"name": version["name"], "payload": payload}, sms.AccessSecretVersionResponse, req.enum_int)

    def _transition(self, req: ApiRequest, request_cls: Any, state: str) -> dict[str, Any]:
        body = req.json()
        parse_proto(body, request_cls)
        pid, number = self._project(req["project"])
        store = self.world.store
        with store.lock:
            version = self._load_version(pid, number, req["secret"], req["version"])
            if body.get("etag") and body["etag"] != version["etag"]:
                raise aborted("The etag provided in the request does not match the secret version's current etag.")
            if version["state"] == "DESTROYED":
                raise failed_precondition(f"Secret Version [{version['name']}] is in DESTROYED state.")
            key = self._version_key(version, pid)
            if version["state"] != state:
                version["state"] = state
                version["etag"] = _etag()
                if state == "DESTROYED":
                    version["destroyTime"] = _now()
                    # The material is gone for good, from memory and from the store file.
                    store.delete(self.PAYLOAD_KIND, key)
                store.put(self.VERSION_KIND, key, version)
        return render(version, smr.SecretVersion, req.enum_int)

    @route("POST", "/v1/projects/{project}/secrets/{secret}/versions/{version}:disable", name="versions.disable")
    def disable_version(self, req: ApiRequest) -> dict[str, Any]:
        return self._transition(req, sms.DisableSecretVersionRequest, "DISABLED")

    @route("POST", "/v1/projects/{project}/secrets/{secret}/versions/{version}:enable", name="versions.enable")
    def enable_version(self, req: ApiRequest) -> dict[str, Any]:
        return self._transition(req, sms.EnableSecretVersionRequest, "ENABLED")

    @route("POST", "/v1/projects/{project}/secrets/{secret}/versions/{version}:destroy", name="versions.destroy")
    def destroy_version(self, req: ApiRequest) -> dict[str, Any]:
        return self._transition(req, sms.DestroySecretVersionRequest, "DESTROYED")


__all__ = ["MAX_PAYLOAD_BYTES", "SecretManagerApi"]
