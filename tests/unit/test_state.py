"""The local state backend: atomic writes, the lock, identity checks."""

from __future__ import annotations

import json
import os

import pytest

from mlflow_gcp.errors import ConfigError, ExitCode, LockedError
from mlflow_gcp.state import LocalBackend, State, lock_owner


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first, second = LocalBackend(tmp_path, "k"), LocalBackend(tmp_path, "k")
    first.acquire(lock_owner("up"))
    with pytest.raises(LockedError) as err:
        second.acquire(lock_owner("down"))
    assert err.value.exit_code == ExitCode.LOCKED
    assert f"pid {os.getpid()}" in err.value.message and "up by" in err.value.message
    assert "--break-lock" in (err.value.hint or "")
    first.release()
    second.acquire(lock_owner("down"))
    second.release()


def test_break_lock_returns_the_holder(tmp_path):
    LocalBackend(tmp_path, "k").acquire(lock_owner("up"))
    holder = LocalBackend(tmp_path, "k").break_lock()
    assert holder and holder["command"] == "up"
    LocalBackend(tmp_path, "k").acquire(lock_owner("up"))


def test_writes_are_whole_files(tmp_path):
    state = State(LocalBackend(tmp_path, "k"), {"project": "p"})
    state.record("bucket", {"id": "gs://b"})
    assert json.loads((tmp_path / "k.json").read_text())["resources"]["bucket"]["id"] == "gs://b"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".state-")]


def test_state_of_another_project_is_refused(tmp_path):
    State(LocalBackend(tmp_path, "k"), {"project": "p"}).save()
    with pytest.raises(ConfigError, match="belongs to project='p'"):
        State(LocalBackend(tmp_path, "k"), {"project": "q"})


def test_corrupt_state_is_a_clear_error(tmp_path):
    (tmp_path / "k.json").write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt"):
        State(LocalBackend(tmp_path, "k"), {"project": "p"})
