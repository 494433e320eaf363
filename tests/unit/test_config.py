"""Configuration assembly and validation: pure logic, no API calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_gcp import config as cfg
from mlflow_gcp.errors import ConfigError, ExitCode


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mlflow-gcp.toml"
    path.write_text(text)
    return path


def test_defaults_with_only_a_project():
    config = cfg.load(None, environ={}, flags={"project": "my-project-1"})
    assert config.region == "us-central1"
    assert config.database.tier == "db-custom-1-3840"
    assert config.database.version == "POSTGRES_16"
    assert config.server.max_instances == 10
    assert config.database.deletion_protection is True
    assert config.artifacts.soft_delete_days == 7  # as Cloud Storage's default, but set explicitly on the bucket
    assert cfg.load(None, environ={"MLFLOW_GCP_ARTIFACTS_SOFT_DELETE_DAYS": "0"}, flags={"project": "my-project-1"})


def test_precedence_flags_over_env_over_file(tmp_path):
    path = write(tmp_path, 'project = "file-project"\nregion = "europe-west2"\n[database]\ntier = "db-g1-small"\n')
    environ = {"MLFLOW_GCP_REGION": "europe-west1", "MLFLOW_GCP_DATABASE_TIER": "db-f1-micro"}
    config = cfg.load(path, environ=environ, flags={"database.tier": "db-custom-2-7680"})
    assert config.project == "file-project"  # file only
    assert config.region == "europe-west1"  # env beats file
    assert config.database.tier == "db-custom-2-7680"  # flag beats env


def test_project_from_google_environment():
    config = cfg.load(None, environ={"GOOGLE_CLOUD_PROJECT": "from-gcloud-env"})
    assert config.project == "from-gcloud-env"


def test_env_lists_are_comma_separated():
    environ = {"MLFLOW_GCP_PROJECT": "my-project-1", "MLFLOW_GCP_ARTIFACTS_USERS": "user:a@x.com, group:g@x.com"}
    assert cfg.load(None, environ=environ).artifacts.users == ["user:a@x.com", "group:g@x.com"]


def test_missing_project_says_how_to_set_it():
    with pytest.raises(ConfigError, match="--project") as err:
        cfg.load(None, environ={})
    assert err.value.exit_code == ExitCode.CONFIG


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(tmp_path, 'project = "my-project-1"\n[database]\nteir = "db-f1-micro"\n')
    with pytest.raises(ConfigError, match=r"database.teir.*did you mean 'database.tier'"):
        cfg.load(path, environ={})


def test_malformed_toml_names_the_file(tmp_path):
    path = write(tmp_path, "project = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.load(path, environ={})


def test_wrong_type_names_the_source(tmp_path):
    path = write(tmp_path, 'project = "my-project-1"\n[server]\nmax_instances = "many"\n')
    with pytest.raises(ConfigError, match=r"server.max_instances \(from config file"):
        cfg.load(path, environ={})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"project": "My Project"}, "not a project ID"),
        ({"region": "us-central9"}, "did you mean 'us-central1'"),
        ({"database.tier": "db-standard-1"}, "not a Cloud SQL tier"),
        ({"database.tier": "db-perf-optimized-N-2"}, "not offered in Cloud SQL's ENTERPRISE edition"),
        ({"database.tier": "db-custom-3-7680"}, "even number"),
        ({"database.tier": "db-custom-1-1024"}, "0.9 to 6.5 GB"),
        ({"name": "MLflow"}, "lowercase"),
        ({"name": "a-very-long-deployment-name"}, "service account id"),
        ({"database.version": "POSTGRES_9_6"}, "must be one of"),
        ({"artifacts.soft_delete_days": 3}, "7 to 90 days; 0 turns it off"),
        ({"artifacts.soft_delete_days": 91}, "less than or equal to 90"),
    ],
)
def test_values_gcp_would_reject(flags, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load(None, environ={}, flags={"project": "my-project-1", **flags})


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        cfg.load(None, environ={}, flags={"project": "my-project-1", "region": "mars", "database.tier": "big"})
    assert "region" in err.value.message and "database.tier" in err.value.message


def test_example_config_is_valid():
    example = Path(__file__).parents[2] / "config.example.toml"
    config = cfg.load(example, environ={})
    assert config.project == "my-gcp-project"
