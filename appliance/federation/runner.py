"""Start and stop Flower's own programs for the CLI: the SuperLink (coordinator), a
SuperNode (site), and runs submitted with ``flwr run`` against a running SuperLink.

Everything is a real Flower process; nothing here speaks Flower's protocols itself.
Processes get their own session and log file and are stopped by PID (SIGTERM, then
SIGKILL). The coordinator's Flower CLI config (``FLWR_HOME/config.toml``) names one
SuperLink connection, ``appliance``; the Flower App (a ``pyproject.toml`` whose
components are :mod:`appliance.federation.server_app` and
:mod:`appliance.federation.client_app`) is generated under the coordinator's state dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import FederationError
from appliance.federation.progress import RunStatus, read_progress
from appliance.federation.settings import RunSettings, run_config_map

CONNECTION = "appliance"
APP_NAME = "appliance-federation"


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS files. The SuperLink needs ``cert``, ``key`` and ``ca``; SuperNodes and the
    Flower CLI need only ``ca`` (to verify the SuperLink)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


def program(name: str) -> str:
    """A Flower program next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).with_name(name)
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FederationError(f"{name} is not installed (pip install flwr)")
    return found


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_app(directory: Path) -> Path:
    """The Flower App that ``flwr run`` packs into a FAB: only a ``pyproject.toml``; the
    code is the installed ``appliance`` package on every party."""
    directory.mkdir(parents=True, exist_ok=True)
    defaults = run_config_map(RunSettings())
    config = "\n".join(f"{k} = {_toml(v)}" for k, v in defaults.items())
    (directory / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "Segmentation appliance federated fine-tuning"
license = "Proprietary"
dependencies = []

[tool.flwr.app]
publisher = "seg-appliance"

[tool.flwr.app.components]
serverapp = "appliance.federation.server_app:app"
clientapp = "appliance.federation.client_app:app"

[tool.flwr.app.config]
{config}
""",
        encoding="utf-8",
    )
    return directory


def write_cli_config(flwr_home: Path, address: str, tls: Tls | None) -> Path:
    """``FLWR_HOME/config.toml`` with the SuperLink connection :data:`CONNECTION`."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = (
        f"root-certificates = {json.dumps(str(tls.ca))}" if tls is not None else "insecure = true"
    )
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "{address}"\n{security}\n',
        encoding="utf-8",
    )
    return path


class Process:
    """A child process in its own session with its log file; stopped by PID."""

    def __init__(self, args: Sequence[str], log: Path, env: Mapping[str, str]) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.log = log
        self._handle = log.open("ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            # the whole session: Flower's SuperExec and app processes are its children
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._handle.close()
        return self.proc.returncode

    def wait(self) -> int:
        try:
            return self.proc.wait()
        finally:
            self._handle.close()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    # Flower's programs start each other by name (the SuperLink runs flower-superexec,
    # the SuperNode flwr-clientapp): the venv's bin must be on PATH even when the venv is
    # not activated (e.g. .venv/bin/appliance from cron or make).
    venv_bin = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if venv_bin not in path.split(os.pathsep):
        env["PATH"] = os.pathsep.join(p for p in (venv_bin, path) if p)
    # an appliance in a hospital network does not phone home
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.update(extra or {})
    return env


def start_superlink(
    state_dir: Path,
    *,
    host: str,
    port: int,
    tls: Tls | None,
    supernode_auth: bool = False,
    simulation: bool = False,
) -> Process:
    """``flower-superlink`` on ``host:port`` (Fleet, Control and Runtime APIs share it).
    ``simulation``: Flower's simulation runtime runs the submitted runs on virtual
    SuperNodes (Ray workers) instead of waiting for real ones."""
    if supernode_auth and tls is None:
        raise FederationError("supernode authentication needs TLS (federation.tls_*)")
    args = [
        program("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(state_dir / "superlink.sqlite3"),
        "--disable-runtime-dependency-installation",
    ]
    if tls is None:
        args.append("--insecure")
    else:
        if tls.cert is None or tls.key is None:
            raise FederationError("the SuperLink needs a TLS certificate and key")
        args += [
            "--ssl-ca-certfile",
            str(tls.ca),
            "--ssl-certfile",
            str(tls.cert),
            "--ssl-keyfile",
            str(tls.key),
        ]
    if supernode_auth:
        args.append("--enable-supernode-auth")
    if simulation:
        args.append("--simulation")
    state_dir.mkdir(parents=True, exist_ok=True)
    return Process(args, state_dir / "superlink.log", _env(state_dir / "flwr"))


def start_supernode(
    state_dir: Path,
    *,
    superlink: str,
    runtime_port: int,
    node_config: Mapping[str, Any],
    tls: Tls | None,
    auth_private_key: Path | None = None,
) -> Process:
    """``flower-supernode`` connected to ``superlink`` (``host:port``); its ClientApp
    processes talk to it on ``127.0.0.1:runtime_port``."""
    pairs = " ".join(f"{k}={_toml(v)}" for k, v in node_config.items())
    args = [
        program("flower-supernode"),
        "--superlink",
        superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port),
        "--node-config",
        pairs,
    ]
    args += ["--root-certificates", str(tls.ca)] if tls is not None else ["--insecure"]
    if auth_private_key is not None:
        args += ["--auth-supernode-private-key", str(auth_private_key)]
    state_dir.mkdir(parents=True, exist_ok=True)
    return Process(args, state_dir / "supernode.log", _env(state_dir / "flwr"))


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, process: Process, timeout: float = 60.0) -> None:
    """Block until ``host:port`` accepts connections (or ``process`` exits)."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise FederationError(f"{process.args[0]} exited:\n{process.tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise FederationError(f"nothing listens on {host}:{port} after {timeout:g} s")


def _flwr(flwr_home: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program("flwr"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(flwr_home),
    )


def register_supernode(flwr_home: Path, public_key: Path) -> None:
    """Register a SuperNode's public key (OpenSSH, NIST EC curve) with the SuperLink."""
    done = _flwr(flwr_home, "supernode", "register", str(public_key), CONNECTION)
    if done.returncode != 0:
        raise FederationError(
            f"flwr supernode register failed: {(done.stdout + done.stderr)[-800:]}"
        )


