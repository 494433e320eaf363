"""Cloud Storage soft delete through google-cloud-storage against the emulator: a deleted or overwritten object
stays listable and restorable for the bucket's retention, then is gone; the retention is bounded as on GCS."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import requests
from google.api_core import exceptions
from google.cloud import storage

DAY = 24 * 3600


def _name(prefix: str = "sd") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def gcs(clients, project) -> storage.Client:
    return clients.storage(project)


@pytest.fixture
def bucket(gcs) -> storage.Bucket:
    """A bucket with GCS's default soft-delete retention (7 days)."""
    return gcs.create_bucket(_name(), location="us-central1")


def _bucket_with_retention(gcs: storage.Client, seconds: int) -> storage.Bucket:
    b = gcs.bucket(_name())
    b.soft_delete_policy.retention_duration_seconds = seconds
    return gcs.create_bucket(b, location="us-central1")


def test_a_deleted_object_is_listed_soft_deleted_and_restores_as_a_new_generation(bucket):
    payload = b"model weights \x00\xff" * 1000
    blob = bucket.blob("runs/r1/artifacts/model.bin")
    blob.metadata = {"kind": "model"}
    blob.upload_from_string(payload, content_type="application/x-weights")
    generation = blob.generation
    blob.delete()

    assert list(bucket.list_blobs()) == []
    assert bucket.get_blob(blob.name) is None
    with pytest.raises(exceptions.NotFound):  # soft-deleted objects cannot be read, even by generation
        bucket.blob(blob.name, generation=generation).download_as_bytes()
    [listed] = bucket.list_blobs(soft_deleted=True)
    assert (listed.name, listed.generation) == (blob.name, generation)
    assert listed.hard_delete_time - listed.soft_delete_time == timedelta(days=7)
    assert "timeDeleted" not in listed._properties  # that one is for noncurrent versions
    got = bucket.get_blob(blob.name, generation=generation, soft_deleted=True)
    assert got.soft_delete_time == listed.soft_delete_time and got.size == len(payload)

    restored = bucket.restore_blob(blob.name, generation=generation)
    assert restored.generation > generation and restored.metageneration == 1
    assert restored.soft_delete_time is None and restored.hard_delete_time is None
    assert restored.time_created >= listed.soft_delete_time
    assert (restored.content_type, restored.metadata) == ("application/x-weights", {"kind": "model"})
    assert bucket.blob(blob.name).download_as_bytes() == payload
    assert [b.name for b in bucket.list_blobs()] == [blob.name]


def test_an_overwritten_generation_is_soft_deleted_and_a_restore_replaces_the_live_one(bucket):
    blob = bucket.blob("notes.txt")
    blob.upload_from_string(b"first")
    first = blob.generation
    blob.upload_from_string(b"second")
    second = blob.generation

    assert [(b.name, b.generation) for b in bucket.list_blobs(soft_deleted=True)] == [("notes.txt", first)]
    restored = bucket.restore_blob("notes.txt", generation=first)
    assert bucket.blob("notes.txt").download_as_bytes() == b"first"
    # The live generation the restore replaced is itself soft-deleted, so the restore can be undone.
    soft = {b.generation for b in bucket.list_blobs(soft_deleted=True)}
    assert second in soft
    bucket.restore_blob("notes.txt", generation=second, if_generation_match=restored.generation)
    assert bucket.blob("notes.txt").download_as_bytes() == b"second"


def test_restore_refuses_what_gcs_refuses(emulator, bucket):
    blob = bucket.blob("a.txt")
    blob.upload_from_string(b"a")
    gone = blob.generation
    blob.delete()
    blob.upload_from_string(b"b")
    live = blob.generation

    with pytest.raises(exceptions.NotFound):
        bucket.restore_blob("a.txt", generation=gone + 1)
    with pytest.raises(exceptions.NotFound):
        bucket.restore_blob("never.txt", generation=gone)
    with pytest.raises(exceptions.PreconditionFailed, match="objectNotSoftDeleted"):
        bucket.restore_blob("a.txt", generation=live)
    with pytest.raises(exceptions.PreconditionFailed):  # 0: only if nothing of that name is live
        bucket.restore_blob("a.txt", generation=gone, if_generation_match=0)
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.restore_blob("a.txt", generation=gone, if_generation_match=live + 1)
    url = f"{emulator.base_url}/storage/v1/b/{bucket.name}/o/a.txt"
    missing = requests.post(f"{url}/restore", timeout=5)
    assert missing.status_code == 400 and missing.json()["error"]["errors"][0]["reason"] == "required"
    media = requests.get(url, params={"softDeleted": "true", "generation": gone, "alt": "media"}, timeout=5)
    assert media.status_code == 400
    assert requests.get(url, params={"softDeleted": "true"}, timeout=5).status_code == 400  # generation needed
    with pytest.raises(exceptions.BadRequest):
        list(bucket.list_blobs(soft_deleted=True, versions=True))
    assert bucket.blob("a.txt").download_as_bytes() == b"b"  # nothing above changed anything


