"""The emulator's front door refuses to start without one of its APIs: an absent API is an error, not a skip."""

from __future__ import annotations

import pytest

from mlflow_gcp.emulator import server
from mlflow_gcp.emulator.server import Emulator


def test_every_api_is_mounted(emulator):
    assert set(emulator.world.apis) == set(server.API_MODULES)


def test_a_missing_api_module_stops_the_start(tmp_path, monkeypatch):
    monkeypatch.setitem(server.API_MODULES, "logging", "mlflow_gcp.emulator.apis.logging_not_written:LoggingApi")
    with pytest.raises(ModuleNotFoundError, match="logging_not_written"):
        Emulator(tmp_path)
