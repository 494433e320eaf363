"""Replay traffic recorded on real GCP against the emulator and compare the answers structurally.

A recording is a list of exchanges (request, recorded response). Replaying one sends each request to the
emulator with fresh ids substituted and the Google host rewritten to the emulator's mount, then compares:

- the status code;
- the set of field paths (list items collapse to ``[]``, so order does not matter);
- values that carry meaning: enums (``UPPER_CASE``), ``kind``, ``@type``, booleans, error ``reason``/``domain``;
- the class of every other value: a timestamp must still be a timestamp, an etag an etag, an int64 a
  string of digits.

Ids the recording could not know (operation names, key ids) are learnt from the emulator's answers: a
recorded value holding ``${operationID}`` (or, in a go-vcr cassette, a real uuid) binds to what the emulator
returned at the same place, and later requests use it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml

# Google host (and version prefix) -> the emulator's mount for it.
HOSTS: list[tuple[str, str]] = [
    ("https://sqladmin.googleapis.com/sql/v1beta4/", "/sqladmin/v1/"),
    ("https://sqladmin.googleapis.com/v1/", "/sqladmin/v1/"),
    ("https://secretmanager.googleapis.com/", "/secretmanager/"),
    ("https://iam.googleapis.com/v1/", "/iam/v1/"),
    ("https://storage.googleapis.com/", "/"),
    ("https://artifactregistry.googleapis.com/", "/artifactregistry/"),
    ("https://serviceusage.googleapis.com/v1/", "/serviceusage/v1/"),
    ("https://run.googleapis.com/v2/", "/run/v2/"),
    ("https://cloudresourcemanager.googleapis.com/", "/resourcemanager/"),
]

# Resource Manager v1 calls the emulator serves (the tool uses v3; v1's IAM methods have the same bodies).
_CRM_SERVED = re.compile(r"^/resourcemanager/v[13]/projects/[^/:]+:(get|set)IamPolicy$")

_VAR = re.compile(r"\$\{(\w+)\}")
_ENUM = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$|^[A-Z]{2,}[0-9]*$")
_CLASSES: list[tuple[str, re.Pattern[str]]] = [
    ("timestamp", re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")),
    ("duration", re.compile(r"^\d+(\.\d+)?s$")),
    ("int64", re.compile(r"^-?\d+$")),
    ("url", re.compile(r"^https?://")),
]
#: Keys whose string value is compared exactly (after substitution), not just by class.
_VALUE_KEYS = {"kind", "@type", "reason", "domain", "status", "state", "type"}
#: Keys whose values are the user's own data: their keys are not schema.
_FREE_MAPS = {"labels", "userLabels", "annotations", "resourceLabels"}


@dataclass
class Exchange:
    number: int  # 1-based, as the allowlist and the manifest name it
    method: str
    url: str
    body: str
    status: int
    response: Any  # parsed JSON, or the raw text when not JSON, or None when empty

    @property
    def is_operation_poll(self) -> bool:
        return self.method == "GET" and "/operations/" in self.url


# --- parsing -----------------------------------------------------------------------------------------------


def parse(text: str, *, cassette: bool) -> list[Exchange]:
    return parse_cassette(text) if cassette else parse_http_log(text)


def _json_or_text(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_http_log(text: str) -> list[Exchange]:
    """Config Connector's ``_http.log``: request line, headers, body; status line, headers, body; ``---``."""
    text = "\n".join(line for line in text.splitlines() if not line.startswith("# "))
    out: list[Exchange] = []
    for number, chunk in enumerate(re.split(r"\n---\n", text.strip()), start=1):
        lines = chunk.strip("\n").split("\n")
        method, url = lines[0].split(" ", 1)
        i = 1
        while i < len(lines) and lines[i].strip():  # request headers
            i += 1
        start = i + 1
        status_at = next(j for j in range(start, len(lines)) if re.match(r"^\d{3} ", lines[j]))
        body = "\n".join(lines[start:status_at]).strip()
        status = int(lines[status_at][:3])
        j = status_at + 1
        while j < len(lines) and lines[j].strip():  # response headers
            j += 1
        out.append(Exchange(number, method, url, body, status, _json_or_text("\n".join(lines[j + 1 :]))))
    return out


