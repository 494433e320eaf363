"""Cloud Storage through google-cloud-storage (and MLflow's GCS artifact repository) against the emulator."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import uuid
from pathlib import Path

import google_crc32c
import pytest
import requests
from google.api_core import exceptions
from google.cloud import storage


def _name(prefix: str = "b") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _crc(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture
def gcs(clients, project) -> storage.Client:
    return clients.storage(project)


@pytest.fixture
def bucket(gcs) -> storage.Bucket:
    return gcs.create_bucket(_name(), location="us-central1")


# --- buckets ---------------------------------------------------------------------------------------


def test_bucket_insert_keeps_the_whole_configuration(gcs, project):
    b = gcs.bucket(_name())
    b.iam_configuration.uniform_bucket_level_access_enabled = True
    b.iam_configuration.public_access_prevention = "enforced"
    b.labels = {"app": "mlflow", "env": "test"}
    b.versioning_enabled = True
    b.add_lifecycle_delete_rule(age=30)
    b.soft_delete_policy.retention_duration_seconds = 0
    gcs.create_bucket(b, location="europe-west4")

    got = gcs.get_bucket(b.name)
    assert got.location == "EUROPE-WEST4"
    assert got.location_type == "region"
    assert got.storage_class == "STANDARD"
    assert got.labels == {"app": "mlflow", "env": "test"}
    assert got.iam_configuration.uniform_bucket_level_access_enabled is True
    assert got.iam_configuration.uniform_bucket_level_access_locked_time is not None
    assert got.iam_configuration.public_access_prevention == "enforced"
    assert got.versioning_enabled is True
    assert [r["action"]["type"] for r in got.lifecycle_rules] == ["Delete"]
    assert got.soft_delete_policy.retention_duration_seconds == 0
    assert got.metageneration == 1
    assert str(got.project_number) == gcs.get_bucket(b.name)._properties["projectNumber"]


def test_bucket_defaults(gcs):
    got = gcs.create_bucket(_name())
    assert got.location == "US" and got.location_type == "multi-region"
    assert got.iam_configuration.uniform_bucket_level_access_enabled is False
    assert got.iam_configuration.public_access_prevention == "inherited"
    assert got.soft_delete_policy.retention_duration_seconds == 7 * 24 * 3600


def test_bucket_answers_follow_the_recorded_shapes(emulator, gcs, project):
    # recorded: tests/golden/recordings/storage-bucket.log
    name = _name()
    base = f"{emulator.base_url}/storage/v1/b"
    body = {"name": name, "lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 7}}]}}
    created = requests.post(base, params={"project": project}, json=body, timeout=5).json()
    assert created["rpo"] == "DEFAULT" and created["id"] == name  # a multi-region bucket; id is the name
    assert not {"acl", "defaultObjectAcl", "owner"} & created.keys()  # insert defaults to projection=noAcl
    patch = {"lifecycle": {"rule": []}, "softDeletePolicy": {"retentionDurationSeconds": "0"}}
    patched = requests.patch(f"{base}/{name}", json=patch, timeout=5).json()
    assert "lifecycle" not in patched and "effectiveTime" not in patched["softDeletePolicy"]
    number = patched["projectNumber"]
    # patch defaults to projection=full: the project-team ACLs every bucket starts with.
    assert patched["owner"] == {"entity": f"project-owners-{number}"}
    assert [(a["entity"], a["role"]) for a in patched["acl"]] == [
        (f"project-owners-{number}", "OWNER"),
        (f"project-editors-{number}", "OWNER"),
        (f"project-viewers-{number}", "READER"),
    ]
    assert {a["kind"] for a in patched["defaultObjectAcl"]} == {"storage#objectAccessControl"}
    got = requests.get(f"{base}/{name}", timeout=5).json()
    assert not {"acl", "defaultObjectAcl", "owner"} & got.keys()
    full = requests.get(f"{base}/{name}", params={"projection": "full"}, timeout=5).json()
    assert len(full["acl"]) == 3
    assert requests.get(f"{base}/{name}", params={"projection": "most"}, timeout=5).status_code == 400
    assert "rpo" not in gcs.create_bucket(_name(), location="us-central1")._properties  # regional: no rpo


def test_bucket_patch_bumps_metageneration_and_honours_preconditions(gcs, bucket):
    bucket.labels = {"a": "1", "b": "2"}
    bucket.patch()
    assert bucket.metageneration == 2
    bucket.labels = {"a": "1"}  # the client sends b=null, which removes it
    bucket.patch(if_metageneration_match=2)
    assert gcs.get_bucket(bucket.name).labels == {"a": "1"}
    assert bucket.metageneration == 3
    bucket.labels = {"c": "3"}
    with pytest.raises(exceptions.PreconditionFailed, match="pre-conditions you specified did not hold"):
        bucket.patch(if_metageneration_match=2)
    with pytest.raises(exceptions.PreconditionFailed):
        gcs.get_bucket(bucket.name, if_metageneration_match=1)
    with pytest.raises(exceptions.NotModified):
        gcs.get_bucket(bucket.name, if_metageneration_not_match=3)


def test_bucket_ubla_and_pap_can_be_changed_by_patch(gcs, bucket):
    bucket.reload()
    bucket.iam_configuration.uniform_bucket_level_access_enabled = True
    bucket.iam_configuration.public_access_prevention = "enforced"
    bucket.patch()
    got = gcs.get_bucket(bucket.name)
    assert got.iam_configuration.uniform_bucket_level_access_enabled is True
    assert got.iam_configuration.public_access_prevention == "enforced"
    got.iam_configuration.uniform_bucket_level_access_enabled = False
    got.patch()
    assert gcs.get_bucket(bucket.name).iam_configuration.uniform_bucket_level_access_enabled is False


def test_bucket_names_are_global(clients, gcs, admin):
    name = _name()
    gcs.create_bucket(name)
    with pytest.raises(exceptions.Conflict, match="you already own it"):
        gcs.create_bucket(name)
    other = f"p-{uuid.uuid4().hex[:10]}"
    admin.add_project(other)
    with pytest.raises(exceptions.Conflict, match="bucket name is not available"):
        clients.storage(other).create_bucket(name)


@pytest.mark.parametrize(
    "name", ["ab", "Upper-case", "has space", "x" * 64, "goog-prefixed", "my-google", "a..b", "192.168.0.1"]
)
def test_invalid_bucket_names_are_refused(gcs, name):
    with pytest.raises(exceptions.BadRequest, match="Invalid bucket name"):
        gcs.create_bucket(name)


@pytest.mark.parametrize("name", ["-starts-with-dash", "ends-with-dash-", "_underscore"])
def test_invalid_bucket_names_are_refused_on_the_wire(emulator, project, name):
    # The client refuses these itself; the server must too.
    r = requests.post(f"{emulator.base_url}/storage/v1/b", params={"project": project}, json={"name": name}, timeout=10)
    assert r.status_code == 400 and "Invalid bucket name" in r.json()["error"]["message"]


def test_invalid_location_is_refused(gcs):
    with pytest.raises(exceptions.BadRequest, match="location constraint is not valid"):
        gcs.create_bucket(_name(), location="middle-earth")


def test_unknown_project_is_not_found(clients):
    with pytest.raises(exceptions.NotFound, match="project was not found"):
        clients.storage("no-such-project-123").create_bucket(_name())


def test_list_buckets_is_per_project(clients, gcs, admin):
    mine = {gcs.create_bucket(_name()).name for _ in range(3)}
    other = f"p-{uuid.uuid4().hex[:10]}"
    admin.add_project(other)
    theirs = clients.storage(other).create_bucket(_name()).name
    listed = [b.name for b in gcs.list_buckets(page_size=2)]
    assert set(listed) == mine and theirs not in listed
    assert listed == sorted(listed)


def test_delete_bucket(gcs, bucket):
    bucket.blob("x").upload_from_string(b"x")
    with pytest.raises(exceptions.Conflict, match="not empty"):
        bucket.delete()
    bucket.blob("x").delete()
    bucket.delete()
    with pytest.raises(exceptions.NotFound, match="bucket does not exist"):
        gcs.get_bucket(bucket.name)
    with pytest.raises(exceptions.NotFound):
        bucket.delete()
    assert not bucket.exists()


def test_unknown_body_field_is_rejected(emulator, project):
    r = requests.post(
        f"{emulator.base_url}/storage/v1/b",
        params={"project": project},
        json={"name": _name(), "bogus": 1},
        timeout=10,
    )
    assert r.status_code == 400
    assert 'Unknown name "bogus"' in r.json()["error"]["message"]
    r = requests.post(
        f"{emulator.base_url}/storage/v1/b",
        params={"project": project},
        json={"name": _name(), "iamConfiguration": {"uniformBucketLevelAccess": {"enabeld": True}}},
        timeout=10,
    )
    assert r.status_code == 400 and "enabeld" in r.json()["error"]["message"]


# --- bucket IAM ------------------------------------------------------------------------------------


def test_bucket_policy_etag_guards_concurrent_writers(bucket):
    first = bucket.get_iam_policy(requested_policy_version=3)
    second = bucket.get_iam_policy(requested_policy_version=3)
    assert first.etag == second.etag
    assert "roles/storage.legacyBucketOwner" in first
    first.bindings.append({"role": "roles/storage.objectViewer", "members": {"user:alice@example.com"}})
    updated = bucket.set_iam_policy(first)
    assert updated.etag != first.etag
    second.bindings.append({"role": "roles/storage.objectAdmin", "members": {"user:bob@example.com"}})
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.set_iam_policy(second)
    current = bucket.get_iam_policy()
    assert "user:alice@example.com" in current["roles/storage.objectViewer"]
    assert all(b["role"] != "roles/storage.objectAdmin" for b in current.bindings)


def test_public_access_prevention_refuses_all_users(gcs):
    b = gcs.bucket(_name())
    b.iam_configuration.public_access_prevention = "enforced"
    gcs.create_bucket(b)
    policy = b.get_iam_policy()
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {"allUsers"}})
    with pytest.raises(exceptions.PreconditionFailed, match="public access prevention is enforced"):
        b.set_iam_policy(policy)

    open_bucket = gcs.create_bucket(_name())
    policy = open_bucket.get_iam_policy()
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {"allUsers"}})
    assert "allUsers" in open_bucket.set_iam_policy(policy)["roles/storage.objectViewer"]


def test_basic_roles_are_not_bucket_roles(bucket):
    policy = bucket.get_iam_policy()
    policy.bindings.append({"role": "roles/owner", "members": {"user:alice@example.com"}})
    with pytest.raises(exceptions.BadRequest, match="not supported for this resource"):
        bucket.set_iam_policy(policy)


def test_test_iam_permissions(bucket):
    perms = ["storage.objects.get", "storage.buckets.update"]
    assert bucket.test_iam_permissions(perms) == perms


# --- uploads and downloads -------------------------------------------------------------------------


def test_multipart_upload_round_trip(bucket):
    data = b"small payload \x00\xff" * 10
    blob = bucket.blob("dir/with spaces & symbols?#.txt")
    blob.metadata = {"owner": "tests"}
    blob.upload_from_string(data, content_type="text/plain")
    got = bucket.get_blob("dir/with spaces & symbols?#.txt")
    assert got.size == len(data)
    assert got.content_type == "text/plain"
    assert got.md5_hash == _md5(data) and got.crc32c == _crc(data)
    assert got.metadata == {"owner": "tests"}
    assert got.generation == blob.generation and got.metageneration == 1
    assert got.download_as_bytes() == data


def test_resumable_upload_in_chunks(bucket, admin):
    chunk = 256 * 1024
    data = os.urandom(3 * chunk + 1234)
    start = len(admin.requests())
    blob = bucket.blob("resumable.bin", chunk_size=chunk)
    # A stream of unknown size goes resumable: chunks say `bytes a-b/*` until the short last one.
    blob.upload_from_file(io.BytesIO(data), content_type="application/x-test")
    routes = [e["route"] for e in admin.requests(start)]
    assert routes.count("objects.insert") == 1  # the session start
    assert routes.count("objects.insert.chunk") == 4
    statuses = [e["status"] for e in admin.requests(start) if e["route"] == "objects.insert.chunk"]
    assert statuses == [308, 308, 308, 200]
    got = bucket.get_blob("resumable.bin")
    assert got.size == len(data) and got.crc32c == _crc(data) and got.content_type == "application/x-test"
    assert got.download_as_bytes() == data


def test_resumable_session_answers_status_queries(emulator, bucket):
    url = f"{emulator.base_url}/upload/storage/v1/b/{bucket.name}/o"
    r = requests.post(url, params={"uploadType": "resumable", "name": "manual"}, json={}, timeout=10)
    assert r.status_code == 200
    session = r.headers["Location"]
    status = requests.put(session, headers={"Content-Range": "bytes */*"}, timeout=10)
    assert status.status_code == 308 and "Range" not in status.headers
    part = os.urandom(256 * 1024)
    r = requests.put(session, data=part, headers={"Content-Range": f"bytes 0-{len(part) - 1}/*"}, timeout=10)
    assert r.status_code == 308 and r.headers["Range"] == f"bytes=0-{len(part) - 1}"
    r = requests.put(session, data=b"tail", headers={"Content-Range": f"bytes {len(part) + 10}-{len(part) + 13}/*"})
    assert r.status_code == 400  # a gap after what was stored
    r = requests.put(
        session, data=b"tail", headers={"Content-Range": f"bytes {len(part)}-{len(part) + 3}/{len(part) + 4}"}
    )
    assert r.status_code == 200 and r.json()["size"] == str(len(part) + 4)
    assert bucket.blob("manual").download_as_bytes() == part + b"tail"


def test_media_upload_round_trip(emulator, bucket):
    # google-cloud-storage only sends multipart and resumable uploads, so media is driven on the wire.
    data = os.urandom(5000)
    url = f"{emulator.base_url}/upload/storage/v1/b/{bucket.name}/o"
    r = requests.post(
        url,
        params={"uploadType": "media", "name": "media/obj.bin"},
        data=data,
        headers={"Content-Type": "application/x-media", "X-Goog-Hash": f"crc32c={_crc(data)},md5={_md5(data)}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["md5Hash"] == _md5(data)
    got = bucket.get_blob("media/obj.bin")
    assert got.content_type == "application/x-media"
    assert got.download_as_bytes() == data
    bad = requests.post(
        url,
        params={"uploadType": "media", "name": "media/bad.bin"},
        data=data,
        headers={"X-Goog-Hash": f"md5={_md5(b'other')}"},
        timeout=10,
    )
    assert bad.status_code == 400 and "doesn't match calculated MD5" in bad.json()["error"]["message"]
    assert bucket.get_blob("media/bad.bin") is None


def test_mismatched_checksum_is_refused(bucket):
    blob = bucket.blob("corrupt")
    blob.crc32c = _crc(b"something else")
    with pytest.raises(exceptions.BadRequest, match="doesn't match calculated CRC32C"):
        blob.upload_from_string(b"the real bytes", checksum=None)
    blob = bucket.blob("corrupt")
    blob.md5_hash = _md5(b"something else")
    with pytest.raises(exceptions.BadRequest, match="doesn't match calculated MD5"):
        blob.upload_from_string(b"the real bytes", checksum=None)
    assert bucket.get_blob("corrupt") is None


def test_range_downloads(emulator, bucket):
    data = bytes(range(256)) * 40
    bucket.blob("ranged").upload_from_string(data)
    blob = bucket.blob("ranged")
    assert blob.download_as_bytes(start=100, end=199) == data[100:200]
    assert blob.download_as_bytes(start=10_000) == data[10_000:]
    assert blob.download_as_bytes(start=-16) == data[-16:]
    url = f"{emulator.base_url}/download/storage/v1/b/{bucket.name}/o/ranged?alt=media"
    r = requests.get(url, headers={"Range": "bytes=5-9"}, timeout=10)
    assert r.status_code == 206 and r.content == data[5:10]
    assert r.headers["Content-Range"] == f"bytes 5-9/{len(data)}"
    assert r.headers["X-Goog-Hash"] == f"crc32c={_crc(data)},md5={_md5(data)}"
    r = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
    # The JSON API path serves media too.
    r = requests.get(f"{emulator.base_url}/storage/v1/b/{bucket.name}/o/ranged", params={"alt": "media"}, timeout=10)
    assert r.status_code == 200 and r.content == data
    assert r.headers["X-Goog-Generation"] == str(bucket.get_blob("ranged").generation)


def test_missing_object_is_not_found(bucket):
    with pytest.raises(exceptions.NotFound):
        bucket.blob("nope").download_as_bytes()
    assert bucket.get_blob("nope") is None
    with pytest.raises(exceptions.NotFound):
        bucket.blob("nope").delete()


def test_overwrite_makes_a_new_generation(bucket):
    blob = bucket.blob("v")
    blob.upload_from_string(b"one")
    first = blob.generation
    blob.upload_from_string(b"two")
    assert blob.generation > first
    assert bucket.blob("v").download_as_bytes() == b"two"
    with pytest.raises(exceptions.NotFound):
        bucket.blob("v", generation=first).download_as_bytes()


# --- listing ---------------------------------------------------------------------------------------


def test_list_with_prefix_delimiter_and_paging(gcs, bucket):
    names = [f"runs/{r}/artifacts/file{i}.txt" for r in ("r1", "r2") for i in range(6)]
    names += [f"runs/top{i}.txt" for i in range(5)] + ["other/x", "root.txt", "runs/r3/"]
    for n in names:
        bucket.blob(n).upload_from_string(n.encode())

    everything = list(gcs.list_blobs(bucket.name, page_size=4))
    assert [b.name for b in everything] == sorted(names)
    pages = list(gcs.list_blobs(bucket.name, page_size=4).pages)
    assert len(pages) == -(-len(names) // 4)

    it = gcs.list_blobs(bucket.name, prefix="runs/", delimiter="/")
    files = [b.name for b in it]
    assert files == [f"runs/top{i}.txt" for i in range(5)]
    assert it.prefixes == {"runs/r1/", "runs/r2/", "runs/r3/"}

    # Prefixes count towards the page size and never repeat across pages.
    it = gcs.list_blobs(bucket.name, prefix="runs/", delimiter="/", page_size=2)
    seen_prefixes: list[str] = []
    seen_files: list[str] = []
    for page in it.pages:
        assert len(page.prefixes) + page.num_items <= 2
        seen_prefixes += sorted(page.prefixes)
        seen_files += [b.name for b in page]
    assert seen_prefixes == ["runs/r1/", "runs/r2/", "runs/r3/"]
    assert seen_files == [f"runs/top{i}.txt" for i in range(5)]

    assert [b.name for b in gcs.list_blobs(bucket.name, prefix="runs/r1/artifacts/file", max_results=3)] == [
        f"runs/r1/artifacts/file{i}.txt" for i in range(3)
    ]
    offsets = gcs.list_blobs(bucket.name, start_offset="runs/r2/", end_offset="runs/r3/")
    assert [b.name for b in offsets] == [f"runs/r2/artifacts/file{i}.txt" for i in range(6)]
    globbed = gcs.list_blobs(bucket.name, match_glob="runs/*/artifacts/file{1,4}.txt")
    assert [b.name for b in globbed] == [f"runs/{r}/artifacts/file{i}.txt" for r in ("r1", "r2") for i in (1, 4)]
    assert [b.name for b in gcs.list_blobs(bucket.name, match_glob="**/top?.txt")] == [
        f"runs/top{i}.txt" for i in range(5)
    ]
    assert list(gcs.list_blobs(bucket.name, prefix="nothing/")) == []


# --- preconditions ---------------------------------------------------------------------------------


def test_upload_preconditions(bucket):
    blob = bucket.blob("state")
    blob.upload_from_string(b"v1", if_generation_match=0)
    gen = blob.generation
    with pytest.raises(exceptions.PreconditionFailed, match="pre-conditions you specified did not hold"):
        bucket.blob("state").upload_from_string(b"x", if_generation_match=0)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("state").upload_from_string(b"x", if_generation_match=gen + 1)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("state").upload_from_string(b"x", if_generation_not_match=gen)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("state").upload_from_string(b"x", if_metageneration_match=2)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("state").upload_from_string(b"x", if_metageneration_not_match=1)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("absent").upload_from_string(b"x", if_metageneration_match=1)
    assert bucket.blob("state").download_as_bytes() == b"v1"
    big = bucket.blob("state", chunk_size=256 * 1024)
    with pytest.raises(exceptions.PreconditionFailed):
        big.upload_from_file(io.BytesIO(os.urandom(300 * 1024)), if_generation_match=0)
    nxt = bucket.blob("state")
    nxt.upload_from_string(b"v2", if_generation_match=gen, if_metageneration_match=1)
    assert nxt.generation != gen
    assert bucket.blob("state").download_as_bytes() == b"v2"


def test_resumable_preconditions_are_checked_again_at_the_end(bucket):
    """A session opened with ifGenerationMatch=0 fails at completion if someone created the object meanwhile."""
    session = bucket.blob("lock").create_resumable_upload_session(if_generation_match=0)
    bucket.blob("lock").upload_from_string(b"first", if_generation_match=0)
    r = requests.put(session, data=b"second", headers={"Content-Range": "bytes 0-5/6"}, timeout=10)
    assert r.status_code == 412 and r.json()["error"]["errors"][0]["reason"] == "conditionNotMet"
    assert bucket.blob("lock").download_as_bytes() == b"first"


def test_read_preconditions(bucket):
    blob = bucket.blob("r")
    blob.upload_from_string(b"data")
    gen = blob.generation
    assert bucket.get_blob("r", if_generation_match=gen, if_metageneration_match=1).generation == gen
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.get_blob("r", if_generation_match=gen + 1)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.get_blob("r", if_metageneration_match=5)
    with pytest.raises(exceptions.NotModified):
        bucket.get_blob("r", if_generation_not_match=gen)
    with pytest.raises(exceptions.NotModified):
        bucket.get_blob("r", if_metageneration_not_match=1)
    assert bucket.blob("r").download_as_bytes(if_generation_match=gen) == b"data"
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("r").download_as_bytes(if_generation_match=gen + 1)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("r").download_as_bytes(if_metageneration_match=2)
    with pytest.raises(exceptions.NotModified):
        bucket.blob("r").download_as_bytes(if_generation_not_match=gen)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob("r").download_as_bytes(if_etag_match="not-the-etag")


def test_patch_and_delete_preconditions(bucket):
    blob = bucket.blob("m")
    blob.upload_from_string(b"data")
    gen = blob.generation
    blob.metadata = {"k": "v", "drop": "me"}
    blob.patch(if_metageneration_match=1)
    assert blob.metageneration == 2
    blob.metadata = {"drop": None}
    blob.patch(if_generation_match=gen)
    assert bucket.get_blob("m").metadata == {"k": "v"}
    blob.content_type = "text/csv"
    with pytest.raises(exceptions.PreconditionFailed):
        blob.patch(if_metageneration_match=1)
    with pytest.raises(exceptions.PreconditionFailed):
        blob.patch(if_metageneration_not_match=3)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.delete_blob("m", if_generation_match=gen + 1)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.delete_blob("m", if_metageneration_match=1)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.delete_blob("m", if_generation_not_match=gen)
    bucket.delete_blob("m", if_generation_match=gen, if_metageneration_match=3)
    assert bucket.get_blob("m") is None


def _race_for_lock(storage_client: storage.Client, bucket: str, lock_name: str) -> dict[str, str]:
    """Two writers create the same object with ifGenerationMatch=0 at the same moment."""
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def write(writer: str) -> None:
        blob = storage_client.bucket(bucket).blob(lock_name)
        barrier.wait()
        try:
            blob.upload_from_string(writer.encode(), if_generation_match=0)
            outcomes[writer] = "won"
        except exceptions.PreconditionFailed:
            outcomes[writer] = "lost"

    threads = [threading.Thread(target=write, args=(w,)) for w in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


def test_if_generation_match_zero_is_a_create_only_lock(clients, project, bucket):
    """Exactly one of two racing writers gets the lock each round, and only its generation unlocks it."""
    for round_ in range(5):
        lock_name = f"locks/state-{round_}.lock"
        outcomes = _race_for_lock(clients.storage(project), bucket.name, lock_name)
        assert sorted(outcomes.values()) == ["lost", "won"], outcomes
        winner = next(w for w, o in outcomes.items() if o == "won")
        lock = bucket.get_blob(lock_name)
        assert lock.download_as_bytes() == winner.encode()
        with pytest.raises(exceptions.PreconditionFailed):
            bucket.delete_blob(lock.name, if_generation_match=lock.generation + 1)
        bucket.delete_blob(lock.name, if_generation_match=lock.generation)


def test_client_retries_ride_out_injected_faults(bucket, admin):
    """With 503s injected, the client's retries and resumable-session recovery still get every byte through."""
    admin.settings(fault_rate=0.3, fault_seed=3, fault_apis=["storage"], fault_codes=[503])
    start = len(admin.requests())
    data = os.urandom(5 * 256 * 1024 + 7)
    for i in range(3):
        blob = bucket.blob(f"flaky/{i}", chunk_size=256 * 1024)
        blob.upload_from_file(io.BytesIO(data), if_generation_match=0)
        assert bucket.blob(f"flaky/{i}").download_as_bytes() == data
    failed = {e["route"] for e in admin.requests(start) if e["status"] == 503}
    assert "objects.insert.chunk" in failed


