"""The OHIF viewer for the browser tests: its prebuilt ``@ohif/app`` from the npm registry
(``make ohif`` fetches and checks it; nothing is downloaded at test time), served on a free
loopback port by a small HTTP server that also forwards ``/dicom-web`` to an Orthanc with
the DICOMweb plugin (one origin, as a site deploys it behind nginx), and Debian's Chromium
driven headless by playwright."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fetch_ohif import TARGET, VERSION
from tests.peers import free_port, require_program

LOG = logging.getLogger(__name__)


def ohif_dist() -> Path:
    """Where ``make ohif`` unpacked the viewer (``APPLIANCE_OHIF_DIR`` overrides)."""
    path = Path(os.environ.get("APPLIANCE_OHIF_DIR", TARGET / "dist"))
    if not (path / "index.html").is_file():
        message = f"OHIF {VERSION} is not unpacked at {path} (make ohif)"
        if os.environ.get("APPLIANCE_REQUIRE_INTEROP") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def chromium() -> str:
    """Debian's Chromium (``apt-get install chromium``) and the playwright driver."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        exe = require_program("chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        message = "playwright is not installed (pip install playwright)"
        if os.environ.get("APPLIANCE_REQUIRE_INTEROP") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return exe


#: OHIF's configuration for an Orthanc behind the same origin (as OHIF's own
#: docker-nginx-orthanc config); no study list, no service worker.
APP_CONFIG = """window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  investigationalUseDialog: { option: 'never' },
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    backend: str = ""

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("viewer server: " + format, *args)  # not stderr: OHIF loads hundreds

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/dicom-web/") or path.startswith("/wado"):
            self._forward()
            return
        if path == "/app-config.js":
            body = APP_CONFIG.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path in ("/sw.js", "/init-service-worker.js"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        target = Path(self.directory) / path.lstrip("/")
        if not target.is_file():  # the single-page app's routes
            self.path = "/index.html"
        super().do_GET()

    def _forward(self) -> None:
        request = urllib.request.Request(self.backend + self.path)
        for name in ("Accept", "Range"):
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, headers, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        self.send_response(status)
        for name in ("Content-Type",):
            if headers.get(name):
                self.send_header(name, headers[name])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def ohif_server(dist: Path, orthanc_url: str) -> Iterator[str]:
    """OHIF on a free loopback port, its ``/dicom-web`` forwarded to ``orthanc_url``;
    yields the viewer's base URL."""
    handler = type("Handler", (_Handler,), {"backend": orthanc_url})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(handler, directory=str(dist))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
