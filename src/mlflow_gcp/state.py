"""The state file: created resource IDs and non-secret facts, written atomically after every step, in a local
directory or at a ``gs://`` URL; and the lock that keeps two runs on one environment from interleaving.

Secrets never go here: the state holds which secret *version* is pinned, never its value.
"""

from __future__ import annotations

import copy
import datetime as dt
import getpass
import json
import os
import socket
import tempfile
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from .errors import ConfigError, LockedError

FORMAT = 1


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def lock_owner(command: str) -> dict[str, Any]:
    return {
        "who": f"{getpass.getuser()}@{socket.gethostname()}",
        "pid": os.getpid(),
        "since": _now(),
        "command": command,
    }


def _describe_holder(holder: dict[str, Any], where: str) -> str:
    message = (
        f"Another mlflow-gcp run holds the lock on this environment: {holder.get('command', '?')} by "
        f"{holder.get('who', '?')} (pid {holder.get('pid', '?')}) since {holder.get('since', '?')} [{where}]."
    )
    if _dead_here(holder):
        message += " That process is no longer running on this machine: the lock is stale."
    return message


def _dead_here(holder: dict[str, Any]) -> bool:
    """The holder ran on this host and its process is gone (a killed run)."""
    who, pid = str(holder.get("who", "")), holder.get("pid")
    if not isinstance(pid, int) or not who.endswith("@" + socket.gethostname()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Backend(ABC):
    @abstractmethod
    def read(self) -> dict[str, Any] | None: ...

    @abstractmethod
    def write(self, data: dict[str, Any]) -> None: ...

    @abstractmethod
    def acquire(self, owner: dict[str, Any]) -> None:
        """Take the lock or raise LockedError naming who holds it."""

    @abstractmethod
    def release(self) -> None: ...

    @abstractmethod
    def break_lock(self) -> dict[str, Any] | None:
        """Remove a lock left by a dead run; returns what it said."""

    @abstractmethod
    def describe(self) -> str: ...


class LocalBackend(Backend):
    def __init__(self, directory: Path, key: str) -> None:
        self.path = directory / f"{key}.json"
        self.lock_path = directory / f"{key}.lock"
        self._held = False

    def describe(self) -> str:
        return str(self.path)

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ConfigError(f"State file {self.path} is corrupt: {exc}.") from None

    def write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def acquire(self, owner: dict[str, Any]) -> None:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(self.lock_path.read_text())
            except (OSError, ValueError):
                holder = {}
            raise LockedError(
                _describe_holder(holder, str(self.lock_path)),
                hint="Wait for it to finish. If that run died, remove the lock with --break-lock.",
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        self._held = True

    def release(self) -> None:
        if self._held:
            self.lock_path.unlink(missing_ok=True)
            self._held = False

    def break_lock(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.lock_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            holder = {}
        self.lock_path.unlink(missing_ok=True)
        return holder


class GcsBackend(Backend):
    """State in a bucket; the lock is an object created with ``ifGenerationMatch=0`` (only one creator wins) and
    deleted with ``ifGenerationMatch=<its generation>`` (never someone else's), as Terraform's GCS backend does.

    Every call goes through the retry policy (retry.py), with the storage library's own retries off so that one
    policy, one backoff and one deadline govern. A retried create or delete may find its first attempt applied
    (the answer was lost on the way back): the lock then already is ours, or already gone."""

    def __init__(self, storage_client: Any, url: str, key: str, *, deadline: float = 300.0) -> None:
        bucket, _, prefix = url.removeprefix("gs://").partition("/")
        prefix = prefix.strip("/")
        self.url = url
        self.bucket = storage_client.bucket(bucket)
        base = f"{prefix}/{key}" if prefix else key
        self.blob_name = f"{base}.json"
        self.lock_name = f"{base}.lock"
        self.deadline = deadline
        self._generation: int | None = None

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from . import retry

        return retry.policy(self.deadline)(fn)(*args, retry=None, **kwargs)

    def describe(self) -> str:
        return f"gs://{self.bucket.name}/{self.blob_name}"

    def read(self) -> dict[str, Any] | None:
        from google.api_core import exceptions

        try:
            data = self._call(self.bucket.blob(self.blob_name).download_as_bytes)
        except exceptions.NotFound:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ConfigError(f"State file {self.describe()} is corrupt: {exc}.") from None

    def write(self, data: dict[str, Any]) -> None:
        # One whole object per write (GCS replaces objects atomically): a repeated attempt writes the same bytes.
        self._call(
            self.bucket.blob(self.blob_name).upload_from_string,
            json.dumps(data, indent=2, sort_keys=True),
            content_type="application/json",
        )

    def _holder(self) -> tuple[dict[str, Any], int | None] | None:
        """What the lock object says and its generation, or None when there is none."""
        from google.api_core import exceptions

        blob = self.bucket.blob(self.lock_name)
        try:
            data = self._call(blob.download_as_bytes)
        except exceptions.NotFound:
            return None
        try:
            holder = json.loads(data)
        except ValueError:
            holder = {}
        return (holder if isinstance(holder, dict) else {}), blob.generation

    def acquire(self, owner: dict[str, Any]) -> None:
        from google.api_core import exceptions

        blob = self.bucket.blob(self.lock_name)
        try:
            self._call(
                blob.upload_from_string, json.dumps(owner), content_type="application/json", if_generation_match=0
            )
            self._generation = blob.generation
            return
        except exceptions.PreconditionFailed:
            found = self._holder()
        holder, generation = found or ({}, None)
        if found is not None and holder == json.loads(json.dumps(owner)) and generation is not None:
            # Our own create, applied by an attempt whose answer was lost: the lock is ours.
            self._generation = generation
            return
        raise LockedError(
            _describe_holder(holder, f"gs://{self.bucket.name}/{self.lock_name}"),
            hint="Wait for it to finish. If that run died, remove the lock with --break-lock.",
        ) from None

    def release(self) -> None:
        from google.api_core import exceptions

        if self._generation is None:
            return
        try:
            self._call(self.bucket.blob(self.lock_name).delete, if_generation_match=self._generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            pass  # gone already (our earlier attempt, or broken by someone else): not ours to delete any more
        self._generation = None

    def break_lock(self) -> dict[str, Any] | None:
        from google.api_core import exceptions

        found = self._holder()
        if found is None:
            return None
        holder, generation = found
        try:
            # Only the lock that was read: one a new run took meanwhile is left alone.
            self._call(self.bucket.blob(self.lock_name).delete, if_generation_match=generation)
        except exceptions.NotFound:
            pass  # deleted by an earlier attempt whose answer was lost
        except exceptions.PreconditionFailed:
            return None  # a new run took the lock meanwhile: it is live, not broken (acquiring names its holder)
        return holder


class State:
    """The in-memory state of one environment; ``save()`` after every step (thread-safe)."""

    def __init__(self, backend: Backend, identity: dict[str, str]) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self.data: dict[str, Any] = backend.read() or {"format": FORMAT, **identity, "resources": {}}
        if self.data.get("format", FORMAT) > FORMAT:
            raise ConfigError(
                f"State file {backend.describe()} was written by a newer mlflow-gcp.", hint="Upgrade mlflow-gcp."
            )
        for k, v in identity.items():
            if self.data.get(k) not in (None, v):
                raise ConfigError(
                    f"State file {backend.describe()} belongs to {k}={self.data[k]!r}, not {v!r}.",
                    hint="Use another state location for this environment.",
                )

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("resources", {})

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self.resources.get(key)
            return copy.deepcopy(value) if value is not None else None

    def record(self, key: str, facts: dict[str, Any]) -> None:
        with self._lock:
            self.resources[key] = {**facts, "updated": _now()}
            self._save_locked()

    def forget(self, key: str) -> None:
        with self._lock:
            if self.resources.pop(key, None) is not None:
                self._save_locked()

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
            self._save_locked()

    def update(self, values: dict[str, Any], resources: dict[str, dict[str, Any]] | None = None) -> None:
        """Several top-level values (None removes one) and resource records in one atomic write, for changes
        that must never be seen half done (a password rotation switching users)."""
        with self._lock:
            for key, value in values.items():
                if value is None:
                    self.data.pop(key, None)
                else:
                    self.data[key] = value
            for key, facts in (resources or {}).items():
                self.resources[key] = {**facts, "updated": _now()}
            self._save_locked()

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        self.data["updated"] = _now()
        self.backend.write(self.data)


def state_key(project: str, name: str, env: str) -> str:
    return f"{project}.{name}-{env}"
