"""The emulator's resource store: JSON documents keyed by kind and full resource name.

Resources are kept as the JSON the API returns (camelCase, enums as names), so persisting the store is
one atomic file write and a daemon restarted on the same data directory finds the same resources.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from .errors import already_exists, not_found


class Store:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._data: dict[str, dict[str, dict[str, Any]]] = {}
        if path is not None and path.exists():
            self._data = json.loads(path.read_text())

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self._data.get(kind, {}).get(name)
            return copy.deepcopy(obj) if obj is not None else None

    def require(self, kind: str, name: str, what: str | None = None) -> dict[str, Any]:
        obj = self.get(kind, name)
        if obj is None:
            raise not_found(what or name)
        return obj

    def create(self, kind: str, name: str, obj: dict[str, Any], what: str | None = None) -> dict[str, Any]:
        with self.lock:
            bucket = self._data.setdefault(kind, {})
            if name in bucket:
                raise already_exists(what or name)
            bucket[name] = copy.deepcopy(obj)
            self.save()
            return copy.deepcopy(obj)

    def put(self, kind: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._data.setdefault(kind, {})[name] = copy.deepcopy(obj)
            self.save()
            return copy.deepcopy(obj)

    def delete(self, kind: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self._data.get(kind, {}).pop(name, None)
            if obj is not None:
                self.save()
            return obj

    def list(self, kind: str, prefix: str = "") -> list[dict[str, Any]]:
        with self.lock:
            items = sorted(self._data.get(kind, {}).items())
            return [copy.deepcopy(v) for k, v in items if k.startswith(prefix)]

    def names(self, kind: str, prefix: str = "") -> list[str]:
        with self.lock:
            return sorted(k for k in self._data.get(kind, {}) if k.startswith(prefix))

    def reset(self) -> None:
        with self.lock:
            self._data = {}
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".store-")
            with os.fdopen(fd, "w") as f:
                json.dump(self._data, f)
            os.replace(tmp, self.path)
