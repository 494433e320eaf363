"""Copy the recordings listed in tests/golden/recordings.toml from a Config Connector checkout.

    python scripts/vendor_golden.py /path/to/k8s-config-connector   # a clone or a bare git directory

Each file is copied byte for byte from the manifest's commit below a header naming its source, so a
reader can check the copy against upstream. Run it again after changing the manifest.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
HEADER = (
    "# Recorded against real Google Cloud by Google's Config Connector project; Apache License 2.0 (see LICENSE).\n"
    "# Source: https://github.com/GoogleCloudPlatform/k8s-config-connector/blob/{commit}/{source}\n"
    "# Vendored unmodified below this header by scripts/vendor_golden.py.\n"
)


def main(repo: str) -> None:
    manifest = tomllib.loads((GOLDEN / "recordings.toml").read_text())
    commit = manifest["commit"]
    out = GOLDEN / "recordings"
    out.mkdir(exist_ok=True)
    for rec in manifest["recording"]:
        git_dir = ["--git-dir", repo] if not (Path(repo) / ".git").exists() else ["-C", repo]
        body = subprocess.run(
            ["git", *git_dir, "show", f"{commit}:{rec['source']}"], check=True, capture_output=True
        ).stdout
        header = HEADER.format(commit=commit, source=rec["source"]).encode()
        (out / rec["file"]).write_bytes(header + body)
        print(f"{rec['file']}: {len(body)} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
