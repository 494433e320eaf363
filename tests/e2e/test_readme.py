"""README.md stays true to the tool: its recorded transcript of `up` is what a cold `up --local` prints today (the
same lines, up to the project, timings, ports and the image tag; steps finish in a different order from run to run),
and its command table names every command."""

from __future__ import annotations

import re
from collections import Counter

from tests.e2e.conftest import REPO, Deployed

README = (REPO / "README.md").read_text()
#: The project the transcript was recorded in (the emulator's default, as `up --local` uses).
RECORDED_PROJECT = "mlflow-local"


def transcript() -> str:
    block = re.search(r"<!-- transcript:up -->\n```console\n\$ mlflow-gcp up --local\n(.*?)```", README, re.S)
    assert block, "README.md has no transcript of `up` between its markers"
    return block[1]


def normalised(output: str, project: str) -> Counter[str]:
    """The lines, with what differs between two honest runs made equal."""
    lines = []
    for line in output.splitlines():
        line = line.replace(project, "PROJECT")
        line = re.sub(r" \[\d+\.\ds\]$", "", line)  # a step's duration, shown past a second
        line = re.sub(r" in \d+\.\ds$", " in Ns", line)
        line = re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:PORT", line)
        line = re.sub(r"(mlflow-server):[0-9a-f]{16}\b", r"\1:TAG", line)  # a hash of the image's sources
        lines.append(line)
    return Counter(lines)


def test_the_transcript_of_up_is_what_up_prints(basic_stack: Deployed):
    recorded = normalised(transcript(), RECORDED_PROJECT)
    printed = normalised(basic_stack.up.stderr, basic_stack.cli.project)
    assert recorded == printed, (
        "README.md's transcript of `up` differs from what `up --local` prints now "
        "(record it again: .venv/bin/python scripts/record_up_transcript.py):\n"
        f"only in README: {sorted((recorded - printed).elements())}\n"
        f"only printed: {sorted((printed - recorded).elements())}"
    )
    last = transcript().strip().splitlines()[-3:]
    assert re.fullmatch(r"Done: \d+ created, \d+ updated in \d+\.\ds", last[0]), last
    assert last[1].startswith("MLflow is at ") and last[2] == "Credentials for clients: mlflow-gcp env --local"


def test_the_command_table_names_every_command():
    from mlflow_gcp.cli import cli

    table = [line for line in README.splitlines() if line.startswith("| `")]
    for name in cli.commands:
        assert any(line.startswith(f"| `{name}") for line in table), f"README's command table lacks `{name}`"
