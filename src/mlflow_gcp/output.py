"""The terminal: progress to stderr (a live per-resource view on a terminal, one plain line per step otherwise),
data to stdout. Verbosity folds -v/-q into one number; -v shows API calls (names only, never values)."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

from .engine import Outcome, Reporter

if TYPE_CHECKING:
    from .engine import Step

_SYMBOL = {
    "created": "+", "updated": "~", "deleted": "-", "unchanged": "=", "absent": "·", "kept": "=",
    "would create": "+", "would update": "~", "would delete": "-", "failed": "!", "skipped": "?",
}  # fmt: skip
_STYLE = {
    "created": "green", "updated": "yellow", "deleted": "red", "unchanged": "dim", "absent": "dim", "kept": "cyan",
    "would create": "green", "would update": "yellow", "would delete": "red", "failed": "bold red", "skipped": "red",
}  # fmt: skip


class Terminal(Reporter):
    def __init__(self, verbosity: int = 0, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.verbosity = verbosity
        self.stream = stream or sys.stderr
        if live is None:
            live = self.stream.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"
        self.live_enabled = live and verbosity >= 0
        self._lock = threading.Lock()
        self._rows: dict[str, list[str]] = {}
        self._live: Any = None
        self._started = time.monotonic()

    # --- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> Terminal:
        if self.live_enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(file=self.stream), refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)
            self._live = None

    def _render(self) -> Any:
        from rich.table import Table

        table = Table.grid(padding=(0, 1))
        for key, (status, style, detail) in self._rows.items():
            table.add_row(f"[{style}]{status}[/]", key, f"[dim]{detail}[/]")
        return table

    def _set(self, key: str, status: str, style: str, detail: str = "") -> None:
        with self._lock:
            self._rows[key] = [status, style, detail]
            if self._live is not None:
                self._live.update(self._render())

    # --- plain output ------------------------------------------------------------------------------------

    def line(self, text: str, *, level: int = 0) -> None:
        """A plain progress line (to stderr), shown at verbosity >= level."""
        if self.verbosity < level:
            return
        with self._lock:
            if self._live is not None:
                self._live.console.print(text, markup=False, highlight=False)
            else:
                print(text, file=self.stream, flush=True)

    def api_call(self, what: str) -> None:
        self.line(f"    -> {what}", level=1)

    # --- engine events -----------------------------------------------------------------------------------

    def started(self, resource: Step, verb: str) -> None:
        if self._live is not None:
            self._set(resource.key, "…", "cyan", f"{verb} {resource.kind}")
        elif verb != "checking":
            self.line(f"  {resource.key}: {verb} {resource.kind} {resource.id()}")

    def finished(self, outcome: Outcome) -> None:
        detail = outcome.action
        if outcome.changes:
            detail += " (" + ", ".join(c.field for c in outcome.changes) + ")"
        if outcome.reason:
            detail += f" — {outcome.reason}"
        if outcome.seconds >= 1:
            detail += f" [{outcome.seconds:.1f}s]"
        if self._live is not None:
            self._set(outcome.key, _SYMBOL[outcome.action], _STYLE[outcome.action], detail)
        else:
            self.line(f"{_SYMBOL[outcome.action]} {outcome.key}: {detail}")
        for change in outcome.changes if self.verbosity >= 0 and outcome.action.startswith("would") else []:
            self.line(f"      {change}")

    def failed(self, resource: Step, error: BaseException) -> None:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if self._live is not None:
            self._set(resource.key, "!", "bold red", f"failed: {message}")
        else:
            self.line(f"! {resource.key}: failed: {message}")

    def elapsed(self) -> float:
        return time.monotonic() - self._started
