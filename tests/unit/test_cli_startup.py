"""`mlflow-gcp --help` must not import the Google client libraries (about 1.2 s): they load where they are used."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from click.testing import CliRunner
from mlflow_gcp.cli import cli
for args in (["--help"], ["up", "--help"], ["status", "--help"], ["rotate-password", "--help"],
             ["users", "add", "--help"], ["open", "--help"]):
    assert CliRunner().invoke(cli, args).exit_code == 0, args
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("google", "googleapiclient", "grpc", "docker", "mlflow"))
print(",".join(heavy))
"""


def test_help_imports_no_client_library():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_every_command_has_help_text():
    from mlflow_gcp.cli import cli

    def walk(group, prefix=""):
        for name, command in group.commands.items():
            assert command.help, f"{prefix}{name} has no help text"
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")

    walk(cli)
