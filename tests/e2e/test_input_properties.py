"""Arbitrary config files and flag values: every run ends in success or a clean error with a documented exit code,
never a traceback, and never an API call before validation passed (property-based, with hypothesis)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlflow_gcp.cli import cli
from mlflow_gcp.errors import ExitCode

KEYS = {
    None: ["project", "region", "name", "env", "state", "create_client_key", "regoin", "bogus"],
    "database": ["tier", "version", "disk_size_gb", "disk_type", "backups", "log_retention_days",
                 "authorized_networks", "deletion_protection", "teir"],
    "server": ["image", "max_instances", "min_instances", "cpu", "memory", "workers", "admin_username"],
    "artifacts": ["bucket", "location", "users"],
    "nonsense": ["x"],
}  # fmt: skip
PLAUSIBLE = {
    "project": ["mlflow-local", "my-project-123", "Bad Project", "x"],
    "region": ["us-central1", "europe-west2", "mars-1", ""],
    "tier": ["db-f1-micro", "db-custom-1-3840", "db-custom-3-1000", "huge"],
    "version": ["POSTGRES_16", "POSTGRES_9_6", "MYSQL_8_0"],
    "name": ["mlflow", "ML", "a-very-long-name-for-a-deployment", "x"],
    "env": ["dev", "prod", "-bad"],
}

scalars = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(max_size=20), max_size=3),
)


@st.composite
def config_files(draw: st.DrawFn) -> str:
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(st.text(max_size=200))  # anything at all, mostly not TOML
    lines: list[str] = []
    for section, keys in KEYS.items():
        chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=4))
        if not chosen:
            continue
        if section:
            lines.append(f"[{section}]")
        for key in chosen:
            value = draw(st.one_of(st.sampled_from(PLAUSIBLE.get(key, ["x"])), scalars))
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


flag_values = st.one_of(
    st.sampled_from(["us-central1", "db-f1-micro", "mlflow-local", "0", "-1", ""]), st.text(max_size=20)
)
flags = st.lists(
    st.tuples(st.sampled_from(["--region", "--tier", "--project", "--name", "--env", "--max-instances", "--image"]),
              flag_values),
    max_size=3,
)  # fmt: skip

DOCUMENTED = {int(code) for code in ExitCode}


@pytest.mark.timeout(900)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=config_files(), extra=flags)
def test_any_input_ends_cleanly(emulator, admin, tmp_path: Path, monkeypatch, text: str, extra):
    monkeypatch.setenv("MLFLOW_GCP_EMULATOR_URL", emulator.base_url)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    args = ["up", "--dry-run", "--local", "--config", str(path), "--state", str(tmp_path / "state")]
    for flag, value in extra:
        args += [flag, value]
    start = len(admin.requests())
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    event(f"exit code {result.exit_code}")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in DOCUMENTED, (result.exit_code, output)
    assert "Traceback" not in output
    if result.exit_code in (ExitCode.CONFIG, ExitCode.USAGE):
        assert admin.requests(start) == [], "an API call before validation passed"
    else:
        assert result.exit_code in (ExitCode.OK, ExitCode.PROJECT), output
