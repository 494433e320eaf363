"""Each service's front end: a listener on its own port that forwards requests to the live revision.

Like Cloud Run's front end it checks the caller against ``roles/run.invoker`` (unless the service has
``invokerIamDisabled``), or lets Identity-Aware Proxy decide when the service has ``iapEnabled`` (the gate
answers with a :class:`Verdict`: reply here, or forward with headers removed and added), streams request and
response bodies, keeps method, path, query and headers (``Host`` included) and the status, refuses HTTP/1
request bodies over 32 MiB with 413 (by Content-Length, or by counting a chunked body), answers 503 while no
revision is ready, and counts requests by status. A revision whose container port is named ``h2c`` is reached
with cleartext HTTP/2 (prior knowledge) and has no size cap; if that container cannot speak HTTP/2 the request
fails with 502.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import json
import os
import random
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore

from .revisions import RevisionProcess

#: Cloud Run's HTTP/1 request size limit.
MAX_HTTP1_BODY = 32 * 1024 * 1024
_CHUNK = 64 * 1024
# Hop-by-hop headers (RFC 9110 §7.6.1) are the front end's own business, never forwarded.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


@dataclass(frozen=True)
class Verdict:
    """What the service's gate decided for one request.

    With ``status``, the front end answers itself: ``page`` (HTML) with the extra response ``headers`` (e.g. a
    redirect's ``Location``, a ``Set-Cookie``). Without, the request goes to the container minus the request
    headers named in ``drop`` (lower-case) and the cookies named in ``drop_cookies``, plus ``add``."""

    status: int | None = None
    page: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    drop: frozenset[str] = frozenset()
    drop_cookies: frozenset[str] = frozenset()
    add: tuple[tuple[str, str], ...] = ()


#: Decides whether a caller may invoke the service, from the request's (lower-cased) headers and its target
#: (path and query): None to let it through unchanged, else a :class:`Verdict`.
Authorizer = Callable[[dict[str, str], str], "Verdict | None"]


def google_error_page(code: int, reason: str, detail: str) -> str:
    """The HTML Google's front end answers with when the request never reaches the container."""
    return (
        "<html><head>\n"
        '<meta http-equiv="content-type" content="text/html;charset=utf-8">\n'
        f"<title>{code} {reason}</title>\n"
        "</head>\n"
        "<body text=#000000 bgcolor=#ffffff>\n"
        f"<h1>Error: {reason}</h1>\n"
        f"<h2>{detail}</h2>\n"
        "<h2></h2>\n"
        "</body></html>\n"
    )


def forbidden_page(path: str) -> str:
    """Cloud Run's 403 for a caller (or IAP's service agent) without roles/run.invoker."""
    return google_error_page(
        403, "Forbidden", f"Your client does not have permission to get URL <code>{path}</code> from this server."
    )


_TOO_LARGE = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    "  <title>Error 413 (Request Entity Too Large)!!1</title>\n"
    "  <p><b>413.</b> <ins>That’s an error.</ins>\n"
    "  <p>Your client issued a request that was too large.\n  <ins>That’s all we know.</ins>\n"
)


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class FrontEnd:
    """The listener for one service; ``set_targets`` moves traffic atomically."""

    def __init__(self, service: str, port: int, authorize: Authorizer) -> None:
        self.service = service
        self.authorize = authorize
        self._lock = threading.Lock()
        self._targets: list[tuple[RevisionProcess, int]] = []
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.server = _Server(("127.0.0.1", port), _Handler)
        self.server.frontend = self
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"run-frontend:{port}", daemon=True
        )
        self._thread.start()

    # --- routing ----------------------------------------------------------------------------------

    def set_targets(self, targets: list[tuple[RevisionProcess, int]]) -> None:
        with self._lock:
            self._targets = [(p, pct) for p, pct in targets if pct > 0]

    def targets(self) -> list[RevisionProcess]:
        with self._lock:
            return [p for p, _ in self._targets]

    def _pick(self) -> RevisionProcess | None:
        # Picking and counting the request in flight happen under one lock, so a revision being retired
        # is never handed a request after its drain began.
        with self._lock:
            live = [(p, pct) for p, pct in self._targets if p.ready and p.alive()]
            if not live:
                return None
            (proc,) = random.choices([p for p, _ in live], weights=[pct for _, pct in live])
            proc.acquire()
            return proc

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "by_status": {str(k): v for k, v in sorted(self.by_status.items())}}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _count(self, status: int) -> None:
        with self._lock:
            self.requests += 1
            self.by_status[status] += 1

    # --- one request ------------------------------------------------------------------------------

    def handle(self, h: _Handler) -> None:
        status = 500
        try:
            status = self._serve(h)
        except _ClientGone:
            status = 499  # the caller hung up before an answer; logged as nginx does
            h.close_connection = True
        finally:
            self._mark(h, status)

    def _mark(self, h: _Handler, status: int) -> None:
        """Count the request once, before its answer goes out (so a caller that got it sees it counted)."""
        if not h.counted:
            h.counted = True
            self._count(status)

    def _serve(self, h: _Handler) -> int:
        chunked, length = self._body_length(h)
        if not chunked and not length:
            h.body_consumed = True
        headers = {k.lower(): v for k, v in h.headers.items()}
        verdict = self.authorize(headers, h.path)
        if verdict is not None and verdict.status is not None:
            return self._reply(h, verdict.status, verdict.page, verdict.headers)
        proc = self._pick()
        if proc is None:
            return self._reply(
                h,
                503,
                google_error_page(503, "Service Unavailable", "The service you requested is not available yet."),
            )
        try:
            if proc.h2c:
                return self._forward_h2(h, proc, verdict)
            return self._forward_h1(h, proc, verdict)
        finally:
            proc.release()

    def _body_length(self, h: _Handler) -> tuple[bool, int | None]:
        chunked = "chunked" in h.headers.get("Transfer-Encoding", "").lower()
        length = h.headers.get("Content-Length")
        try:
            return chunked, (None if chunked or length is None else int(length))
        except ValueError:
            return chunked, None

    def _raw_body(self, h: _Handler) -> Iterator[bytes]:
        """The request body as it arrives, one reader per request (so a drain resumes where the
        forwarding stopped, even mid-chunk)."""
        if h.reader is None:
            h.reader = self._read_body(h)
        return h.reader

    def _read_body(self, h: _Handler) -> Iterator[bytes]:
        chunked, length = self._body_length(h)
        if chunked:
            yield from _read_chunked(h)
        elif length:
            left = length
            while left > 0:
                piece = h.rfile.read(min(_CHUNK, left))
                if not piece:
                    raise _ClientGone
                left -= len(piece)
                yield piece
        h.body_consumed = True

    def _body(self, h: _Handler, cap: int | None) -> Iterator[bytes]:
        """The request body; raises _TooLarge once it passes ``cap`` bytes."""
        seen = 0
        for piece in self._raw_body(h):
            seen += len(piece)
            if cap is not None and seen > cap:
                raise _TooLarge
            yield piece

    def _forward_h1(self, h: _Handler, proc: RevisionProcess, verdict: Verdict | None) -> int:
        chunked, length = self._body_length(h)
        if length is not None and length > MAX_HTTP1_BODY:
            return self._reply(h, 413, _TOO_LARGE)
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=proc.request_timeout)
        try:
            try:
                conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self._upstream_headers(h, verdict):
                    conn.putheader(k, v)
                if chunked:
                    conn.putheader("Transfer-Encoding", "chunked")
                elif length is not None:
                    conn.putheader("Content-Length", str(length))
                conn.endheaders()
                for piece in self._body(h, MAX_HTTP1_BODY):
                    conn.send(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
                if chunked:
                    conn.send(b"0\r\n\r\n")
                resp = conn.getresponse()
            except _TooLarge:
                return self._reply(h, 413, _TOO_LARGE)
            except TimeoutError:
                return self._reply(h, 504, "upstream request timeout")
            except (OSError, http.client.HTTPException):
                return self._reply(h, 503, _INSTANCE_ERROR)
            return self._relay(
                h,
                resp.status,
                resp.reason,
                resp.getheaders(),
                _iter_h1(resp),
                resp.length if not resp.chunked else None,
            )
        finally:
            conn.close()

    def _forward_h2(self, h: _Handler, proc: RevisionProcess, verdict: Verdict | None) -> int:
        """One request over its own cleartext HTTP/2 connection, closed with the response.

        Not one connection shared by all requests, because httpcore does not reset a stream whose response is
        closed before its end (encode/httpcore#943, closed as wontfix): when a browser navigates away mid-download
        the container keeps sending on that stream, nobody reads it, the connection's flow-control window runs
        dry and the other requests on the connection stall or fail when hypercorn ends the connection with
        PROTOCOL_ERROR (seen here as 502s on MLflow's UI bundles under load). Closing the connection is a reset
        every server understands, and a loopback connect costs far less than a request.
        """
        chunked, length = self._body_length(h)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self._upstream_headers(h, verdict)]
        if length is not None:
            headers.append((b"Content-Length", str(length).encode()))
        body = self._body(h, None) if (chunked or length) else None
        timeout = {"connect": 10.0, "read": proc.request_timeout, "write": proc.request_timeout, "pool": None}
        try:
            stream = httpcore.SyncBackend().connect_tcp("127.0.0.1", proc.port, timeout=10.0)
        except httpcore.ConnectError:
            return self._reply(h, 503, _INSTANCE_ERROR)
        conn = httpcore.HTTP2Connection(httpcore.Origin(b"http", b"127.0.0.1", proc.port), stream)
        try:
            request = httpcore.Request(
                h.command,
                f"http://127.0.0.1:{proc.port}{h.path}",
                headers=headers,
                content=body,
                extensions={"timeout": timeout},
            )
            try:
                resp = conn.handle_request(request)
            except httpcore.TimeoutException:
                return self._reply(h, 504, "upstream request timeout")
            except (httpcore.ProtocolError, httpcore.NetworkError):
                # e.g. an HTTP/1-only container answering HTTP/2 prior knowledge: no valid response.
                return self._reply(h, 502, google_error_page(502, "Bad Gateway", _H2C_FAILED))
            try:
                resp_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers]
                resp_length = next((v for k, v in resp_headers if k.lower() == "content-length"), None)
                return self._relay(
                    h,
                    resp.status,
                    http.client.responses.get(resp.status, ""),
                    resp_headers,
                    iter(resp.stream),
                    int(resp_length) if resp_length and resp_length.isdigit() else None,
                )
            finally:
                resp.close()
        finally:
            conn.close()

    def _upstream_headers(self, h: _Handler, verdict: Verdict | None = None) -> Iterator[tuple[str, str]]:
        has_host = False
        drop = verdict.drop if verdict is not None else frozenset()
        for k, v in h.headers.items():
            lk = k.lower()
            if (
                lk in _HOP
                or lk in ("content-length", "x-forwarded-for", "x-forwarded-proto", "forwarded")
                or lk in drop
            ):
                continue
            if lk == "cookie" and verdict is not None and verdict.drop_cookies:
                v = _without_cookies(v, verdict.drop_cookies)
                if not v:
                    continue
            has_host |= lk == "host"
            yield k, v
        if verdict is not None:
            yield from verdict.add
        if not has_host:
            yield "Host", f"127.0.0.1:{self.port}"
        client_ip = h.client_address[0]
        # Google's front end appends the caller's address to what the caller claimed.
        claimed = ", ".join(h.headers.get_all("X-Forwarded-For") or [])
        yield "X-Forwarded-For", f"{claimed}, {client_ip}" if claimed else client_ip
        yield "X-Forwarded-Proto", "http"
        yield "Forwarded", f'for="{client_ip}";proto=http'
        yield "X-Cloud-Trace-Context", f"{os.urandom(16).hex()}/{int.from_bytes(os.urandom(7), 'big')};o=1"

    def _relay(
        self,
        h: _Handler,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: Iterator[bytes],
        length: int | None,
    ) -> int:
        """Send the container's response to the caller, streaming its body."""
        no_body = h.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        self._mark(h, status)
        try:
            h.send_response_only(status, reason)
            for k, v in headers:
                lk = k.lower()
                if lk in _HOP or (lk == "content-length" and not no_body):
                    continue
                h.send_header(k, v)
            if no_body:
                h.end_headers()
                return status
            if length is not None:
                h.send_header("Content-Length", str(length))
                h.end_headers()
                for piece in body:
                    h.wfile.write(piece)
            elif h.request_version == "HTTP/1.1":
                h.send_header("Transfer-Encoding", "chunked")
                h.end_headers()
                for piece in body:
                    if piece:
                        h.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                h.wfile.write(b"0\r\n\r\n")
            else:
                h.close_connection = True
                h.send_header("Connection", "close")
                h.end_headers()
                for piece in body:
                    h.wfile.write(piece)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClientGone from exc
        except (OSError, http.client.HTTPException, *_H2_ERRORS):
            # The container broke off mid-body: the caller sees a truncated response, as on Cloud Run.
            h.close_connection = True
        if not getattr(h, "body_consumed", False):
            h.close_connection = True
        return status

    def _reply(self, h: _Handler, status: int, page: str, headers: tuple[tuple[str, str], ...] = ()) -> int:
        """Answer from the front end itself, reading (and discarding) what is left of the body first so
        the caller is listening when the answer comes."""
        if not getattr(h, "body_consumed", False):
            h.connection.settimeout(5.0)
            try:
                for _ in self._raw_body(h):
                    pass
            except (OSError, _ClientGone, ValueError):
                h.close_connection = True
        data = page.encode()
        reason = http.client.responses.get(status, "")
        self._mark(h, status)
        try:
            h.send_response_only(status, reason)
            h.send_header("Content-Type", "text/html; charset=UTF-8")
            for k, v in headers:
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            if h.close_connection:
                h.send_header("Connection", "close")
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClientGone from exc
        return status


