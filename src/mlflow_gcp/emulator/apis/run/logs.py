"""A revision's output as Cloud Run's logging agent ships it: each line its instance writes to stdout or stderr
becomes a Cloud Logging entry (and stays in the revision's text file, ``logUri``, as before).

What an entry looks like, as Cloud Run writes it (https://cloud.google.com/run/docs/logging):

- ``logName`` ``projects/P/logs/run.googleapis.com%2Fstdout`` or ``...%2Fstderr``; Cloud Run's own lines about
  the instance (started, exited, a failed startup probe) go to ``run.googleapis.com%2Fvarlog%2Fsystem``;
- ``resource`` ``cloud_run_revision`` with the labels ``project_id``, ``service_name``, ``revision_name``,
  ``location`` and ``configuration_name``, and ``labels.instanceId`` naming the instance (here: the process);
- a plain line is a ``textPayload`` with no severity (DEFAULT), from stdout and stderr alike: "Logs to standard
  output or standard error do not have an associated log level" (Cloud Run functions' logging page,
  https://cloud.google.com/functions/1stgendocs/monitoring/logging; GKE, unlike Cloud Run, marks stderr ERROR);
- a line that is a JSON object is a structured log (https://cloud.google.com/logging/docs/structured-logging):
  it becomes ``jsonPayload``, except the special fields the agent moves to the entry: ``severity`` (a LogSeverity
  name in any case, or a common spelling such as ``warn`` or ``fatal``; one it cannot read stays in the
  payload), ``time``/``timestamp``/``timestampSeconds``+``timestampNanos``, ``httpRequest`` and
  ``logging.googleapis.com/{labels,insertId,operation,sourceLocation,spanId,trace,trace_sampled}``. ``message``
  stays in the payload (it is the text Logs Explorer shows);
- Cloud Run's own lines carry a severity: ERROR when an instance failed (public alert policies match a failed
  revision as ``varlog/system`` entries with ``severity=ERROR``), INFO for an instance starting.

Entries reach Cloud Logging a moment after the line was written, as on GCP: one thread per instance reads both
pipes (so lines keep their order across the two), writes the text file and queues the lines; one thread for all
(:class:`LogShipper`) makes the entries and appends them in batches. A revision writing fast is read as fast as it
writes (100,000 lines of 100 bytes: 0.05 s through the pipes, 0.04 s straight to a file) and never waits on the
log store. A revision that failed to start is flushed before its operation fails, so its last lines can be read at
once.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...core.world import World

STDOUT_LOG = "run.googleapis.com%2Fstdout"
STDERR_LOG = "run.googleapis.com%2Fstderr"
SYSTEM_LOG = "run.googleapis.com%2Fvarlog%2Fsystem"
RESOURCE_TYPE = "cloud_run_revision"

_SEVERITIES = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")
# Common spellings the agent also reads ("attempts to match a variety of common severity strings").
_SEVERITY_ALIASES = {
    "TRACE": "DEBUG",
    "INFORMATION": "INFO",
    "WARN": "WARNING",
    "ERR": "ERROR",
    "FATAL": "CRITICAL",
    "CRIT": "CRITICAL",
    "EMERG": "EMERGENCY",
}
# Special JSON fields moved from the payload to the entry.
_SPECIAL = {
    "httpRequest": "httpRequest",
    "logging.googleapis.com/insertId": "insertId",
    "logging.googleapis.com/operation": "operation",
    "logging.googleapis.com/sourceLocation": "sourceLocation",
    "logging.googleapis.com/spanId": "spanId",
    "logging.googleapis.com/trace": "trace",
    "logging.googleapis.com/trace_sampled": "traceSampled",
}
#: How long the shipper gathers entries before one append: a burst of lines is one write.
BATCH_SECONDS = 0.05
#: A line longer than this is cut into entries (Cloud Logging takes entries of up to 256 KiB).
MAX_LINE = 200 * 1024


def _rfc3339(nanos: int) -> str:
    seconds, frac = divmod(nanos, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def _severity(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = value.strip().upper()
    return name if name in _SEVERITIES else _SEVERITY_ALIASES.get(name)


def _timestamp(payload: dict[str, Any]) -> str | None:
    """The entry's time from a structured line's ``time``, ``timestamp`` or ``timestampSeconds``/``Nanos``;
    the fields read are removed from the payload."""
    stamp = payload.get("timestamp")
    if isinstance(stamp, dict) and isinstance(stamp.get("seconds"), int | str):
        payload.pop("timestamp")
        return _rfc3339(int(stamp["seconds"]) * 1_000_000_000 + int(stamp.get("nanos", 0)))
    if isinstance(payload.get("timestampSeconds"), int | str):
        seconds = payload.pop("timestampSeconds")
        return _rfc3339(int(seconds) * 1_000_000_000 + int(payload.pop("timestampNanos", 0)))
    for key in ("time", "timestamp"):
        if isinstance(payload.get(key), str):
            return str(payload.pop(key))
    return None


def entry_for_line(line: str, nanos: int) -> dict[str, Any]:
    """The LogEntry Cloud Run makes of one line of output read at ``nanos`` (its log and resource aside)."""
    entry: dict[str, Any] = {"timestamp": _rfc3339(nanos)}
    text = line.strip()
    payload: Any = None
    if text.startswith("{") and text.endswith("}"):
        with contextlib.suppress(ValueError):
            payload = json.loads(text)
    if not isinstance(payload, dict):
        entry["textPayload"] = line
        return entry
    severity = _severity(payload.get("severity"))
    if severity is not None:
        payload.pop("severity")
        entry["severity"] = severity
    with contextlib.suppress(ValueError, TypeError):
        stamp = _timestamp(payload)
        if stamp:
            entry["timestamp"] = stamp
    labels = payload.pop("logging.googleapis.com/labels", None)
    if isinstance(labels, dict):
        entry["labels"] = {str(k): str(v) for k, v in labels.items()}
    for key, field in _SPECIAL.items():
        if key in payload:
            entry[field] = payload.pop(key)
    entry["jsonPayload"] = payload
    return entry


class LogShipper:
    """Appends queued entries to the emulated Cloud Logging from one background thread, in batches."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._cond = threading.Condition()
        #: (project, what makes its entries, when the oldest of them was read)
        self._pending: list[tuple[str, Callable[[], list[dict[str, Any]]], int]] = []
        self._busy = False
        self._thread: threading.Thread | None = None
        self._last_nanos = 0

    def now(self, count: int = 1) -> int:
        """Nanoseconds since the epoch for ``count`` lines read at once (this and the next ``count - 1``), never
        handed out twice: lines keep their order when sorted by time."""
        with self._cond:
            first = max(time.time_ns(), self._last_nanos + 1)
            self._last_nanos = first + max(0, count - 1)
            return first

    def put(self, project: str, entries: Callable[[], list[dict[str, Any]]], nanos: int) -> None:
        """Queue entries of ``project``, the oldest read at ``nanos``. ``entries`` makes them, on the shipper's
        thread: a pipe's reader only splits lines, so it keeps up with a revision that writes fast."""
        with self._cond:
            self._pending.append((project, entries, nanos))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="run-log-shipper", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every entry queued so far is in Cloud Logging."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending or self._busy) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                self._busy = True
            time.sleep(BATCH_SECONDS)
            with self._cond:
                batch, self._pending = self._pending, []
            try:
                self._ship(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _ship(self, batch: list[tuple[str, Callable[[], list[dict[str, Any]]], int]]) -> None:
        logging = self._world.apis.get("logging")
        if logging is None:
            return
        by_project: dict[str, list[dict[str, Any]]] = {}
        oldest: dict[str, int] = {}
        for project, entries, nanos in batch:
            by_project.setdefault(project, []).extend(entries())
            oldest[project] = min(oldest.get(project, nanos), nanos)
        for project, entries in by_project.items():
            # Lines a reset's stopped revisions wrote are dropped (written_at); a project the reset removed has
            # nowhere to keep them either.
            with contextlib.suppress(Exception):
                logging.append(project, entries, written_at=oldest[project])  # type: ignore[attr-defined]


class RevisionLog:
    """One instance's output: its lines into the revision's text file and, as entries, into Cloud Logging."""

    def __init__(self, revision: str, path: Path, shipper: LogShipper) -> None:
        parts = revision.split("/")  # projects/P/locations/L/services/S/revisions/R
        self.project = parts[1]
        self.path = path
        self.shipper = shipper
        self.resource = {
            "type": RESOURCE_TYPE,
            "labels": {
                "project_id": parts[1],
                "service_name": parts[5],
                "revision_name": parts[7],
                "location": parts[3],
                "configuration_name": parts[5],
            },
        }
        # Cloud Run's instance ids are long hex strings; each process is one instance here.
        self.instance_id = secrets.token_hex(32)
        self._file_lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def follow(self, stdout: IO[bytes] | None, stderr: IO[bytes] | None) -> None:
        """Read the process's two pipes until both close, on one thread: lines keep the order in which they were
        written across the two streams (two readers would race each other)."""
        streams = {s.fileno(): (s, log_id) for s, log_id in ((stdout, STDOUT_LOG), (stderr, STDERR_LOG)) if s}
        self._reader = threading.Thread(target=self._read, args=(streams,), name="run-log-reader", daemon=True)
        self._reader.start()

    def system(self, line: str, severity: str = "INFO") -> None:
        """A line of Cloud Run's own about this instance (in the text file as ``[cloud run] ...``)."""
        self._write_file(f"[cloud run] {line}\n".encode())
        nanos = self.shipper.now()
        entry = {"timestamp": _rfc3339(nanos), "textPayload": line, "severity": severity}
        self.shipper.put(self.project, lambda: [self._entry(SYSTEM_LOG, entry)], nanos)

    def drain(self, timeout: float = 5.0) -> None:
        """Once the process is gone: wait until its last lines are read (a worker that escaped the process group
        could hold a pipe open: not for longer than ``timeout``)."""
        if self._reader is not None:
            self._reader.join(timeout=timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every line read so far is in Cloud Logging."""
        self.shipper.flush(timeout=timeout)

    def _read(self, streams: dict[int, tuple[IO[bytes], str]]) -> None:
        pending = {fd: b"" for fd in streams}
        with selectors.DefaultSelector() as selector:
            for fd, (_, log_id) in streams.items():
                selector.register(fd, selectors.EVENT_READ, log_id)
            while selector.get_map():
                for key, _ in selector.select():
                    try:
                        chunk = os.read(key.fd, 65536)
                    except OSError:
                        chunk = b""
                    data = pending[key.fd] + chunk
                    *lines, rest = data.split(b"\n")
                    if not chunk:  # closed: what is left is the last line
                        lines, rest = [*lines, rest] if rest else lines, b""
                        selector.unregister(key.fd)
                        streams[key.fd][0].close()
                    elif len(rest) > MAX_LINE:  # as Logging's entry size limit would cut it
                        lines, rest = [*lines, rest], b""
                    pending[key.fd] = rest
                    if lines:
                        self._lines(lines, key.data)

    def _lines(self, raws: list[bytes], log_id: str) -> None:
        """Lines read together (from one chunk of a pipe): one write to the text file, one hand-over to the
        shipper, so a revision writing fast is read as fast as it writes."""
        self._write_file(b"".join(raw + b"\n" for raw in raws))
        first = self.shipper.now(len(raws))
        self.shipper.put(self.project, lambda: self._entries(raws, log_id, first), first)

    def _entries(self, raws: list[bytes], log_id: str, first: int) -> list[dict[str, Any]]:
        entries = []
        for i, raw in enumerate(raws):
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            if line.strip():
                entries.append(self._entry(log_id, entry_for_line(line, first + i)))
        return entries

    def _entry(self, log_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        entry["logName"] = f"projects/{self.project}/logs/{log_id}"
        entry["resource"] = self.resource
        entry["labels"] = {"instanceId": self.instance_id, **(entry.get("labels") or {})}
        return entry

    def _write_file(self, data: bytes) -> None:
        with self._file_lock, contextlib.suppress(OSError), self.path.open("ab") as f:
            f.write(data)
