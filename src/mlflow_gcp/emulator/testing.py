"""Clients pointed at a running emulator, and its control plane, for tests and benchmarks.

Every client is the official library with an ``http://`` endpoint, REST transport and anonymous
credentials: nothing here changes what the libraries send.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import requests


class EmulatorAdmin:
    """The control plane: ``/_emulator/...``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = requests.Session()

    def _url(self, path: str) -> str:
        return f"{self.base_url}/_emulator/{path}"

    def health(self) -> dict[str, Any]:
        return self.http.get(self._url("health"), timeout=5).json()

    def reset(self) -> None:
        self.http.post(self._url("reset"), timeout=120).raise_for_status()

    def settings(self, **changes: Any) -> dict[str, Any]:
        r = self.http.patch(self._url("settings"), json=changes, timeout=10)
        r.raise_for_status()
        return r.json()

    def add_project(self, project_id: str) -> dict[str, Any]:
        r = self.http.post(self._url("projects"), json={"projectId": project_id}, timeout=10)
        r.raise_for_status()
        return r.json()

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        r = self.http.get(self._url("requests"), params={"since": since}, timeout=10)
        r.raise_for_status()
        return [json.loads(line) for line in r.text.splitlines() if line]

    def mutations(self, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.requests(since) if e["mutating"]]

    def run_stats(self, service: str) -> dict[str, Any]:
        """Requests a Cloud Run service's front end answered: ``{"requests": N, "by_status": {"200": n}}``."""
        r = self.http.get(self._url("run/stats"), params={"service": service}, timeout=10)
        r.raise_for_status()
        return r.json()

    def identity_file(self, email: str, kind: str = "authorized_user") -> dict[str, Any]:
        """An ADC file's content for ``email``: ``authorized_user`` (refresh with ``creds.with_token_uri(
        info["token_uri"])``: google-auth ignores the file's own) or ``service_account`` (an existing account)."""
        r = self.http.post(self._url("identities"), json={"email": email, "type": kind}, timeout=30)
        r.raise_for_status()
        return r.json()

    def id_token(self, email: str, audience: str) -> str:
        """An ID token for ``email`` signed by the emulator's Google key."""
        r = self.http.post(self._url("identities/id-token"), json={"email": email, "audience": audience}, timeout=10)
        r.raise_for_status()
        return r.json()["id_token"]

    def iap_assertion(self, email: str, audience: str) -> str:
        """An ``x-goog-iap-jwt-assertion`` signed by the emulator's IAP key."""
        r = self.http.post(self._url("iap/assertion"), json={"email": email, "audience": audience}, timeout=10)
        r.raise_for_status()
        return r.json()["assertion"]

    def run_processes(self) -> dict[str, Any]:
        """The Cloud Run revision processes running now, by revision name (pid, port, ready, alive, log)."""
        r = self.http.get(self._url("run/processes"), timeout=10)
        r.raise_for_status()
        return r.json()


class Clients:
    """Official client libraries aimed at the emulator at ``base_url``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    @property
    def credentials(self) -> Any:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()

    def _gapic(self, cls: Any, prefix: str) -> Any:
        return cls(
            credentials=self.credentials,
            transport="rest",
            client_options={"api_endpoint": f"{self.base_url}/{prefix}"},
        )

    def _discovery(self, api: str, version: str, prefix: str) -> Any:
        from googleapiclient.discovery import build

        return build(
            api,
            version,
            credentials=self.credentials,
            client_options={"api_endpoint": f"{self.base_url}/{prefix}/"},
            static_discovery=True,
            cache_discovery=False,
        )

    def service_usage(self) -> Any:
        from google.cloud import service_usage_v1

        return self._gapic(service_usage_v1.ServiceUsageClient, "serviceusage")

    def projects(self) -> Any:
        from google.cloud import resourcemanager_v3

        return self._gapic(resourcemanager_v3.ProjectsClient, "resourcemanager")

    def secret_manager(self) -> Any:
        from google.cloud import secretmanager_v1

        return self._gapic(secretmanager_v1.SecretManagerServiceClient, "secretmanager")

    def artifact_registry(self) -> Any:
        from google.cloud import artifactregistry_v1

        return self._gapic(artifactregistry_v1.ArtifactRegistryClient, "artifactregistry")

    def cloud_build(self) -> Any:
        from google.cloud.devtools import cloudbuild_v1

        return self._gapic(cloudbuild_v1.CloudBuildClient, "cloudbuild")

    def run_services(self) -> Any:
        from google.cloud import run_v2

        return self._gapic(run_v2.ServicesClient, "run")

    def run_revisions(self) -> Any:
        from google.cloud import run_v2

        return self._gapic(run_v2.RevisionsClient, "run")

    def sqladmin(self) -> Any:
        return self._discovery("sqladmin", "v1", "sqladmin")

    def iam(self) -> Any:
        return self._discovery("iam", "v1", "iam")

    def storage(self, project: str) -> Any:
        from google.cloud import storage

        return storage.Client(
            project=project, credentials=self.credentials, client_options={"api_endpoint": self.base_url}
        )

    def docker(self) -> Any:
        import docker

        host = self.base_url.replace("http://", "tcp://")
        return docker.DockerClient(base_url=host, version="1.45", timeout=300)

    def env(self) -> dict[str, str]:
        """Environment for a process (MLflow's GCS artifact repo, the docker CLI) to reach the emulator."""
        return {
            **os.environ,
            "STORAGE_EMULATOR_HOST": self.base_url,
            "DOCKER_HOST": self.base_url.replace("http://", "tcp://"),
        }


def enable_services(clients: Clients, project: str, *services: str) -> None:
    """Enable APIs through Service Usage, as a user would before using them."""
    from google.cloud import service_usage_v1

    op = clients.service_usage().batch_enable_services(
        request=service_usage_v1.BatchEnableServicesRequest(parent=f"projects/{project}", service_ids=list(services))
    )
    op.result(timeout=60)


def request_rounds(calls: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Request-log entries in sequential rounds: a round ends when its first call returns; a call that starts after
    that opens the next round (so every call of a round overlaps every other; calls made one after another do not
    share one)."""
    out: list[list[Mapping[str, Any]]] = []
    ends_at = float("-inf")
    for call in sorted(calls, key=lambda c: c["started_at"]):
        end = call["started_at"] + call["latency_ms"] / 1000
        if call["started_at"] >= ends_at:
            out.append([])
            ends_at = end
        out[-1].append(call)
        ends_at = min(ends_at, end)
    return out


def server_image_python(mlflow_version: str) -> str:
    """The interpreter of the environment the emulator installs for the server image pinned to ``mlflow_version``
    (the one its revisions run with: the same requirements text, so the same cached environment), built if need be.
    Tests run the image's entrypoint with it as an older release would run it."""
    from pathlib import Path

    from ..image_source import REQUIREMENTS, context_files
    from .imagebuild import CACHE_ENV
    from .imagebuild.pythonenv import PythonEnvironments, pip_install

    rendered = dict(context_files(mlflow_version))[REQUIREMENTS].decode()
    requirements = pip_install(f"pip install -r {REQUIREMENTS}", lambda _path: rendered)
    assert requirements is not None
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mlflow-gcp-python-envs")
    return str(PythonEnvironments(root).ensure(requirements) / "python")
