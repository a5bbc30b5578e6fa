"""The small HTTP endpoint of ``serve``: ``GET /healthz`` (JSON; 200 when every check
passes, 503 otherwise) and ``GET /metrics`` (Prometheus text format). Off unless
``http.enabled``; bound to loopback unless ``http.bind`` says otherwise. It serves no
patient data: counts, states, timings and model versions only.

A scraper cannot tie it up: each connection must send its request within
:data:`READ_TIMEOUT_SECONDS`, and at most :data:`MAX_CONNECTIONS` are served at once (one
more is closed on accept)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

LOG = logging.getLogger(__name__)

#: Seconds a connection may take to send its request (and between reads).
READ_TIMEOUT_SECONDS = 10.0
#: Connections served at once; more are closed on accept.
MAX_CONNECTIONS = 16


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self._slots.acquire(blocking=False):
            return True
        LOG.debug("http: connection from %s closed: every slot is busy", client_address[0])
        return False  # socketserver closes it

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class StatusServer:
    def __init__(
        self,
        bind: str,
        port: int,
        health: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes],
        *,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.bind = bind
        self._health = health
        self._metrics = metrics
        self._read_timeout = read_timeout
        self._server = _BoundedServer((bind, port), self._handler(), max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = outer._read_timeout  # socket timeout: a silent client is dropped

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/healthz":
                        result = outer._health()
                        code = 200 if result["status"] == "ok" else 503
                        self._send(code, "application/json", json.dumps(result).encode())
                    elif path == "/metrics":
                        self._send(200, CONTENT_TYPE_LATEST, outer._metrics())
                    else:
                        self._send(404, "text/plain", b"not found: /healthz, /metrics\n")
                except Exception as exc:  # a scrape must never take the service down
                    LOG.exception("http %s failed", path)
                    self._send(500, "text/plain", f"{type(exc).__name__}\n".encode())

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                LOG.debug("http: " + format, *args)

        return Handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        LOG.info("health and metrics on http://%s:%d (/healthz, /metrics)", self.bind, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
