"""`mlflow-gcp open`: the service URL in the default browser, which Python's webbrowser finds through the BROWSER
environment variable first. A stub browser records what it was asked to open; without a browser the URL is printed.
The browserless runs get a PATH with nothing on it and no display, so no browser of this machine is found."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

from tests.e2e.conftest import Cli, Deployed


def stub_browser(tmp_path: Path, exit_code: int = 0) -> tuple[Path, Path]:
    """A browser that writes its argument to a file, then exits with ``exit_code``."""
    record = tmp_path / "opened.txt"
    script = tmp_path / "browser.sh"
    script.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {record}\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, record


def with_browser(cli: Cli, browser: str, tmp_path: Path) -> Cli:
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in cli.env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    return dataclasses.replace(cli, env={**env, "BROWSER": browser, "PATH": str(empty)})


def test_open_opens_the_url_in_the_browser(basic_stack: Deployed, tmp_path: Path):
    browser, record = stub_browser(tmp_path)
    cli = with_browser(basic_stack.cli, str(browser), tmp_path)
    opened = cli("open")
    assert record.read_text() == basic_stack.url
    assert opened.stdout == "" and f"Opened {basic_stack.url}" in opened.stderr
    assert "mlflow-gcp env --local" in opened.stderr  # who to sign in as
    record.unlink()
    assert cli("open", "--json").json() == {"url": basic_stack.url, "opened": True}
    assert record.read_text() == basic_stack.url


def test_without_a_browser_open_prints_the_url(basic_stack: Deployed, tmp_path: Path):
    for browser in (str(tmp_path / "no-such-browser"), str(stub_browser(tmp_path, exit_code=3)[0])):
        cli = with_browser(basic_stack.cli, browser, tmp_path)
        printed = cli("open")
        assert printed.stdout == basic_stack.url + "\n" and "No browser" in printed.stderr, browser
        assert cli("open", "--json").json() == {"url": basic_stack.url, "opened": False}


def test_open_without_a_stack_says_to_run_up(cli: Cli, tmp_path: Path):
    browser, record = stub_browser(tmp_path)
    refused = with_browser(cli, str(browser), tmp_path)("open", check=False)
    assert refused.code == 1 and "No MLflow service found" in refused.stderr and "mlflow-gcp up" in refused.stderr
    assert "Traceback" not in refused.stderr and not record.exists()
