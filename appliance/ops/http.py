"""The small HTTP endpoint of ``serve``: ``GET /healthz`` (JSON; 200 when every check
passes, 503 otherwise) and ``GET /metrics`` (Prometheus text format). Off unless
``http.enabled``; bound to loopback unless ``http.bind`` says otherwise. It serves no
patient data: counts, states, timings and model versions only."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

LOG = logging.getLogger(__name__)


class StatusServer:
    def __init__(
        self,
        bind: str,
        port: int,
        health: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes],
    ) -> None:
        self.bind = bind
        self._health = health
        self._metrics = metrics
        self._server = ThreadingHTTPServer((bind, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
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