def parse_cassette(text: str) -> list[Exchange]:
    """A go-vcr v2 cassette (``_vcr_cassettes/*.yaml``)."""
    doc = next(d for d in yaml.safe_load_all(text) if d and "interactions" in d)
    out = []
    for number, it in enumerate(doc["interactions"], start=1):
        req, resp = it["request"], it["response"]
        out.append(
            Exchange(
                number, req["method"], req["url"], req.get("body") or "", resp["code"], _json_or_text(resp["body"])
            )
        )
    return out


# --- substitution ------------------------------------------------------------------------------------------


@dataclass
class Bindings:
    """Placeholder values (``projectId`` -> ``p-1a2b``) and literal replacements learnt from answers."""

    vars: dict[str, str]
    literals: dict[str, str] = field(default_factory=dict)

    def apply(self, text: str) -> str:
        for recorded in sorted(self.literals, key=len, reverse=True):
            text = text.replace(recorded, self.literals[recorded])
        return _VAR.sub(lambda m: self.vars.get(m.group(1), m.group(0)), text)

    def learn(self, recorded: Any, actual: Any) -> None:
        """Bind what the recording left open (``${operationID}``, a cassette's uuids) to the emulator's values."""
        for path, rec, act in _pairs(recorded, actual):
            if not isinstance(rec, str) or not isinstance(act, str):
                continue
            if rec == REDACTED_ETAG and path.rsplit(".", 1)[-1] == "etag":
                # Config Connector writes every etag as this placeholder, in requests too: a request that sent
                # the etag GCP had just returned sends the emulator's (JSON-escaped: etags may hold quotes).
                self.literals[rec] = json.dumps(act)[1:-1]
            elif _VAR.search(rec):
                pattern = re.escape(rec)
                names: list[str] = []
                for m in _VAR.finditer(rec):
                    name = m.group(1)
                    esc = re.escape(m.group(0))
                    if name in self.vars and name not in _RELEARN:
                        pattern = pattern.replace(esc, re.escape(self.vars[name]), 1)
                    else:
                        pattern = pattern.replace(esc, f"(?P<{name}>[^/@?]+)" if name not in names else "[^/@?]+", 1)
                        names.append(name)
                m2 = re.fullmatch(pattern, act)
                if m2:
                    self.vars.update(m2.groupdict())
            elif path.endswith("name") and rec != act and "/" in rec and "/" in act:
                # A cassette's real operation name: learn its last segment (requests carry it in the URL).
                r_last, a_last = rec.rsplit("/", 1)[1], act.rsplit("/", 1)[1]
                if r_last != a_last and len(r_last) >= 8:
                    self.literals[r_last] = a_last


#: What Config Connector's log normaliser writes in place of every etag.
REDACTED_ETAG = "abcdef0123A="

# Ids that change with each answer (one placeholder stands for every operation of a recording).
_RELEARN = {"operationID"}


