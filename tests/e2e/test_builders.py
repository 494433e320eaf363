"""Which builder makes the server image: explicit, or `auto` by whether a real Docker daemon answers a real ping
(DOCKER_HOST at the emulator's Docker Engine endpoint, or at a socket nobody listens on); and what `up --dry-run`
and `status` say about it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_gcp import builds
from mlflow_gcp.clients import Clients
from mlflow_gcp.config import Config, ServerConfig
from mlflow_gcp.context import Context
from mlflow_gcp.errors import ConfigError
from mlflow_gcp.naming import Names
from mlflow_gcp.state import LocalBackend, State

from .conftest import Cli


def _context(tmp_path: Path, **server: object) -> Context:
    config = Config(project="builders-test", server=ServerConfig(**server))
    state = State(LocalBackend(tmp_path, "builders"), {"project": config.project, "name": "mlflow", "env": "dev"})
    # Real Google Cloud mode (no emulator): `auto` pings the Docker daemon DOCKER_HOST names.
    return Context(config, Names.from_config(config), Clients(config.project), state)


def test_auto_builds_with_docker_when_a_daemon_answers(tmp_path: Path, emulator, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DOCKER_HOST", emulator.base_url.replace("http://", "tcp://"))
    ctx = _context(tmp_path)
    assert builds.resolve(ctx) == "docker" and ctx.builder_reason == "auto: a Docker daemon answered"


def test_auto_builds_with_cloud_build_when_no_daemon_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody-listens.sock")
    ctx = _context(tmp_path)
    assert builds.resolve(ctx) == "cloudbuild" and ctx.builder_reason == "auto: no Docker daemon answered"


def test_auto_keeps_cloud_build_for_a_stack_that_builds_with_it(
    tmp_path: Path, emulator, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DOCKER_HOST", emulator.base_url.replace("http://", "tcp://"))
    ctx = _context(tmp_path)
    ctx.state.record("build-bucket", {"id": "gs://builders-test-mlflow-dev-build"})
    assert builds.resolve(ctx) == "cloudbuild"


def test_an_explicit_builder_or_a_prebuilt_image_needs_no_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody-listens.sock")
    assert builds.resolve(_context(tmp_path / "a", builder="docker")) == "docker"
    assert builds.resolve(_context(tmp_path / "b", image="gcr.io/x/y:1")) == "prebuilt"


def test_a_staging_bucket_name_over_63_characters_is_refused_before_anything(tmp_path: Path):
    config = Config(project="builders-test", server=ServerConfig(builder="cloudbuild"))
    config.artifacts.bucket = "b" * 60
    state = State(LocalBackend(tmp_path, "k"), {"project": config.project, "name": "mlflow", "env": "dev"})
    ctx = Context(config, Names.from_config(config), Clients(config.project), state)
    with pytest.raises(ConfigError, match="must be 3-63 characters"):
        builds.resolve(ctx)


def test_dry_run_names_the_builder_and_the_build_resources_it_would_create(cli: Cli, admin):
    start = len(admin.requests())
    planned = cli("up", "--dry-run", "--builder", "cloudbuild", "--json")
    assert "built with Cloud Build (server.builder)" in planned.stderr
    keys = {o["resource"]: o["action"] for o in planned.json()["outcomes"]}
    for key in ("build-bucket", "sa:build", "iam:registry", "iam:build-bucket"):
        assert keys[key] == "would create", (key, keys)
    # Cloud Build and Logging are enabled only for the cloudbuild builder.
    (apis,) = [o for o in planned.json()["outcomes"] if o["resource"] == "apis"]
    assert {"cloudbuild.googleapis.com", "logging.googleapis.com"} <= set(apis["changed_fields"][0]["desired"])
    assert [e for e in admin.requests(start) if e["mutating"]] == []
    plain = cli("up", "--dry-run", "--builder", "docker", "--json")
    assert "built with a local Docker daemon (server.builder)" in plain.stderr
    (apis,) = [o for o in plain.json()["outcomes"] if o["resource"] == "apis"]
    assert "cloudbuild.googleapis.com" not in apis["changed_fields"][0]["desired"]
    assert not {"build-bucket", "sa:build", "iam:registry", "iam:build-bucket"} & {
        o["resource"] for o in plain.json()["outcomes"]
    }