def submit_run(
    flwr_home: Path,
    app_dir: Path,
    settings: RunSettings,
    *,
    federation_config: Mapping[str, Any] | None = None,
) -> str:
    """``flwr run`` the appliance app on the connected SuperLink; returns the run id.
    ``federation_config``: the simulation runtime's settings (``num-supernodes``,
    ``client-resources-num-cpus``, ...) for a SuperLink started with ``simulation``."""
    args = ["run", str(app_dir), CONNECTION, "--format", "json"]
    for key, value in (federation_config or {}).items():
        args += ["--federation-config", f"{key}={_toml(value)}"]
    for key, value in run_config_map(settings).items():
        args += ["--run-config", f"{key}={_toml(value)}"]
    done = _flwr(flwr_home, *args)
    text = done.stdout.strip()
    try:
        payload = json.loads(text[text.index("{") :])
    except ValueError as exc:
        raise FederationError(f"flwr run failed: {(done.stdout + done.stderr)[-1500:]}") from exc
    if done.returncode != 0 or not payload.get("success") or not payload.get("run-id"):
        raise FederationError(f"flwr run failed: {json.dumps(payload)[:1500]}")
    return str(payload["run-id"])


def run_state(flwr_home: Path, run_id: str) -> str:
    """Flower's status of ``run_id`` (e.g. ``running``, ``finished:completed``)."""
    done = _flwr(flwr_home, "ls", CONNECTION, "--run-id", run_id, "--format", "json", timeout=60)
    try:
        text = done.stdout
        payload = json.loads(text[text.index("{") :])
        runs = payload.get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"
    except (ValueError, IndexError):
        return "unknown"


def wait_run(
    output_dir: Path,
    run_id: str,
    *,
    timeout: float,
    flwr_home: Path | None = None,
    poll: float = 1.0,
    watch: Sequence[Process] = (),
) -> dict[str, Any]:
    """Block until the run's progress says finished or failed (or Flower says the run
    finished without the ServerApp recording so); returns the progress. A process in
    ``watch`` (SuperLink, SuperNodes) that exits ends the wait with its log."""
    deadline = time.monotonic() + timeout
    last_check = 0.0
    while time.monotonic() < deadline:
        for process in watch:
            if not process.alive():
                raise FederationError(f"{process.args[0]} exited:\n{process.tail()}")
        progress = read_progress(output_dir, run_id)
        if progress is not None and progress.get("status") != RunStatus.RUNNING.value:
            return progress
        if flwr_home is not None and time.monotonic() - last_check > 10:
            last_check = time.monotonic()
            status = run_state(flwr_home, run_id)
            if status.startswith("finished") and (
                progress is None or progress.get("status") == RunStatus.RUNNING.value
            ):
                time.sleep(2 * poll)
                progress = read_progress(output_dir, run_id)
                if progress is None or progress.get("status") == RunStatus.RUNNING.value:
                    raise FederationError(f"run {run_id} ended ({status}) without finishing")
                return progress
        time.sleep(poll)
    raise FederationError(f"run {run_id} did not finish within {timeout:g} s")
