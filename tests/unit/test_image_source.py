"""The server image's build context as configuration shapes it: requirements.txt pins ``server.mlflow_version``, the
tag covers it, the default changes nothing, and versions the image cannot run are refused before anything."""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mlflow_gcp import config as cfg
from mlflow_gcp import image_source
from mlflow_gcp.errors import ConfigError, ExitCode

SOURCES = Path(__file__).resolve().parents[2] / "src" / "mlflow_gcp" / "server_image"
SHIPPED_PIN = re.search(r"^mlflow\[auth\]==(\S+)$", (SOURCES / "requirements.txt").read_text(), re.M).group(1)  # type: ignore[union-attr]


def _tar_files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_the_default_version_is_the_shipped_pin_and_changes_nothing():
    assert image_source.pinned_mlflow_version() == SHIPPED_PIN
    config = cfg.load(None, environ={}, flags={"project": "my-project-1"})
    assert config.server.mlflow_version == SHIPPED_PIN
    # The default renders the shipped file byte for byte: the tag is the one of the sources as they are.
    assert image_source.context_files(SHIPPED_PIN) == image_source.context_files()
    assert image_source.input_hash(SHIPPED_PIN) == image_source.input_hash()
    assert dict(image_source.context_files())["requirements.txt"] == (SOURCES / "requirements.txt").read_bytes()


def test_two_versions_are_two_contexts_and_two_tags_and_only_the_pin_differs():
    tags = {v: image_source.input_hash(v) for v in (SHIPPED_PIN, "3.16.1", "3.16.0")}
    assert len(set(tags.values())) == 3
    assert image_source.input_hash("3.16.1") == image_source.input_hash("3.16.1")  # stable
    shipped, other = dict(image_source.context_files()), dict(image_source.context_files("3.16.1"))
    assert shipped.keys() == other.keys()
    assert [n for n in shipped if shipped[n] != other[n]] == ["requirements.txt"]
    before, after = shipped["requirements.txt"].decode(), other["requirements.txt"].decode()
    assert after == before.replace(f"mlflow[auth]=={SHIPPED_PIN}\n", "mlflow[auth]==3.16.1\n")
    # What Cloud Build and the Docker daemon receive is that context.
    assert _tar_files(image_source.context_tar_gz("3.16.1")) == other
    assert image_source.context_tar_gz("3.16.1") == image_source.context_tar_gz("3.16.1")  # same bytes


def test_the_image_tag_follows_the_configured_version():
    from mlflow_gcp.resources.image import ServerImage

    class Ctx:
        def __init__(self, version: str | None) -> None:
            flags = {"project": "my-project-1", "server.mlflow_version": version}
            self.config = cfg.load(None, environ={}, flags=flags)
            # As Context sets it for a stack with no release recorded yet (upgrade.serving_version).
            self.mlflow_version = self.config.server.mlflow_version

    def tag(version: str | None) -> str:
        image = ServerImage.__new__(ServerImage)
        image.ctx = Ctx(version)  # type: ignore[assignment]
        return image.tag

    assert tag(None) == tag(SHIPPED_PIN) == image_source.input_hash()
    assert tag("3.16.1") == image_source.input_hash("3.16.1") != tag(None)


@pytest.mark.parametrize(
    ("version", "complaint"),
    [
        ("latest", "is not a version number (PEP 440)"),
        ("3.17.2; rm -rf /", "is not a version number (PEP 440)"),
        (">=3.16", "is not a version number (PEP 440)"),
        ("v3.17.2", "write it as '3.17.2'"),
        ("3.1.0", "outside what the server image runs (>=3.16,<4)"),
        ("3.15.2", "outside what the server image runs"),
        ("2.22.0", "outside what the server image runs"),
        ("4.0.0", "outside what the server image runs"),
        ("4.0.0rc1", "outside what the server image runs"),
    ],
)
def test_versions_the_image_cannot_pin_or_run_are_config_errors(version, complaint):
    with pytest.raises(ConfigError) as err:
        cfg.load(None, environ={"MLFLOW_GCP_SERVER_MLFLOW_VERSION": version}, flags={"project": "my-project-1"})
    assert err.value.exit_code == ExitCode.CONFIG
    assert "server.mlflow_version (from environment variable MLFLOW_GCP_SERVER_MLFLOW_VERSION)" in str(err.value)
    assert complaint in str(err.value)


@pytest.mark.parametrize("version", ["3.16.0", "3.16.1", "3.17.2", "3.18.0", "3.19.0rc1"])
def test_supported_versions_pass(version):
    config = cfg.load(None, environ={}, flags={"project": "my-project-1", "server.mlflow_version": version})
    assert config.server.mlflow_version == version


def test_a_bad_version_stops_up_before_any_call(tmp_path):
    """Exit code 3 and the message, from the command line, with nothing contacted (no emulator runs here)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow_gcp", "up", "--project", "my-project-1", "--state", str(tmp_path / "s")],
        env={"PATH": "/usr/bin:/bin", "MLFLOW_GCP_SERVER_MLFLOW_VERSION": "3.1.0", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert "server.mlflow_version" in proc.stderr and ">=3.16,<4" in proc.stderr
    assert not (tmp_path / "s").exists()