_INSTANCE_ERROR = (
    "upstream connect error or disconnect/reset before headers. The request failed because either the HTTP "
    "response was malformed or connection to the instance had an error."
)
#: What httpcore raises when the container's HTTP/2 answer breaks off.
_H2_ERRORS = (httpcore.ProtocolError, httpcore.NetworkError, httpcore.TimeoutException)
_H2C_FAILED = "The request failed because the container did not speak HTTP/2 cleartext (h2c) on its port."


def _iter_h1(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        piece = resp.read1(_CHUNK)
        if not piece:
            return
        yield piece


def _read_chunked(h: _Handler) -> Iterator[bytes]:
    rfile = h.rfile
    while True:
        line = rfile.readline(65537)
        if not line:
            raise _ClientGone
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            # Trailers, up to the blank line.
            while True:
                trailer = rfile.readline(65537)
                if trailer in (b"\r\n", b"\n", b""):
                    return
        left = size
        while left > 0:
            piece = rfile.read(min(_CHUNK, left))
            if not piece:
                raise _ClientGone
            left -= len(piece)
            yield piece
        rfile.readline(3)  # the CRLF closing the chunk


def _without_cookies(header: str, names: frozenset[str]) -> str:
    """A ``Cookie`` header without the named cookies."""
    kept = [c.strip() for c in header.split(";") if c.strip() and c.strip().split("=", 1)[0].strip() not in names]
    return "; ".join(kept)


def request_cookies(header: str) -> dict[str, str]:
    """The cookies of a ``Cookie`` header (the first of a repeated name wins, as browsers send the most
    specific first)."""
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name.strip() and name.strip() not in out:
            out[name.strip()] = value.strip()
    return out


def decode_jwt_email(token: str) -> str | None:
    """The ``email`` claim of a JWT, unverified: the invoker check trusts the caller's identity token (the IAP
    gate, ``iapgate.py``, verifies its token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    email = payload.get("email") if isinstance(payload, dict) else None
    return email if isinstance(email, str) else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    frontend: FrontEnd

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A caller that vanished mid-request is routine for a proxy; nothing to print.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    body_consumed: bool
    counted: bool
    reader: Iterator[bytes] | None

    def log_message(self, format: str, *args: Any) -> None:  # counted in FrontEnd.stats instead
        pass

    def handle_one_request(self) -> None:
        self.body_consumed = False
        self.counted = False
        self.reader = None
        with contextlib.suppress(socket.timeout):
            self.connection.settimeout(None)
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        # Refuse an oversized body before the client sends it, as a front end that checks
        # Content-Length would (unless the revision takes HTTP/2 end to end).
        fe = self.server.frontend
        _, length = fe._body_length(self)
        if length is not None and length > MAX_HTTP1_BODY and not any(p.h2c for p in fe.targets()):
            self.body_consumed = True  # never sent: the client waits for our verdict
            self.close_connection = True
            fe._reply(self, 413, _TOO_LARGE)
            return False
        return super().handle_expect_100()

    def _proxy(self) -> None:
        self.server.frontend.handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _proxy
