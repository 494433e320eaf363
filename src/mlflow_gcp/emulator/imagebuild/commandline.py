"""The ``docker build`` command line as the docker CLI parses it (Cloud Build's docker steps)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BuildStepError


@dataclass
class DockerBuildArgs:
    tags: list[str]
    dockerfile: str | None
    context: str
    buildargs: dict[str, str]
    target: str | None
    labels: dict[str, str]


def parse_docker_build_args(args: list[str], env: dict[str, str]) -> DockerBuildArgs:
    """``docker build`` flags as the docker CLI parses them (the subset builds use)."""
    tags: list[str] = []
    dockerfile = None
    target = None
    buildargs: dict[str, str] = {}
    labels: dict[str, str] = {}
    positional: list[str] = []
    valued = {"-t", "--tag", "-f", "--file", "--build-arg", "--target", "--label", "--cache-from", "--network",
              "--platform", "--progress", "--iidfile", "--shm-size", "-m", "--memory", "--add-host", "--secret",
              "--ssh", "--output", "-o", "--cache-to", "--builder"}  # fmt: skip
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and a != "-":
            name, eq, value = a.partition("=")
            if name in valued and not eq:
                i += 1
                if i >= len(args):
                    raise BuildStepError(f'flag needs an argument: "{name}" in {name}')
                value = args[i]
            if name in ("-t", "--tag"):
                tags.append(value)
            elif name in ("-f", "--file"):
                dockerfile = value
            elif name == "--target":
                target = value
            elif name == "--build-arg":
                k, sep, v = value.partition("=")
                if sep:
                    buildargs[k] = v
                elif k in env:
                    buildargs[k] = env[k]
            elif name == "--label":
                k, _, v = value.partition("=")
                labels[k] = v
            elif name not in valued and name not in ("-q", "--quiet", "--no-cache", "--pull", "--rm", "--force-rm",
                                                     "--squash", "--compress", "--load", "--push"):  # fmt: skip
                raise BuildStepError(f"unknown flag: {name}")
        else:
            positional.append(a)
        i += 1
    if len(positional) != 1:
        raise BuildStepError('"docker build" requires exactly 1 argument.')
    return DockerBuildArgs(tags, dockerfile, positional[0], buildargs, target, labels)
