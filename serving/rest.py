"""The HTTP server behind TF Serving's REST API: request bodies (Content-Length or chunked, gzip/deflate, size
limits), keep-alive connections, in-flight counting for a graceful shutdown. What a request means is
serving/rest_api.py's `RestApi`; its public names are importable here too.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moatkit.serving.rest_api import (DEFAULT_PROMETHEUS_PATH, HTTP_STATUS, PREDICTION_PATH, STATUS_PATH,
                                      RequestCounter, RestApi, proto_json)

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_PROMETHEUS_PATH", "HTTP_STATUS", "PREDICTION_PATH", "STATUS_PATH",
           "InFlight", "RequestCounter", "RestApi", "bind_host", "make_http_server", "proto_json", "serve_in_thread"]

log = logging.getLogger("moat.serving")


def bind_host() -> str:
    return "0.0.0.0" if os.environ.get("MOAT_BIND_ALL") == "1" else "127.0.0.1"


DEFAULT_MAX_REQUEST_BYTES = 128 * 1024 * 1024
# A body at most this much over the limit is read and dropped, so a client that writes its whole body before
# reading the answer sees the 413 instead of a reset connection; beyond it the connection is closed at once.
_DRAIN_LIMIT = 64 * 1024 * 1024


class _TooLarge(Exception):
    pass


class _BadRequest(Exception):
    pass


class InFlight:
    """Counts requests being processed, so shutdown can wait for them (idle keep-alive connections don't count)."""

    def __init__(self):
        self._count = 0
        self._cond = threading.Condition()

    def __enter__(self):
        with self._cond:
            self._count += 1

    def __exit__(self, *exc):
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout=timeout)


class _Handler(BaseHTTPRequestHandler):
    server_version = "moat-model-server"
    protocol_version = "HTTP/1.1"
    api: RestApi  # set on the subclass built by make_http_server
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    in_flight: InFlight
    timeout = 60  # seconds a connection may sit idle or stall mid-body before it is closed
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed ACK
    # (~40 ms per keep-alive request, measured).
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # route access logs to logging at debug level
        log.debug("%s %s", self.address_string(), fmt % args)

    def _read_chunked(self) -> bytes:
        """Transfer-Encoding: chunked (TF Serving's libevent front end accepts it; http.server does not)."""
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _BadRequest("malformed chunked body") from None
            if size < 0:
                raise _BadRequest("malformed chunked body")
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                if total > self.max_bytes:
                    raise _TooLarge(total)
                return b"".join(parts)
            total += size
            if total > self.max_bytes + _DRAIN_LIMIT:
                self.close_connection = True
                raise _TooLarge(total)
            if total > self.max_bytes:  # over the limit: read on to the end (see _DRAIN_LIMIT), keep nothing
                parts.clear()
                self._discard(size)
            else:
                parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raw = self._read_chunked()
        else:
            text = self.headers.get("Content-Length") or "0"
            if not text.strip().isdigit():
                raise _BadRequest(f"invalid Content-Length: {text!r}")
            length = int(text)
            if length > self.max_bytes:
                if length <= self.max_bytes + _DRAIN_LIMIT:
                    self._discard(length)
                else:
                    self.close_connection = True
                raise _TooLarge(length)
            raw = self.rfile.read(length) if length else b""
            if len(raw) != length:
                self.close_connection = True
                raise _BadRequest(f"body ended after {len(raw)} of {length} bytes")
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding in ("gzip", "deflate"):
            # wbits 47 accepts gzip and zlib headers; max_length stops a decompression bomb early
            inflater = zlib.decompressobj(47)
            raw = inflater.decompress(raw, self.max_bytes + 1)
            if len(raw) > self.max_bytes:
                raise _TooLarge(len(raw))
            if not inflater.eof:
                raise zlib.error("incomplete or truncated stream")
        return raw

    def _discard(self, length: int) -> None:
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _serve(self, method: str) -> None:
        with self.in_flight:
            try:
                body = self._body() if method in ("POST", "PUT", "PATCH") else b""
            except _TooLarge as err:
                status, ctype, text = 413, "application/json", json.dumps({"error": (
                    f"Request body of {err.args[0]} bytes exceeds the limit of {self.max_bytes} bytes "
                    "(--rest_api_max_request_bytes)")})
            except _BadRequest as err:
                status, ctype, text = 400, "application/json", json.dumps({"error": str(err)})
            except zlib.error as err:
                status, ctype, text = 400, "application/json", json.dumps(
                    {"error": f"Failed to decompress body: {err}"})
            except (OSError, EOFError) as err:  # includes the socket timeout of a client that stopped sending
                self.close_connection = True
                status, ctype, text = 400, "application/json", json.dumps({"error": f"Failed to read body: {err}"})
            else:
                status, ctype, text = self.api.handle(method, self.path, body)
            payload = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)

    # TF Serving answers every method; the ones it has no route for get 400 "Malformed request".
    def do_GET(self):  # noqa: N802  (http.server naming)
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._serve("PATCH")

    def do_HEAD(self):  # noqa: N802
        self._serve("HEAD")

    def do_OPTIONS(self):  # noqa: N802
        self._serve("OPTIONS")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog; the default 5 resets connections when 32 clients connect at once


def make_http_server(api: RestApi, *, port: int, host: str | None = None,
                     max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> ThreadingHTTPServer:
    handler = type("MoatRestHandler", (_Handler,), {"api": api, "max_bytes": max_request_bytes,
                                                   "in_flight": InFlight()})
    server = _HTTPServer((host or bind_host(), port), handler)
    server.in_flight = handler.in_flight
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="moat-rest", daemon=True)
    thread.start()
    return thread