def _pairs(recorded: Any, actual: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(recorded, dict) and isinstance(actual, dict):
        for key, value in recorded.items():
            if key in actual:
                yield from _pairs(value, actual[key], f"{path}.{key}" if path else key)
    elif isinstance(recorded, list) and isinstance(actual, list):
        for rec, act in zip(recorded, actual, strict=False):
            yield from _pairs(rec, act, f"{path}[]")
    else:
        yield path, recorded, actual


# --- structural comparison ---------------------------------------------------------------------------------


def value_class(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"bool:{value}"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, str):
        if key in _VALUE_KEYS or _ENUM.match(value):
            return f"value:{value}"
        if key == "etag":
            return "etag" if re.fullmatch(r'(W/)?"?[A-Za-z0-9+/=_\-]+"?', value) else f"not-an-etag:{value}"
        for name, pattern in _CLASSES:
            if pattern.match(value):
                return name
        return "string"
    return type(value).__name__


def shape(value: Any, path: str = "", key: str = "") -> dict[str, set[str]]:
    """Field path -> the set of value classes found there."""
    out: dict[str, set[str]] = {}

    def walk(v: Any, p: str, k: str) -> None:
        if isinstance(v, dict):
            out.setdefault(p or ".", set()).add("object")
            if k in _FREE_MAPS:
                return
            for key2, item in v.items():
                walk(item, f"{p}.{key2}" if p else key2, key2)
        elif isinstance(v, list):
            out.setdefault(p or ".", set()).add("list")
            for item in v:
                walk(item, f"{p}[]", k)
        else:
            out.setdefault(p or ".", set()).add(value_class(k, v))

    walk(value, path, key)
    return out


def compare(recorded: Any, actual: Any) -> list[str]:
    """Differences between a recorded body (placeholders already substituted) and the emulator's."""
    if not isinstance(recorded, dict | list):
        return []  # an empty or non-JSON recorded body (go-vcr redacts error bodies) says nothing
    if not isinstance(actual, dict | list):
        return [f"body: not JSON ({str(actual)[:60]!r})"]
    rec, act = shape(recorded), shape(actual)
    diffs = []
    for p in sorted(rec.keys() - act.keys()):
        if not any(p.startswith(q + ".") or p.startswith(q + "[]") for q in rec.keys() - act.keys() if q != p):
            diffs.append(f"missing {p}")
    for p in sorted(act.keys() - rec.keys()):
        if not any(p.startswith(q + ".") or p.startswith(q + "[]") for q in act.keys() - rec.keys() if q != p):
            diffs.append(f"extra {p}")
    for p in sorted(rec.keys() & act.keys()):
        if rec[p] != act[p]:
            diffs.append(f"at {p}: {'|'.join(sorted(act[p]))} recorded {'|'.join(sorted(rec[p]))}")
    return diffs


# --- replay ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    exchange: Exchange
    path: str
    status: int
    differences: list[str]

    def lines(self, recording: str) -> list[str]:
        head = f"{recording}#{self.exchange.number} {self.exchange.method} {self.path}"
        out = []
        if self.status != self.exchange.status:
            out.append(f"{head}: status {self.status} recorded {self.exchange.status}")
        out.extend(f"{head}: {d}" for d in self.differences)
        return out


def emulator_path(url: str) -> str | None:
    """The emulator path (with query) for a Google URL, or None when the emulator does not serve that API."""
    for google, mount in HOSTS:
        if url.startswith(google):
            rest = url[len(google) :]
            path = mount + rest
            bare = urlsplit(path).path
            if mount == "/resourcemanager/" and not _CRM_SERVED.match(bare):
                return None
            return path
    return None


def _is_done(body: Any) -> bool:
    return isinstance(body, dict) and (body.get("done") is True or body.get("status") == "DONE")


class Replayer:
    def __init__(self, base_url: str, bindings: Bindings, *, poll_timeout: float = 180) -> None:
        self.base_url = base_url.rstrip("/")
        self.bindings = bindings
        self.http = requests.Session()
        self.poll_timeout = poll_timeout

    def send(self, ex: Exchange, path: str) -> requests.Response:
        body = self.bindings.apply(ex.body) if ex.body else None
        headers = {"Content-Type": "application/json"} if body else {}
        return self.http.request(ex.method, self.base_url + path, data=body, headers=headers, timeout=120)

    def replay(self, exchanges: list[Exchange], skip: set[int]) -> Iterator[Outcome]:
        for ex in exchanges:
            if ex.number in skip:
                continue
            raw_path = emulator_path(ex.url)
            if raw_path is None:
                continue
            path = self.bindings.apply(raw_path)
            resp = self.send(ex, path)
            actual = _json_or_text(resp.text)
            if ex.is_operation_poll and _is_done(ex.response):
                # The recorded poll saw the operation finished: poll as a client would until ours is too.
                deadline = time.monotonic() + self.poll_timeout
                while resp.status_code == 200 and not _is_done(actual) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    resp = self.send(ex, path)
                    actual = _json_or_text(resp.text)
            recorded = ex.response
            if isinstance(recorded, dict | list):
                self.bindings.learn(recorded, actual)
                recorded = json.loads(self.bindings.apply(json.dumps(recorded)))
            yield Outcome(ex, urlsplit(path).path, resp.status_code, compare(recorded, actual))


# --- allowlist ---------------------------------------------------------------------------------------------


@dataclass
class Allowed:
    pattern: re.Pattern[str]
    reason: str
    line: int
    used: int = 0


def load_allowlist(text: str) -> list[Allowed]:
    """One difference per line: ``REGEX  # reason``; the regex is searched in the difference's text."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition("  # ")
        if not sep or not reason.strip():
            raise ValueError(f"allowlist line {number} has no reason: {line!r}")
        out.append(Allowed(re.compile(pattern.strip()), reason.strip(), number))
    return out
