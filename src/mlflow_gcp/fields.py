"""The fields a resource owns, declared once: what each should be, how to read it back, how it may change.

A resource lists its :class:`Owned` fields; its create body, its diff and its update mask all derive from that
list, so a field cannot be set without being compared (issue: drift on every owned field, by construction).

Modes:

- ``in_place``: any difference is repaired by an update of that field;
- ``grow_only``: only a live value *below* the desired one is a difference (a disk never shrinks);
- ``labels``: our keys must hold our values; keys others added stay;
- ``refuse``: the field cannot change without replacing the resource, which mlflow-gcp never does to a
  resource that holds data: a difference stops ``up`` with ``refusal`` as the message (``hint`` says what to do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["in_place", "grow_only", "labels", "refuse"]


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Owned:
    #: The API's field path ("settings.tier", "template.scaling.max_instance_count"): the create body's and
    #: the update mask's name for it, and what ``status`` shows.
    path: str
    desired: Any
    #: The live value, from the resource as the API returned it.
    read: Callable[[Any], Any]
    mode: Mode = "in_place"
    #: Makes the live and desired values comparable (e.g. sorted lists, ints from int64 strings).
    normalize: Callable[[Any], Any] = _same
    refusal: str = ""
    hint: str = ""
    #: Sets the value on an API object (google-cloud-storage's Bucket, a run_v2 proto); JSON resources
    #: need none: the value goes at ``path``.
    write: Callable[[Any, Any], None] | None = None
    #: The update mask's path when it is not ``path`` (a field inside a list item goes with the whole list).
    mask: str = ""

    def differs(self, live: Any) -> bool:
        have, want = self.normalize(live), self.normalize(self.desired)
        if self.mode == "grow_only":
            return have is None or have < want
        if self.mode == "labels":
            have = dict(have or {})
            return any(have.get(k) != v for k, v in dict(want).items())
        return have != want

    def shown(self, live: Any) -> Any:
        """The live value as a change shows it (for labels: only our keys)."""
        if self.mode == "labels":
            have = dict(live or {})
            return {k: have.get(k) for k in dict(self.desired)}
        return live


def changes(fields: Iterable[Owned], actual: Any) -> list[Any]:
    """The owned fields whose live value differs, as engine Changes (refusals carried along)."""
    from .engine import Change

    out = []
    for f in fields:
        live = f.read(actual)
        if f.differs(live):
            refuse = f.mode == "refuse"
            out.append(Change(f.path, f.shown(live), f.desired, f.refusal if refuse else "", f.hint if refuse else ""))
    return out


def apply(fields: Iterable[Owned], target: Any, only: Iterable[str] | None = None) -> Any:
    """Write the desired value of each field (or of those named in ``only``) into ``target``: a JSON dict
    (a create or patch body) or an API object. Labels are merged with those ``target`` already has."""
    wanted = set(only) if only is not None else None
    for f in fields:
        if wanted is not None and f.path not in wanted:
            continue
        value = f.desired
        if f.mode == "labels":
            value = merged_labels(f.read(target) if not isinstance(target, dict) else get(target, f.path), value)
        if f.write is not None:
            f.write(target, value)
        else:
            put(target, f.path, value)
    return target


def body(fields: Iterable[Owned], only: Iterable[str] | None = None) -> dict[str, Any]:
    """A nested JSON body holding the desired value of each field (or of those named in ``only``)."""
    return apply(fields, {}, only)


def put(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        target = target.setdefault(p, {})
    target[leaf] = value


def get(source: Mapping[str, Any] | None, path: str, default: Any = None) -> Any:
    """A dotted path into a JSON resource; ``default`` where any part is missing."""
    value: Any = source
    for p in path.split("."):
        if not isinstance(value, Mapping) or p not in value:
            return default
        value = value[p]
    return value


def reader(path: str, default: Any = None) -> Callable[[Any], Any]:
    """``read`` for a JSON resource: the value at ``path``."""
    return lambda actual: get(actual, path, default)


def merged_labels(current: Mapping[str, str] | None, desired: Mapping[str, str]) -> dict[str, str]:
    """Our labels over whatever labels the resource has (others' keys stay)."""
    return {**dict(current or {}), **desired}
