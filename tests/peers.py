"""Real peer programs for interop tests: started on 127.0.0.1 with free ports, stopped by PID.

Where a program is missing the test skips naming it, unless APPLIANCE_REQUIRE_INTEROP=1
(CI sets it), in which case the test fails.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def interop_required() -> bool:
    return os.environ.get("APPLIANCE_REQUIRE_INTEROP", "") == "1"


DCMTK_PROGRAMS = frozenset({"storescu", "storescp", "echoscu", "findscu", "movescu"})


@functools.cache
def find_program(name: str) -> str | None:
    """The first ``name`` on PATH (then /usr/bin, /usr/sbin) that is the real program.

    pynetdicom installs its own ``storescp``/``echoscp`` into the venv, so for dcmtk names
    the candidate must say "dcmtk" in its ``--version``.
    """
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    # The venv's own bin (Flower's programs) even when the venv is not activated, as
    # when make runs .venv/bin/pytest.
    venv_bin = str(Path(sys.executable).parent)
    for directory in [*dirs, venv_bin, "/usr/bin", "/usr/sbin"]:
        candidate = shutil.which(name, path=directory)
        if candidate is None:
            continue
        if name not in DCMTK_PROGRAMS:
            return candidate
        try:
            done = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (done.stdout + done.stderr).lower():
            return candidate
    return None


def require_program(name: str) -> str:
    """Path of ``name``; skip (or fail, when interop is required) if it is missing."""
    path = find_program(name)
    if path is None:
        message = (
            f"{name} is not installed "
            "(apt-get install dcmtk orthanc orthanc-dicomweb dicom3tools stunnel4)"
        )
        if interop_required():
            pytest.fail(message + " and APPLIANCE_REQUIRE_INTEROP=1")
        pytest.skip(message)
    return path


#: Where Debian's orthanc-dicomweb puts the DICOMweb plugin.
ORTHANC_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))


def require_orthanc_dicomweb() -> Path:
    """The Orthanc DICOMweb plugin; skip (or fail, when interop is required) if missing."""
    for folder in ORTHANC_PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*"))
        if found:
            return found[0]
    message = "orthanc-dicomweb is not installed (apt-get install orthanc-dicomweb)"
    if interop_required():
        pytest.fail(message + " and APPLIANCE_REQUIRE_INTEROP=1")
    pytest.skip(message)


def require_data(path: Path) -> Path:
    if not path.exists():
        message = f"shared test data {path} is missing"
        if interop_required():
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int,
    *,
    timeout: float = 20.0,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(
                f"process exited with {proc.returncode} before port {port} opened\n{text}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout} s")


def nodelay_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"  # dcmtk: Nagle + delayed ACK otherwise stalls loopback
    env.update(extra or {})
    return env


class Process:
    """A child process with its log file; ``stop()`` terminates it by PID."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.log = log
        self._log_handle = log.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=dict(env or os.environ),
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log_handle.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# --- the appliance as a real process -------------------------------------------------------


