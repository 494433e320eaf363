"""Dockerfile parsing as the classic builder reads it: instructions, flags, continuations, ``$VAR`` expansion."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from .errors import BuildStepError, DockerfileError

INSTRUCTIONS = frozenset(
    {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
        "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
    }
)  # fmt: skip
# Flags each instruction accepts (classic builder); anything else is a parse error, as on Docker.
_FLAGS: dict[str, frozenset[str]] = {
    "COPY": frozenset({"from", "chown", "chmod", "link", "parents", "exclude"}),
    "ADD": frozenset({"chown", "chmod", "link", "keep-git-dir", "checksum", "exclude"}),
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"mount", "network", "security"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}
# Instructions whose arguments get ARG/ENV substitution (Docker's "environment replacement" list).
EXPANDS = frozenset(
    {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR", "ONBUILD"}
)


@dataclass
class Instruction:
    keyword: str
    #: Arguments after the keyword and its ``--flags``, continuations joined.
    rest: str
    flags: dict[str, str]
    #: As the daemon echoes it in "Step i/N : ...".
    original: str
    line: int


def parse_dockerfile(text: str, name: str = "Dockerfile", *, classic: bool = True) -> list[Instruction]:
    """Split a Dockerfile into instructions, refusing what the daemon refuses before a build starts."""
    if not text.strip():
        raise DockerfileError(f"the Dockerfile ({name}) cannot be empty", 500)
    lines = text.splitlines()
    escape = "\\"
    # Parser directives (`# escape=`, `# syntax=`) are only honoured at the very top.
    for raw in lines:
        m = re.match(r"^\s*#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$", raw)
        if not m:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"invalid ESCAPE '{m.group(2)}'. Must be ` or \\")
            escape = m.group(2)
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        start = i + 1
        joined = lines[i].strip()
        i += 1
        if not joined or joined.startswith("#"):
            continue
        # A trailing escape character continues the instruction; blank and comment lines inside are dropped.
        while joined.endswith(escape):
            joined = joined[: -len(escape)].rstrip()
            nxt = None
            while i < len(lines):
                candidate = lines[i].strip()
                i += 1
                if candidate and not candidate.startswith("#"):
                    nxt = candidate
                    break
            if nxt is None:
                break
            joined = f"{joined} {nxt}"
        keyword, rest = [*re.split(r"\s+", joined, maxsplit=1), ""][:2]
        if not keyword:
            continue
        upper = keyword.upper()
        if upper not in INSTRUCTIONS:
            raise DockerfileError(f"dockerfile parse error line {start}: unknown instruction: {upper}")
        rest = rest.strip()
        flags: dict[str, str] = {}
        if upper in _FLAGS:
            rest, flags = _take_flags(upper, rest, start)
        if not rest and upper not in ("RUN", "CMD", "ENTRYPOINT"):
            raise DockerfileError(f"dockerfile parse error line {start}: {upper} requires at least one argument")
        if upper in ("COPY", "ADD") and len(split_words(rest)) < 2:
            raise DockerfileError(
                f"dockerfile parse error line {start}: {upper} requires at least two arguments, but only "
                "one was provided. Destination could not be determined."
            )
        if upper == "RUN" and classic and "mount" in flags:
            raise DockerfileError(
                "the --mount option requires BuildKit. Refer to https://docs.docker.com/go/buildkit/ to learn how "
                "to build images with BuildKit enabled"
            )
        out.append(Instruction(upper, rest, flags, f"{upper} {joined[len(keyword) :].strip()}".strip(), start))
    if not out:
        raise DockerfileError("file with no instructions", 500)
    seen_from = False
    for inst in out:
        if inst.keyword == "FROM":
            seen_from = True
        elif inst.keyword != "ARG" and not seen_from:
            raise DockerfileError("no build stage in current context")
    return out


def _take_flags(keyword: str, rest: str, line: int) -> tuple[str, dict[str, str]]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        token, _, remainder = rest.partition(" ")
        name, _, value = token[2:].partition("=")
        if name not in _FLAGS[keyword]:
            raise DockerfileError(f"dockerfile parse error line {line}: unknown flag: {name}")
        flags[name] = value if value or "=" in token else "true"
        rest = remainder.strip()
    return rest, flags


def split_words(rest: str) -> list[str]:
    """JSON (exec) form if it parses as a list of strings, else whitespace-separated words."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    try:
        return shlex.split(rest, posix=True)
    except ValueError:
        return rest.split()


def exec_form(rest: str) -> list[str] | None:
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return None


_VAR = re.compile(
    r"\\\$|\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:[-+])?(?P<word>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand(text: str, env: dict[str, str]) -> str:
    """Docker's environment replacement: ``$X``, ``${X}``, ``${X:-default}``, ``${X:+alt}``, ``\\$`` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        if m.group("bare"):
            return env.get(m.group("bare"), "")
        name, op, word = m.group("braced"), m.group("op"), m.group("word")
        value = env.get(name, "")
        if op == ":-":
            return value or expand(word, env)
        if op == ":+":
            return expand(word, env) if value else ""
        return value

    return _VAR.sub(sub, text)


def pairs(rest: str, keyword: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """``K=V K2="v 2"`` or the legacy ``K some value`` form of ENV/LABEL, values expanded."""
    try:
        tokens = shlex.split(rest, posix=True)
    except ValueError as exc:
        raise BuildStepError(f"{keyword} {rest}: {exc}") from None
    if tokens and "=" not in tokens[0]:
        key, _, value = rest.partition(" ")
        if not value.strip():
            raise BuildStepError(
                f"{keyword} names can not be blank" if not key else f"{keyword} must have two arguments"
            )
        return [(key, expand(value.strip(), env))]
    out = []
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise BuildStepError(f'Syntax error - can\'t find = in "{token}". Must be of the form: name=value')
        out.append((key, expand(value, env)))
    return out
