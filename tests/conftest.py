"""Shared fixtures: one emulator per test session (per xdist worker), a fresh project per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlflow_gcp.emulator.imagebuild import CACHE_ENV
from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import Clients, EmulatorAdmin, enable_services

# The Python environments images install (RUN pip install: emulator/imagebuild/pythonenv.py), shared by every
# emulator of the run (xdist workers included; a file lock builds each once) and kept in the checkout, so a fresh
# clone (CI) starts cold and a developer's second run is warm. Set by the environment to share it wider.
os.environ.setdefault(CACHE_ENV, str(Path(__file__).resolve().parents[1] / ".cache" / "python-envs"))


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    # A short data path: Cloud SQL sockets live under it and unix socket paths are limited to 107 bytes.
    data_dir = Path(tempfile.mkdtemp(prefix="mge-", dir="/tmp"))
    emu = Emulator(data_dir).start()
    yield emu
    emu.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def admin(emulator: Emulator) -> Iterator[EmulatorAdmin]:
    admin = EmulatorAdmin(emulator.base_url)
    yield admin
    # Settings never leak from one test into the next.
    emulator.world.control.reset()


@pytest.fixture
def clients(emulator: Emulator) -> Clients:
    return Clients(emulator.base_url)


@pytest.fixture
def project(emulator: Emulator, admin: EmulatorAdmin) -> str:
    """A new, empty project for this test (APIs disabled, as in a new GCP project)."""
    project_id = f"p-{uuid.uuid4().hex[:10]}"
    admin.add_project(project_id)
    return project_id


enable = enable_services


@pytest.fixture
def enabled_project(clients: Clients, project: str) -> str:
    """A project with every API mlflow-gcp uses enabled."""
    enable(
        clients,
        project,
        "artifactregistry.googleapis.com",
        "cloudbuild.googleapis.com",
        "sqladmin.googleapis.com",
        "secretmanager.googleapis.com",
        "iam.googleapis.com",
        "run.googleapis.com",
    )
    return project
