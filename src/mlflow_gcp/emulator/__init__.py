"""A local emulator of the Google Cloud APIs mlflow-gcp uses.

The official client libraries run against it unmodified: every API is served under its own path prefix
on one port (see ``server.API_PREFIXES``), Cloud Storage at the root as ``STORAGE_EMULATOR_HOST`` expects,
and the Docker Engine API at the root as ``DOCKER_HOST=tcp://...`` expects.
"""
