"""`up` asks before it spends: it plans, prints the plan and its monthly cost, and asks on a terminal; without one and
without --yes it stops with exit 9 having changed nothing; it asks nothing when nothing billable changes. On Google
Cloud that is every `up`; against the emulator, where nothing is billed, only with MLFLOW_GCP_CONFIRM_LOCAL=1 (the
path is otherwise the same). The terminal is a real one: a pseudo-terminal (pty) as the CLI's stdin, answered once the
question shows. One deployment (made through the question, answered yes) is shared by the file."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from mlflow_gcp.emulator.server import Emulator
from mlflow_gcp.emulator.testing import EmulatorAdmin
from tests.e2e.conftest import Cli, Result, make_cli, mutations_during

QUESTION = "Create or change these billable resources in"


@dataclass
class Asked:
    result: Result
    #: When the answer was typed (time.time()), or None if the question never came.
    answered_at: float | None


def _recorded(cli: Cli) -> dict[str, object]:
    """The resources the state file records (none before anything was created)."""
    files = list(cli.state_dir.glob("*.json"))
    return json.loads(files[0].read_text()).get("resources", {}) if files else {}


def _confirming(cli: Cli) -> Cli:
    cli.env["MLFLOW_GCP_CONFIRM_LOCAL"] = "1"
    return cli


def without_terminal(cli: Cli, *args: str) -> Result:
    """The CLI with no terminal on stdin (as in CI or a pipe)."""
    proc = subprocess.run(
        cli.argv(args), stdin=subprocess.DEVNULL, capture_output=True, text=True, env=cli.env, cwd=cli.cwd, timeout=600
    )
    cli.transcript += [proc.stdout, proc.stderr]
    return Result(proc.returncode, proc.stdout, proc.stderr)


def on_terminal(cli: Cli, *args: str, answer: str, timeout: float = 600) -> Asked:
    """The CLI with a terminal on stdin; once the question shows on stderr, ``answer`` is typed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        cli.argv(args), stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env, cwd=cli.cwd
    )
    os.close(slave)
    assert proc.stderr is not None
    err, answered_at = b"", None
    deadline = time.monotonic() + timeout
    try:
        while answered_at is None and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if not ready:
                continue
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break  # it finished without asking
            err += chunk
            if QUESTION.encode() in err:
                answered_at = time.time()
                os.write(master, answer.encode() + b"\n")
        out, rest = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    result = Result(proc.returncode, out.decode(), (err + rest).decode())
    cli.transcript += [result.stdout, result.stderr]
    return Asked(result, answered_at)