def test_soft_deleted_listing_pages_by_name_and_generation(bucket):
    expected = []
    for name in ("d/x", "d/y", "e"):
        for content in (b"1", b"2", b"3"):
            blob = bucket.blob(name)
            blob.upload_from_string(content)
            expected.append((name, blob.generation))
        blob.delete()
    paged = [(b.name, b.generation) for b in bucket.list_blobs(soft_deleted=True, page_size=2)]
    assert paged == expected
    under_d = [(b.name, b.generation) for b in bucket.list_blobs(soft_deleted=True, prefix="d/", page_size=4)]
    assert under_d == expected[:6]
    listing = bucket.list_blobs(soft_deleted=True, delimiter="/")
    assert [b.name for b in listing] == ["e"] * 3 and listing.prefixes == {"d/"}
    globbed = bucket.list_blobs(soft_deleted=True, match_glob="d/y")
    assert [b.generation for b in globbed] == [g for _, g in expected[3:6]]


def test_nothing_is_kept_when_soft_delete_is_off(gcs):
    bucket = _bucket_with_retention(gcs, 0)
    blob = bucket.blob("x")
    blob.upload_from_string(b"x")
    generation = blob.generation
    blob.upload_from_string(b"y")
    blob.delete()
    assert list(bucket.list_blobs(soft_deleted=True)) == []
    with pytest.raises(exceptions.NotFound):
        bucket.restore_blob("x", generation=generation)


def test_the_retention_is_bounded_as_on_gcs(gcs):
    for seconds in (DAY, 7 * DAY - 1, 90 * DAY + 1, 365 * DAY):
        with pytest.raises(exceptions.BadRequest, match="0 or between 7 and 90 days"):
            _bucket_with_retention(gcs, seconds)
    assert _bucket_with_retention(gcs, 90 * DAY).soft_delete_policy.retention_duration_seconds == 90 * DAY
    bucket = _bucket_with_retention(gcs, 7 * DAY)
    bucket.soft_delete_policy.retention_duration_seconds = 3 * DAY
    with pytest.raises(exceptions.BadRequest):
        bucket.patch()
    bucket.soft_delete_policy.retention_duration_seconds = 14 * DAY
    bucket.patch()
    assert gcs.get_bucket(bucket.name).soft_delete_policy.retention_duration_seconds == 14 * DAY


def test_a_soft_deleted_object_is_gone_after_its_hard_delete_time(admin, gcs, bucket):
    blob = bucket.blob("old.txt")
    blob.upload_from_string(b"old")
    generation = blob.generation
    blob.delete()
    # A longer retention set afterwards does not extend what is already soft-deleted (docs: use-soft-delete).
    bucket.soft_delete_policy.retention_duration_seconds = 30 * DAY
    bucket.patch()

    admin.settings(clock_offset_seconds=7 * DAY - 60)
    assert [b.generation for b in bucket.list_blobs(soft_deleted=True)] == [generation]
    admin.settings(clock_offset_seconds=7 * DAY + 1)
    assert list(bucket.list_blobs(soft_deleted=True)) == []
    with pytest.raises(exceptions.NotFound):
        bucket.restore_blob("old.txt", generation=generation)
    assert bucket.get_blob("old.txt", generation=generation, soft_deleted=True) is None  # the client's 404
    # Deleted now, it is kept for the bucket's current 30 days.
    blob.upload_from_string(b"new")
    blob.delete()
    [kept] = bucket.list_blobs(soft_deleted=True)
    assert kept.hard_delete_time - kept.soft_delete_time == timedelta(days=30)


def test_soft_deleted_objects_do_not_keep_a_bucket_and_leave_with_it(gcs, bucket):
    blob = bucket.blob("x")
    blob.upload_from_string(b"x")
    blob.delete()
    bucket.delete()  # only soft-deleted objects left: not "not empty"
    again = gcs.create_bucket(bucket.name, location="us-central1")
    assert list(again.list_blobs(soft_deleted=True)) == []
