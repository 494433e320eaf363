"""Fixtures the emulator's API tests share (one per test module: each module works in a project of its own)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin
from tests.conftest import enable


@pytest.fixture(scope="module")
def sql_project(emulator: Emulator) -> str:
    """A project with the Cloud SQL Admin API enabled, for one test module."""
    project_id = f"sql-{uuid.uuid4().hex[:8]}"
    EmulatorAdmin(emulator.base_url).add_project(project_id)
    enable(Clients(emulator.base_url), project_id, "sqladmin.googleapis.com")
    return project_id


@pytest.fixture(scope="module")
def sql(emulator: Emulator) -> Any:
    """The Cloud SQL Admin discovery client, as the tool builds it."""
    return Clients(emulator.base_url).sqladmin()