@pytest.fixture(scope="module")
def deployed(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> tuple[Cli, Asked, list[float]]:
    """A first `up` on a terminal, answered yes; returns the CLI, what it printed, and when each mutating request
    the emulator saw during it started."""
    cli = _confirming(make_cli(emulator, tmp_path_factory.mktemp("confirm")))
    admin = EmulatorAdmin(emulator.base_url)
    start = len(admin.requests())
    asked = on_terminal(cli, "up", answer="y")
    assert asked.result.code == 0, asked.result.stderr
    return cli, asked, [e["started_at"] for e in admin.requests(start) if e["mutating"]]


def test_on_a_terminal_up_shows_the_plan_and_its_cost_and_changes_nothing_before_yes(
    deployed: tuple[Cli, Asked, list[float]],
):
    cli, asked, mutated_at = deployed
    assert asked.answered_at is not None
    before, _, after = asked.result.stderr.partition(QUESTION)
    # The plan and the estimate came first: what would be created, and the cost of the default config.
    assert "+ sql:instance: would create" in before
    assert "Estimated cost a month in us-central1" in before
    assert "\n  + sql:instance     $49.31  Cloud SQL db-custom-1-3840: (1 vCPU × $0.0413 + 3.75 GB" in before
    assert before.splitlines()[-1].split() == ["total", "$51.88", "a", "month"]
    assert "Done:" in after and "Done:" not in before
    # The emulator saw no mutating request before the answer; the stack's mutations all came after it.
    assert mutated_at and min(mutated_at) > asked.answered_at
    status = cli("status", "--json").json()
    assert status["ok"], status
    assert status["estimate"]["monthly_usd"] == 51.88


def test_declined_or_without_a_terminal_up_stops_with_exit_9_and_changes_nothing(
    emulator: Emulator, tmp_path, admin: EmulatorAdmin
):
    cli = _confirming(make_cli(emulator, tmp_path))
    no_terminal = []
    assert not mutations_during(admin, lambda: no_terminal.append(without_terminal(cli, "up")))
    (result,) = no_terminal
    assert result.code == 9, result.stderr
    assert "\n  + sql:instance     $49.31  Cloud SQL db-custom-1-3840" in result.stderr
    assert "there is no terminal to ask on; nothing was changed" in result.stderr
    assert "hint: Pass --yes" in result.stderr
    declined = []
    assert not mutations_during(admin, lambda: declined.append(on_terminal(cli, "up", answer="n")))
    (asked,) = declined
    assert asked.answered_at is not None
    assert asked.result.code == 9, asked.result.stderr
    assert "Not confirmed; nothing was changed." in asked.result.stderr
    assert _recorded(cli) == {}


def test_nothing_billable_changes_nothing_is_asked(deployed: tuple[Cli, Asked, list[float]], admin: EmulatorAdmin):
    cli, _, _ = deployed
    # A no-op. The run converges from the plan's reads: the plan costs no second read of anything.
    noop = []
    start = len(admin.requests())
    noop.append(without_terminal(cli, "up"))
    calls = admin.requests(start)
    assert [e for e in calls if e["mutating"]] == []
    reads = Counter((e["route"], e["path"].split("?", 1)[0]) for e in calls)
    assert max(reads.values()) == 1, reads
    assert noop[0].code == 0, noop[0].stderr
    assert "Nothing billable changes (the stack costs about $51.88 a month" in noop[0].stderr
    assert QUESTION not in noop[0].stderr
    # A change nothing is billed for: a reader of the artifacts (an IAM binding on the bucket).
    cli.env["MLFLOW_GCP_ARTIFACTS_USERS"] = "user:alice@example.com"
    try:
        iam = []
        writes = mutations_during(admin, lambda: iam.append(without_terminal(cli, "up")))
    finally:
        del cli.env["MLFLOW_GCP_ARTIFACTS_USERS"]
    assert iam[0].code == 0, iam[0].stderr
    assert QUESTION not in iam[0].stderr and "~ iam:bucket: would update" in iam[0].stderr
    assert [e["route"] for e in writes] == ["buckets.setIamPolicy"], writes


def test_a_billable_change_needs_a_yes_and_yes_gives_it(deployed: tuple[Cli, Asked, list[float]], admin: EmulatorAdmin):
    cli, _, _ = deployed
    # A bigger database disk: 20 GB of SSD ($3.40) and of backups ($1.60) instead of 10 GB ($1.70, $0.80).
    cli.env["MLFLOW_GCP_DATABASE_DISK_SIZE_GB"] = "20"
    stopped = []
    assert not mutations_during(admin, lambda: stopped.append(without_terminal(cli, "up")))
    assert stopped[0].code == 9, stopped[0].stderr
    lines = [line.split()[:3] for line in stopped[0].stderr.splitlines()]
    assert ["~", "sql:instance", "$3.40"] in lines and ["~", "sql:instance", "$1.60"] in lines
    assert ["total", "$54.38", "a"] in lines
    assert "(sql:instance) and there is no terminal to ask on" in stopped[0].stderr
    done = without_terminal(cli, "up", "--yes")
    assert done.code == 0, done.stderr
    assert QUESTION not in done.stderr and "Planning first" not in done.stderr
    assert "~ sql:instance: updated (settings.dataDiskSizeGb)" in done.stderr
    assert cli("status", "--json").json()["estimate"]["monthly_usd"] == 54.38
    # Without MLFLOW_GCP_CONFIRM_LOCAL, `up --local` never asks (nor plans), billable change or not.
    cli.env["MLFLOW_GCP_DATABASE_DISK_SIZE_GB"] = "30"
    del cli.env["MLFLOW_GCP_CONFIRM_LOCAL"]
    try:
        local = without_terminal(cli, "up")
    finally:
        _confirming(cli)
        del cli.env["MLFLOW_GCP_DATABASE_DISK_SIZE_GB"]
    assert local.code == 0, local.stderr
    assert "Planning first" not in local.stderr and "~ sql:instance: updated" in local.stderr
