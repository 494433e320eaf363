"""Routing and request/response plumbing shared by every emulated API.

Each API is an :class:`ApiModule` mounted under its own path prefix. Routes are declared with the
:func:`route` decorator using Google's URL templates (``{name}`` matches one segment, ``{name=**}`` matches
the rest); custom verbs (``:addVersion``) are part of the template. Werkzeug's own router is not used
because its default converter happily swallows ``:verb`` suffixes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request, Response

from .errors import GcpError, invalid

if TYPE_CHECKING:
    from .world import World

Handler = Callable[..., Any]

_SEGMENT = re.compile(r"\{(\w+)(=\*\*)?\}")


def compile_template(template: str) -> re.Pattern[str]:
    """``/v1/projects/{project}/secrets/{secret}:access`` -> an anchored regex with named groups."""
    out, pos = [], 0
    for m in _SEGMENT.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/:]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


@dataclass
class Route:
    method: str
    template: str
    name: str
    mutating: bool
    check_service: bool
    handler: Handler
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.pattern = compile_template(self.template)


def route(
    method: str, template: str, *, name: str, mutating: bool | None = None, check_service: bool = True
) -> Callable[[Handler], Handler]:
    """Declare a handler. ``mutating`` defaults to ``method != GET``; ``check_service`` makes the
    dispatcher refuse the call with SERVICE_DISABLED when the API is not enabled in ``{project}``."""

    def mark(fn: Handler) -> Handler:
        fn.__dict__.setdefault("_routes", []).append(
            (method, template, name, method != "GET" if mutating is None else mutating, check_service)
        )
        return fn

    return mark


class ApiRequest:
    """What a handler sees: path params, query args, the JSON body, and how the client wants enums."""

    def __init__(self, raw: Request, params: dict[str, str], route: Route) -> None:
        self.raw = raw
        self.params = params
        self.route = route
        self._json: Any = None

    @property
    def args(self) -> MultiDict[str, str]:
        return self.raw.args

    @property
    def enum_int(self) -> bool:
        # GAPIC REST clients send `$alt=json;enum-encoding=int` and expect enums as integers back.
        return "enum-encoding=int" in self.raw.args.get("$alt", "")

    def json(self) -> dict[str, Any]:
        if self._json is None:
            data = self.raw.get_data(cache=True)
            if not data.strip():
                self._json = {}
            else:
                try:
                    self._json = json.loads(data)
                except ValueError as exc:
                    raise invalid(f"Invalid JSON payload received. {exc}") from None
                if not isinstance(self._json, dict):
                    raise invalid("Invalid JSON payload received. Expected an object.")
        return self._json

    def __getitem__(self, key: str) -> str:
        return self.params[key]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def error_response(err: GcpError, style: str = "both") -> Response:
    return json_response(err.envelope(style), err.code)


class ApiModule:
    """One emulated API: its mount prefix, its service name for enablement, and its routes."""

    #: Mount point on the emulator's port; "" mounts at the root (Cloud Storage, Docker Engine).
    prefix: str = ""
    #: Service name as Service Usage knows it, or None for APIs that need no enabling.
    service: str | None = None
    #: Human title used in SERVICE_DISABLED messages.
    title: str = ""
    #: The error envelope this API family sends (see core/errors.py): "legacy", "rpc" or "both".
    error_style: str = "rpc"

    def __init__(self, world: World) -> None:
        self.world = world
        self.routes: list[Route] = []
        for attr in dir(type(self)):
            fn = getattr(type(self), attr)
            for method, template, name, mutating, check in getattr(fn, "_routes", ()):
                self.routes.append(Route(method, template, name, mutating, check, getattr(self, attr)))
        # Longer templates first, so `/secrets/{s}:access` is tried before a looser one.
        self.routes.sort(key=lambda r: -len(r.template))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        allowed = False
        for r in self.routes:
            m = r.pattern.match(path)
            if m:
                if r.method == method:
                    return r, m.groupdict()
                allowed = True
        if allowed:
            raise GcpError(405, f"Method {method} not allowed on {path}.", "UNIMPLEMENTED")
        return None

    def iter_routes(self) -> Iterator[Route]:
        return iter(self.routes)

    # Lifecycle hooks for modules that own processes or files.
    def reset(self) -> None:
        """Forget every resource (and stop anything running for them)."""

    def shutdown(self) -> None:
        """Stop background processes; resources stay in the store for the next start."""

    def restore(self) -> None:
        """Bring back what the store says should be running (after a daemon restart)."""
