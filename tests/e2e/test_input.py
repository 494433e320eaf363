"""Bad input fails before any API call, with a clear message and a documented exit code; runs lock each other out."""

from __future__ import annotations

import time

from mlflow_gcp.errors import ExitCode
from tests.e2e.conftest import Cli


def test_invalid_flags_fail_before_any_call(cli: Cli, admin):
    start = len(admin.requests())
    result = cli("up", "--region", "mars-north1", "--tier", "db-n1-huge", check=False)
    assert result.code == ExitCode.CONFIG
    assert "region" in result.stderr and "database.tier" in result.stderr
    assert "Traceback" not in result.stderr
    assert admin.requests(start) == []


def test_malformed_config_file(cli: Cli, admin, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[database]\nteir = "db-f1-micro"\n')
    start = len(admin.requests())
    result = cli("up", "--config", str(bad), check=False)
    assert result.code == ExitCode.CONFIG and "did you mean 'database.tier'" in result.stderr
    assert admin.requests(start) == []


def test_unknown_project_is_its_own_error(cli: Cli):
    cli.project = "no-such-project-42"
    result = cli("status", check=False)
    assert result.code == ExitCode.PROJECT and "does not exist or your credentials cannot see it" in result.stderr


def test_a_second_up_on_the_same_environment_is_refused(cli: Cli, admin):
    admin.settings(latency_profile="realistic", time_scale=0.01)  # keep the first run busy for a few seconds
    try:
        first = cli.popen("up")
        deadline = time.monotonic() + 60
        while not list(cli.state_dir.glob("*.lock")) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = cli("up", check=False)
        assert second.code == ExitCode.LOCKED
        assert "holds the lock" in second.stderr and "--break-lock" in second.stderr
        first.kill()
        first.wait()
    finally:
        admin.settings(latency_profile="instant")


def test_a_prebuilt_image_that_is_not_in_artifact_registry_is_refused(cli: Cli, admin, clients):
    from tests.conftest import enable

    enable(clients, cli.project, "artifactregistry.googleapis.com")
    image = f"us-central1-docker.pkg.dev/{cli.project}/mlflow/server:missing"
    start = len(admin.requests())
    result = cli("up", "--dry-run", "--image", image, check=False)
    assert result.code == ExitCode.CONFIG, result.stderr
    assert f"The image {image} is not in Artifact Registry" in result.stderr and "Traceback" not in result.stderr
    assert [e for e in admin.requests(start) if e["mutating"]] == []
