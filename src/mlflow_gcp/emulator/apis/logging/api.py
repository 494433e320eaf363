"""Cloud Logging v2: ``entries.write`` and ``entries.list``, and :meth:`LoggingApi.append` for the other
emulated services (Cloud Build writes its build logs here, Cloud Run what its revisions write: run/logs.py).

Behaviour kept from GCP (the API's own reference, bundled as googleapiclient's ``logging.v2`` discovery
document, is the source of each rule below):

- ``entries.list`` takes ``resourceNames`` (``projects/P``; the deprecated ``projectIds`` too), a
  ``filter`` in the Logging query language (see :mod:`.query`), ``orderBy`` ``"timestamp asc"`` (the
  default) or ``"timestamp desc"`` -- equal timestamps order by ``insertId`` -- and ``pageSize`` (default
  50; the emulator caps a page at 1000) with an opaque ``pageToken``; it answers ``{entries,
  nextPageToken}``. A filter that does not parse is 400 INVALID_ARGUMENT.
- ``entries.write`` fills each entry's missing ``logName``, ``resource`` and ``labels`` from the request
  (an entry's own labels win), and a missing ``timestamp``/``insertId`` so that earlier entries of the
  list sort first; ``dryRun`` stores nothing. An entry with no log name or no resource is 400.
- An entry's ``severity`` defaults to DEFAULT (and is then left out of the JSON, as proto3 leaves out a
  zero enum); severities compare by rank (DEFAULT < DEBUG < INFO < NOTICE < WARNING < ERROR < CRITICAL <
  ALERT < EMERGENCY), timestamps as instants.

Entries are kept per project in ``<data_dir>/logging/<project id>.jsonl`` (one line per entry: appending
a build's hundreds of lines must not rewrite the whole store), so they survive an emulator restart.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.errors import invalid
from ...core.http import ApiModule, ApiRequest, route
from ...core.paging import page
from ...core.validation import validate_discovery
from .query import FilterError, dict_fields, parse_filter

if TYPE_CHECKING:
    from ...core.world import World

SEVERITIES = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")
#: google.logging.type.LogSeverity: the enum's numbers, which a filter may use too (severity>=400).
SEVERITY_RANK = {name: i * 100 for i, name in enumerate(SEVERITIES)}
_TIMESTAMP_FIELDS = {("timestamp",), ("receiveTimestamp",)}
_LOG_NAME = re.compile(r"^(projects|organizations|folders|billingAccounts)/([^/]+)/logs/([^/]+)$")
_RESOURCE_NAME = re.compile(r"^(projects|organizations|folders|billingAccounts)/([^/]+)(/.*)?$")
#: Listings kept for their next pages (see LoggingApi._matching).
_KEPT_ANSWERS = 8
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})?$")


def rfc3339_nanos(text: str) -> int | None:
    """An RFC 3339 timestamp as nanoseconds since the epoch (nanosecond precision, which datetime lacks)."""
    m = _RFC3339.match(text.strip())
    if not m:
        return None
    zone = m.group(4) or "Z"
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        base = datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{zone}")
    except ValueError:
        return None
    return int(base.timestamp()) * 1_000_000_000 + int((m.group(3) or "0").ljust(9, "0"))


def _order_key(path: tuple[str, ...], value: Any) -> Any:
    """How a field's values order in a filter: severities by rank, timestamps as instants, the rest as text."""
    if path == ("severity",):
        text = str(value).upper()
        if text in SEVERITY_RANK:
            return SEVERITY_RANK[text]
        try:
            return int(text)
        except ValueError:
            return text
    if path in _TIMESTAMP_FIELDS:
        nanos = rfc3339_nanos(str(value))
        return nanos if nanos is not None else str(value)
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, int | float) else str(value)


