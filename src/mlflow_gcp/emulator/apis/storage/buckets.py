"""Buckets: insert, list, get, patch/update, delete, and the bucket IAM policy."""

from __future__ import annotations

import re
import shutil
import time
from typing import Any

from werkzeug.wrappers import Response

from ...core.errors import GcpError
from ...core.http import ApiRequest, route
from ...core.iam import PolicyMethods
from ...core.validation import validate_discovery
from .common import (
    _BUCKET_CREATE_ONLY,
    _BUCKET_MUTABLE,
    _DEFAULT_SOFT_DELETE,
    _DUAL_REGIONS,
    _LABEL_KEY,
    _LABEL_VALUE,
    _MAX_SOFT_DELETE,
    _MULTI_REGIONS,
    _REGION,
    _STORAGE_CLASSES,
    _UBLA_LOCK,
    BUCKET_KIND,
    OBJECT_KIND,
    _bad,
    _bucket_etag,
    _condition_not_met,
    _decode_token,
    _encode_token,
    _int_arg,
    _max_results,
    _merge,
    _not_modified,
    _parse_ts,
    _required,
    _ts,
    _validate_bucket_name,
)

#: Bucket IAM policies: a stale etag is 412 ``conditionNotMet``, as Cloud Storage answers it.
_IAM = PolicyMethods(
    "storage.",
    stale_etag_error=lambda: GcpError(412, "Precondition Failed", "FAILED_PRECONDITION", reason="conditionNotMet"),
    omit_empty=False,
)


class Buckets:
    """The bucket routes of :class:`StorageApi` (``/storage/v1/b...``)."""

    # --- bucket resources ----------------------------------------------------------------------------

    def _render_bucket(self, req: ApiRequest, bucket: dict[str, Any], default_projection: str) -> dict[str, Any]:
        """The bucket as GCS answers it. ``projection=full`` adds ``owner``, ``acl`` and ``defaultObjectAcl``
        (the project-team ACLs every bucket starts with, unless the client set its own); ``noAcl`` leaves
        them out. The default depends on the method: full for patch/update, noAcl for get/list and for an
        insert that sets no ACL (recorded: tests/golden/recordings/storage-bucket.log, whose PATCH answer
        carries the three and whose GETs do not)."""
        projection = req.args.get("projection") or default_projection
        if projection not in ("full", "noAcl"):
            raise _bad(f"Invalid value for projection: {projection}")
        out = {k: v for k, v in bucket.items() if k not in ("acl", "defaultObjectAcl", "owner")}
        host = self._host(req)
        out["selfLink"] = f"{host}/storage/v1/b/{bucket['name']}"
        if projection == "noAcl":
            return out
        name, number = bucket["name"], bucket["projectNumber"]
        out["owner"] = {"entity": f"project-owners-{number}"}
        if bucket["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"]:
            return out  # uniform bucket-level access: IAM only, no ACLs to show
        teams = (("owners", "OWNER"), ("editors", "OWNER"), ("viewers", "READER"))

        def team(entity_team: str) -> dict[str, str]:
            return {"projectNumber": number, "team": entity_team}

        out["acl"] = bucket.get("acl") or [
            {
                "kind": "storage#bucketAccessControl",
                "id": f"{name}/project-{t}-{number}",
                "selfLink": f"{host}/storage/v1/b/{name}/acl/project-{t}-{number}",
                "bucket": name,
                "entity": f"project-{t}-{number}",
                "role": role,
                "etag": bucket["etag"],
                "projectTeam": team(t),
            }
            for t, role in teams
        ]
        out["defaultObjectAcl"] = bucket.get("defaultObjectAcl") or [
            {
                "kind": "storage#objectAccessControl",
                "entity": f"project-{t}-{number}",
                "role": role,
                "etag": bucket["etag"],
                "projectTeam": team(t),
            }
            for t, role in teams
        ]
        return out

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
        if seconds == 0:
            # Soft delete off: no effectiveTime (recorded: tests/golden/recordings/storage-bucket.log).
            soft.pop("effectiveTime", None)
        else:
            soft["effectiveTime"] = prev_soft["effectiveTime"] if same and "effectiveTime" in prev_soft else _ts(now)
        bucket["softDeletePolicy"] = soft

        # A lifecycle without rules is no lifecycle (recorded: storage-bucket.log, storage-buckets-two.log).
        if "lifecycle" in bucket and not (bucket["lifecycle"] or {}).get("rule"):
            bucket.pop("lifecycle")
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
        now = self._now()
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
        if location_type in ("dual-region", "multi-region"):
            # Replication applies to multi- and dual-region buckets (recorded: storage-bucket.log, "US").
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
        sets_acl = "acl" in body or "defaultObjectAcl" in body
        return self._render_bucket(req, bucket, "full" if sets_acl else "noAcl")

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
            out["items"] = [self._render_bucket(req, b, "noAcl") for b in items]
        if next_token:
            out["nextPageToken"] = next_token
        return out

    @route("GET", "/storage/v1/b/{bucket}", name="buckets.get")
    def get_bucket(self, req: ApiRequest) -> dict[str, Any]:
        bucket = self._bucket(req["bucket"])
        self._check_bucket_preconditions(req, bucket, read=True)
        return self._render_bucket(req, bucket, "noAcl")

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
            now = self._now()
            updated = self._normalize_bucket(updated, current, changes, now)
            meta = int(current["metageneration"]) + 1
            updated.update({"metageneration": str(meta), "updated": _ts(now), "etag": _bucket_etag(meta)})
            self.world.store.put(BUCKET_KIND, current["name"], updated)
        return self._render_bucket(req, updated, "full")

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
            # Soft-deleted objects do not keep a bucket from being deleted (storage.v2 DeleteBucket: "succeeds if
            # the bucket only contains soft-deleted objects"); GCS then soft-deletes the bucket with them, which
            # the emulator does not model: they go with it (softdelete.py).
            if self.world.store.names(OBJECT_KIND, f"{name}/"):
                raise GcpError(409, "The bucket you tried to delete is not empty.", "ALREADY_EXISTS", reason="conflict")
            self._forget_soft_deleted(name)
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
        return self._render_policy(name, _IAM.get(self.world, self.policy_resource(name)))

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
        stored = _IAM.set(self.world, self.policy_resource(name), policy)
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
        # Every permission asked about is a storage one (checked above), so all of them are granted.
        return {"kind": "storage#testIamPermissionsResponse", **_IAM.test(permissions)}
