"""Owned fields (fields.py): one declaration gives the create body, the diff and the update's paths."""

from __future__ import annotations

from types import SimpleNamespace

from mlflow_gcp import fields
from mlflow_gcp.engine import Change
from mlflow_gcp.fields import Owned, reader

LABELS = {"app": "mlflow", "env": "dev"}


def _instance_fields() -> list[Owned]:
    return [
        Owned("settings.tier", "db-custom-1-3840", reader("settings.tier")),
        Owned("settings.dataDiskSizeGb", "10", reader("settings.dataDiskSizeGb"), mode="grow_only", normalize=int),
        Owned("settings.userLabels", LABELS, reader("settings.userLabels"), mode="labels"),
        Owned("region", "europe-west2", reader("region"), mode="refuse", refusal="cannot move", hint="choose"),
    ]


def test_create_body_holds_every_field():
    assert fields.body(_instance_fields()) == {
        "settings": {"tier": "db-custom-1-3840", "dataDiskSizeGb": "10", "userLabels": LABELS},
        "region": "europe-west2",
    }


def test_nothing_differs_when_live_matches_and_others_labels_stay_theirs():
    live = {
        "region": "europe-west2",
        "settings": {"tier": "db-custom-1-3840", "dataDiskSizeGb": "25", "userLabels": {**LABELS, "team": "x"}},
    }
    assert fields.changes(_instance_fields(), live) == []


def test_each_kind_of_difference():
    live = {"region": "us-east1", "settings": {"tier": "db-f1-micro", "dataDiskSizeGb": "5", "userLabels": {}}}
    found = fields.changes(_instance_fields(), live)
    assert found == [
        Change("settings.tier", "db-f1-micro", "db-custom-1-3840"),
        Change("settings.dataDiskSizeGb", "5", "10"),
        Change("settings.userLabels", {"app": None, "env": None}, LABELS),
        Change("region", "us-east1", "europe-west2"),
    ]
    assert [c.refusal for c in found] == ["", "", "", "cannot move"] and found[3].hint == "choose"


def test_update_writes_only_the_changed_fields_and_merges_labels():
    live = {"settings": {"userLabels": {"team": "x", "app": "old"}}}
    patch = fields.apply(_instance_fields(), live, only=["settings.userLabels"])
    assert patch == {"settings": {"userLabels": {"team": "x", "app": "mlflow", "env": "dev"}}}


def test_api_objects_are_written_through_their_setter():
    bucket = SimpleNamespace(storage_class="NEARLINE", labels={"team": "x"})
    owned = [
        Owned("storageClass", "STANDARD", lambda b: b.storage_class, write=lambda b, v: setattr(b, "storage_class", v)),
        Owned("labels", LABELS, lambda b: b.labels, mode="labels", write=lambda b, v: setattr(b, "labels", v)),
    ]
    assert [c.field for c in fields.changes(owned, bucket)] == ["storageClass", "labels"]
    fields.apply(owned, bucket)
    assert bucket.storage_class == "STANDARD" and bucket.labels == {"team": "x", **LABELS}
    assert fields.changes(owned, bucket) == []