# --- copies and metadata ---------------------------------------------------------------------------


def test_copy_and_rename(gcs, bucket):
    src = bucket.blob("src/a.txt")
    src.metadata = {"m": "1"}
    src.upload_from_string(b"copy me", content_type="text/plain")
    other = gcs.create_bucket(_name())
    copied = bucket.copy_blob(src, other, "dst/a.txt")
    assert copied.download_as_bytes() == b"copy me"
    got = other.get_blob("dst/a.txt")
    assert got.md5_hash == _md5(b"copy me") and got.content_type == "text/plain" and got.metadata == {"m": "1"}
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.copy_blob(src, other, "dst/a.txt", if_generation_match=0)
    renamed = bucket.rename_blob(bucket.blob("src/a.txt"), "moved/a.txt")
    assert renamed.download_as_bytes() == b"copy me"
    assert bucket.get_blob("src/a.txt") is None
    rewritten = other.blob("rewritten")
    token, done, total = rewritten.rewrite(bucket.blob("moved/a.txt"))
    assert token is None and done == total == len(b"copy me")
    assert other.blob("rewritten").download_as_bytes() == b"copy me"


# --- cross-module methods --------------------------------------------------------------------------


def test_cross_module_methods(emulator, bucket):
    api = emulator.world.api("storage")
    bucket.blob("source.tgz").upload_from_string(b"tarball")
    assert api.read_object(bucket.name, "source.tgz") == b"tarball"
    assert api.bucket_exists(bucket.name) and not api.bucket_exists(_name())
    policy = bucket.get_iam_policy()
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {"user:carol@example.com"}})
    bucket.set_iam_policy(policy)
    key = api.policy_resource(bucket.name)
    assert "user:carol@example.com" in emulator.world.iam.members(key, "roles/storage.objectViewer")
    from mlflow_gcp.emulator.core.errors import GcpError

    with pytest.raises(GcpError) as err:
        api.read_object(bucket.name, "missing")
    assert err.value.code == 404


