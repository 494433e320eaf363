"""Shell completion as README.md documents it: click's `_MLFLOW_GCP_COMPLETE` protocol, run through the installed
`mlflow-gcp`, and the bash script it sources really completing in bash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The installed console script next to this interpreter (`make install` puts it there).
BIN = Path(sys.executable).parent
TOOL = str(BIN / "mlflow-gcp")


def complete(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TOOL], capture_output=True, text=True, env={**os.environ, **env}, timeout=60)


def bash_complete(words: str) -> list[str]:
    """Click's bash protocol: the words typed so far and the index of the one being completed."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    out = complete({"_MLFLOW_GCP_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert out.returncode == 0, out.stderr
    return [line.split(",", 1)[1] for line in out.stdout.splitlines() if line.startswith("plain,")]


def test_completion_scripts_for_each_shell():
    bash = complete({"_MLFLOW_GCP_COMPLETE": "bash_source"})
    assert bash.returncode == 0 and "complete -o nosort -F _mlflow_gcp_completion mlflow-gcp" in bash.stdout
    assert "compdef _mlflow_gcp_completion mlflow-gcp" in complete({"_MLFLOW_GCP_COMPLETE": "zsh_source"}).stdout
    assert "complete --no-files --command mlflow-gcp" in complete({"_MLFLOW_GCP_COMPLETE": "fish_source"}).stdout


def test_the_protocol_completes_commands_and_choices():
    assert bash_complete("mlflow-gcp u") == ["up", "upgrade", "users"]
    assert bash_complete("mlflow-gcp users ") == ["add", "grant", "list", "passwd", "remove"]
    assert bash_complete("mlflow-gcp users grant ana exp ") == ["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"]


def test_bash_completes_with_the_sourced_script():
    script = """
        eval "$(_MLFLOW_GCP_COMPLETE=bash_source mlflow-gcp)"
        COMP_WORDS=(mlflow-gcp u); COMP_CWORD=1
        _mlflow_gcp_completion mlflow-gcp
        printf '%s\\n' "${COMPREPLY[@]}"
    """
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["up", "upgrade", "users"]
