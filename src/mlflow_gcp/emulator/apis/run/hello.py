"""Google's public Cloud Run sample image (``gcr.io/cloudrun/hello``), built into the emulator.

On GCP anyone may deploy the sample and it serves a "Congratulations" page on ``$PORT``; the emulator cannot
pull it from Google's registry, so a revision of it runs this file (stdlib only) as its ENTRYPOINT instead.
It is never imported: ``image(uri)`` describes it as an image whose unpacked files are this directory.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: Where Google publishes the sample: Container Registry, and the Artifact Registry copy its docs now use.
_SAMPLE = re.compile(r"^(?:gcr\.io/cloudrun/hello|us-docker\.pkg\.dev/cloudrun/container/hello)(?::latest)?$")


def image(uri: str):  # -> ImageRecord | None (imported lazily: this file also runs on its own)
    """The built-in stand-in for Google's sample when ``uri`` names it, else None."""
    if not _SAMPLE.match(uri):
        return None
    from ...core.images import ImageRecord

    here = Path(__file__)
    return ImageRecord(
        uri=uri,
        digest="sha256:" + hashlib.sha256(here.read_bytes()).hexdigest(),
        rootfs=here.parent,
        entrypoint=["python", f"/{here.name}"],
        exposed_ports=[8080],
    )


_PAGE = """<!doctype html>
<html><head><title>Congratulations | Cloud Run</title></head>
<body><h1>It's running!</h1>
<p>Congratulations, you successfully deployed a container image to Cloud Run.</p>
<p>Service: {service}<br>Revision: {revision}</p>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _page(self, with_body: bool) -> None:
        body = _PAGE.format(
            service=html.escape(os.environ.get("K_SERVICE", "???")),
            revision=html.escape(os.environ.get("K_REVISION", "???")),
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._page(True)

    def do_HEAD(self) -> None:
        self._page(False)


def main() -> None:
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    print(f"Hello from Cloud Run! The container started successfully and is listening for HTTP requests on {port}")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
