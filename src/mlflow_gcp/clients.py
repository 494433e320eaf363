"""The one place that builds Google clients: endpoints (real GCP or the local emulator), credentials, transport.
Resource modules never construct clients themselves."""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

from .errors import CredentialsError

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


class Clients:
    """Lazily built clients. ``emulator_url`` None means real Google Cloud with Application Default Credentials."""

    def __init__(self, project: str, emulator_url: str | None = None) -> None:
        self.project = project
        self.emulator_url = emulator_url.rstrip("/") if emulator_url else None
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def local(self) -> bool:
        return self.emulator_url is not None

    @functools.cached_property
    def credentials(self) -> Any:
        if self.local:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError, RefreshError, TransportError
        from google.auth.transport.requests import Request

        try:
            creds, _ = google.auth.default(scopes=SCOPES)
            creds.refresh(Request())
        except DefaultCredentialsError:
            raise CredentialsError(
                "No Google credentials found.",
                hint="Run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS).",
            ) from None
        except RefreshError as exc:
            raise CredentialsError(
                f"Your Google credentials could not be refreshed ({exc.args[0] if exc.args else exc}).",
                hint="They may have expired: run `gcloud auth application-default login` again.",
            ) from None
        except TransportError as exc:
            raise CredentialsError(
                f"Could not reach Google to refresh your credentials ({exc}).",
                hint="Check your network connection (and proxy settings), then try again.",
            ) from None
        return creds

    def access_token(self) -> str:
        if self.local:
            return "emulator-token"
        from google.auth.transport.requests import Request

        creds = self.credentials
        if not creds.valid:
            creds.refresh(Request())
        return creds.token

    def warm(self, *names: str) -> None:
        """Build these clients in a thread of its own, now. `up` starts it before its project check: building a
        client is mostly importing its library (a quarter of a second of CPU for the stack's), which then happens
        while the check waits on the network, not after it, when every step of the read wave (engine.py) would
        wait for the clients to be built one after another. Whoever needs a client still being built waits for it;
        a client that fails to build here fails again, with its error, where it is needed."""

        def build() -> None:
            for name in names:
                try:
                    getattr(self, name)
                except Exception:
                    return

        threading.Thread(target=build, name="warm-clients", daemon=True).start()

    def _gapic(self, cls: Any, prefix: str) -> Any:
        options = {"api_endpoint": f"{self.emulator_url}/{prefix}"} if self.local else None
        return cls(credentials=self.credentials, transport="rest", client_options=options)

    def _cached(self, name: str, build: Any) -> Any:
        with self._lock:
            if name not in self.__dict__:
                self.__dict__[name] = build()
            return self.__dict__[name]

    @property
    def service_usage(self) -> Any:
        from google.cloud import service_usage_v1

        return self._cached("_su", lambda: self._gapic(service_usage_v1.ServiceUsageClient, "serviceusage"))

    @property
    def projects(self) -> Any:
        from google.cloud import resourcemanager_v3

        return self._cached("_rm", lambda: self._gapic(resourcemanager_v3.ProjectsClient, "resourcemanager"))

    @property
    def secrets(self) -> Any:
        from google.cloud import secretmanager_v1

        return self._cached("_sm", lambda: self._gapic(secretmanager_v1.SecretManagerServiceClient, "secretmanager"))

    @property
    def artifact_registry(self) -> Any:
        from google.cloud import artifactregistry_v1

        return self._cached("_ar", lambda: self._gapic(artifactregistry_v1.ArtifactRegistryClient, "artifactregistry"))

    @property
    def run_services(self) -> Any:
        from google.cloud import run_v2

        return self._cached("_run", lambda: self._gapic(run_v2.ServicesClient, "run"))

    @property
    def run_revisions(self) -> Any:
        from google.cloud import run_v2

        return self._cached("_rev", lambda: self._gapic(run_v2.RevisionsClient, "run"))

    @property
    def cloud_build(self) -> Any:
        from google.cloud.devtools import cloudbuild_v1

        return self._cached("_cb", lambda: self._gapic(cloudbuild_v1.CloudBuildClient, "cloudbuild"))

    @property
    def storage(self) -> Any:
        from google.cloud import storage

        def build() -> Any:
            # google-cloud-storage 3.x fetches a bucket's metadata (a buckets.get, in a thread of its own, outside our
            # retry policy and the -v log) the first time a call on that bucket is not a get, only to label trace
            # spans, which this tool never exports (_bucket_metadata_cache.py, create_trace_span_helper): an extra
            # read each time `up` reads a bucket's policy before the bucket. The library's own switch turns it off.
            os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
            options = {"api_endpoint": self.emulator_url} if self.local else None
            return storage.Client(project=self.project, credentials=self.credentials, client_options=options)

        return self._cached("_gcs", build)

    def _discovery(self, api: str, version: str) -> Any:
        # googleapiclient's httplib2 transport is not thread-safe: one client per thread.
        key = f"{api}_{version}"
        client = getattr(self._local, key, None)
        if client is None:
            from googleapiclient.discovery import build

            options = {"api_endpoint": f"{self.emulator_url}/{api}/"} if self.local else None
            client = build(
                api,
                version,
                credentials=self.credentials,
                client_options=options,
                static_discovery=True,
                cache_discovery=False,
            )
            setattr(self._local, key, client)
        return client

    @property
    def sqladmin(self) -> Any:
        return self._discovery("sqladmin", "v1")

    @property
    def iam(self) -> Any:
        return self._discovery("iam", "v1")

    @property
    def logging(self) -> Any:
        return self._discovery("logging", "v2")

    @property
    def iap(self) -> Any:
        # No GAPIC client is installed for IAP; the discovery client ships with google-api-python-client.
        return self._discovery("iap", "v1")

    @property
    def service_usage_beta(self) -> Any:
        """Service Usage v1beta1, for generateServiceIdentity (not in the v1 GAPIC client)."""
        return self._discovery("serviceusage", "v1beta1")

    def docker_answers(self) -> bool:
        """Whether a Docker daemon answers a ping (DOCKER_HOST or the default socket; the emulator's own endpoint
        in local mode), without the wait of a build's long timeout."""
        import docker

        try:
            client = (
                docker.DockerClient(base_url=self.emulator_url.replace("http://", "tcp://"), timeout=5)
                if self.local
                else docker.from_env(timeout=5)
            )
            return bool(client.ping())
        except Exception:  # no socket, refused, not a daemon: all mean "no Docker here"
            return False

    def docker(self) -> Any:
        import docker

        if self.local:
            return docker.DockerClient(base_url=self.emulator_url.replace("http://", "tcp://"), timeout=600)
        try:
            return docker.from_env(timeout=600)
        except docker.errors.DockerException as exc:
            raise CredentialsError(
                f"Cannot reach a Docker daemon to build the server image ({exc}).",
                hint="Start Docker, or pass --image with a prebuilt image URI.",
            ) from None
