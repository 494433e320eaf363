"""Image builds without a container runtime, shared by the Docker Engine API, Cloud Build and Artifact Registry.

A build follows ``core/images.py``: the files a Dockerfile's COPY/ADD put in the image are unpacked into a
``rootfs`` directory, RUN steps are recorded (never executed), and ENTRYPOINT, CMD, ENV, WORKDIR, EXPOSE,
LABEL, USER, VOLUME, ... are recorded in the image config the way ``docker inspect`` shows them.

What follows the classic Docker builder (the one docker-py and ``docker build`` without BuildKit drive):

- The Dockerfile is parsed before anything is streamed, so an unknown instruction, a missing ``FROM`` or a
  bad flag is a :class:`DockerfileError` (the daemon answers it as a plain HTTP error, "dockerfile parse
  error line N: unknown instruction: X"); a failing step (a COPY source missing from the context) is a
  :class:`BuildStepError`, which the daemon streams as an ``errorDetail`` line after the steps so far.
- COPY/ADD: sources are relative to the context root and may not leave it; wildcards; a directory source
  copies its contents; a destination ending in ``/`` (or several sources) is a directory; relative
  destinations are relative to WORKDIR; ``--from=<stage>`` copies from an earlier stage; ADD unpacks a
  local tar archive. ``$VAR``/``${VAR:-x}`` substitution from ARG/ENV applies where Docker applies it.
- Multi-stage builds and ``target``; ARG before FROM; build args only fill declared ARGs.
- Setting ENTRYPOINT drops a CMD inherited from the base image.
- The image id is a digest of the config, the instructions and the files (not their mtimes), so rebuilding
  an unchanged context gives the same id, as the layer cache does on a real daemon.

Emulator limits: base images are never pulled (``FROM`` records the reference; ``python:*`` bases get the
config the official images carry), ``COPY --from=<image>`` of an external image and ``ADD <url>`` cannot be
served, and RUN has no effect on the files. A RUN that is a ``pip install`` is run, into a virtualenv per
requirements hash that the image's revisions run with (``pythonenv.py``).

The package: ``dockerfile.py`` parses, ``context.py`` unpacks and filters the build context (and scopes file
operations to a root), ``build.py`` runs the instructions, ``image.py`` is the finished image (config,
manifest, the registry's record of it), ``references.py`` reads image names and ``commandline.py`` the
``docker build`` flags of a Cloud Build step; ``pythonenv.py`` runs pip installs; ``errors.py`` has the two ways
a build fails.
"""

from .build import DEFAULT_PATH, Log, build_image
from .commandline import DockerBuildArgs, parse_docker_build_args
from .context import apply_dockerignore, read_dockerignore, scoped, tree_digest, unpack_context
from .dockerfile import INSTRUCTIONS, Instruction, expand, parse_dockerfile
from .errors import BuildStepError, DockerfileError
from .image import (
    CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    BuiltImage,
    now_rfc3339,
    sha256_hex,
)
from .pythonenv import CACHE_ENV, InstallFailed, PythonEnvironments, python_envs
from .references import InvalidReference, familiar, parse_reference, registry_host

__all__ = [
    "CACHE_ENV",
    "CONFIG_MEDIA_TYPE",
    "DEFAULT_PATH",
    "INSTRUCTIONS",
    "LAYER_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "BuildStepError",
    "BuiltImage",
    "DockerBuildArgs",
    "DockerfileError",
    "InstallFailed",
    "Instruction",
    "InvalidReference",
    "Log",
    "PythonEnvironments",
    "apply_dockerignore",
    "build_image",
    "expand",
    "familiar",
    "now_rfc3339",
    "parse_docker_build_args",
    "parse_dockerfile",
    "parse_reference",
    "python_envs",
    "read_dockerignore",
    "registry_host",
    "scoped",
    "sha256_hex",
    "tree_digest",
    "unpack_context",
]