class LoggingApi(ApiModule):
    prefix = "/logging"
    service = "logging.googleapis.com"
    title = "Cloud Logging API"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self._lock = threading.RLock()
        self._entries: dict[str, list[dict[str, Any]]] = {}
        self._last_nanos = 0
        #: time.time_ns() of the last reset.
        self._reset_at = 0
        #: (projects, filter, newest first) -> (the projects' entry counts then, the matching entries in order)
        self._answers: dict[tuple[Any, ...], tuple[tuple[int, ...], list[dict[str, Any]]]] = {}

    @property
    def root(self) -> Path:
        return self.world.data_dir / "logging"

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()
            self._answers.clear()
            self._reset_at = time.time_ns()
            shutil.rmtree(self.root, ignore_errors=True)

    # --- public, for other modules --------------------------------------------------------------------------

    def append(
        self, project: str, entries: list[dict[str, Any]], *, written_at: int | None = None
    ) -> list[dict[str, Any]]:
        """Store LogEntry JSON objects in ``project`` (id or number) as Logging ingests them: a missing
        ``timestamp``, ``receiveTimestamp`` or ``insertId`` is filled, in list order. Each entry must carry
        its ``logName`` and ``resource``. Returns the stored entries. ``written_at`` (time.time_ns()): when the
        oldest of them was written; entries written before the last reset are dropped (a Cloud Run revision the
        reset stopped may still be flushing its output)."""
        pid = self.world.project(project)["projectId"]
        stored = []
        with self._lock:
            if written_at is not None and written_at < self._reset_at:
                return []
            entries_of = self._load(pid)
            lines = []
            for entry in entries:
                nanos = self._next_nanos()
                now = _format_nanos(nanos)
                e = {k: v for k, v in entry.items() if v not in (None, "", {}, [])}
                e.setdefault("timestamp", now)
                e["receiveTimestamp"] = now
                # Zero-padded nanos: insertIds order as the entries were written, also across restarts.
                e.setdefault("insertId", f"{nanos:020d}")
                if e.get("severity") == "DEFAULT":
                    del e["severity"]
                entries_of.append(e)
                lines.append(json.dumps(e) + "\n")
                stored.append(e)
            self.root.mkdir(parents=True, exist_ok=True)
            with (self.root / f"{pid}.jsonl").open("a") as f:
                f.writelines(lines)
        return stored

    def entries(self, project: str) -> list[dict[str, Any]]:
        """Every stored entry of ``project`` (id or number), in the order written."""
        pid = self.world.project(project)["projectId"]
        with self._lock:
            return list(self._load(pid))

    # --- internals ------------------------------------------------------------------------------------------

    def _next_nanos(self) -> int:
        nanos = max(time.time_ns(), self._last_nanos + 1)
        self._last_nanos = nanos
        return nanos

    def _load(self, pid: str) -> list[dict[str, Any]]:
        if pid not in self._entries:
            path = self.root / f"{pid}.jsonl"
            loaded = []
            if path.is_file():
                for line in path.read_text().splitlines():
                    try:
                        loaded.append(json.loads(line))
                    except ValueError:
                        continue  # a line half-written when a previous process died
            self._entries[pid] = loaded
        return self._entries[pid]

    # --- entries.write ----------------------------------------------------------------------------------------

    @route("POST", "/v2/entries:write", name="entries.write")
    def write(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "logging", "v2", "WriteLogEntriesRequest")
        entries = body.get("entries") or []
        if not entries:
            raise invalid("entries: at least one log entry is required")
        by_project: dict[str, list[dict[str, Any]]] = {}
        for i, raw in enumerate(entries):
            entry = dict(raw)
            entry["logName"] = entry.get("logName") or body.get("logName", "")
            entry["resource"] = entry.get("resource") or body.get("resource") or {}
            labels = {**(body.get("labels") or {}), **(entry.get("labels") or {})}
            if labels:
                entry["labels"] = labels
            m = _LOG_NAME.match(entry["logName"])
            if not m:
                raise invalid(f"entries[{i}].log_name: invalid log name {entry['logName']!r}")
            if not entry["resource"].get("type"):
                raise invalid(f"entries[{i}].resource: a monitored resource type is required")
            if entry.get("severity") not in (None, *SEVERITIES):
                raise invalid(f"entries[{i}].severity: invalid severity {entry['severity']!r}")
            if m.group(1) != "projects":
                continue  # organization, folder and billing logs are not emulated: accepted and dropped
            pid = self.world.project(m.group(2))["projectId"]
            entry["logName"] = f"projects/{pid}/logs/{m.group(3)}"
            by_project.setdefault(pid, []).append(entry)
        if not body.get("dryRun"):
            for pid, batch in by_project.items():
                self.append(pid, batch)
        return {}

    # --- entries.list -----------------------------------------------------------------------------------------

    @route("POST", "/v2/entries:list", name="entries.list", mutating=False)
    def list(self, req: ApiRequest) -> dict[str, Any]:
        body = req.json()
        validate_discovery(body, "logging", "v2", "ListLogEntriesRequest")
        names = list(body.get("resourceNames") or []) + [f"projects/{p}" for p in body.get("projectIds") or []]
        if not names:
            raise invalid("resourceNames: at least one resource name is required")
        projects: list[str] = []
        for name in names:
            m = _RESOURCE_NAME.match(name)
            if not m:
                raise invalid(f"Invalid resource name: {name!r}")
            if m.group(1) == "projects":
                pid = self.world.project(m.group(2))["projectId"]
                if pid not in projects:
                    projects.append(pid)
        order = re.sub(r"\s+", " ", (body.get("orderBy") or "timestamp asc").strip().lower())
        if order not in ("timestamp asc", "timestamp desc", "timestamp"):
            raise invalid(f'Invalid order by: "{body.get("orderBy")}". Only "timestamp asc" and "timestamp desc" '
                          "are supported.")  # fmt: skip
        found = self._matching(projects, body.get("filter") or "", order == "timestamp desc")
        items, token = page(found, body, default=50, maximum=1000, opaque=True)
        out: dict[str, Any] = {"entries": items} if items else {}
        if token:
            out["nextPageToken"] = token
        return out

    def _matching(self, projects: list[str], source: str, newest_first: bool) -> list[dict[str, Any]]:
        """The entries of ``projects`` matching the filter ``source``, in order. Evaluating a filter costs about
        10 µs an entry, so the answer is kept (for the last few queries) while no entry was added: the next pages
        of a listing, and the same listing again, do not scan a chatty revision's entries once more."""
        with self._lock:
            sizes = tuple(len(self._load(pid)) for pid in projects)
            key = (tuple(projects), source, newest_first)
            kept = self._answers.get(key)
            if kept is not None and kept[0] == sizes:
                return kept[1]
            entries = [e for pid in projects for e in self._load(pid)]
        try:
            query = parse_filter(source)
            found = [e for e in entries if query.matches(_entry_fields(e), key=_order_key)]
        except FilterError as err:
            raise invalid(err.message) from None
        found.sort(key=lambda e: (rfc3339_nanos(e.get("timestamp", "")) or 0, e.get("insertId", "")))
        if newest_first:
            found.reverse()
        with self._lock:
            self._answers[key] = (sizes, found)
            while len(self._answers) > _KEPT_ANSWERS:
                del self._answers[next(iter(self._answers))]
        return found


def _entry_fields(entry: dict[str, Any]) -> Any:
    read = dict_fields(entry)

    def fields(path: tuple[str, ...]) -> list[Any]:
        if path == ("severity",):
            return [entry.get("severity", "DEFAULT")]  # absent is DEFAULT, which a filter can name
        return read(path)

    return fields


def _format_nanos(nanos: int) -> str:
    seconds, frac = divmod(nanos, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"