def write_config(
    path: Path,
    *,
    port: int,
    root: Path,
    quiet: float = 1.0,
    allowed_callers: Sequence[str | dict[str, str]] = (),
    destinations: Sequence[dict[str, Any]] = (),
    extra: str = "",
) -> Path:
    def toml_value(v: Any) -> str:
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(toml_value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    lines = [
        "[dicom]",
        'ae_title = "SEGAPPLIANCE"',
        f"port = {port}",
        'bind = "127.0.0.1"',
        f"allowed_callers = {toml_value(list(allowed_callers))}",
        f"series_quiet_seconds = {quiet}",
        "[storage]",
        f"root = {json.dumps(str(root))}",
        "[outbox]",
        "backoff_initial_seconds = 0.2",
        "backoff_max_seconds = 1.0",
        "poll_seconds = 0.1",
    ]
    for dest in destinations:
        lines.append("[[destinations]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in dest.items())
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@dataclass
class ApplianceProcess:
    config: Path
    port: int
    root: Path
    log: Path
    process: Process | None = None

    def start_process(self) -> ApplianceProcess:
        """Start ``appliance serve`` without waiting for its port."""
        self.process = Process(
            [sys.executable, "-m", "appliance", "serve", "--config", str(self.config)], self.log
        )
        return self

    def start(self) -> ApplianceProcess:
        self.start_process()
        assert self.process is not None
        # 60 s: a start-up beside another test's services (make test's second pass); a
        # start that fails is seen at once (the process exits)
        wait_port(self.port, timeout=60.0, proc=self.process.proc, log=self.log)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "appliance", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"appliance {' '.join(args)} failed: {result.stderr}")
        return result

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("status", "--json", "--limit", "1000").stdout))

    def wait_series(self, predicate: Any, *, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        report: dict[str, Any] = {}
        while time.monotonic() < deadline:
            report = self.status()
            if predicate(report):
                return report
            time.sleep(0.3)
        raise TimeoutError(f"condition not reached; last status: {json.dumps(report)[:3000]}")


# --- dcmtk ---------------------------------------------------------------------------------


def storescu(
    port: int,
    files: Sequence[Path | str],
    *,
    calling: str = "STORESCU",
    called: str = "SEGAPPLIANCE",
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Push with dcmtk storescu, proposing every transfer syntax (profile AllTS)."""
    exe = require_program("storescu")
    cfg = storescu_profile()
    args = [
        exe,
        "-v",
        "-aet",
        calling,
        "-aec",
        called,
        "-xf",
        str(cfg),
        "AllTS",
        "-nh",
        *extra,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    return subprocess.run(args, capture_output=True, text=True, env=nodelay_env(), timeout=timeout)


_TS_GROUPS = {
    "Uncompressed": ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"],
    "Deflated": ["1.2.840.10008.1.2.1.99"],
    "JPEGBaseline": ["1.2.840.10008.1.2.4.50"],
    "JPEGExtended": ["1.2.840.10008.1.2.4.51"],
    "JPEGLossless14": ["1.2.840.10008.1.2.4.57"],
    "JPEGLosslessSV1": ["1.2.840.10008.1.2.4.70"],
    "JPEGLSLossless": ["1.2.840.10008.1.2.4.80"],
    "JPEGLSNearLossless": ["1.2.840.10008.1.2.4.81"],
    "J2KLossless": ["1.2.840.10008.1.2.4.90"],
    "J2K": ["1.2.840.10008.1.2.4.91"],
    "RLE": ["1.2.840.10008.1.2.5"],
}
_PROFILE_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.66.4",
]
_PROFILE_EXTRA = [  # label-map SEG and SR: fewer syntaxes, to stay under 128 contexts
    ("1.2.840.10008.5.1.4.1.1.66.7", ("Uncompressed", "Deflated", "RLE", "J2KLossless")),
    ("1.2.840.10008.5.1.4.1.1.88.33", ("Uncompressed",)),
    ("1.2.840.10008.5.1.4.1.1.88.22", ("Uncompressed",)),
    ("1.2.840.10008.5.1.4.1.1.481.2", ("Uncompressed",)),  # RT Dose: we must refuse it
]


def storescu_profile() -> Path:
    """A dcmtk association profile 'AllTS': one context per SOP class x TS group."""
    path = Path(tempfile.gettempdir()) / f"appliance-storescu-{os.getpid()}.cfg"
    if path.exists():
        return path
    lines = ["[[TransferSyntaxes]]"]
    for name, uids in _TS_GROUPS.items():
        lines.append(f"[{name}]")
        lines += [f"TransferSyntax{i + 1} = {u}" for i, u in enumerate(uids)]
    lines += ["", "[[PresentationContexts]]", "[AllPCs]"]
    pairs = [(s, g) for s in _PROFILE_CLASSES for g in _TS_GROUPS]
    pairs += [(s, g) for s, groups in _PROFILE_EXTRA for g in groups]
    for n, (sop, group) in enumerate(pairs, start=1):
        lines.append(f"PresentationContext{n} = {sop}\\{group}")
    lines += ["", "[[Profiles]]", "[AllTS]", "PresentationContexts = AllPCs", ""]
    path.write_text("\n".join(lines))
    return path


@contextmanager
def storescp(workdir: Path, *, ae_title: str = "TESTPACS") -> Iterator[tuple[int, Path]]:
    exe = require_program("storescp")
    port = free_port()
    out = workdir / "storescp-in"
    out.mkdir(parents=True, exist_ok=True)
    proc = Process(
        [exe, "-aet", ae_title, "+xa", "-pm", "+uf", "-od", str(out), str(port)],
        workdir / "storescp.log",
        env=nodelay_env(),
    )
    try:
        wait_port(port, proc=proc.proc, log=proc.log)
        yield port, out
    finally:
        proc.stop()


# --- Orthanc -------------------------------------------------------------------------------


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    aet: str
    process: Process
    auth: tuple[str, str] | None = None  # its REST API's user, when it has users

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        timeout: float = 120,
    ) -> Any:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.auth is not None:
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"Orthanc {method} {path}: HTTP {exc.code} {exc.read()[:500]!r}"
            ) from exc
        return json.loads(payload) if payload else None

    def raw(self, path: str, timeout: float = 60) -> bytes:
        """GET a non-JSON resource (a DICOM file) from the REST API."""
        req = urllib.request.Request(self.url + path)
        if self.auth is not None:
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return bytes(response.read())

    def upload(self, path: Path) -> dict[str, Any]:
        return dict(self.request("POST", "/instances", path.read_bytes()))

    def find_instances(self, query: dict[str, str]) -> list[str]:
        return list(self.request("POST", "/tools/find", {"Level": "Instance", "Query": query}))


@contextmanager
def orthanc(
    workdir: Path,
    *,
    modalities: Mapping[str, tuple[str, int]] | None = None,
    aet: str = "TESTPACS",
    dicomweb: bool = False,
    users: Mapping[str, str] | None = None,
    http_port: int | None = None,
    dicom_port: int | None = None,
) -> Iterator[Orthanc]:
    """An Orthanc on 127.0.0.1 (free ports unless given: a restart on the same ports and
    ``workdir`` keeps its database). ``dicomweb``: with the DICOMweb plugin at
    ``/dicom-web``; ``users``: HTTP basic authentication with these users."""
    exe = require_program("Orthanc")
    plugin = require_orthanc_dicomweb() if dicomweb else None
    http_port = http_port or free_port()
    dicom_port = dicom_port or free_port()
    db = workdir / "orthanc-db"
    db.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "TEST-PACS",
        "StorageDirectory": str(db),
        "IndexDirectory": str(db),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {
            name: {"AET": ae, "Host": "127.0.0.1", "Port": port}
            for name, (ae, port) in (modalities or {}).items()
        },
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "StableAge": 2,
        "Plugins": [str(plugin)] if plugin is not None else [],
    }
    if plugin is not None:
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    if users:
        config["AuthenticationEnabled"] = True
        config["RegisteredUsers"] = dict(users)
    cfg_path = workdir / "orthanc.json"
    cfg_path.write_text(json.dumps(config))
    proc = Process(
        [exe, f"--logfile={workdir / 'orthanc.log'}", str(cfg_path)],
        workdir / "orthanc.stdout",
        env=nodelay_env(),
    )
    first = next(iter(users.items())) if users else None
    handle = Orthanc(http_port, dicom_port, aet, proc, first)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                handle.request("GET", "/system", timeout=2)
                break
            except (AssertionError, OSError):
                if proc.proc.poll() is not None or time.monotonic() > deadline:
                    log = workdir / "orthanc.log"
                    raise RuntimeError(
                        "Orthanc did not start: "
                        + (log.read_text(errors="replace")[-2000:] if log.exists() else "")
                    ) from None
                time.sleep(0.2)
        yield handle
    finally:
        proc.stop(timeout=15)


@contextmanager
def tls_terminator(workdir: Path, pki: Path, backend_port: int) -> Iterator[int]:
    """stunnel on a free loopback port: HTTPS with ``pki``'s server certificate (see
    :func:`make_pki`), forwarded as plain HTTP to ``backend_port`` - how a site puts TLS
    in front of a PACS' web server. Yields the HTTPS port; stopped by PID."""
    exe = find_program("stunnel4") or require_program("stunnel")
    port = free_port()
    config = workdir / "stunnel.conf"
    config.write_text(
        "foreground = yes\n"
        f"pid = {workdir / 'stunnel.pid'}\n"
        "[https]\n"
        f"accept = 127.0.0.1:{port}\n"
        f"connect = 127.0.0.1:{backend_port}\n"
        f"cert = {pki / 'server.pem'}\n"
        f"key = {pki / 'server.key'}\n"
    )
    proc = Process([exe, str(config)], workdir / "stunnel.log")
    try:
        wait_port(port, timeout=15, proc=proc.proc, log=workdir / "stunnel.log")
        yield port
    finally:
        proc.stop(timeout=10)


# --- TLS certificates ----------------------------------------------------------------------


def make_pki(directory: Path) -> Path:
    """A test CA (``ca.pem``) and, signed by it for 127.0.0.1/localhost, a server and a
    client key pair (``server.pem``/``server.key``, ``client.pem``/``client.key``), made
    with openssl in ``directory``."""
    exe = require_program("openssl")

    def run(*args: str) -> None:
        subprocess.run([exe, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext",
            "-out", f"{name}.pem")  # fmt: skip
    return directory
