"""The emulator answers like Google: every recorded exchange replayed, compared structurally.

The recordings (``recordings.toml``) were made against real GCP. Each is replayed in a fresh project with
every API enabled; a difference fails the test unless one line of ``allowlist.txt`` names it with a reason.
"""

from __future__ import annotations

import secrets
import string
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from mlflow_gcp.emulator.core.world import project_number

from .replay import Bindings, Replayer, load_allowlist, parse

HERE = Path(__file__).parent
MANIFEST = tomllib.loads((HERE / "recordings.toml").read_text())
RECORDINGS: list[dict[str, Any]] = MANIFEST["recording"]
ALLOWLIST = load_allowlist((HERE / "allowlist.txt").read_text())
MAX_ALLOWLIST = 25

SERVICES = [
    "sqladmin.googleapis.com",
    "secretmanager.googleapis.com",
    "iam.googleapis.com",
    "artifactregistry.googleapis.com",
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
]

#: recording -> (exchanges replayed, status agreements), filled as the recordings run.
REPLAYED: dict[str, tuple[int, int]] = {}


def _unique_id() -> str:
    # Config Connector's ${uniqueId}: 20 lowercase letters and digits, starting with a letter.
    alphabet = string.ascii_lowercase + string.digits
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(alphabet) for _ in range(19))


def _bindings(rec: dict[str, Any], admin) -> Bindings:
    unique = _unique_id()
    project_template = rec.get("project", "${projectId}")
    project = f"p-{uuid.uuid4().hex[:12]}" if project_template in ("${projectId}", "example-project") else None
    vars_ = {"uniqueId": unique, "projectId": project or project_template.replace("${uniqueId}", unique)}
    vars_["projectNumber"] = project_number(vars_["projectId"])
    admin.add_project(vars_["projectId"])
    literals = {k: v.replace("${uniqueId}", unique) for k, v in rec.get("literals", {}).items()}
    if project_template == "example-project":
        literals["example-project"] = vars_["projectId"]
    return Bindings(vars_, literals)


def _enable_all(emulator, project: str) -> None:
    from mlflow_gcp.emulator.testing import Clients

    from ..conftest import enable

    enable(Clients(emulator.base_url), project, *SERVICES)


@pytest.mark.parametrize("rec", RECORDINGS, ids=[r["file"].rsplit(".", 2)[0] for r in RECORDINGS])
def test_recording_replays_like_gcp(rec, emulator, admin):
    text = (HERE / "recordings" / rec["file"]).read_text()
    exchanges = parse(text, cassette=rec["file"].endswith(".yaml"))
    bindings = _bindings(rec, admin)
    _enable_all(emulator, bindings.vars["projectId"])
    skip = set(rec.get("skip", []))
    name = rec["file"]
    unexplained: list[str] = []
    replayed = agreed = 0
    for outcome in Replayer(emulator.base_url, bindings).replay(exchanges, skip):
        replayed += 1
        agreed += outcome.status == outcome.exchange.status
        for line in outcome.lines(name):
            allowed = [a for a in ALLOWLIST if a.pattern.search(line)]
            for a in allowed:
                a.used += 1
            if not allowed:
                unexplained.append(line)
    REPLAYED[name] = (replayed, agreed)
    assert replayed, f"{name}: no exchange was replayed"
    assert not unexplained, "\n".join(unexplained)


def test_replay_covers_enough_and_allowlist_is_short_and_used():
    if len(REPLAYED) != len(RECORDINGS):
        pytest.skip("runs after every recording replayed in this process (the whole file)")
    pairs = sum(n for n, _ in REPLAYED.values())
    agreed = sum(a for _, a in REPLAYED.values())
    assert len(RECORDINGS) >= 12
    assert pairs >= 200, f"only {pairs} exchanges replayed"
    assert agreed == pairs
    assert len(ALLOWLIST) <= MAX_ALLOWLIST
    unused = [f"line {a.line}: {a.pattern.pattern}" for a in ALLOWLIST if not a.used]
    assert not unused, "allowlist lines that no difference needs any more:\n" + "\n".join(unused)
