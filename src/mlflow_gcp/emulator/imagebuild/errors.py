"""The two ways a build fails: the Dockerfile cannot be parsed, or a step fails while the build runs."""

from __future__ import annotations


class DockerfileError(Exception):
    """The Dockerfile cannot be parsed; the daemon refuses the build before streaming anything."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class BuildStepError(Exception):
    """A step failed while the build ran; the daemon reports it as an ``errorDetail`` stream line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
