"""The server's logs, read back from Cloud Logging: ``mlflow-gcp logs`` (a time window, or following new entries)
and the last lines of a revision that did not become ready, which `up` and `rotate-password` show with the error.

Where Cloud Run puts them (https://cloud.google.com/run/docs/logging): each line an instance writes to stdout or
stderr is an entry of the log ``run.googleapis.com/stdout`` or ``/stderr`` (a line that is a JSON object is a
``jsonPayload`` with its ``severity`` read), Cloud Run's own lines about instances (started, exited, a failed startup
probe) are in ``run.googleapis.com/varlog/system`` and request logs in ``run.googleapis.com/requests``; every one is
on the monitored resource ``cloud_run_revision``, labelled with ``service_name`` and ``revision_name``. So one filter
finds them all::

    resource.type="cloud_run_revision" AND resource.labels.service_name="S"
        [AND resource.labels.revision_name="R"] AND timestamp>="T"

Following polls ``entries.list`` (Logging's live tail is a gRPC stream, which the discovery client does not speak):
every :data:`POLL_SECONDS` it asks again from a little before the newest entry printed, since entries reach
Logging seconds late and out of order, and skips those already printed (by log name and ``insertId``, what Logging
itself deduplicates on). ``entries.list`` has a per-project rate quota (https://cloud.google.com/logging/quotas:
60 a minute), hence a poll every 2 seconds, not faster.

Secrets: the server masks every form of its secrets in its own output before Cloud Run sees it
(``server_image/entrypoint.py``, ``Masker``), so the entries hold none. Reading the secrets here to mask them again
would need ``secretAccessor`` merely to read logs, so this module does not; it masks what has the shape of a
credential in any line instead: a password in a URL (``scheme://user:***@``), an ``Authorization`` header's value,
``password=...``/``"password": "..."``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import MlflowGcpError

if TYPE_CHECKING:
    from .context import Context
    from .naming import Names

RESOURCE_TYPE = "cloud_run_revision"
#: Lines of a failed revision's log shown with the error (as many as a failed build shows).
TAIL_LINES = 20
POLL_SECONDS = 2.0
#: How far before the newest entry printed each poll looks again, for entries that reached Logging late.
LATE_SECONDS = 30.0
PAGE_SIZE = 1000

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})?$")
_REVISION = re.compile(r"^[a-z][-a-z0-9]{0,62}$")
_MASKS = (
    # scheme://user:password@host
    (re.compile(r"(\b[a-zA-Z][\w+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1***@"),
    # Authorization: Basic ... / Bearer ...
    (re.compile(r"(?i)(\bauthorization\b[\"']?\s*[:=]\s*[\"']?(?:basic|bearer)\s+)[^\s\"',;]+"), r"\1***"),
    # password=..., "password": "...", PGPASSWORD=...
    (re.compile(r"(?i)(\b\w*password\w*\b[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"), r"\1***"),
)


# --- time ------------------------------------------------------------------------------------------------------


def parse_since(text: str, now: int | None = None) -> int:
    """``--since`` as nanoseconds since the epoch (the precision of Logging's timestamps, which a datetime lacks):
    a duration back from ``now`` (``90s``, ``15m``, ``1h``, ``2d``, ``1h30m``) or an RFC 3339 time
    (``2024-05-01T12:00:00Z``; no zone means UTC). ValueError when it is neither."""
    text = text.strip()
    m = _DURATION.match(text)
    if text and m:
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        back = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
        return (time.time_ns() if now is None else now) - back * 1_000_000_000
    nanos = to_nanos(text)
    if nanos is None:
        raise ValueError(f"{text!r} is neither a duration like 30m, 1h or 2d nor a time like 2024-05-01T12:00:00Z")
    return nanos


def to_nanos(stamp: str) -> int | None:
    """An RFC 3339 timestamp (as Logging writes them, up to nanoseconds) as nanoseconds since the epoch."""
    m = _RFC3339.match(stamp.strip())
    if not m:
        return None
    zone = m.group(4) or "Z"
    try:
        base = datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{'+00:00' if zone in 'Zz' else zone}")
    except ValueError:
        return None
    return int(base.timestamp()) * 1_000_000_000 + int((m.group(3) or "0").ljust(9, "0"))


def rfc3339(nanos: int) -> str:
    seconds, frac = divmod(nanos, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


# --- the query -------------------------------------------------------------------------------------------------


def revision_name(text: str) -> str:
    """``--revision``: a revision's short name (a full resource name is cut to it); ValueError if it is none."""
    short = text.strip().rsplit("/", 1)[-1]
    if not _REVISION.match(short):
        raise ValueError(f"{text!r} is not a Cloud Run revision name (like mlflow-dev-00003-xyz)")
    return short


def service_filter(names: Names, *, since: str | None = None, revision: str | None = None) -> str:
    """The Logging query for the service's entries (``since``: an RFC 3339 time)."""
    parts = [f'resource.type="{RESOURCE_TYPE}"', f'resource.labels.service_name="{names.service}"']
    if revision:
        parts.append(f'resource.labels.revision_name="{revision}"')
    if since:
        parts.append(f'timestamp>="{since}"')
    return " AND ".join(parts)


def list_entries(
    ctx: Context, query: str, *, newest_first: bool = False, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """The entries matching ``query`` in the project, page after page, oldest first unless ``newest_first``."""
    body: dict[str, Any] = {
        "resourceNames": [f"projects/{ctx.names.project}"],
        "filter": query,
        "orderBy": "timestamp desc" if newest_first else "timestamp asc",
        "pageSize": min(PAGE_SIZE, limit) if limit else PAGE_SIZE,
    }
    given = 0
    while True:
        answer = _page(ctx, dict(body))
        for entry in answer.get("entries", []):
            yield entry
            given += 1
            if limit and given >= limit:
                return
        token = answer.get("nextPageToken")
        if not token:
            return
        body["pageToken"] = token


def _page(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    return dict(ctx.api("logging.entries.list", lambda: ctx.clients.logging.entries().list(body=body).execute()))


# --- showing an entry ------------------------------------------------------------------------------------------


def mask(text: str) -> str:
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def masked(value: Any) -> Any:
    """An entry (any JSON value) with :func:`mask` applied to every string in it."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def text_of(entry: dict[str, Any]) -> str:
    """What a person reads of an entry: its text, a structured entry's ``message`` (else its JSON), a request."""
    if "textPayload" in entry:
        return str(entry["textPayload"])
    payload = entry.get("jsonPayload")
    if isinstance(payload, dict):
        message = payload.get("message")
        return message if isinstance(message, str) else json.dumps(payload, sort_keys=True)
    request = entry.get("httpRequest")
    if isinstance(request, dict):
        parts = [request.get("requestMethod"), request.get("status"), request.get("requestUrl"), request.get("latency")]
        return " ".join(str(p) for p in parts if p not in (None, ""))
    if isinstance(entry.get("protoPayload"), dict):
        return str(entry["protoPayload"].get("@type", "(protoPayload)"))
    return ""


def format_entry(entry: dict[str, Any]) -> str:
    """One entry as a line: time (UTC, milliseconds), revision, severity, masked text (a structured message's
    further lines indented under it)."""
    nanos = to_nanos(str(entry.get("timestamp", "")))
    when = rfc3339(nanos)[:23] + "Z" if nanos is not None else str(entry.get("timestamp", "?"))
    revision = ((entry.get("resource") or {}).get("labels") or {}).get("revision_name", "-")
    severity = entry.get("severity") or "DEFAULT"
    text = mask(text_of(entry)).rstrip().replace("\n", "\n    ")
    return f"{when}  {revision}  {severity:<8} {text}"


# --- following -------------------------------------------------------------------------------------------------


@dataclass
class Cursor:
    """Where following stands: the newest entry printed, and the entries printed close to it."""

    start: int  # nanoseconds: nothing older is asked for
    newest: int = 0
    seen: dict[tuple[str, str], int] = field(default_factory=dict)

    def window(self) -> str:
        """The time to ask from: a little before the newest entry printed (never before ``start``)."""
        return rfc3339(max(self.start, self.newest - int(LATE_SECONDS * 1e9)))

    def take(self, entry: dict[str, Any]) -> bool:
        """True the first time ``entry`` is seen (print it), False for one printed already."""
        key = (str(entry.get("logName", "")), str(entry.get("insertId", "")))
        if key in self.seen:
            return False
        nanos = to_nanos(str(entry.get("timestamp", ""))) or 0
        self.seen[key] = nanos
        if nanos > self.newest:
            self.newest = nanos
            horizon = self.newest - int(LATE_SECONDS * 1e9)
            self.seen = {k: t for k, t in self.seen.items() if t >= horizon}
        return True


def follow(
    ctx: Context,
    since: int,
    emit: Callable[[dict[str, Any]], None],
    *,
    revision: str | None = None,
    poll: float = POLL_SECONDS,
) -> None:
    """Emit the service's entries from ``since`` (nanoseconds) on, then each new one as it arrives; runs until
    interrupted."""
    cursor = Cursor(start=since)
    while True:
        for entry in list_entries(ctx, service_filter(ctx.names, since=cursor.window(), revision=revision)):
            if cursor.take(entry):
                emit(entry)
        time.sleep(poll)


# --- a revision that did not become ready ----------------------------------------------------------------------


def logs_command(ctx: Context, revision: str) -> str:
    """The command that shows a revision's whole log (the flags the other commands' hints use too)."""
    return f"mlflow-gcp logs --revision {revision}" + (" --local" if ctx.clients.local else "")


def revision_tail(ctx: Context, revision: str, *, since: str | None = None, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines a revision logged, oldest first, masked. A read that fails says why instead: the
    revision's failure matters more than its log."""
    query = service_filter(ctx.names, since=since, revision=revision)
    try:
        entries = list(list_entries(ctx, query, newest_first=True, limit=lines))
    except Exception as exc:
        return [f"(its log could not be read: {type(exc).__name__})"]
    return [mask(text_of(e)).rstrip() for e in reversed(entries)]


class RevisionFailed(MlflowGcpError):
    """A Cloud Run revision that did not become ready: the failing condition, the last lines it logged and the
    command that shows more (:attr:`report`, which the rotation repeats under its own sentence)."""

    def __init__(self, revision: str, report: list[str], *, hint: str | None = None) -> None:
        super().__init__("\n  ".join(report), hint=hint)
        self.revision = revision
        self.report = report


def failed_revision(ctx: Context, service: Any) -> RevisionFailed | None:
    """If the live run_v2.Service's newest revision did not become ready: why, and what it logged; else None."""
    if service is None or not service.latest_created_revision:
        return None
    if service.latest_created_revision == service.latest_ready_revision:
        return None
    name = service.latest_created_revision
    short = name.rsplit("/", 1)[-1]
    revisions = ctx.clients.run_revisions
    try:
        revision = ctx.api("run.revisions.get", revisions.get_revision, name=name)
    except Exception:  # deleted meanwhile, or unreadable: the service's own condition still says why
        revision = None
    conditions = list(revision.conditions) if revision is not None else []
    failing = next((c for c in conditions if c.state.name == "CONDITION_FAILED"), None)
    if failing is None and service.terminal_condition.state.name == "CONDITION_FAILED":
        failing = service.terminal_condition
    ready = service.latest_ready_revision.rsplit("/", 1)[-1]
    serving = f"traffic stays on {ready}" if ready else "no revision serves yet"
    report = [f"Cloud Run revision {short} did not become ready ({serving})."]
    if failing is not None:
        # One of the condition's reasons is set (a oneof); unset, each reads as its 0 value.
        reason = next((r.name for r in (failing.reason, failing.revision_reason) if r), "")
        message = [line for line in failing.message.splitlines() if line.strip()] or ["(no message)"]
        lead = f"condition {failing.type_} {failing.state.name}" + (f" ({reason})" if reason else "")
        report.append(f"{lead}: {message[0]}")
        report += [f"  {line}" for line in message[1:]]
    since = None
    if revision is not None and revision.create_time:
        since = revision.create_time.isoformat().replace("+00:00", "Z")
    tail = revision_tail(ctx, short, since=since)
    report.append("last lines it logged:" if tail else "it logged nothing (yet: Cloud Logging may be seconds behind)")
    report += [f"  {line}" for line in tail]
    report.append(f"more: {logs_command(ctx, short)}")
    hint = "Fix what its log shows (a setting, the image), then run the command again; "
    hint += "the revision that served before keeps serving." if ready else "nothing serves until a revision is ready."
    return RevisionFailed(short, report, hint=hint)
