"""Image references as the Docker daemon reads them: ``name[:tag][@digest]``, familiar names, registry hosts."""

from __future__ import annotations

import re

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
# A first component is a registry host only with a dot, a port, or as "localhost" (as Docker splits names).
_DOMAIN = rf"(?:(?:localhost|{_LABEL}(?:\.{_LABEL})+)(?::[0-9]+)?|{_LABEL}:[0-9]+)"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>[\w][\w.-]{{0,127}}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


class InvalidReference(ValueError):
    pass


def parse_reference(ref: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` -> (familiar name, tag, digest), as the daemon's reference parser reads it."""
    m = _REFERENCE.match(ref)
    if not m:
        name_part = ref.split("@")[0].rsplit(":", 1)[0] if ":" in ref.split("/")[-1] else ref.split("@")[0]
        if name_part != name_part.lower() and _REFERENCE.match(ref.lower()):
            raise InvalidReference(f"invalid reference format: repository name ({name_part}) must be lowercase")
        raise InvalidReference("invalid reference format")
    return familiar(m.group("name")), m.group("tag"), m.group("digest")


def familiar(name: str) -> str:
    """``docker.io/library/python`` -> ``python``, as RepoTags show names."""
    for prefix in ("docker.io/library/", "index.docker.io/library/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def registry_host(name: str) -> str:
    first, sep, _rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"