# --- MLflow ----------------------------------------------------------------------------------------


def test_mlflow_gcs_artifact_repository(emulator, gcs, monkeypatch, tmp_path: Path):
    from mlflow.store.artifact.gcs_artifact_repo import GCSArtifactRepository

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.base_url)
    bucket = gcs.create_bucket(_name("mlflow"))
    small = tmp_path / "params.json"
    small.write_bytes(b'{"lr": 0.01}')
    big = tmp_path / "model.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024 + 123))

    repo = GCSArtifactRepository(f"gs://{bucket.name}/some/path")
    repo.log_artifact(str(small))
    repo.log_artifact(str(big), "model")

    listed = {(f.path, f.is_dir, f.file_size) for f in repo.list_artifacts()}
    assert listed == {("params.json", False, small.stat().st_size), ("model", True, None)}
    assert [(f.path, f.file_size) for f in repo.list_artifacts("model")] == [("model/model.bin", big.stat().st_size)]

    (tmp_path / "out").mkdir()
    out = Path(repo.download_artifacts("", dst_path=str(tmp_path / "out")))
    assert (out / "params.json").read_bytes() == small.read_bytes()
    assert (out / "model" / "model.bin").read_bytes() == big.read_bytes()
    assert bucket.get_blob("some/path/model/model.bin").md5_hash == _md5(big.read_bytes())
