"""The PACS the demo talks to: Orthanc when it is installed, else a minimal built-in receiver.

Both sides of the demo use real DICOM networking on loopback. Orthanc is started as a
child process on free ports with a configuration written into the demo's folder, and
stopped by PID; the built-in receiver is a second :class:`~dicom_bridge.listener.Listener`
with its own spool.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from dicom_bridge.instance import ReceivedInstance
from dicom_bridge.listener import Listener, ListenerSettings, Publish
from dicom_bridge.sender import RemoteNode, send_files
from dicom_bridge.spool import Spool

PACS_AE = "DEMOPACS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_orthanc() -> str | None:
    found = shutil.which("Orthanc")
    if found:
        return found
    return "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None


class DemoPacs(Protocol):
    name: str
    ae_title: str
    dicom_port: int

    def push(self, files: Sequence[Path], appliance_port: int) -> int: ...

    def arrival(self, sop_uid: str) -> float | None: ...

    def stop(self) -> None: ...


class BuiltinPacs:
    """A second listener standing in for the PACS; records when each instance arrived."""

    name = "built-in receiver"

    def __init__(self, workdir: Path) -> None:
        self.ae_title = PACS_AE
        self.dicom_port = free_port()
        self._arrivals: dict[str, float] = {}
        self._listener = Listener(
            ListenerSettings(ae_title=self.ae_title, bind="127.0.0.1", port=self.dicom_port),
            Spool(workdir / "pacs-spool"),
            on_instance=self._on_instance,
        )
        self._listener.start()

    def _on_instance(self, inst: ReceivedInstance, publish: Publish) -> None:
        self._arrivals[inst.key.sop_uid] = time.monotonic()

    def push(self, files: Sequence[Path], appliance_port: int) -> int:
        node = RemoteNode("SEGAPPLIANCE", "127.0.0.1", appliance_port, calling_ae=self.ae_title)
        return sum(r.ok for r in send_files(node, files))

    def arrival(self, sop_uid: str) -> float | None:
        return self._arrivals.get(sop_uid)

    def stop(self) -> None:
        self._listener.stop()


class OrthancPacs:
    """Orthanc on loopback: images are uploaded over REST and pushed with C-STORE."""

    name = "Orthanc"

    def __init__(self, executable: str, workdir: Path, appliance_port: int) -> None:
        self.ae_title = PACS_AE
        self.dicom_port = free_port()
        self.http_port = free_port()
        db = workdir / "orthanc-db"
        db.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "DEMO-PACS",
            "StorageDirectory": str(db),
            "IndexDirectory": str(db),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "UnknownSopClassAccepted": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {
                "appliance": {"AET": "SEGAPPLIANCE", "Host": "127.0.0.1", "Port": appliance_port}
            },
            "Plugins": [],
        }
        cfg = workdir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        env = dict(os.environ, TCP_NODELAY="1")
        self._log = (workdir / "orthanc.log").open("ab")
        self._proc = subprocess.Popen(
            [executable, f"--logfile={workdir / 'orthanc-internal.log'}", str(cfg)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._arrivals: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while True:
            try:
                self._request("GET", "/system", timeout=2)
                return
            except (OSError, urllib.error.URLError) as exc:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"Orthanc did not start; see {workdir / 'orthanc.log'}"
                    ) from exc
                time.sleep(0.2)

    def _request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 120
    ) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = resp.read()
        return json.loads(payload) if payload else None

    def push(self, files: Sequence[Path], appliance_port: int) -> int:
        series: set[str] = set()
        for path in files:
            series.add(self._request("POST", "/instances", path.read_bytes())["ParentSeries"])
        sent = 0
        for series_id in sorted(series):
            body = json.dumps({"Resources": [series_id], "Synchronous": True}).encode()
            answer = self._request("POST", "/modalities/appliance/store", body)
            sent += int(answer.get("InstancesCount", 0)) - int(
                answer.get("FailedInstancesCount", 0)
            )
        return sent

    def arrival(self, sop_uid: str) -> float | None:
        if sop_uid not in self._arrivals:
            query = json.dumps({"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
            if self._request("POST", "/tools/find", query.encode()):
                self._arrivals[sop_uid] = time.monotonic()
        return self._arrivals.get(sop_uid)

    def stop(self) -> None:
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self._log.close()
